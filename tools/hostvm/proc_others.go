//go:build !linux

package hostvm

import (
	"os/exec"
	"syscall"
)

// sysProcAttr: process groups and parent-death signals are set up on
// Linux only; elsewhere QEMU shares our process group.
func sysProcAttr() *syscall.SysProcAttr { return nil }

func killGroup(cmd *exec.Cmd) {
	if cmd.Process != nil {
		_ = cmd.Process.Kill()
	}
}
