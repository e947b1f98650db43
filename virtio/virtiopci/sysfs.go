package virtiopci

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// DefaultRoot is where Linux lists PCI functions.
const DefaultRoot = "/sys/bus/pci/devices"

// PCI IDs of a virtio network device, spec 4.1.2.
const (
	VendorVirtio          = 0x1af4
	DeviceNetModern       = 0x1041 // 0x1040 + virtio device ID 1
	DeviceNetTransitional = 0x1000
)

// Function is one PCI function as sysfs describes it.
type Function struct {
	BDF             string // domain:bus:device.function, e.g. "0000:00:03.0"
	Path            string // its sysfs directory
	Vendor          uint16
	Device          uint16
	Revision        uint8
	Class           uint32 // 24-bit class code: base, sub-class, prog-if
	SubsystemVendor uint16
	SubsystemDevice uint16
	Driver          string // name of the bound kernel driver; "" if none
	// IOMMUGroup is the function's IOMMU group, "" when no IOMMU
	// translates its DMA (addresses it sees are then guest-physical).
	IOMMUGroup string
}

func (f Function) String() string {
	drv := f.Driver
	if drv == "" {
		drv = "none"
	}
	return fmt.Sprintf("%s [%04x:%04x] rev %d class %06x subsys %04x:%04x driver %s",
		f.BDF, f.Vendor, f.Device, f.Revision, f.Class, f.SubsystemVendor, f.SubsystemDevice, drv)
}

// Errors about finding and claiming a function.
var (
	// ErrNotFound reports that no function matched.
	ErrNotFound = errors.New("virtiopci: no matching PCI function")
	// ErrDriverBound reports that a kernel driver owns the function; two
	// drivers on one device corrupt each other's rings.
	ErrDriverBound = errors.New("virtiopci: a kernel driver is bound to the device")
)

// OpError is a failed operation on one PCI function.
type OpError struct {
	Op  string // what was being done, e.g. "open", "map BAR4"
	BDF string
	Err error
}

func (e *OpError) Error() string { return "virtiopci " + e.BDF + ": " + e.Op + ": " + e.Err.Error() }
func (e *OpError) Unwrap() error { return e.Err }

// validBDF reports whether s looks like a PCI address. It also keeps
// caller-supplied names from escaping the sysfs directory.
func validBDF(s string) bool {
	dom, rest, ok := strings.Cut(s, ":")
	if !ok || len(dom) < 4 || !isHex(dom) || len(rest) != 7 {
		return false
	}
	return isHex(rest[0:2]) && rest[2] == ':' && isHex(rest[3:5]) && rest[5] == '.' && rest[6] >= '0' && rest[6] <= '7'
}

func isHex(s string) bool {
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return s != ""
}

// List returns every PCI function under root (DefaultRoot on a live
// system), sorted by address.
func List(root string) ([]Function, error) {
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("virtiopci: list PCI functions: %w", err)
	}
	var out []Function
	for _, e := range ents {
		if !validBDF(e.Name()) {
			continue
		}
		f, err := Lookup(root, e.Name())
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b Function) int { return strings.Compare(a.BDF, b.BDF) })
	return out, nil
}

// Lookup reads the function at address bdf under root.
func Lookup(root, bdf string) (Function, error) {
	if !validBDF(bdf) {
		return Function{}, fmt.Errorf("virtiopci: %q is not a PCI address (want dddd:bb:dd.f, lower-case hex)", bdf)
	}
	f := Function{BDF: bdf, Path: filepath.Join(root, bdf)}
	fields := []struct {
		name string
		bits int
		set  func(uint64)
	}{
		{"vendor", 16, func(v uint64) { f.Vendor = uint16(v) }},
		{"device", 16, func(v uint64) { f.Device = uint16(v) }},
		{"revision", 8, func(v uint64) { f.Revision = uint8(v) }},
		{"class", 24, func(v uint64) { f.Class = uint32(v) }},
		{"subsystem_vendor", 16, func(v uint64) { f.SubsystemVendor = uint16(v) }},
		{"subsystem_device", 16, func(v uint64) { f.SubsystemDevice = uint16(v) }},
	}
	for _, fl := range fields {
		v, err := readHex(filepath.Join(f.Path, fl.name), fl.bits)
		if err != nil {
			return Function{}, &OpError{Op: "read sysfs", BDF: bdf, Err: err}
		}
		fl.set(v)
	}
	drv, err := boundDriver(f.Path)
	if err != nil {
		return Function{}, &OpError{Op: "read sysfs", BDF: bdf, Err: err}
	}
	f.Driver = drv
	if l, err := os.Readlink(filepath.Join(f.Path, "iommu_group")); err == nil {
		f.IOMMUGroup = filepath.Base(l)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return Function{}, &OpError{Op: "read sysfs", BDF: bdf, Err: err}
	}
	return f, nil
}

