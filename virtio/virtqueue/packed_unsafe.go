package virtqueue

import (
	"fmt"
	"unsafe"
)

// ringDesc is a PackedDesc as the ring holds it: the {id, flags} pair is one
// 32-bit word (id in the low half, little-endian) so that it can be stored
// and loaded atomically. The word is what each side polls; its atomic store
// publishes the descriptor's address and length, written before it with
// plain stores, and its atomic load orders the reads of them after it
// (spec 2.8.21.1 "Updating flags", 2.8.22).
type ringDesc struct {
	addr uint64
	len  uint32
	// +checkatomic
	word uint32 // id | flags<<16
}

// packedView is typed access to one packed queue's three areas (spec 2.8):
// the descriptor ring and the two event suppression structures, each of
// which is one 32-bit word (off_wrap in the low half, flags in the high).
type packedView struct {
	size     uint16
	ring     []ringDesc
	drvEvent *uint32 // driver event suppression: off_wrap | flags<<16
	devEvent *uint32 // device event suppression: off_wrap | flags<<16
}

func newPackedView(r Rings) (packedView, error) {
	if err := r.checkPacked(); err != nil {
		return packedView{}, err
	}
	// The CPU-side alignment is what the atomics need (see newView).
	if !aligned(r.Desc.Buf, 8) || !aligned(r.Driver.Buf, 4) || !aligned(r.Device.Buf, 4) {
		return packedView{}, fmt.Errorf("virtqueue: packed ring memory is not aligned in the CPU's address space")
	}
	// Safe: checkPacked verified each buffer holds its whole area, the
	// pointers are aligned for their types (above: ringDesc needs 8, the
	// event words 4), ringDesc is PackedDesc's layout (size check below)
	// and the DMA blocks outlive the queue (allocators never free).
	return packedView{
		size:     r.Size,
		ring:     unsafe.Slice((*ringDesc)(unsafe.Pointer(&r.Desc.Buf[0])), int(r.Size)),
		drvEvent: (*uint32)(unsafe.Pointer(&r.Driver.Buf[0])),
		devEvent: (*uint32)(unsafe.Pointer(&r.Device.Buf[0])),
	}, nil
}

// PackedDescTable views b as a packed indirect descriptor table (spec
// 2.8.7). It returns nil if b is misaligned or shorter than one descriptor.
func PackedDescTable(b []byte) []PackedDesc {
	if len(b) < 16 || !aligned(b, 8) {
		return nil
	}
	// Safe: b holds at least len(b)/16 whole descriptors and is 8-aligned.
	return unsafe.Slice((*PackedDesc)(unsafe.Pointer(&b[0])), len(b)/16)
}

// The ring and table views rely on these layouts.
var (
	_ [16 - unsafe.Sizeof(PackedDesc{})]struct{}
	_ [unsafe.Sizeof(PackedDesc{}) - 16]struct{}
	_ [16 - unsafe.Sizeof(ringDesc{})]struct{}
	_ [unsafe.Sizeof(ringDesc{}) - 16]struct{}
	_ [12 - unsafe.Offsetof(ringDesc{}.word)]struct{}
	_ [unsafe.Offsetof(ringDesc{}.word) - 12]struct{}
)
