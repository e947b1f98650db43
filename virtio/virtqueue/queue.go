package virtqueue

import (
	"errors"
	"fmt"
	"math"
	"sync/atomic"

	"github.com/nke-harness/nke/nke/dma"
)

// Errors describing a device that broke the split-ring contract. They are
// wrapped in a *DeviceError that says which queue and which value.
var (
	ErrUsedIndex = errors.New("used index ran ahead of the buffers in flight")
	ErrUsedID    = errors.New("used id names no buffer in flight")
	ErrUsedLen   = errors.New("used length exceeds the buffer")
	ErrBroken    = errors.New("queue is broken until the device is reset")
)

// DeviceError reports a value the device wrote that the driver refused.
type DeviceError struct {
	Queue string // queue name, e.g. "rx0"
	Err   error  // one of the ErrUsed* sentinels
	Value uint32 // the offending value
	Limit uint32 // what it had to stay within
}

func (e *DeviceError) Error() string {
	return fmt.Sprintf("virtqueue %s: %v (device wrote %d, limit %d)", e.Queue, e.Err, e.Value, e.Limit)
}

func (e *DeviceError) Unwrap() error { return e.Err }

// Seg is one buffer of a descriptor chain.
type Seg struct {
	Addr     uint64
	Len      uint32
	Writable bool // device writes it (rx); otherwise the device reads it
}

// Used is one completed buffer: the chain head the driver added and the
// number of bytes the device wrote into it.
type Used struct {
	ID  uint16
	Len uint32
}

// Queue is the driver side of one split virtqueue.
//
// The descriptor chains' next pointers, lengths and in-flight state are kept
// in driver-private memory: the driver never reads back anything it wrote to
// shared memory, so a device scribbling on the descriptor table cannot steer
// the free list.
type Queue struct {
	name     string
	v        ringView
	mask     uint16
	eventIdx bool

	availIdx   uint16 // avail.idx after the chains added (free-running)
	pubIdx     uint16 // avail.idx as last published
	availFlags uint16
	kickedIdx  uint16 // avail.idx when the last kick decision was made
	lastUsed   uint16 // next used.idx to consume (free-running)

	freeHead uint16
	numFree  uint16
	inFlight uint16 // chains added and not yet reaped

	next     []uint16 // private copy of each descriptor's next
	chainLen []uint16 // per head: descriptors in its chain (0 = not in flight)
	writable []uint32 // per head: bytes the device may write
	pub      []bool   // per head: published, so the device may complete it
	added    []uint16 // private copy of the avail ring's entries
	broken   error
}

// New returns the driver side of a queue over r. eventIdx says whether
// VIRTIO_F_EVENT_IDX was negotiated. The rings are zeroed.
func New(name string, r Rings, eventIdx bool) (*Queue, error) {
	v, err := newView(r)
	if err != nil {
		return nil, err
	}
	q := &Queue{
		name:     name,
		v:        v,
		mask:     r.Size - 1,
		eventIdx: eventIdx,
		next:     make([]uint16, r.Size),
		chainLen: make([]uint16, r.Size),
		writable: make([]uint32, r.Size),
		pub:      make([]bool, r.Size),
		added:    make([]uint16, r.Size),
	}
	clear(r.Desc.Buf)
	clear(r.Driver.Buf)
	clear(r.Device.Buf)
	q.Reset()
	return q, nil
}

// Reset forgets every chain in flight and rezeroes the rings, as after a
// device reset. The caller must have reclaimed the buffers it attached to
// chains in flight (see InFlight) and must set the queue up on the device
// again.
func (q *Queue) Reset() {
	for i := range q.next {
		q.next[i] = uint16(i + 1)
		q.chainLen[i] = 0
		q.writable[i] = 0
		q.pub[i] = false
	}
	clear(q.v.desc)
	clear(q.v.availRing)
	clear(q.v.usedRing)
	atomic.StoreUint32(q.v.usedHdr, 0)
	atomic.StoreUint32(q.v.usedEvent, 0)
	atomic.StoreUint32(q.v.availEvnt, 0)
	q.freeHead, q.numFree, q.inFlight = 0, q.v.size, 0
	q.availIdx, q.pubIdx, q.kickedIdx, q.lastUsed = 0, 0, 0, 0
	q.broken = nil
	// Poll mode: ask for no interrupts. With EVENT_IDX the flag is ignored
	// and used_event does the job (see Reap).
	q.availFlags = AvailFNoInterrupt
	if q.eventIdx {
		q.availFlags = 0
		store16lo(q.v.usedEvent, q.lastUsed+0x8000)
	}
	atomic.StoreUint32(q.v.availHdr, uint32(q.availFlags))
}

