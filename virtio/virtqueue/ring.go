package virtqueue

import (
	"fmt"

	"github.com/nke-harness/nke/nke/dma"
)

// Layout is a virtqueue format: split (spec 2.7) or packed (spec 2.8,
// VIRTIO_F_RING_PACKED).
type Layout uint8

const (
	Split Layout = iota
	Packed
)

func (l Layout) String() string {
	switch l {
	case Split:
		return "split"
	case Packed:
		return "packed"
	}
	return fmt.Sprintf("layout(%d)", uint8(l))
}

// Ring is the driver side of one virtqueue, whatever its layout: *Queue
// (split) and *PackedQueue implement it, and a device driver programs
// against it so that everything above the ring works on either.
//
// Buffers are named by an id the ring returns when they are added and the
// device hands back when they are used: for split rings the chain's head
// descriptor index, for packed rings the buffer id written into the
// descriptors. Ids are below Size(); a driver keeps per-buffer state (the
// packet, an indirect table) in slices indexed by id.
//
// A Ring is owned by one goroutine. Everything the device writes is
// validated before use; a violation marks the ring broken (Broken, and Reap
// and the Add methods refuse) until Reset.
type Ring interface {
	// Name is the queue's name in errors, e.g. "rx0".
	Name() string
	// Size is the number of descriptors.
	Size() uint16
	// NumFree is the number of free descriptors: a chain of n segments
	// fits when n <= NumFree(), an indirect chain when NumFree() >= 1.
	NumFree() uint16
	// InFlight is the number of buffers added and not yet reaped.
	InFlight() uint16
	// Broken returns the error that broke the ring, or nil.
	Broken() error

	// PeekID returns the id the next Add1, AddChain or AddIndirect will
	// return, so that per-buffer state (an indirect table) can be filled
	// first. It reports false when the ring is full or broken.
	PeekID() (uint16, bool)
	// Add1 adds a one-descriptor buffer. It reports false when the ring
	// is full or broken. Buffers become visible to the device at Publish.
	Add1(addr uint64, n uint32, writable bool) (uint16, bool)
	// AddChain adds segs as one buffer of len(segs) descriptors. It
	// reports false when fewer descriptors are free, segs is empty, a
	// readable segment follows a writable one (spec 2.7.4.2), or the ring
	// is broken.
	AddChain(segs []Seg) (uint16, bool)
	// AddIndirect adds segs as one buffer through an indirect descriptor
	// table in table (spec 2.7.5.3 and 2.8.19), taking one ring
	// descriptor. Only valid when VIRTIO_F_INDIRECT_DESC was negotiated.
	// It reports false, as AddChain does, and also when table cannot hold
	// len(segs) descriptors or is not 16-byte aligned. table must stay
	// untouched until the buffer is reaped.
	AddIndirect(table dma.Block, segs []Seg) (uint16, bool)
	// Publish makes every buffer added since the last Publish visible to
	// the device, with the ordering the layout requires.
	Publish()
	// NeedsKick reports whether the device asked to be notified about
	// the buffers published since the last call (spec 2.7.10, 2.8.10). It
	// must follow Publish.
	NeedsKick() bool

	// HasUsed reports whether the device has marked a buffer used that
	// Reap has not consumed. It does not validate anything.
	HasUsed() bool
	// Reap consumes up to len(out) used buffers, validating each, frees
	// their descriptors and returns how many it stored in out. A device
	// that breaks the contract gets a *DeviceError and the ring stays
	// broken until Reset.
	Reap(out []Used) (int, error)

	// InFlightIDs calls fn with the id of each buffer in flight, for the
	// caller to reclaim its memory before Reset.
	InFlightIDs(fn func(id uint16))
	// Reset forgets every buffer in flight and rezeroes the ring memory,
	// as after a device reset. The caller must have reclaimed the buffers
	// in flight and must set the queue up on the device again.
	Reset()
}

// DeviceRing is the device side of one virtqueue, for in-process device
// models: *DeviceQueue (split) and *PackedDeviceQueue implement it. Like a
// real device it validates every buffer the driver offers.
type DeviceRing interface {
	// HasAvail reports whether the driver has published a buffer the
	// device has not popped.
	HasAvail() bool
	// Pop takes the next available buffer into c. It reports false when
	// none is available and an error wrapping ErrBadChain for a buffer
	// the device must refuse.
	Pop(c *Chain) (bool, error)
	// Unpop gives back the last k popped buffers, as QEMU's
	// virtqueue_unpop does when a packet does not fit; k is at most 64.
	Unpop(k int)
	// Push records buffer id as used with written bytes. It becomes
	// visible to the driver at the next PublishUsed.
	Push(id uint16, written uint32)
	// PushRaw writes any used element, valid or not: fault injection.
	PushRaw(id, written uint32)
	// PublishUsed makes pushed elements visible to the driver.
	PublishUsed()
	// JumpUsed makes the driver see delta more used buffers than the
	// device completed: fault injection.
	JumpUsed(delta uint16)
	// SetNotify tells the driver whether the device wants kicks
	// (spec 2.7.10, 2.8.10).
	SetNotify(on bool)
}

var (
	_ Ring       = (*Queue)(nil)
	_ DeviceRing = (*DeviceQueue)(nil)
)