// readHex reads a sysfs attribute such as "0x1af4\n".
func readHex(path string, bits int) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	hex, ok := strings.CutPrefix(s, "0x")
	if !ok {
		return 0, fmt.Errorf("%s: %q is not 0x-prefixed hex", path, s)
	}
	v, err := strconv.ParseUint(hex, 16, bits)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a %d-bit hex value", path, s, bits)
	}
	return v, nil
}

// boundDriver names the driver the "driver" symlink points at, or "".
func boundDriver(dir string) (string, error) {
	l, err := os.Readlink(filepath.Join(dir, "driver"))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return filepath.Base(l), nil
}

// Config reads the function's configuration space. Linux returns only the
// first 64 bytes to callers without CAP_SYS_ADMIN.
func (f Function) Config() ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(f.Path, "config"))
	if err != nil {
		return nil, &OpError{Op: "read config space", BDF: f.BDF, Err: err}
	}
	return b, nil
}

// IsVirtioNetID reports whether the IDs name a virtio network device:
// modern 0x1041, or transitional 0x1000 (which still needs modern
// capabilities for this driver; see FindVirtioNet).
func (f Function) IsVirtioNetID() bool {
	return f.Vendor == VendorVirtio && (f.Device == DeviceNetModern || f.Device == DeviceNetTransitional)
}

// FindVirtioNet returns the virtio network functions under root that this
// driver can drive, bound or not: modern ones (0x1041) and transitional
// ones (0x1000) that also present modern capabilities. Transitional
// devices have revision 0 (spec 4.1.2.3), so the revision is not used;
// their capabilities are. It fails with ErrNotFound, saying why each
// near-miss was rejected, when nothing matches.
func FindVirtioNet(root string) ([]Function, error) {
	return findModern(root, "virtio-net", DeviceNetModern, DeviceNetTransitional)
}

// findModern returns the virtio functions under root with the modern
// device ID, or the transitional one and modern capabilities.
func findModern(root, what string, modern, transitional uint16) ([]Function, error) {
	fns, err := List(root)
	if err != nil {
		return nil, err
	}
	var out []Function
	var why []string
	for _, f := range fns {
		if f.Vendor != VendorVirtio || f.Device != modern && f.Device != transitional {
			continue
		}
		if f.Device == transitional {
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
		msg := fmt.Sprintf("no %s function (%04x:%04x, or %04x:%04x with modern capabilities) under %s",
			what, VendorVirtio, modern, VendorVirtio, transitional, root)
		if why != nil {
			msg += ": " + strings.Join(why, "; ")
		}
		return nil, fmt.Errorf("%w: %s", ErrNotFound, msg)
	}
	return out, nil
}

// Unbind detaches the function from its kernel driver so that user space
// can own it, and sets driver_override to "none" (a driver name that does
// not exist) so that no driver binds it again, e.g. when virtio_pci is
// loaded later. It needs root. It is a no-op for the driver part when
// nothing is bound.
func (f *Function) Unbind() error {
	if err := writeAttr(filepath.Join(f.Path, "driver_override"), "none"); err != nil {
		return &OpError{Op: "set driver_override", BDF: f.BDF, Err: err}
	}
	drv, err := boundDriver(f.Path)
	if err != nil {
		return &OpError{Op: "unbind", BDF: f.BDF, Err: err}
	}
	if drv != "" {
		if err := writeAttr(filepath.Join(f.Path, "driver", "unbind"), f.BDF); err != nil {
			return &OpError{Op: "unbind from " + drv, BDF: f.BDF, Err: err}
		}
		if drv, err = boundDriver(f.Path); err != nil || drv != "" {
			return &OpError{Op: "unbind", BDF: f.BDF, Err: fmt.Errorf("still bound to %q after unbind (%v)", drv, err)}
		}
	}
	f.Driver = ""
	return nil
}

// writeAttr writes a sysfs attribute in one write, as sysfs expects.
func writeAttr(path, val string) error {
	fd, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0) // as a shell redirect does
	if err != nil {
		return err
	}
	_, err = fd.Write([]byte(val))
	if cerr := fd.Close(); err == nil {
		err = cerr
	}
	return err
}
