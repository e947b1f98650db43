package virtqueue

import (
	"fmt"
	"sync/atomic"
)

var _ DeviceRing = (*PackedDeviceQueue)(nil)

// unpopDepth is how many pops Unpop can take back.
const unpopDepth = 64

// PackedDeviceQueue is the device side of a packed virtqueue (spec 2.8)
// over the same memory a PackedQueue drives, for in-process device models. Like a real
// device it validates every buffer the driver offers. It is not safe for
// concurrent use (a device model holds its own lock), but every access to
// ring memory the driver may write concurrently is atomic or ordered by an
// atomic, so it can run in another goroutine than the driver.
type PackedDeviceQueue struct {
	v        packedView
	size     uint16
	eventIdx bool
	indirect bool
	mem      Translator

	availPos  uint16 // next slot to pop
	availWrap bool   // device's view of the Driver Ring Wrap Counter
	usedPos   uint16 // next slot to write a used descriptor into
	usedWrap  bool   // Device Ring Wrap Counter (spec 2.8.1)
	pubPos    uint16 // usedPos at the last PublishUsed
	pubWrap   bool
	sigDescs  uint32   // used descriptors published since DriverWantsInterrupt
	inUse     uint16   // descriptors popped and not yet pushed
	descs     []uint16 // per id: ring descriptors of the popped buffer (0 = not popped)

	hist  [unpopDepth]popRecord // the last pops, for Unpop
	histN int
	histI int // next hist slot

	pend  []pendingUsed // used descriptors waiting for PublishUsed, in ring order
	npend int
}

type popRecord struct {
	pos   uint16
	wrap  bool
	id    uint16
	descs uint16
}

type pendingUsed struct {
	pos   uint16
	descs uint16
	len   uint32
	word  uint32
}

// NewPackedDevice returns the device side of a packed queue over r.
// eventIdx and indirect say which features were negotiated.
func NewPackedDevice(r Rings, mem Translator, eventIdx, indirect bool) (*PackedDeviceQueue, error) {
	v, err := newPackedView(r)
	if err != nil {
		return nil, err
	}
	return &PackedDeviceQueue{
		v:         v,
		size:      r.Size,
		eventIdx:  eventIdx,
		indirect:  indirect,
		mem:       mem,
		availWrap: true,
		usedWrap:  true,
		pubWrap:   true,
		descs:     make([]uint16, r.Size),
		pend:      make([]pendingUsed, r.Size),
	}, nil
}

// HasAvail reports whether the descriptor at the device's avail position is
// available for the current wrap counter (spec 2.8.1, 2.8.15).
func (d *PackedDeviceQueue) HasAvail() bool {
	w := atomic.LoadUint32(&d.v.ring[d.availPos].word)
	return isAvail(uint16(w>>16), d.availWrap)
}

// Pop takes the next available buffer into c. It refuses, with an error
// wrapping ErrBadChain and without moving on:
//   - a chain longer than the slots the device does not hold (a loop or
//     overlap with buffers in flight: spec 2.8.17, a list is at most the
//     queue size, and QEMU's "Virtqueue size exceeded");
//   - a chained descriptor that is not available for its lap's wrap counter
//     (spec 2.8.6: flags must be right in every descriptor of the list);
//   - INDIRECT without VIRTIO_F_INDIRECT_DESC, with NEXT, or after other
//     descriptors (spec 2.8.19), a table whose length is zero, not a multiple
//     of 16 or more than the queue size (spec 2.8.5), or that is misaligned;
//   - a readable buffer after a writable one (spec 2.8.17);
//   - an address range the Translator does not map;
//   - a buffer id (from the last descriptor, spec 2.8.6) at or above the
//     queue size, or already popped and not pushed.
//
// In indirect tables only WRITE counts; other flags and the ids are reserved
// and ignored (spec 2.8.7), and WRITE on the INDIRECT descriptor itself too.
func (d *PackedDeviceQueue) Pop(c *Chain) (bool, error) {
	c.Read, c.Write = c.Read[:0], c.Write[:0]
	pos, wrap := d.availPos, d.availWrap
	w := atomic.LoadUint32(&d.v.ring[pos].word)
	if !isAvail(uint16(w>>16), wrap) {
		return false, nil
	}
	room := d.size - d.inUse // slots the driver may have made available
	var n uint16
	var id uint16
	for {
		if n >= room {
			return false, fmt.Errorf("%w: chain at %d longer than the %d descriptors free", ErrBadChain, d.availPos, room)
		}
		desc := &d.v.ring[pos]
		if n > 0 {
			w = atomic.LoadUint32(&desc.word)
			if !isAvail(uint16(w>>16), wrap) {
				return false, fmt.Errorf("%w: descriptor %d of the chain at %d is not available", ErrBadChain, pos, d.availPos)
			}
		}
		flags, addr, l := uint16(w>>16), desc.addr, desc.len
		id = uint16(w)
		n++
		if flags&DescFIndirect != 0 {
			if err := d.table(addr, l, flags, n, c); err != nil {
				return false, err
			}
			break
		}
		if err := d.buffer(addr, l, flags&DescFWrite != 0, c); err != nil {
			return false, err
		}
		if flags&DescFNext == 0 {
			break
		}
		pos, wrap = advance(pos, wrap, 1, d.size)
	}
	if id >= d.size {
		return false, fmt.Errorf("%w: buffer id %d >= size %d", ErrBadChain, id, d.size)
	}
	if d.descs[id] != 0 {
		return false, fmt.Errorf("%w: buffer id %d is already in use", ErrBadChain, id)
	}
	d.hist[d.histI] = popRecord{pos: d.availPos, wrap: d.availWrap, id: id, descs: n}
	d.histI = (d.histI + 1) % unpopDepth
	d.histN = min(d.histN+1, unpopDepth)
	d.descs[id] = n
	d.inUse += n
	d.availPos, d.availWrap = advance(d.availPos, d.availWrap, n, d.size)
	c.ID = id
	return true, nil
}

