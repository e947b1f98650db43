package virtqueue

import (
	"fmt"
	"sync/atomic"
	"unsafe"
)

// ringView is typed access to one queue's three areas. The {flags, idx}
// header words and the event-index words are accessed as aligned 32-bit
// atomics: Go has no 16-bit atomics, and the atomic gives both the compiler
// barrier and, on the device-visible side, the ordering spec 2.7.13 asks for.
// Virtio 1.x rings are little-endian; the flags are the low half of the word.
type ringView struct {
	size      uint16
	desc      []Desc
	availHdr  *uint32 // avail.flags | avail.idx<<16
	availRing []uint16
	usedEvent *uint32 // avail.used_event (low half) + padding
	usedHdr   *uint32 // used.flags | used.idx<<16
	usedRing  []UsedElem
	availEvnt *uint32 // used.avail_event (low half) + padding
}

func aligned(b []byte, align uintptr) bool {
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))%align == 0
}

func newView(r Rings) (ringView, error) {
	if err := r.check(); err != nil {
		return ringView{}, err
	}
	// The CPU-side alignment matters for the atomics; it need not match the
	// device address alignment when a segment's virtual and physical
	// addresses differ in their low bits.
	if !aligned(r.Desc.Buf, 8) || !aligned(r.Driver.Buf, 4) || !aligned(r.Device.Buf, 4) {
		return ringView{}, fmt.Errorf("virtqueue: ring memory is not aligned in the CPU's address space")
	}
	n := int(r.Size)
	// Safe: check() verified each buffer is at least as long as the area,
	// the pointers are aligned for their types (above), and the DMA blocks
	// outlive the queue (allocators never free).
	return ringView{
		size:      r.Size,
		desc:      unsafe.Slice((*Desc)(unsafe.Pointer(&r.Desc.Buf[0])), n),
		availHdr:  (*uint32)(unsafe.Pointer(&r.Driver.Buf[0])),
		availRing: unsafe.Slice((*uint16)(unsafe.Pointer(&r.Driver.Buf[4])), n),
		usedEvent: (*uint32)(unsafe.Pointer(&r.Driver.Buf[4+2*n])),
		usedHdr:   (*uint32)(unsafe.Pointer(&r.Device.Buf[0])),
		usedRing:  unsafe.Slice((*UsedElem)(unsafe.Pointer(&r.Device.Buf[4])), n),
		availEvnt: (*uint32)(unsafe.Pointer(&r.Device.Buf[4+8*n])),
	}, nil
}

// DescTable views b as an indirect descriptor table (spec 2.7.5.3). It
// returns nil if b is misaligned or shorter than one descriptor.
func DescTable(b []byte) []Desc {
	if len(b) < 16 || !aligned(b, 8) {
		return nil
	}
	// Safe: b holds at least len(b)/16 whole descriptors and is 8-aligned.
	return unsafe.Slice((*Desc)(unsafe.Pointer(&b[0])), len(b)/16)
}

func load16hi(p *uint32) uint16     { return uint16(atomic.LoadUint32(p) >> 16) }
func load16lo(p *uint32) uint16     { return uint16(atomic.LoadUint32(p)) }
func store16lo(p *uint32, v uint16) { atomic.StoreUint32(p, atomic.LoadUint32(p)&^0xffff|uint32(v)) }
