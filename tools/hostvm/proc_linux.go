package hostvm

import (
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// sysProcAttr puts QEMU in its own process group, out of reach of the
// terminal's SIGINT, and has the kernel kill it if we die first.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// killGroup kills QEMU and anything it spawned.
func killGroup(cmd *exec.Cmd) {
	if cmd.Process == nil {
		return
	}
	if err := unix.Kill(-cmd.Process.Pid, unix.SIGKILL); err != nil {
		_ = cmd.Process.Kill()
	}
}
