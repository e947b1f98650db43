package virtiopci

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
	return findModern(root, "virtio console", DeviceConsoleModern, DeviceConsoleTransitional)
}
