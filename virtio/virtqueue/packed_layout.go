package virtqueue

import (
	"fmt"

	"github.com/nke-harness/nke/nke/dma"
)

// PackedDesc is one packed-ring descriptor, spec 2.8.13 "The Virtqueue
// Descriptor Format" (struct pvirtq_desc): 16 bytes, little-endian. In the
// ring, ID and Flags form one aligned 32-bit word that both sides access
// atomically; indirect tables (spec 2.8.7) use the same layout.
type PackedDesc struct {
	Addr  uint64
	Len   uint32
	ID    uint16
	Flags uint16
}

// Packed descriptor flags, spec 2.8.3, 2.8.6, 2.8.7 and 2.8.1. NEXT, WRITE
// and INDIRECT have the split values (DescFNext, DescFWrite, DescFIndirect).
const (
	// PackedDescFAvail is set to the driver's wrap counter when it makes a
	// descriptor available.
	PackedDescFAvail uint16 = 1 << 7
	// PackedDescFUsed is set to the inverse of the driver's wrap counter
	// in an available descriptor and to the device's in a used one.
	PackedDescFUsed uint16 = 1 << 15
)

// Event suppression flags, spec 2.8.10 (desc_event_flags). The driver area
// (driver event suppression) controls used-buffer notifications, the device
// area (device event suppression) available-buffer notifications (kicks).
const (
	EventEnable  uint16 = 0 // notify for every event
	EventDisable uint16 = 1 // never notify
	EventDesc    uint16 = 2 // notify at desc_event_off/wrap; only with EVENT_IDX
)

// EventWrapBit is the wrap-counter bit of desc_event_off_wrap, spec 2.8.14:
// the low 15 bits are a ring offset.
const EventWrapBit = 1 << 15

// Packed ring part sizes and alignments, spec 2.8.10.1 "Structure Size and
// Alignment": the descriptor ring is 16*N bytes aligned to 16 (DescAlign,
// DescTableSize); each event suppression structure (struct
// pvirtq_event_suppress, spec 2.8.14: le16 desc_event_off_wrap, le16
// desc_event_flags) is 4 bytes aligned to 4, which is exactly one aligned
// 32-bit word, so both halves are read and written in one atomic access.
const (
	EventSuppressSize  = 4
	EventSuppressAlign = 4
)

// AllocPackedRings allocates zeroed packed rings for a queue of size
// descriptors: Desc is the descriptor ring, Driver the driver event
// suppression structure and Device the device event suppression structure.
// Any size from 2 to MaxSize works (CheckPackedSize).
func AllocPackedRings(a dma.Allocator, size uint16) (Rings, error) {
	if err := CheckPackedSize(size); err != nil {
		return Rings{}, err
	}
	n := int(size)
	var r Rings
	var err error
	r.Layout, r.Size = Packed, size
	if r.Desc, err = a.Alloc(DescTableSize(n), DescAlign); err != nil {
		return Rings{}, fmt.Errorf("virtqueue: packed descriptor ring for %d: %w", n, err)
	}
	if r.Driver, err = a.Alloc(EventSuppressSize, EventSuppressAlign); err != nil {
		return Rings{}, fmt.Errorf("virtqueue: driver event suppression: %w", err)
	}
	if r.Device, err = a.Alloc(EventSuppressSize, EventSuppressAlign); err != nil {
		return Rings{}, fmt.Errorf("virtqueue: device event suppression: %w", err)
	}
	return r, nil
}

// CheckPackedSize reports whether size is a valid packed queue size. Spec
// 2.8: up to 2^15 descriptors, and unlike split rings the size need not be a
// power of two. Size 1 is legal but useless for bursts, as for split rings.
func CheckPackedSize(size uint16) error {
	if size < 2 || size > MaxSize {
		return fmt.Errorf("virtqueue: packed size %d is not within 2..%d", size, MaxSize)
	}
	return nil
}

// AreaSizes returns the sizes of a queue's descriptor, driver and device
// areas for layout l and n descriptors, for a device model that maps the
// areas the driver programmed.
func AreaSizes(l Layout, n int) (desc, driver, device int) {
	if l == Packed {
		return DescTableSize(n), EventSuppressSize, EventSuppressSize
	}
	return DescTableSize(n), AvailSize(n), UsedSize(n)
}

func (r Rings) checkPacked() error {
	if r.Layout != Packed {
		return fmt.Errorf("virtqueue: %v rings where packed rings are needed", r.Layout)
	}
	if err := CheckPackedSize(r.Size); err != nil {
		return err
	}
	n := int(r.Size)
	switch {
	case len(r.Desc.Buf) < DescTableSize(n) || r.Desc.Addr%DescAlign != 0:
		return fmt.Errorf("virtqueue: packed descriptor ring too small or misaligned for %d", n)
	case len(r.Driver.Buf) < EventSuppressSize || r.Driver.Addr%EventSuppressAlign != 0:
		return fmt.Errorf("virtqueue: driver event suppression too small or misaligned")
	case len(r.Device.Buf) < EventSuppressSize || r.Device.Addr%EventSuppressAlign != 0:
		return fmt.Errorf("virtqueue: device event suppression too small or misaligned")
	}
	return nil
}

// availBits are the AVAIL/USED bits of a descriptor the driver makes
// available in a lap whose wrap counter is wrap (spec 2.8.1): AVAIL equal to
// the counter, USED its inverse.
func availBits(wrap bool) uint16 {
	if wrap {
		return PackedDescFAvail
	}
	return PackedDescFUsed
}

// usedBits are the AVAIL/USED bits of a descriptor the device marks used in
// a lap whose wrap counter is wrap: both equal to the counter.
func usedBits(wrap bool) uint16 {
	if wrap {
		return PackedDescFAvail | PackedDescFUsed
	}
	return 0
}

func isAvail(flags uint16, wrap bool) bool {
	return flags&(PackedDescFAvail|PackedDescFUsed) == availBits(wrap)
}

func isUsed(flags uint16, wrap bool) bool {
	return flags&(PackedDescFAvail|PackedDescFUsed) == usedBits(wrap)
}

// advance moves a ring position n descriptors on (n <= size), toggling the
// wrap counter when it passes the end of the ring.
func advance(pos uint16, wrap bool, n, size uint16) (uint16, bool) {
	p := uint32(pos) + uint32(n)
	if p >= uint32(size) {
		p -= uint32(size)
		wrap = !wrap
	}
	return uint16(p), wrap
}

// offWrap encodes a ring position and wrap counter as desc_event_off_wrap.
func offWrap(pos uint16, wrap bool) uint16 {
	if wrap {
		return pos | EventWrapBit
	}
	return pos
}

// needEvent is vring_need_event for packed rings (spec 2.8.10; Linux
// virtqueue_kick_prepare_packed, QEMU vring_packed_need_event): it reports
// whether the descriptor that event (desc_event_off_wrap) names is among
// the n descriptors that end just before position pos of the lap with wrap
// counter wrap. An event whose wrap counter differs from wrap lies in the
// previous lap, so it is moved one ring size back before the usual
// free-running comparison. A window of a whole ring or more always matches.
func needEvent(event uint16, pos uint16, wrap bool, n uint32, size uint16) bool {
	if n >= uint32(size) {
		return true
	}
	ev := event &^ EventWrapBit
	if (event&EventWrapBit != 0) != wrap {
		ev -= size
	}
	return pos-ev-1 < uint16(n)
}
