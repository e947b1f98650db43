package virtiopci

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nke-harness/nke/virtio"
)

// fakeFn is one PCI function in a fake sysfs tree.
type fakeFn struct {
	bdf                  string
	vendor, device       uint16
	rev                  uint8
	class                uint32
	subVendor, subDevice uint16
	driver               string
	iommuGroup           string
	config               []byte
	resource             string
	bars                 map[int]int // BAR index -> size of resourceN file
	attrOverride         map[string]string
}

// fakeSysfs writes fns under a temporary directory laid out like
// /sys/bus/pci: devices/<bdf>/ and drivers/<name>/unbind, with "driver"
// symlinks. It returns the devices directory.
func fakeSysfs(t *testing.T, fns ...fakeFn) string {
	t.Helper()
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range fns {
		dir := filepath.Join(root, "devices", f.bdf)
		must(os.MkdirAll(dir, 0o755))
		attrs := map[string]string{
			"vendor":           fmt.Sprintf("0x%04x\n", f.vendor),
			"device":           fmt.Sprintf("0x%04x\n", f.device),
			"revision":         fmt.Sprintf("0x%02x\n", f.rev),
			"class":            fmt.Sprintf("0x%06x\n", f.class),
			"subsystem_vendor": fmt.Sprintf("0x%04x\n", f.subVendor),
			"subsystem_device": fmt.Sprintf("0x%04x\n", f.subDevice),
			"driver_override":  "(null)\n",
			"resource":         f.resource,
		}
		for k, v := range f.attrOverride {
			attrs[k] = v
		}
		for k, v := range attrs {
			must(os.WriteFile(filepath.Join(dir, k), []byte(v), 0o644))
		}
		must(os.WriteFile(filepath.Join(dir, "config"), f.config, 0o644))
		for i, size := range f.bars {
			must(os.WriteFile(filepath.Join(dir, fmt.Sprintf("resource%d", i)), make([]byte, size), 0o644))
		}
		if f.iommuGroup != "" {
			gdir := filepath.Join(root, "kernel", "iommu_groups", f.iommuGroup)
			must(os.MkdirAll(gdir, 0o755))
			must(os.Symlink(gdir, filepath.Join(dir, "iommu_group")))
		}
		if f.driver != "" {
			ddir := filepath.Join(root, "drivers", f.driver)
			must(os.MkdirAll(ddir, 0o755))
			must(os.WriteFile(filepath.Join(ddir, "unbind"), nil, 0o644))
			must(os.Symlink(filepath.Join("..", "..", "drivers", f.driver), filepath.Join(dir, "driver")))
		}
	}
	// Entries that are not PCI addresses are ignored.
	must(os.MkdirAll(filepath.Join(root, "devices", "not-a-device"), 0o755))
	return filepath.Join(root, "devices")
}

func qemuNIC(t *testing.T) fakeFn {
	return fakeFn{
		bdf: "0000:00:03.0", vendor: VendorVirtio, device: DeviceNetModern, rev: 1, class: 0x020000,
		subVendor: VendorVirtio, subDevice: 0x1100,
		config:   loadConfig(t, "qemu-7.2-virtio-net-modern"),
		resource: qemuResource, bars: map[int]int{1: 0x1000, 4: 0x4000},
	}
}

