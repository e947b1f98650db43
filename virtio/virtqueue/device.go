package virtqueue

import (
	"errors"
	"fmt"
	"sync/atomic"
)

// Translator maps device addresses to memory, as a device's DMA engine does.
// dma.Heap implements it.
type Translator interface {
	Slice(addr uint64, n int) ([]byte, bool)
}

// ErrBadChain reports a descriptor chain a device must refuse.
var ErrBadChain = errors.New("virtqueue: malformed descriptor chain")

// Chain is one chain a device popped: the driver's buffers, translated.
// Its slices are reused by the next Pop into the same Chain.
type Chain struct {
	ID    uint16   // the buffer id to Push (split: the head descriptor)
	Read  [][]byte // device-readable buffers, in order
	Write [][]byte // device-writable buffers, in order
}

// WritableLen is the total size of the writable buffers.
func (c *Chain) WritableLen() int {
	n := 0
	for _, b := range c.Write {
		n += len(b)
	}
	return n
}

// DeviceQueue is the device side of a split virtqueue over the same memory a
// Queue drives. It exists for in-process device models: tests, fuzzing and
// benchmarks of the driver without a hypervisor. Like a real device it
// validates every chain the driver offers.
type DeviceQueue struct {
	v         ringView
	mask      uint16
	eventIdx  bool
	indirect  bool
	mem       Translator
	lastAvail uint16 // next avail entry to consume
	usedIdx   uint16 // next used.idx to publish
}

// NewDevice returns the device side of a queue over r. eventIdx and indirect
// say which features were negotiated.
func NewDevice(r Rings, mem Translator, eventIdx, indirect bool) (*DeviceQueue, error) {
	v, err := newView(r)
	if err != nil {
		return nil, err
	}
	return &DeviceQueue{v: v, mask: r.Size - 1, eventIdx: eventIdx, indirect: indirect, mem: mem}, nil
}

// Avail reports how many chains the driver has published and the device has
// not popped. A driver index more than a queue size ahead is a driver bug;
// it is reported as-is for the caller to judge.
func (d *DeviceQueue) Avail() uint16 { return load16hi(d.v.availHdr) - d.lastAvail }

// HasAvail reports whether the driver published a chain not popped yet.
func (d *DeviceQueue) HasAvail() bool { return d.Avail() != 0 }

// Pop takes the next available chain into c. It reports false when none is
// available.
func (d *DeviceQueue) Pop(c *Chain) (bool, error) {
	if d.Avail() == 0 {
		return false, nil
	}
	head := d.v.availRing[d.lastAvail&d.mask]
	d.lastAvail++
	return d.walk(head, c)
}

func (d *DeviceQueue) walk(head uint16, c *Chain) (bool, error) {
	c.ID = head
	c.Read, c.Write = c.Read[:0], c.Write[:0]
	if head >= d.v.size {
		return false, fmt.Errorf("%w: head %d >= size %d", ErrBadChain, head, d.v.size)
	}
	table, id, limit := d.v.desc, head, int(d.v.size)
	for n := 0; ; n++ {
		if n >= limit {
			return false, fmt.Errorf("%w: chain from %d loops", ErrBadChain, head)
		}
		desc := table[id]
		if desc.Flags&DescFIndirect != 0 {
			if !d.indirect || n != 0 || &table[0] != &d.v.desc[0] || desc.Flags&DescFNext != 0 {
				return false, fmt.Errorf("%w: indirect descriptor not allowed here", ErrBadChain)
			}
			if desc.Len == 0 || desc.Len%16 != 0 {
				return false, fmt.Errorf("%w: indirect table length %d", ErrBadChain, desc.Len)
			}
			b, ok := d.mem.Slice(desc.Addr, int(desc.Len))
			if !ok {
				return false, fmt.Errorf("%w: indirect table at %#x outside memory", ErrBadChain, desc.Addr)
			}
			table, id, limit, n = DescTable(b), 0, int(desc.Len/16), -1
			if table == nil {
				return false, fmt.Errorf("%w: indirect table misaligned", ErrBadChain)
			}
			continue
		}
		if desc.Len == 0 {
			// QEMU: "zero sized buffers are not allowed", fatal.
			return false, fmt.Errorf("%w: empty buffer in the chain from %d", ErrBadChain, head)
		}
		b, ok := d.mem.Slice(desc.Addr, int(desc.Len))
		if !ok {
			return false, fmt.Errorf("%w: buffer %#x+%d outside memory", ErrBadChain, desc.Addr, desc.Len)
		}
		if desc.Flags&DescFWrite != 0 {
			c.Write = append(c.Write, b)
		} else {
			if len(c.Write) > 0 {
				return false, fmt.Errorf("%w: readable buffer after a writable one", ErrBadChain)
			}
			c.Read = append(c.Read, b)
		}
		if desc.Flags&DescFNext == 0 {
			return true, nil
		}
		id = desc.Next
		if int(id) >= len(table) {
			return false, fmt.Errorf("%w: next %d out of range", ErrBadChain, id)
		}
	}
}

