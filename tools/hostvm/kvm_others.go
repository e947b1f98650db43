//go:build !linux

package hostvm

import (
	"fmt"
	"runtime"
)

// CheckKVM reports whether QEMU can use KVM on this host; KVM is Linux-only.
func CheckKVM() error {
	return fmt.Errorf("KVM is only available on Linux hosts, not %s", runtime.GOOS)
}
