package virtiopci

import (
	"fmt"
	"strings"
)

// PCI IDs of a virtio console (virtio-serial) device, spec 4.1.2 and 5.3:
// virtio device ID 3.
const (
	DeviceConsoleModern       = 0x1043 // 0x1040 + virtio device ID 3
	DeviceConsoleTransitional = 0x1003
)

// IsVirtioConsoleID reports whether the IDs name a virtio console device:
// modern 0x1043, or transitional 0x1003 (which still needs modern
// capabilities; see FindVirtioConsole).
func (f Function) IsVirtioConsoleID() bool {
	return f.Vendor == VendorVirtio && (f.Device == DeviceConsoleModern || f.Device == DeviceConsoleTransitional)
}

// FindVirtioConsole returns the virtio console functions under root that
// the user-space driver can drive, bound or not, as FindVirtioNet does for
// NICs: modern ones (0x1043) and transitional ones (0x1003) that also
// present modern capabilities. It fails with ErrNotFound, saying why each
// near-miss was rejected, when nothing matches.
func FindVirtioConsole(root string) ([]Function, error) {
	fns, err := List(root)
	if err != nil {
		return nil, err
	}
	var out []Function
	var why []string
	for _, f := range fns {
		if !f.IsVirtioConsoleID() {
			continue
		}
		if f.Device == DeviceConsoleTransitional {
			cfg, err := f.Config()
			if err == nil && len(cfg) <= pciHeaderLen {
				err = fmt.Errorf("read only %d bytes of config space: capabilities need root", len(cfg))
			}
			if err == nil {
				_, err = ParseCaps(cfg)
			}
			if err != nil {
				why = append(why, fmt.Sprintf("%s (transitional): %v", f.BDF, err))
				continue
			}
		}
		out = append(out, f)
	}
	if out == nil {
		msg := fmt.Sprintf("no virtio console function (%04x:%04x, or %04x:%04x with modern capabilities) under %s",
			VendorVirtio, DeviceConsoleModern, VendorVirtio, DeviceConsoleTransitional, root)
		if why != nil {
			msg += ": " + strings.Join(why, "; ")
		}
		return nil, fmt.Errorf("%w: %s", ErrNotFound, msg)
	}
	return out, nil
}