// Unpop gives back the last k popped chains, as QEMU's virtqueue_unpop does
// when a packet does not fit.
func (d *DeviceQueue) Unpop(k int) { d.lastAvail -= uint16(k) }

// Push records head as used with written bytes. It becomes visible to the
// driver at the next PublishUsed.
func (d *DeviceQueue) Push(head uint16, written uint32) {
	d.PushRaw(uint32(head), written)
}

// PushRaw writes any used element, valid or not: fault injection uses it.
func (d *DeviceQueue) PushRaw(id, written uint32) {
	d.v.usedRing[d.usedIdx&d.mask] = UsedElem{ID: id, Len: written}
	d.usedIdx++
}

// PublishUsed stores used.idx, making pushed elements visible.
func (d *DeviceQueue) PublishUsed() {
	hdr := atomic.LoadUint32(d.v.usedHdr)
	atomic.StoreUint32(d.v.usedHdr, hdr&0xffff|uint32(d.usedIdx)<<16)
}

// SetUsedIdx moves used.idx to any value: fault injection uses it.
func (d *DeviceQueue) SetUsedIdx(idx uint16) {
	d.usedIdx = idx
	d.PublishUsed()
}

// JumpUsed moves used.idx delta entries past what was used.
func (d *DeviceQueue) JumpUsed(delta uint16) { d.SetUsedIdx(d.usedIdx + delta) }

// UsedIdx is the next used index the device will publish.
func (d *DeviceQueue) UsedIdx() uint16 { return d.usedIdx }

// SetNotify tells the driver whether the device wants kicks: with EVENT_IDX
// by moving avail_event to the avail.idx it has seen (kick me for anything
// newer, as QEMU does) or far away, without it through used.flags NO_NOTIFY
// (spec 2.7.10).
func (d *DeviceQueue) SetNotify(on bool) {
	if d.eventIdx {
		ev := load16hi(d.v.availHdr)
		if !on {
			ev += 0x8000
		}
		store16lo(d.v.availEvnt, ev)
		return
	}
	hdr := atomic.LoadUint32(d.v.usedHdr)
	if on {
		hdr &^= uint32(UsedFNoNotify)
	} else {
		hdr |= uint32(UsedFNoNotify)
	}
	atomic.StoreUint32(d.v.usedHdr, hdr)
}

// DriverWantsInterrupt reports whether the driver asked for an interrupt
// after the used entries published since old (spec 2.7.10).
func (d *DeviceQueue) DriverWantsInterrupt(old uint16) bool {
	if d.eventIdx {
		ev := load16lo(d.v.usedEvent)
		return d.usedIdx-ev-1 < d.usedIdx-old
	}
	return load16lo(d.v.availHdr)&AvailFNoInterrupt == 0
}
