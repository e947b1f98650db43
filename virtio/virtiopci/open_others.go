//go:build !linux

package virtiopci

import (
	"fmt"

	"github.com/nke-harness/nke/virtio"
)

// Open claims fn for user space; it needs Linux sysfs BAR mapping.
func Open(fn Function) (*Transport, error) {
	return nil, &OpError{Op: "open", BDF: fn.BDF, Err: fmt.Errorf("%w: mapping PCI BARs needs Linux sysfs", virtio.ErrNotSupported)}
}
