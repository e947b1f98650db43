package virtiopci

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/nke-harness/nke/virtio"
)

// PCI configuration header offsets and bits (PCI Local Bus 3.0, 6.1 and 6.7).
const (
	pciVendorID     = 0x00
	pciDeviceID     = 0x02
	pciCommand      = 0x04
	pciStatus       = 0x06
	pciHeaderType   = 0x0e
	pciCapPtr       = 0x34
	pciHeaderLen    = 0x40  // standard header; capabilities follow it
	pciStdConfigLen = 0x100 // capabilities live in the first 256 bytes

	pciStatusCapList = 1 << 4
	pciCapIDVendor   = 0x09

	// Command register bits we set: we map memory BARs, the device does
	// DMA, and we poll so INTx is masked.
	pciCommandMemory      = 1 << 1
	pciCommandBusMaster   = 1 << 2
	pciCommandINTxDisable = 1 << 10
)

// CfgType is a virtio structure capability's cfg_type, spec 4.1.4.
type CfgType uint8

// The cfg_type values this transport knows, spec 4.1.4.
const (
	CfgCommon CfgType = 1
	CfgNotify CfgType = 2
	CfgISR    CfgType = 3
	CfgDevice CfgType = 4
	CfgPCI    CfgType = 5
)

func (t CfgType) String() string {
	switch t {
	case CfgCommon:
		return "common"
	case CfgNotify:
		return "notify"
	case CfgISR:
		return "isr"
	case CfgDevice:
		return "device"
	case CfgPCI:
		return "pci-cfg"
	}
	return fmt.Sprintf("cfg_type %d", uint8(t))
}

// Layout sizes of the virtio capability structures, spec 4.1.4.
const (
	capLen       = 16 // struct virtio_pci_cap
	notifyCapLen = 20 // struct virtio_pci_notify_cap: cap + le32 notify_off_multiplier
	pciCfgCapLen = 20 // struct virtio_pci_cfg_cap: cap + u8 pci_cfg_data[4]
)

// Cap is one virtio structure capability: spec 4.1.4 struct virtio_pci_cap,
// plus notify_off_multiplier for notify capabilities (4.1.4.4).
type Cap struct {
	Pos    uint8 // where the capability sits in configuration space
	Type   CfgType
	Bar    uint8
	ID     uint8
	Offset uint32 // within the BAR
	Length uint32
	// NotifyOffMultiplier is set for CfgNotify only.
	NotifyOffMultiplier uint32
}

func (c Cap) String() string {
	if c.Type == CfgPCI {
		return fmt.Sprintf("%s@%#02x", c.Type, c.Pos) // its fields are a driver-written window
	}
	s := fmt.Sprintf("%s@%#02x BAR%d+%#x len %#x", c.Type, c.Pos, c.Bar, c.Offset, c.Length)
	if c.Type == CfgNotify {
		s += fmt.Sprintf(" mult %d", c.NotifyOffMultiplier)
	}
	return s
}

// Caps is the result of walking a function's capability list: every
// usable virtio structure capability in list order (the device's order of
// preference, spec 4.1.4), and why others were ignored.
type Caps struct {
	All []Cap
	// Ignored lists capabilities skipped as the spec requires (reserved
	// BAR, structure too short, ...), for error messages.
	Ignored []string
}

// First returns the first capability of type t for which usable reports
// true (nil accepts all), following the spec's "use the first instance of
// each structure type the driver can support".
func (cs *Caps) First(t CfgType, usable func(Cap) bool) (Cap, bool) {
	for _, c := range cs.All {
		if c.Type == t && (usable == nil || usable(c)) {
			return c, true
		}
	}
	return Cap{}, false
}

// Errors from capability parsing.
var (
	// ErrBadCaps reports a capability list that is malformed or lacks a
	// structure the driver needs.
	ErrBadCaps = errors.New("virtiopci: invalid virtio capabilities")
	// ErrLegacy reports a device with no modern (virtio 1.x) interface.
	// It wraps virtio.ErrNotSupported.
	ErrLegacy = fmt.Errorf("%w: legacy virtio (no VIRTIO_F_VERSION_1 / modern capabilities) is not supported; "+
		"give QEMU disable-legacy=on (or leave disable-modern=off)", virtio.ErrNotSupported)
)

// Minimum structure lengths, spec 4.1.4.3-4.1.4.5.
const (
	// commonLen10 is struct virtio_pci_common_cfg up to queue_device, the
	// virtio 1.0 layout: everything this transport touches.
	commonLen10 = 0x38
	// commonLen12 adds queue_notify_data and queue_reset (virtio 1.2).
	commonLen12  = 0x3c
	notifyMinLen = 2 // one 16-bit doorbell
	isrMinLen    = 1
)

