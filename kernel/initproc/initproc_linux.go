package initproc

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Mount is one filesystem for PID 1 to mount.
type Mount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
}

// DefaultMounts is what the guest needs, in order: /proc and /sys for
// discovery, devtmpfs for device nodes, tmpfs for scratch files and
// hugetlbfs with 2 MiB pages for DMA memory (kernel/hugepage).
func DefaultMounts() []Mount {
	const safe = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	return []Mount{
		{"proc", "/proc", "proc", safe, ""},
		{"sysfs", "/sys", "sysfs", safe, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"hugetlbfs", "/dev/hugepages", "hugetlbfs", unix.MS_NOSUID | unix.MS_NODEV, "pagesize=2M"},
	}
}

// MountAll creates each target and mounts it, skipping targets that are
// already mount points, so it is safe to call twice.
func MountAll(ms []Mount) error {
	for _, m := range ms {
		if err := os.MkdirAll(m.Target, 0o755); err != nil {
			return fmt.Errorf("initproc: mount %s: %w", m.Target, err)
		}
		if mounted, err := isMountPoint(m.Target); err != nil {
			return fmt.Errorf("initproc: mount %s: %w", m.Target, err)
		} else if mounted {
			continue
		}
		if err := unix.Mount(m.Source, m.Target, m.FSType, m.Flags, m.Data); err != nil {
			return fmt.Errorf("initproc: mount %s on %s (%s): %w", m.FSType, m.Target, m.Data, err)
		}
	}
	return nil
}

// isMountPoint reports whether dir is on another device than its parent:
// it works before /proc is mounted, unlike reading mountinfo.
func isMountPoint(dir string) (bool, error) {
	var st, pst unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return false, err
	}
	if err := unix.Stat(filepath.Dir(filepath.Clean(dir)), &pst); err != nil {
		return false, err
	}
	return st.Dev != pst.Dev, nil
}

// nrHugepages is the default-size (2 MiB on x86-64) hugepage pool.
var nrHugepages = "/proc/sys/vm/nr_hugepages"

// ReserveHugepages asks the kernel for a pool of n default-size hugepages
// and returns how many it granted, which can be fewer when memory is short
// or fragmented; that is an error too, but granted is still right.
func ReserveHugepages(n int) (granted int, err error) {
	if n < 0 {
		return 0, fmt.Errorf("initproc: reserve %d hugepages: negative count", n)
	}
	for try := 1; ; try++ {
		if granted, err = setHugepages(n); err != nil || granted >= n {
			return granted, err
		}
		if try == hugepageTries {
			return granted, fmt.Errorf("initproc: asked for %d hugepages, kernel granted %d (after %d tries with compaction): give the VM more memory (-m)", n, granted, try)
		}
		// Too few free 2 MiB blocks right now: early in boot the kernel
		// is still freeing the initramfs and init memory, or memory is
		// fragmented. Compact and ask again.
		os.WriteFile(compactMemory, []byte("1"), 0)
		time.Sleep(time.Duration(try) * 20 * time.Millisecond)
	}
}

// hugepageTries bounds ReserveHugepages' attempts.
const hugepageTries = 5

var compactMemory = "/proc/sys/vm/compact_memory"

// setHugepages asks the kernel for n hugepages and returns how many it
// holds. Tests replace it.
var setHugepages = func(n int) (int, error) {
	if err := os.WriteFile(nrHugepages, []byte(strconv.Itoa(n)), 0); err != nil {
		return 0, fmt.Errorf("initproc: reserve %d hugepages: %w", n, err)
	}
	b, err := os.ReadFile(nrHugepages)
	if err != nil {
		return 0, fmt.Errorf("initproc: reserve %d hugepages: %w", n, err)
	}
	granted, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || granted < 0 {
		return 0, fmt.Errorf("initproc: %s reads %q", nrHugepages, b)
	}
	return granted, nil
}

