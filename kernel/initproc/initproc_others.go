//go:build !linux

package initproc

import (
	"fmt"
	"io"
	"os"
	"time"
)

// Mount is one filesystem for PID 1 to mount.
type Mount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
}

// DefaultMounts is empty: there is nothing to mount outside Linux.
func DefaultMounts() []Mount { return nil }

// MountAll needs Linux.
func MountAll(ms []Mount) error {
	if len(ms) == 0 {
		return nil
	}
	return fmt.Errorf("initproc: mount: %w", ErrNotSupported)
}

// ReserveHugepages needs Linux.
func ReserveHugepages(n int) (int, error) {
	return 0, fmt.Errorf("initproc: reserve hugepages: %w", ErrNotSupported)
}

// SetHostname needs Linux.
func SetHostname(name string) error {
	return fmt.Errorf("initproc: set hostname: %w", ErrNotSupported)
}

// LoadedModules needs Linux.
func LoadedModules() ([]string, error) {
	return nil, fmt.Errorf("initproc: list modules: %w", ErrNotSupported)
}

// Cmdline needs Linux.
func Cmdline() (map[string]string, error) {
	return nil, fmt.Errorf("initproc: kernel command line: %w", ErrNotSupported)
}

// Uptime needs Linux.
func Uptime() (time.Duration, error) {
	return 0, fmt.Errorf("initproc: uptime: %w", ErrNotSupported)
}

// Setup needs Linux.
func Setup(c Config) error { return fmt.Errorf("initproc: setup: %w", ErrNotSupported) }

// StartReaper does nothing: this is never PID 1 of a Linux guest.
func StartReaper() (stop func()) { return func() {} }

// Poweroff exits the process with code.
func Poweroff(code int) {
	runShutdownHooks()
	Logf("poweroff (exit code %d)", code)
	os.Exit(code)
}

// Reboot exits the process.
func Reboot() {
	runShutdownHooks()
	Logf("reboot (exit code 0)")
	os.Exit(0)
}

var start = time.Now()

func sinceBoot() time.Duration { return time.Since(start) }

func isTerminal(io.Reader) bool { return false }
