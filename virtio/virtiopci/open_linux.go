// The real transport is built for amd64 only: its register accesses
// (mmio_amd64.s) rely on x86's store order for the doorbell, and other CPUs
// would need fences this package does not have (open_others.go refuses).

//go:build amd64

package virtiopci

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Open claims fn for user space and returns its transport. It refuses a
// function a kernel driver is bound to (see Function.Unbind), checks that
// configuration space is the device sysfs described, enables memory
// decoding and bus mastering and masks INTx in the command register, walks
// the capabilities, and maps the memory BARs they point into. It needs
// root. Structures placed in I/O BARs are refused: port I/O cannot be
// mapped, and only legacy devices need it.
func Open(fn Function) (*Transport, error) {
	fail := func(op string, err error) (*Transport, error) {
		return nil, &OpError{Op: op, BDF: fn.BDF, Err: err}
	}
	drv, err := boundDriver(fn.Path)
	if err != nil {
		return fail("open", err)
	}
	if drv != "" {
		return fail("open", fmt.Errorf("%w: bound to %q; unbind it first (Function.Unbind) or keep virtio_pci unloaded", ErrDriverBound, drv))
	}
	cfgFile, err := os.OpenFile(filepath.Join(fn.Path, "config"), os.O_RDWR, 0)
	if err != nil {
		return fail("open config space", err)
	}
	defer cfgFile.Close()
	cfg := make([]byte, pciStdConfigLen)
	n, err := cfgFile.ReadAt(cfg, 0)
	if n < pciStdConfigLen {
		return fail("read config space", fmt.Errorf("read %d of %d bytes (%v); capabilities need root", n, pciStdConfigLen, err))
	}
	if v, d := binary.LittleEndian.Uint16(cfg[pciVendorID:]), binary.LittleEndian.Uint16(cfg[pciDeviceID:]); v != fn.Vendor || d != fn.Device {
		return fail("open", fmt.Errorf("config space says %04x:%04x, sysfs said %04x:%04x", v, d, fn.Vendor, fn.Device))
	}
	caps, err := ParseCaps(cfg)
	if err != nil {
		return fail("parse capabilities", err)
	}
	res, err := os.ReadFile(filepath.Join(fn.Path, "resource"))
	if err != nil {
		return fail("read BARs", err)
	}
	bars, err := parseResources(res)
	if err != nil {
		return fail("read BARs", err)
	}
	if err := enableCommand(cfgFile); err != nil {
		return fail("enable memory and bus mastering", err)
	}

	// Pick the first structure of each type that lies in a memory BAR.
	var used []Cap
	for _, ct := range []CfgType{CfgCommon, CfgNotify, CfgISR, CfgDevice} {
		c, ok := caps.First(ct, func(c Cap) bool { return bars[c.Bar].isMem() })
		if !ok {
			if ct == CfgDevice {
				continue // optional, spec 4.1.4.6
			}
			other, _ := caps.First(ct, nil)
			return fail("open", fmt.Errorf("%w: the %s structure is in BAR%d, which is %s; only memory BARs can be mapped",
				ErrBadCaps, ct, other.Bar, bars[other.Bar].kind()))
		}
		if end := uint64(c.Offset) + uint64(c.Length); end > bars[c.Bar].Size() {
			return fail("open", fmt.Errorf("%w: %v ends at %#x, past the end of BAR%d (%#x bytes)", ErrBadCaps, c, end, c.Bar, bars[c.Bar].Size()))
		}
		used = append(used, c)
	}

	var mappings [][]byte // as returned by mmap, for munmap
	barMem := map[uint8][]byte{}
	unmap := func() error {
		var errs []error
		for _, m := range mappings {
			errs = append(errs, unix.Munmap(m))
		}
		mappings = nil
		clear(barMem)
		return errors.Join(errs...)
	}
	wins := make([]*window, len(used))
	for i, c := range used {
		bar, ok := barMem[c.Bar]
		if !ok {
			m, lead, err := mapBAR(fn.Path, c.Bar, bars[c.Bar])
			if err != nil {
				unmap()
				return fail(fmt.Sprintf("map BAR%d", c.Bar), err)
			}
			mappings = append(mappings, m)
			bar = m[lead : lead+bars[c.Bar].Size()]
			barMem[c.Bar] = bar
		}
		wins[i] = &window{mem: bar[c.Offset : c.Offset+c.Length : c.Offset+c.Length]}
	}
	device := &window{}
	if len(wins) == 4 {
		device = wins[3]
	}
	closeAll := func() error {
		for _, w := range wins {
			w.mem = nil
		}
		return unmap()
	}
	t, err := newTransport(fn.BDF, used, wins[0], wins[1], wins[2], device, used[1].NotifyOffMultiplier, closeAll)
	if err != nil {
		closeAll()
		return fail("open", err)
	}
	t.iommu = fn.IOMMUGroup != ""
	return t, nil
}

// enableCommand sets Memory Space, Bus Master and INTx Disable in the
// command register and checks that Memory Space and Bus Master stuck.
func enableCommand(cfg *os.File) error {
	var b [2]byte
	if _, err := cfg.ReadAt(b[:], pciCommand); err != nil {
		return err
	}
	old := binary.LittleEndian.Uint16(b[:])
	want := old | pciCommandMemory | pciCommandBusMaster | pciCommandINTxDisable
	if want != old {
		binary.LittleEndian.PutUint16(b[:], want)
		if _, err := cfg.WriteAt(b[:], pciCommand); err != nil {
			return err
		}
		if _, err := cfg.ReadAt(b[:], pciCommand); err != nil {
			return err
		}
	}
	const need = pciCommandMemory | pciCommandBusMaster
	if got := binary.LittleEndian.Uint16(b[:]); got&need != need {
		return fmt.Errorf("command register reads %#04x after writing %#04x", got, want)
	}
	return nil
}

// mapBAR maps memory BAR i through sysfs "resourceN" (uncached; the "_wc"
// variant would allow write combining, wrong for registers). It returns
// the whole mapping and where the BAR starts in it.
func mapBAR(dir string, i uint8, b barInfo) (m []byte, lead uint64, err error) {
	if !b.isMem() {
		return nil, 0, fmt.Errorf("BAR%d is %s, not memory", i, b.kind())
	}
	f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("resource%d", i)), os.O_RDWR|os.O_SYNC, 0)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	// sysfs maps whole pages starting at the page holding the BAR; BARs
	// are size-aligned, so a BAR smaller than a page still fits in one.
	page := uint64(os.Getpagesize())
	lead = b.Start % page
	length := (lead + b.Size() + page - 1) / page * page
	if length > 1<<40 {
		return nil, 0, fmt.Errorf("BAR%d is %#x bytes: too big to map", i, b.Size())
	}
	m, err = unix.Mmap(int(f.Fd()), 0, int(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, 0, fmt.Errorf("mmap %s (%#x bytes): %w", f.Name(), length, err)
	}
	return m, lead, nil
}