func TestList(t *testing.T) {
	host := fakeFn{bdf: "0000:00:00.0", vendor: 0x8086, device: 0x1237, rev: 2, class: 0x060000, subVendor: VendorVirtio, subDevice: 0x1100}
	nic := qemuNIC(t)
	nic.driver = "virtio-pci"
	root := fakeSysfs(t, nic, host)
	got, err := List(root)
	if err != nil {
		t.Fatal(err)
	}
	want := []Function{
		{BDF: "0000:00:00.0", Path: filepath.Join(root, "0000:00:00.0"), Vendor: 0x8086, Device: 0x1237, Revision: 2, Class: 0x060000, SubsystemVendor: VendorVirtio, SubsystemDevice: 0x1100},
		{BDF: "0000:00:03.0", Path: filepath.Join(root, "0000:00:03.0"), Vendor: VendorVirtio, Device: DeviceNetModern, Revision: 1, Class: 0x020000, SubsystemVendor: VendorVirtio, SubsystemDevice: 0x1100, Driver: "virtio-pci"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("List (-want +got):\n%s", diff)
	}
	if s := got[1].String(); s != "0000:00:03.0 [1af4:1041] rev 1 class 020000 subsys 1af4:1100 driver virtio-pci" {
		t.Errorf("String = %q", s)
	}
}

func TestLookupErrors(t *testing.T) {
	nic := qemuNIC(t)
	nic.attrOverride = map[string]string{"vendor": "1af4\n"}
	bad := qemuNIC(t)
	bad.bdf = "0000:00:04.0"
	bad.attrOverride = map[string]string{"revision": "0x100\n"}
	root := fakeSysfs(t, nic, bad)
	for _, tc := range []struct{ bdf, errHas string }{
		{"0000:00:03.0", `"1af4" is not 0x-prefixed hex`},
		{"0000:00:04.0", "not a 8-bit hex value"},
		{"0000:00:05.0", "no such file"},
		{"../../etc", "not a PCI address"},
		{"0000:00:03.8", "not a PCI address"},
		{"0000:00:03.0/..", "not a PCI address"},
		{"0000:0G:03.0", "not a PCI address"},
	} {
		if _, err := Lookup(root, tc.bdf); err == nil || !strings.Contains(err.Error(), tc.errHas) {
			t.Errorf("Lookup(%q): err = %v, want %q", tc.bdf, err, tc.errHas)
		}
	}
	if _, err := List(root); err == nil {
		t.Errorf("List with a broken function succeeded")
	}
	if _, err := List(filepath.Join(root, "missing")); err == nil {
		t.Errorf("List of a missing directory succeeded")
	}
}

func TestFindVirtioNet(t *testing.T) {
	modern := qemuNIC(t)
	trans := qemuNIC(t)
	trans.bdf, trans.device, trans.rev, trans.subDevice = "0000:00:04.0", DeviceNetTransitional, 0, 1
	trans.config = loadConfig(t, "qemu-7.2-virtio-net-transitional")
	legacy := trans
	legacy.bdf = "0000:00:05.0"
	legacy.config = append([]byte(nil), trans.config...)
	legacy.config[pciStatus] &^= pciStatusCapList
	short := trans
	short.bdf = "0000:00:06.0"
	short.config = trans.config[:64]
	blk := qemuNIC(t)
	blk.bdf, blk.device = "0000:00:07.0", 0x1042

	root := fakeSysfs(t, modern, trans, legacy, short, blk)
	got, err := FindVirtioNet(root)
	if err != nil {
		t.Fatal(err)
	}
	var bdfs []string
	for _, f := range got {
		bdfs = append(bdfs, f.BDF)
	}
	if diff := cmp.Diff([]string{"0000:00:03.0", "0000:00:04.0"}, bdfs); diff != "" {
		t.Errorf("found (-want +got):\n%s", diff)
	}

	_, err = FindVirtioNet(fakeSysfs(t, legacy, short, blk))
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	for _, s := range []string{"0000:00:05.0 (transitional): virtio: not supported: legacy virtio", "0000:00:06.0 (transitional): read only 64 bytes", "need root"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
}

func TestUnbindUnbound(t *testing.T) {
	root := fakeSysfs(t, qemuNIC(t))
	f, err := Lookup(root, "0000:00:03.0")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Unbind(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(f.Path, "driver_override")); string(b) != "none" {
		t.Errorf("driver_override = %q, want none", b)
	}
}

func TestUnbindStillBound(t *testing.T) {
	nic := qemuNIC(t)
	nic.driver = "virtio-pci"
	root := fakeSysfs(t, nic)
	f, err := Lookup(root, "0000:00:03.0")
	if err != nil {
		t.Fatal(err)
	}
	// A plain file does not make the kernel drop the link: Unbind must
	// notice.
	err = f.Unbind()
	if err == nil || !strings.Contains(err.Error(), `still bound to "virtio-pci"`) {
		t.Fatalf("err = %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(f.Path, "driver", "unbind")); string(b) != "0000:00:03.0" {
		t.Errorf("unbind got %q", b)
	}
}

func TestOpenRefusesBoundDevice(t *testing.T) {
	nic := qemuNIC(t)
	nic.driver = "virtio-pci"
	f, err := Lookup(fakeSysfs(t, nic), "0000:00:03.0")
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(f)
	if !errors.Is(err, ErrDriverBound) && !errors.Is(err, virtio.ErrNotSupported) {
		t.Fatalf("err = %v, want ErrDriverBound", err)
	}
}

func TestLookupIOMMUGroup(t *testing.T) {
	plain := qemuNIC(t)
	behind := qemuNIC(t)
	behind.bdf, behind.iommuGroup = "0000:00:04.0", "7"
	root := fakeSysfs(t, plain, behind)
	for _, c := range []struct{ bdf, group string }{{plain.bdf, ""}, {behind.bdf, "7"}} {
		f, err := Lookup(root, c.bdf)
		if err != nil {
			t.Fatal(err)
		}
		if f.IOMMUGroup != c.group {
			t.Errorf("%s: IOMMUGroup %q, want %q", c.bdf, f.IOMMUGroup, c.group)
		}
	}
}