// ParseCaps walks the capability list in cfg (a function's configuration
// space as read from sysfs) and returns its virtio structure capabilities.
//
// A broken list (pointer into the header or past the end, a loop, a
// capability running past the end) is an error wrapping ErrBadCaps. A
// virtio capability the spec tells drivers to ignore (reserved cfg_type or
// BAR) is skipped, as is one that is unusable (too short, misaligned,
// offset+length overflowing 32 bits); the walk then fails only if no usable
// common, notify and ISR structure remains. A function without any modern
// capability is an error wrapping ErrLegacy.
func ParseCaps(cfg []byte) (*Caps, error) {
	if len(cfg) < pciHeaderLen {
		return nil, fmt.Errorf("%w: configuration space is %d bytes, need at least %d", ErrBadCaps, len(cfg), pciHeaderLen)
	}
	if ht := cfg[pciHeaderType] & 0x7f; ht != 0 {
		return nil, fmt.Errorf("%w: header type %d, want 0 (a normal function, not a bridge)", ErrBadCaps, ht)
	}
	if binary.LittleEndian.Uint16(cfg[pciStatus:])&pciStatusCapList == 0 {
		return nil, ErrLegacy
	}
	limit := min(len(cfg), pciStdConfigLen)
	cs := &Caps{}
	var seen [pciStdConfigLen]bool
	virtioCaps := 0
	// The low two bits of every pointer are reserved (PCI 3.0, 6.7).
	for pos := int(cfg[pciCapPtr] &^ 3); pos != 0; {
		if pos < pciHeaderLen || pos+2 > limit {
			return nil, fmt.Errorf("%w: capability pointer %#x outside %#x..%#x", ErrBadCaps, pos, pciHeaderLen, limit-2)
		}
		if seen[pos] {
			return nil, fmt.Errorf("%w: capability list loops back to %#x", ErrBadCaps, pos)
		}
		seen[pos] = true
		id, next := cfg[pos], int(cfg[pos+1]&^3)
		if id == pciCapIDVendor {
			virtioCaps++
			if err := cs.parseVendor(cfg[:limit], pos); err != nil {
				return nil, err
			}
		}
		pos = next
	}
	if virtioCaps == 0 {
		return nil, ErrLegacy
	}
	var missing []string
	for _, t := range []CfgType{CfgCommon, CfgNotify, CfgISR} {
		if _, ok := cs.First(t, nil); !ok {
			missing = append(missing, t.String())
		}
	}
	if missing != nil {
		why := ""
		if cs.Ignored != nil {
			why = " (ignored: " + strings.Join(cs.Ignored, "; ") + ")"
		}
		return nil, fmt.Errorf("%w: no usable %s capability%s", ErrBadCaps, strings.Join(missing, ", "), why)
	}
	return cs, nil
}

// parseVendor decodes the vendor-specific capability at pos. Only a
// capability that overruns configuration space is fatal; anything else
// wrong makes it ignored.
func (cs *Caps) parseVendor(cfg []byte, pos int) error {
	if pos+3 > len(cfg) {
		return fmt.Errorf("%w: capability at %#x truncated", ErrBadCaps, pos)
	}
	clen := int(cfg[pos+2])
	if pos+clen > len(cfg) {
		return fmt.Errorf("%w: capability at %#x has cap_len %d, past the end of configuration space (%#x)", ErrBadCaps, pos, clen, len(cfg))
	}
	ignore := func(format string, args ...any) error {
		cs.Ignored = append(cs.Ignored, fmt.Sprintf("cap at %#x: ", pos)+fmt.Sprintf(format, args...))
		return nil
	}
	if clen < capLen {
		return ignore("cap_len %d shorter than struct virtio_pci_cap (%d)", clen, capLen)
	}
	c := Cap{
		Pos:    uint8(pos),
		Type:   CfgType(cfg[pos+3]),
		Bar:    cfg[pos+4],
		ID:     cfg[pos+5],
		Offset: binary.LittleEndian.Uint32(cfg[pos+8:]),
		Length: binary.LittleEndian.Uint32(cfg[pos+12:]),
	}
	switch c.Type {
	case CfgCommon, CfgNotify, CfgISR, CfgDevice:
	case CfgPCI:
		// Its bar/offset/length are a window the driver writes, not a
		// location: nothing to validate but its size.
		if clen < pciCfgCapLen {
			return ignore("pci-cfg cap_len %d < %d", clen, pciCfgCapLen)
		}
		cs.All = append(cs.All, c)
		return nil
	default:
		return nil // shared memory, vendor data, reserved: not ours
	}
	if c.Bar > 5 {
		return ignore("%s names reserved BAR %d", c.Type, c.Bar)
	}
	if uint64(c.Offset)+uint64(c.Length) > 1<<32 {
		return ignore("%s offset %#x + length %#x overflows 32 bits", c.Type, c.Offset, c.Length)
	}
	var minLen uint32
	var align uint32 = 1
	switch c.Type {
	case CfgCommon:
		minLen, align = commonLen10, 4
	case CfgNotify:
		if clen < notifyCapLen {
			return ignore("notify cap_len %d < %d (no notify_off_multiplier)", clen, notifyCapLen)
		}
		c.NotifyOffMultiplier = binary.LittleEndian.Uint32(cfg[pos+capLen:])
		if m := c.NotifyOffMultiplier; m&(m-1) != 0 || m == 1 {
			return ignore("notify_off_multiplier %d is neither 0 nor an even power of 2", m)
		}
		minLen, align = notifyMinLen, 2
	case CfgISR:
		minLen = isrMinLen
	case CfgDevice:
		align = 4
	}
	if c.Length < minLen {
		return ignore("%s length %#x below the %#x the structure needs", c.Type, c.Length, minLen)
	}
	if c.Offset%align != 0 {
		return ignore("%s offset %#x not %d-byte aligned", c.Type, c.Offset, align)
	}
	cs.All = append(cs.All, c)
	return nil
}
