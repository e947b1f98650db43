package virtqueue

import (
	"math"
	"sync/atomic"

	"github.com/nke-harness/nke/nke/dma"
)

var _ Ring = (*PackedQueue)(nil)

// PackedQueue is the driver side of one packed virtqueue (spec 2.8,
// VIRTIO_F_RING_PACKED).
//
// Buffers are named by ids 0..Size()-1 taken from a private free stack. A
// buffer of n descriptors occupies the next n ring slots; the driver keeps
// each id's descriptor count and writable bytes privately and never reads
// back what it wrote, so a device scribbling on the ring can only make Reap
// refuse it, not steer the driver's accounting.
//
// Ordering: Add writes every descriptor of a buffer except the head's
// {id, flags} word, the non-head words with atomic stores; Publish stores the
// heads of all buffers added since the last Publish, last to first, each
// with an atomic (release) store, so a device that sees a buffer's head sees
// the whole chain (spec 2.8.6, 2.8.21.1) and one that sees the batch's first
// head sees the whole batch.
type PackedQueue struct {
	name     string
	v        packedView
	size     uint16
	eventIdx bool

	availPos  uint16 // next slot to fill
	availWrap bool   // Driver Ring Wrap Counter (spec 2.8.1)
	usedPos   uint16 // next slot where the device writes a used descriptor
	usedWrap  bool   // the device's wrap counter as the driver tracks it
	pubPos    uint16 // availPos at the last Publish
	pubWrap   bool
	unpub     uint32 // descriptors added since the last Publish
	kickDescs uint32 // descriptors published since the last NeedsKick

	numFree   uint16 // free ring slots
	inFlight  uint16 // buffers added and not reaped
	published uint16 // buffers in flight that the device can see

	freeIDs  []uint16 // stack of free ids; the top is freeIDs[nFreeIDs-1]
	nFreeIDs int
	bufs     []bufState // per id

	pend  []pendingHead // heads added and not yet published, in ring order
	npend int

	broken error
}

// bufState is what the driver knows of one buffer id, in one place so that
// reaping a buffer touches one cache line.
type bufState struct {
	writable uint32 // bytes the device may write
	descs    uint16 // ring descriptors (0 = id free)
	pub      bool   // the head has been published
}

// pendingHead is a head descriptor's {id, flags} word waiting for Publish.
type pendingHead struct {
	pos  uint16
	word uint32
}

// NewPacked returns the driver side of a packed queue over r (from
// AllocPackedRings). eventIdx says whether VIRTIO_F_EVENT_IDX was
// negotiated. The rings are zeroed.
func NewPacked(name string, r Rings, eventIdx bool) (*PackedQueue, error) {
	v, err := newPackedView(r)
	if err != nil {
		return nil, err
	}
	n := int(r.Size)
	q := &PackedQueue{
		name:     name,
		v:        v,
		size:     r.Size,
		eventIdx: eventIdx,
		freeIDs:  make([]uint16, n),
		bufs:     make([]bufState, n),
		pend:     make([]pendingHead, n),
	}
	clear(r.Desc.Buf)
	clear(r.Driver.Buf)
	clear(r.Device.Buf)
	q.Reset()
	return q, nil
}

// Reset forgets every buffer in flight and rezeroes the ring, as after a
// device reset. The caller must have reclaimed the buffers in flight
// (InFlightIDs) and must set the queue up on the device again.
func (q *PackedQueue) Reset() {
	clear(q.v.ring)
	for i := range q.freeIDs {
		// Pop order 0, 1, 2, ...: the stack's top is the end.
		q.freeIDs[i] = q.size - 1 - uint16(i)
	}
	q.nFreeIDs = int(q.size)
	clear(q.bufs)
	q.npend = 0
	q.availPos, q.availWrap = 0, true
	q.usedPos, q.usedWrap = 0, true
	q.pubPos, q.pubWrap = 0, true
	q.unpub, q.kickDescs = 0, 0
	q.numFree, q.inFlight, q.published = q.size, 0, 0
	q.broken = nil
	atomic.StoreUint32(q.v.devEvent, 0)
	// Poll mode: the device must never interrupt. DISABLE is valid with
	// and without EVENT_IDX (spec 2.8.10), so no event offset to maintain.
	atomic.StoreUint32(q.v.drvEvent, uint32(EventDisable)<<16)
}

// Name is the queue's name in errors.
func (q *PackedQueue) Name() string { return q.name }

// Size is the number of descriptors.
func (q *PackedQueue) Size() uint16 { return q.size }

// NumFree is the number of free descriptors.
func (q *PackedQueue) NumFree() uint16 { return q.numFree }

