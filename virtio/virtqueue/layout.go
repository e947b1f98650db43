// Package virtqueue implements the driver side of virtio split (virtio 1.2,
// section 2.7) and packed (section 2.8) virtqueues over DMA memory, and the
// device side a device model needs for the other end.
//
// A Queue or PackedQueue is owned by one goroutine. The device is another agent writing the
// same memory: every value it writes (used indices, ids, lengths, event
// indices) is validated before use, and a violation marks the queue broken
// until the device is reset.
package virtqueue

import (
	"fmt"

	"github.com/nke-harness/nke/nke/dma"
)

// Desc is one descriptor-table entry, spec 2.7.5 "The Virtqueue Descriptor
// Table". 16 bytes, little-endian.
type Desc struct {
	Addr  uint64
	Len   uint32
	Flags uint16
	Next  uint16
}

// Descriptor flags, spec 2.7.5.
const (
	DescFNext     uint16 = 1
	DescFWrite    uint16 = 2
	DescFIndirect uint16 = 4
)

// UsedElem is one used-ring entry, spec 2.7.8 "The Virtqueue Used Ring".
type UsedElem struct {
	ID  uint32
	Len uint32
}

// Ring flags, spec 2.7.7 and 2.7.8.
const (
	// AvailFNoInterrupt asks the device not to interrupt (without EVENT_IDX).
	AvailFNoInterrupt uint16 = 1
	// UsedFNoNotify tells the driver not to kick (without EVENT_IDX).
	UsedFNoNotify uint16 = 1
)

// MaxSize is the largest split queue size, spec 2.7: "Queue Size ... maximum
// 32768".
const MaxSize = 32768

// Area sizes and alignments, spec 2.7 table "Virtqueue Part Alignment/Size".
// The avail and used areas are padded by two bytes so that the trailing
// 16-bit event index can be read and written as an aligned 32-bit word.
const (
	DescAlign  = 16
	AvailAlign = 4 // spec requires 2; 4 keeps the {flags, idx} word aligned
	UsedAlign  = 4
)

// DescTableSize is the descriptor table size for n descriptors.
func DescTableSize(n int) int { return 16 * n }

// AvailSize is the driver area size for a queue of n: flags, idx, ring[n],
// used_event, plus two bytes of padding.
func AvailSize(n int) int { return 6 + 2*n + 2 }

// UsedSize is the device area size for a queue of n: flags, idx, ring[n],
// avail_event, plus two bytes of padding.
func UsedSize(n int) int { return 6 + 8*n + 2 }

// Rings is the memory of one virtqueue, split or packed: the descriptor
// area, the driver area (split: the available ring; packed: the driver event
// suppression structure) and the device area (split: the used ring; packed:
// the device event suppression structure), spec 2.6 "Virtqueues".
type Rings struct {
	Layout Layout
	Size   uint16
	Desc   dma.Block
	Driver dma.Block
	Device dma.Block
}

// AllocRings allocates zeroed split rings for a queue of size entries.
func AllocRings(a dma.Allocator, size uint16) (Rings, error) {
	if err := CheckSize(size); err != nil {
		return Rings{}, err
	}
	n := int(size)
	var r Rings
	var err error
	r.Layout, r.Size = Split, size
	if r.Desc, err = a.Alloc(DescTableSize(n), DescAlign); err != nil {
		return Rings{}, fmt.Errorf("virtqueue: descriptor table for %d: %w", n, err)
	}
	if r.Driver, err = a.Alloc(AvailSize(n), AvailAlign); err != nil {
		return Rings{}, fmt.Errorf("virtqueue: avail ring for %d: %w", n, err)
	}
	if r.Device, err = a.Alloc(UsedSize(n), UsedAlign); err != nil {
		return Rings{}, fmt.Errorf("virtqueue: used ring for %d: %w", n, err)
	}
	return r, nil
}

// CheckSize reports whether size is a valid split queue size: a power of two
// from 2 to MaxSize. (Size 1 is legal in the spec but useless for bursts.)
func CheckSize(size uint16) error {
	if size < 2 || size&(size-1) != 0 {
		return fmt.Errorf("virtqueue: size %d is not a power of two >= 2", size)
	}
	return nil
}

func (r Rings) check() error {
	if r.Layout != Split {
		return fmt.Errorf("virtqueue: %v rings where split rings are needed", r.Layout)
	}
	if err := CheckSize(r.Size); err != nil {
		return err
	}
	n := int(r.Size)
	switch {
	case len(r.Desc.Buf) < DescTableSize(n) || r.Desc.Addr%DescAlign != 0:
		return fmt.Errorf("virtqueue: descriptor table too small or misaligned for %d", n)
	case len(r.Driver.Buf) < AvailSize(n) || r.Driver.Addr%AvailAlign != 0:
		return fmt.Errorf("virtqueue: avail ring too small or misaligned for %d", n)
	case len(r.Device.Buf) < UsedSize(n) || r.Device.Addr%UsedAlign != 0:
		return fmt.Errorf("virtqueue: used ring too small or misaligned for %d", n)
	}
	return nil
}