func (d *PackedDeviceQueue) table(addr uint64, l uint32, flags, n uint16, c *Chain) error {
	switch {
	case !d.indirect:
		return fmt.Errorf("%w: indirect descriptor without VIRTIO_F_INDIRECT_DESC", ErrBadChain)
	case n != 1 || flags&DescFNext != 0:
		return fmt.Errorf("%w: indirect descriptor chained", ErrBadChain)
	case l == 0 || l%16 != 0 || l/16 > uint32(d.size):
		return fmt.Errorf("%w: indirect table length %d", ErrBadChain, l)
	}
	b, ok := d.mem.Slice(addr, int(l))
	if !ok {
		return fmt.Errorf("%w: indirect table at %#x outside memory", ErrBadChain, addr)
	}
	tbl := PackedDescTable(b)
	if tbl == nil {
		return fmt.Errorf("%w: indirect table misaligned", ErrBadChain)
	}
	for i := range tbl {
		// Plain reads: the driver wrote the table before the head's
		// release store that Pop's load observed.
		e := tbl[i]
		if err := d.buffer(e.Addr, e.Len, e.Flags&DescFWrite != 0, c); err != nil {
			return err
		}
	}
	return nil
}

func (d *PackedDeviceQueue) buffer(addr uint64, l uint32, write bool, c *Chain) error {
	if l == 0 {
		// QEMU: "zero sized buffers are not allowed", fatal.
		return fmt.Errorf("%w: empty buffer", ErrBadChain)
	}
	b, ok := d.mem.Slice(addr, int(l))
	if !ok {
		return fmt.Errorf("%w: buffer %#x+%d outside memory", ErrBadChain, addr, l)
	}
	if write {
		c.Write = append(c.Write, b)
		return nil
	}
	if len(c.Write) > 0 {
		return fmt.Errorf("%w: readable buffer after a writable one", ErrBadChain)
	}
	c.Read = append(c.Read, b)
	return nil
}

// Unpop gives back the last k popped buffers (k <= 64), as QEMU's
// virtqueue_unpop does: the avail position returns to the oldest of them.
// They must not have been pushed; breaking either rule is a bug in the
// device model and panics.
func (d *PackedDeviceQueue) Unpop(k int) {
	if k < 0 || k > d.histN {
		panic(fmt.Sprintf("virtqueue: Unpop(%d) with %d pops on record", k, d.histN))
	}
	for range k {
		d.histI = (d.histI + unpopDepth - 1) % unpopDepth
		r := d.hist[d.histI]
		if d.descs[r.id] == 0 {
			panic(fmt.Sprintf("virtqueue: Unpop of buffer %d, which was pushed", r.id))
		}
		d.descs[r.id] = 0
		d.inUse -= min(d.inUse, r.descs) // JumpUsed may have taken some
		d.availPos, d.availWrap = r.pos, r.wrap
	}
	d.histN -= k
}