// Name is the queue's name in errors.
func (q *Queue) Name() string { return q.name }

// Size is the number of descriptors.
func (q *Queue) Size() uint16 { return q.v.size }

// NumFree is the number of free descriptors.
func (q *Queue) NumFree() uint16 { return q.numFree }

// InFlight is the number of chains added and not yet reaped.
func (q *Queue) InFlight() uint16 { return q.inFlight }

// Broken returns the error that broke the queue, or nil.
func (q *Queue) Broken() error { return q.broken }

// InFlightIDs calls fn for the head of each chain in flight, for the
// caller to reclaim its buffers before Reset.
func (q *Queue) InFlightIDs(fn func(head uint16)) {
	for i, n := range q.chainLen {
		if n != 0 {
			fn(uint16(i))
		}
	}
}

// PeekID returns the descriptor the next Add1, AddChain or AddIndirect
// will use as its head, so that per-head resources (an indirect table) can
// be filled first. It reports false when the queue is full.
func (q *Queue) PeekID() (uint16, bool) {
	return q.freeHead, q.numFree > 0 && q.broken == nil
}

// Add1 adds a one-descriptor chain and returns its head. It reports false
// when the queue is full or broken. The chain becomes visible to the device
// at the next Publish.
func (q *Queue) Add1(addr uint64, n uint32, writable bool) (uint16, bool) {
	if q.numFree == 0 || q.broken != nil || n == 0 {
		return 0, false
	}
	head := q.freeHead
	q.freeHead = q.next[head]
	q.numFree--
	var flags uint16
	if writable {
		flags = DescFWrite
		q.writable[head] = n
	} else {
		q.writable[head] = 0
	}
	q.v.desc[head] = Desc{Addr: addr, Len: n, Flags: flags}
	q.chainLen[head] = 1
	q.inFlight++
	q.v.availRing[q.availIdx&q.mask] = head
	q.added[q.availIdx&q.mask] = head
	q.availIdx++
	return head, true
}

// AddChain adds segs as one chain. It reports false when there are not
// enough free descriptors, segs is empty, or the queue is broken. Spec
// 2.7.4.2: device-readable segments must precede device-writable ones.
func (q *Queue) AddChain(segs []Seg) (uint16, bool) {
	if len(segs) == 0 || len(segs) > int(q.numFree) || q.broken != nil || !ordered(segs) {
		return 0, false
	}
	head := q.freeHead
	id := head
	var w uint64
	for i, s := range segs {
		flags := uint16(0)
		if s.Writable {
			flags = DescFWrite
			w += uint64(s.Len)
		}
		nxt := q.next[id]
		if i < len(segs)-1 {
			flags |= DescFNext
		}
		q.v.desc[id] = Desc{Addr: s.Addr, Len: s.Len, Flags: flags, Next: nxt}
		if i < len(segs)-1 {
			id = nxt
		}
	}
	q.freeHead = q.next[id]
	q.numFree -= uint16(len(segs))
	q.chainLen[head] = uint16(len(segs))
	q.writable[head] = uint32(min(w, math.MaxUint32))
	q.inFlight++
	q.v.availRing[q.availIdx&q.mask] = head
	q.added[q.availIdx&q.mask] = head
	q.availIdx++
	return head, true
}

// AddIndirect adds segs through an indirect table in table, using one ring
// descriptor (spec 2.7.5.3). Only valid when VIRTIO_F_INDIRECT_DESC was
// negotiated. table must stay untouched until the chain is reaped.
func (q *Queue) AddIndirect(table dma.Block, segs []Seg) (uint16, bool) {
	descs := DescTable(table.Buf)
	// Spec 2.7.5.3.1: no chain, indirect ones included, longer than the
	// queue.
	if len(segs) == 0 || len(segs) > len(descs) || len(segs) > int(q.v.size) || table.Addr%DescAlign != 0 ||
		q.numFree == 0 || q.broken != nil || !ordered(segs) {
		return 0, false
	}
	var w uint64
	for i, s := range segs {
		flags := uint16(0)
		if s.Writable {
			flags = DescFWrite
			w += uint64(s.Len)
		}
		if i < len(segs)-1 {
			flags |= DescFNext
		}
		descs[i] = Desc{Addr: s.Addr, Len: s.Len, Flags: flags, Next: uint16(i + 1)}
	}
	head := q.freeHead
	q.freeHead = q.next[head]
	q.numFree--
	q.v.desc[head] = Desc{Addr: table.Addr, Len: uint32(16 * len(segs)), Flags: DescFIndirect}
	q.chainLen[head] = 1
	q.writable[head] = uint32(min(w, math.MaxUint32))
	q.inFlight++
	q.v.availRing[q.availIdx&q.mask] = head
	q.added[q.availIdx&q.mask] = head
	q.availIdx++
	return head, true
}