// SetHostname sets the kernel's hostname (a DNS label or dotted name).
func SetHostname(name string) error {
	if name == "" || len(name) > 64 || strings.Trim(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.") != "" {
		return fmt.Errorf("initproc: hostname %q: want 1-64 letters, digits, '-' or '.'", name)
	}
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("initproc: set hostname %q: %w", name, err)
	}
	return nil
}

// LoadedModules lists the loaded kernel modules; empty on a module-free
// boot.
func LoadedModules() ([]string, error) {
	b, err := os.ReadFile("/proc/modules")
	if err != nil {
		return nil, fmt.Errorf("initproc: list modules: %w", err)
	}
	var names []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names, nil
}

// Cmdline reads and parses /proc/cmdline (see ParseCmdline).
func Cmdline() (map[string]string, error) {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return nil, fmt.Errorf("initproc: read kernel command line: %w", err)
	}
	return ParseCmdline(string(b)), nil
}

// Uptime reads the time since boot from /proc/uptime.
func Uptime() (time.Duration, error) {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0, fmt.Errorf("initproc: read uptime: %w", err)
	}
	return parseUptime(string(b))
}

// sinceBoot is CLOCK_BOOTTIME, the clock /proc/uptime shows; unlike
// /proc it is there before anything is mounted.
func sinceBoot() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// Setup does the usual PID-1 chores in order: mount DefaultMounts, set the
// hostname, reserve hugepages, start the zombie reaper. It logs what it
// did, including any loaded modules (there should be none).
func Setup(c Config) error {
	if err := MountAll(DefaultMounts()); err != nil {
		return err
	}
	if c.Hostname != "" {
		if err := SetHostname(c.Hostname); err != nil {
			return err
		}
	}
	if c.Hugepages > 0 {
		got, err := ReserveHugepages(c.Hugepages)
		if err != nil {
			return err
		}
		Logf("hugepages: %d of 2 MiB reserved", got)
	}
	StartReaper()
	if mods, err := LoadedModules(); err != nil {
		return err
	} else if len(mods) > 0 {
		Logf("warning: kernel modules loaded: %s", strings.Join(mods, " "))
	}
	return nil
}

// StartReaper reaps exited children in the background, as PID 1 must for
// orphans the kernel re-parents to it. It also reaps children started with
// os/exec, whose Wait then fails with ECHILD: use it only where nothing
// else waits for children. stop ends it.
func StartReaper() (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, unix.SIGCHLD)
	done := make(chan struct{})
	go func() {
		for {
			reapAll()
			select {
			case <-ch:
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
	}
}

// reapAll collects every exited child without blocking.
func reapAll() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}

// isTerminal reports whether r is a tty, where EOF is not the end.
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// Poweroff logs the exit code, waits for the console to drain (else the
// last lines are lost), syncs and powers the machine off. The code is
// logged ("poweroff (exit code N)") for the host to read; the VM itself
// just stops. Outside PID 1 it exits the process with code instead, so
// that a test run on a host never powers the host off.
func Poweroff(code int) {
	shutdown(unix.LINUX_REBOOT_CMD_POWER_OFF, "poweroff", code)
}

// Reboot is Poweroff's twin for rebooting (QEMU with -no-reboot exits).
func Reboot() {
	shutdown(unix.LINUX_REBOOT_CMD_RESTART, "reboot", 0)
}

func shutdown(cmd int, what string, code int) {
	runShutdownHooks()
	Logf("%s (exit code %d)", what, code)
	if os.Getpid() != 1 {
		Logf("not PID 1: exiting instead of %s", what)
		os.Exit(code)
	}
	unix.Sync()
	unix.IoctlSetInt(1, unix.TCSBRK, 1) // tcdrain; fails harmlessly if 1 is no tty
	err := unix.Reboot(cmd)
	// Only reached on failure; PID 1 exiting panics the kernel, which with
	// panic=-1 and QEMU -no-reboot still ends the VM.
	Logf("%s failed: %v", what, err)
	unix.IoctlSetInt(1, unix.TCSBRK, 1)
	os.Exit(code)
}
