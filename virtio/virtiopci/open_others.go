//go:build !linux || !amd64

package virtiopci

import (
	"fmt"
	"runtime"

	"github.com/nke-harness/nke/virtio"
)

// Open claims fn for user space; it needs Linux sysfs BAR mapping and an
// amd64 CPU, whose store order the doorbell writes rely on.
func Open(fn Function) (*Transport, error) {
	return nil, &OpError{Op: "open", BDF: fn.BDF, Err: fmt.Errorf(
		"%w: the PCI transport needs Linux (sysfs BAR mapping) on amd64 (its MMIO ordering is x86's; this is %s/%s)",
		virtio.ErrNotSupported, runtime.GOOS, runtime.GOARCH)}
}