// ordered reports whether segs make a valid chain: no empty buffer (QEMU
// refuses them) and no readable one after a writable one.
func ordered(segs []Seg) bool {
	seenW := false
	for _, s := range segs {
		if s.Len == 0 {
			return false
		}
		if s.Writable {
			seenW = true
		} else if seenW {
			return false
		}
	}
	return true
}

// Publish makes every chain added since the last Publish visible to the
// device: the descriptors and ring entries were written with plain stores,
// and the atomic store of avail.idx orders them before it (spec 2.7.13,
// "write barrier" step).
func (q *Queue) Publish() {
	for i := q.pubIdx; i != q.availIdx; i++ {
		q.pub[q.added[i&q.mask]] = true
	}
	q.pubIdx = q.availIdx
	atomic.StoreUint32(q.v.availHdr, uint32(q.availFlags)|uint32(q.availIdx)<<16)
}

// NeedsKick reports whether the device asked to be notified about the chains
// published since the last call (spec 2.7.10). It must follow Publish. The
// atomic load after Publish's atomic store is the full barrier the spec
// requires: without it, a driver can miss the device re-enabling
// notifications and both sides wait forever.
func (q *Queue) NeedsKick() bool {
	old, cur := q.kickedIdx, q.pubIdx
	if old == cur {
		return false
	}
	q.kickedIdx = cur
	if q.eventIdx {
		ev := load16lo(q.v.availEvnt)
		return cur-ev-1 < cur-old
	}
	return load16lo(q.v.usedHdr)&UsedFNoNotify == 0
}

// Pending reports how many used entries the device has published that
// Reap has not consumed. It does not validate them.
func (q *Queue) Pending() uint16 { return load16hi(q.v.usedHdr) - q.lastUsed }

// HasUsed reports whether the device has published used entries that Reap
// has not consumed. It does not validate them.
func (q *Queue) HasUsed() bool {
	return load16hi(q.v.usedHdr) != q.lastUsed
}

// Reap consumes up to len(out) used entries, validating each, frees their
// descriptors and returns how many it stored in out. A device that breaks
// the contract gets a *DeviceError, and the queue stays broken (Reap and Add
// refuse) until Reset.
func (q *Queue) Reap(out []Used) (int, error) {
	if q.broken != nil {
		return 0, q.broken
	}
	idx := load16hi(q.v.usedHdr) // acquire: entries below idx are complete
	avail := idx - q.lastUsed
	if avail == 0 {
		return 0, nil
	}
	if avail > q.inFlight {
		return 0, q.fail(ErrUsedIndex, uint32(avail), uint32(q.inFlight))
	}
	n := min(int(avail), len(out))
	for i := 0; i < n; i++ {
		e := q.v.usedRing[q.lastUsed&q.mask]
		if e.ID >= uint32(q.v.size) || q.chainLen[e.ID] == 0 || !q.pub[e.ID] {
			return i, q.fail(ErrUsedID, e.ID, uint32(q.v.size))
		}
		head := uint16(e.ID)
		if e.Len > q.writable[head] {
			return i, q.fail(ErrUsedLen, e.Len, q.writable[head])
		}
		out[i] = Used{ID: head, Len: e.Len}
		q.free(head)
		q.lastUsed++
	}
	if q.eventIdx {
		// Keep used_event half the index space ahead: the device never
		// crosses it, so it never interrupts (we poll).
		store16lo(q.v.usedEvent, q.lastUsed+0x8000)
	}
	return n, nil
}

func (q *Queue) free(head uint16) {
	n := q.chainLen[head]
	tail := head
	for i := uint16(1); i < n; i++ {
		tail = q.next[tail]
	}
	q.next[tail] = q.freeHead
	q.freeHead = head
	q.numFree += n
	q.chainLen[head] = 0
	q.writable[head] = 0
	q.pub[head] = false
	q.inFlight--
}

func (q *Queue) fail(err error, v, limit uint32) error {
	q.broken = &DeviceError{Queue: q.name, Err: err, Value: v, Limit: limit}
	return q.broken
}