// Push records buffer id as used with written bytes. It becomes visible to
// the driver at the next PublishUsed.
func (d *PackedDeviceQueue) Push(id uint16, written uint32) {
	d.PushRaw(uint32(id), written)
}

// PushRaw writes a used descriptor with any id (truncated to 16 bits) and
// length at the used position: fault injection uses it. The used position
// moves on by the buffer's descriptor count if id names a popped buffer,
// else by one. WRITE is set when written > 0 (spec 2.8.3).
func (d *PackedDeviceQueue) PushRaw(id, written uint32) {
	if d.npend == len(d.pend) {
		d.PublishUsed() // only fault injection pushes more than Size()
	}
	n := uint16(1)
	if id < uint32(d.size) && d.descs[id] != 0 {
		n = d.descs[id]
		d.descs[id] = 0
	}
	flags := usedBits(d.usedWrap)
	if written > 0 {
		flags |= DescFWrite
	}
	d.pend[d.npend] = pendingUsed{pos: d.usedPos, descs: n, len: written, word: uint32(uint16(id)) | uint32(flags)<<16}
	d.npend++
	d.usedPos, d.usedWrap = advance(d.usedPos, d.usedWrap, n, d.size)
	d.inUse -= min(d.inUse, n)
}

// PublishUsed makes pushed descriptors visible: it writes each one's
// length, then stores its {id, flags} word atomically (release), last to
// first, so the driver, which polls the first, sees the burst at once (spec
// 2.8.9; QEMU's virtqueue_packed_flush also writes the first last).
func (d *PackedDeviceQueue) PublishUsed() {
	for i := d.npend - 1; i >= 0; i-- {
		p := d.pend[i]
		r := &d.v.ring[p.pos]
		r.len = p.len
		atomic.StoreUint32(&r.word, p.word)
		d.sigDescs += uint32(p.descs)
	}
	d.npend = 0
	d.pubPos, d.pubWrap = d.usedPos, d.usedWrap
}

// JumpUsed marks delta more descriptors used after what was pushed, keeping
// the id and length the driver left in each: the driver then sees buffers
// completed that the device never used, and runs out of buffers in flight
// (ErrUsedIndex) or meets an id it already reaped (ErrUsedID). Fault
// injection only.
func (d *PackedDeviceQueue) JumpUsed(delta uint16) {
	d.PublishUsed()
	for range delta {
		r := &d.v.ring[d.usedPos]
		w := atomic.LoadUint32(&r.word)
		atomic.StoreUint32(&r.word, w&0xffff|uint32(usedBits(d.usedWrap))<<16)
		d.usedPos, d.usedWrap = advance(d.usedPos, d.usedWrap, 1, d.size)
		d.inUse -= min(d.inUse, 1)
		d.sigDescs++
	}
	d.pubPos, d.pubWrap = d.usedPos, d.usedWrap
}

// SetNotify tells the driver whether the device wants kicks, through the
// device event suppression structure (spec 2.8.10), as QEMU's
// virtio_queue_packed_set_notification does: off is DISABLE; on is, with
// EVENT_IDX, DESC at the device's avail position (kick me when that
// descriptor becomes available), without it ENABLE. Offset, wrap and flags
// go out in one atomic store. A device that turns notifications on must
// look at HasAvail again afterwards: buffers published before the store are
// not kicked for.
func (d *PackedDeviceQueue) SetNotify(on bool) {
	var ev uint32
	switch {
	case !on:
		ev = uint32(EventDisable) << 16
	case d.eventIdx:
		ev = uint32(offWrap(d.availPos, d.availWrap)) | uint32(EventDesc)<<16
	default:
		ev = uint32(EventEnable) << 16
	}
	atomic.StoreUint32(d.v.devEvent, ev)
}

// DriverWantsInterrupt reports whether the driver asked for a used-buffer
// notification for the descriptors published since the previous call, from
// the driver event suppression structure (spec 2.8.10; QEMU
// virtio_packed_should_notify).
func (d *PackedDeviceQueue) DriverWantsInterrupt() bool {
	n := d.sigDescs
	if n == 0 {
		return false
	}
	d.sigDescs = 0
	ev := atomic.LoadUint32(d.v.drvEvent)
	switch flags := uint16(ev >> 16); {
	case flags == EventDisable:
		return false
	case flags == EventDesc && d.eventIdx:
		return needEvent(uint16(ev), d.pubPos, d.pubWrap, n, d.size)
	}
	return true
}