// InFlight is the number of buffers added and not yet reaped.
func (q *PackedQueue) InFlight() uint16 { return q.inFlight }

// Broken returns the error that broke the queue, or nil.
func (q *PackedQueue) Broken() error { return q.broken }

// InFlightIDs calls fn with the id of each buffer in flight.
func (q *PackedQueue) InFlightIDs(fn func(id uint16)) {
	for id, b := range q.bufs {
		if b.descs != 0 {
			fn(uint16(id))
		}
	}
}

// PeekID returns the id the next Add1, AddChain or AddIndirect will return.
// A free slot implies a free id: every buffer in flight holds at least one
// slot.
func (q *PackedQueue) PeekID() (uint16, bool) {
	if q.numFree == 0 || q.broken != nil {
		return 0, false
	}
	return q.freeIDs[q.nFreeIDs-1], true
}

// Add1 adds a one-descriptor buffer.
func (q *PackedQueue) Add1(addr uint64, n uint32, writable bool) (uint16, bool) {
	if q.numFree == 0 || q.broken != nil || n == 0 {
		return 0, false
	}
	var flags uint16
	var w uint64
	if writable {
		flags, w = DescFWrite, uint64(n)
	}
	id := q.popID()
	pos := q.availPos
	d := &q.v.ring[pos]
	d.addr, d.len = addr, n
	word := uint32(id) | uint32(flags|availBits(q.availWrap))<<16
	q.availPos, q.availWrap = advance(pos, q.availWrap, 1, q.size)
	q.commit(id, pos, word, 1, w)
	return id, true
}

// AddChain adds segs as one buffer of len(segs) consecutive descriptors
// (spec 2.8.6): NEXT on all but the last, the buffer id in every one (the
// spec reads it from the last, QEMU from the first), AVAIL/USED from the wrap
// counter of the lap each descriptor falls in.
func (q *PackedQueue) AddChain(segs []Seg) (uint16, bool) {
	n := len(segs)
	if n == 0 || n > int(q.numFree) || q.broken != nil || !ordered(segs) {
		return 0, false
	}
	id := q.popID()
	head := q.availPos
	pos, wrap := head, q.availWrap
	var headWord uint32
	var w uint64
	for i, s := range segs {
		flags := availBits(wrap)
		if s.Writable {
			flags |= DescFWrite
			w += uint64(s.Len)
		}
		if i < n-1 {
			flags |= DescFNext
		}
		d := &q.v.ring[pos]
		d.addr, d.len = s.Addr, s.Len
		word := uint32(id) | uint32(flags)<<16
		if i == 0 {
			headWord = word
		} else {
			// Atomic although the head orders it: a hostile device
			// may poke at any word, and a plain store racing its
			// atomic would be a data race.
			atomic.StoreUint32(&d.word, word)
		}
		pos, wrap = advance(pos, wrap, 1, q.size)
	}
	q.availPos, q.availWrap = pos, wrap
	q.commit(id, head, headWord, uint16(n), w)
	return id, true
}

// AddIndirect adds segs through a packed indirect table in table (spec
// 2.8.7, 2.8.19): one ring descriptor with INDIRECT and len 16*len(segs);
// table entries carry only WRITE (NEXT is not used in packed tables). The
// device limits a table to the queue size (spec 2.8.5), so longer segs fail.
func (q *PackedQueue) AddIndirect(table dma.Block, segs []Seg) (uint16, bool) {
	descs := PackedDescTable(table.Buf)
	n := len(segs)
	if n == 0 || n > len(descs) || n > int(q.size) || table.Addr%DescAlign != 0 ||
		q.numFree == 0 || q.broken != nil || !ordered(segs) {
		return 0, false
	}
	var w uint64
	for i, s := range segs {
		var flags uint16
		if s.Writable {
			flags = DescFWrite
			w += uint64(s.Len)
		}
		descs[i] = PackedDesc{Addr: s.Addr, Len: s.Len, Flags: flags}
	}
	id := q.popID()
	pos := q.availPos
	d := &q.v.ring[pos]
	d.addr, d.len = table.Addr, uint32(16*n)
	word := uint32(id) | uint32(DescFIndirect|availBits(q.availWrap))<<16
	q.availPos, q.availWrap = advance(pos, q.availWrap, 1, q.size)
	q.commit(id, pos, word, 1, w)
	return id, true
}

func (q *PackedQueue) popID() uint16 {
	q.nFreeIDs--
	return q.freeIDs[q.nFreeIDs]
}

// commit records a buffer just written and queues its head for Publish. At
// most Size() heads can wait: unpublished buffers hold their slots until
// Publish, since Reap refuses them.
func (q *PackedQueue) commit(id, pos uint16, headWord uint32, descs uint16, writable uint64) {
	q.pend[q.npend] = pendingHead{pos: pos, word: headWord}
	q.npend++
	q.bufs[id] = bufState{writable: uint32(min(writable, math.MaxUint32)), descs: descs}
	q.numFree -= descs
	q.inFlight++
	q.unpub += uint32(descs)
}

// Publish makes every buffer added since the last Publish visible: it
// stores their heads' {id, flags} words last to first with atomic stores.
// The last of them is the store half of the full barrier NeedsKick needs.
func (q *PackedQueue) Publish() {
	if q.broken != nil {
		return
	}
	for i := q.npend - 1; i >= 0; i-- {
		p := q.pend[i]
		atomic.StoreUint32(&q.v.ring[p.pos].word, p.word)
		q.bufs[uint16(p.word)].pub = true
	}
	q.published += uint16(q.npend)
	q.npend = 0
	q.kickDescs += q.unpub
	q.unpub = 0
	q.pubPos, q.pubWrap = q.availPos, q.availWrap
}

// NeedsKick reports whether the device asked to be notified about the
// buffers published since the last call (spec 2.8.10, 2.8.21.2; Linux
// virtqueue_kick_prepare_packed). Publish's atomic store followed by the
// atomic load here is the full barrier spec 2.8.21.3.1 requires: Go's
// atomics are sequentially consistent (XCHG then MOV on amd64, STLR then
// LDAR on arm64), so the device cannot both miss the new heads and have us
// miss its request. Anything but exactly DISABLE, or a DESC event the
// window covers, asks for a kick: the conservative reading of reserved
// values.
func (q *PackedQueue) NeedsKick() bool {
	n := q.kickDescs
	if n == 0 {
		return false
	}
	q.kickDescs = 0
	ev := atomic.LoadUint32(q.v.devEvent)
	switch flags := uint16(ev >> 16); {
	case flags == EventDisable:
		return false
	case flags == EventDesc && q.eventIdx:
		return needEvent(uint16(ev), q.pubPos, q.pubWrap, n, q.size)
	}
	return true
}

// HasUsed reports whether the descriptor at the driver's used position is
// marked used for the current wrap counter. It does not validate it.
func (q *PackedQueue) HasUsed() bool {
	w := atomic.LoadUint32(&q.v.ring[q.usedPos].word)
	return isUsed(uint16(w>>16), q.usedWrap)
}

// Reap consumes up to len(out) used buffers (spec 2.8.22). The descriptor
// at the used position is used when AVAIL == USED == the used wrap counter;
// that atomic load orders the reads of id and len, each read once. Refused
// with a *DeviceError, which breaks the queue until Reset: a used descriptor
// while no published buffer is in flight (ErrUsedIndex), an id naming no
// published buffer in flight (ErrUsedID), a length above the buffer's
// writable bytes (ErrUsedLen). The used position then skips the buffer's
// privately known descriptor count (spec 2.8.6), so completions may come in
// any order. len counts even without WRITE, which spec 2.8.4 would allow to
// ignore, because QEMU never sets WRITE in used descriptors.
func (q *PackedQueue) Reap(out []Used) (int, error) {
	if q.broken != nil {
		return 0, q.broken
	}
	n := 0
	for n < len(out) {
		d := &q.v.ring[q.usedPos]
		w := atomic.LoadUint32(&d.word)
		if !isUsed(uint16(w>>16), q.usedWrap) {
			break
		}
		if q.published == 0 {
			return n, q.fail(ErrUsedIndex, uint32(n+1), uint32(n))
		}
		id := uint16(w)
		if id >= q.size || !q.bufs[id].pub {
			return n, q.fail(ErrUsedID, uint32(id), uint32(q.size))
		}
		b := &q.bufs[id]
		l := d.len
		if l > b.writable {
			return n, q.fail(ErrUsedLen, l, b.writable)
		}
		out[n] = Used{ID: id, Len: l}
		n++
		q.usedPos, q.usedWrap = advance(q.usedPos, q.usedWrap, b.descs, q.size)
		q.numFree += b.descs
		*b = bufState{}
		q.inFlight--
		q.published--
		q.freeIDs[q.nFreeIDs] = id
		q.nFreeIDs++
	}
	return n, nil
}

func (q *PackedQueue) fail(err error, v, limit uint32) error {
	q.broken = &DeviceError{Queue: q.name, Err: err, Value: v, Limit: limit}
	return q.broken
}
