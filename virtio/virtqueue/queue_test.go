package virtqueue

import (
	"encoding/binary"
	"testing"

	"github.com/nke-harness/nke/nke/dma"
)

// The split layout's entry in the conformance suite (conformance_test.go),
// and the split pair FuzzUsedRing drives.

type pair struct {
	rings Rings
	heap  *dma.Heap
	drv   *Queue
	dev   *DeviceQueue
}

func newPair(t testing.TB, size uint16, eventIdx, indirect bool) pair {
	t.Helper()
	h := dma.NewHeap(64 << 10)
	r, err := AllocRings(h, size)
	if err != nil {
		t.Fatal(err)
	}
	drv, err := New("test", r, eventIdx)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := NewDevice(r, h, eventIdx, indirect)
	if err != nil {
		t.Fatal(err)
	}
	return pair{r, h, drv, dev}
}

func (p pair) buf(t testing.TB, n int) dma.Block {
	t.Helper()
	b, err := p.heap.Alloc(n, 8)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func splitWantsIRQ(e *env) bool {
	d := e.dev.(*DeviceQueue)
	old := e.sigOld
	e.sigOld = d.UsedIdx()
	return d.DriverWantsInterrupt(old)
}

// splitRaw writes descs as a chain from descriptor id%size on, each
// pointing at the next slot, and publishes id as the head.
func splitRaw(e *env, id uint16, descs ...rawDesc) {
	q := e.drv.(*Queue)
	size := q.v.size
	for i, d := range descs {
		s := (id + uint16(i)) % size
		q.v.desc[s] = Desc{Addr: d.addr, Len: d.len, Flags: d.flags, Next: (s + 1) % size}
	}
	q.v.availRing[q.availIdx&q.mask] = id
	q.availIdx++
	q.Publish()
}

// splitRawTable writes descs as a split indirect table, chained by next.
func splitRawTable(tbl dma.Block, descs ...rawDesc) {
	for i, d := range descs {
		b := tbl.Buf[16*i:]
		flags := d.flags
		if i < len(descs)-1 {
			flags |= DescFNext
		}
		binary.LittleEndian.PutUint64(b, d.addr)
		binary.LittleEndian.PutUint32(b[8:], d.len)
		binary.LittleEndian.PutUint16(b[12:], flags)
		binary.LittleEndian.PutUint16(b[14:], uint16(i+1))
	}
}

var splitBadChains = []rawCase{
	{"next loops", false, func(e *env) {
		q := e.drv.(*Queue)
		q.v.desc[0] = Desc{Addr: dma.HeapBase, Len: 1, Flags: DescFNext, Next: 1}
		q.v.desc[1] = Desc{Addr: dma.HeapBase, Len: 1, Flags: DescFNext, Next: 0}
		q.v.availRing[0] = 0
		q.availIdx = 1
		q.Publish()
	}},
	{"next out of range", false, func(e *env) {
		q := e.drv.(*Queue)
		q.v.desc[0] = Desc{Addr: dma.HeapBase, Len: 1, Flags: DescFNext, Next: 99}
		q.v.availRing[0] = 0
		q.availIdx = 1
		q.Publish()
	}},
}

var splitHostile = []hostileCase{
	{"used index backwards", func(e *env, ids []uint16) { e.dev.(*DeviceQueue).SetUsedIdx(0xffff) }, ErrUsedIndex},
	{"used index far ahead", func(e *env, ids []uint16) { e.dev.(*DeviceQueue).SetUsedIdx(40) }, ErrUsedIndex},
	{"id added but not published", func(e *env, ids []uint16) {
		id, _ := e.drv.Add1(dma.HeapBase, 64, true)
		e.dev.PushRaw(uint32(id), 0)
	}, ErrUsedID},
}

// The kick decision counts published chains only: asking between Add and
// Publish must not use up the device's notification window.
func TestSplitKickCountsPublishedOnly(t *testing.T) {
	p := newPair(t, 8, true, false)
	b := p.buf(t, 64)
	p.dev.SetNotify(true)
	p.drv.Add1(b.Addr, 64, true)
	if p.drv.NeedsKick() {
		t.Fatal("a kick for a chain not yet published")
	}
	p.drv.Publish()
	if !p.drv.NeedsKick() {
		t.Fatal("no kick after Publish: the early NeedsKick ate the notification")
	}
}

// Empty buffers (QEMU stops the device on one) and chains longer than the
// queue (spec 2.7.5.3.1) are refused before they reach the ring.
func TestSplitRefusesEmptyAndOverlongChains(t *testing.T) {
	p := newPair(t, 4, false, true)
	b := p.buf(t, 64)
	tbl, err := p.heap.Alloc(16*8, 16)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.drv.Add1(b.Addr, 0, true); ok {
		t.Error("Add1 of an empty buffer succeeded")
	}
	if _, ok := p.drv.AddChain([]Seg{{b.Addr, 12, false}, {b.Addr, 0, false}}); ok {
		t.Error("AddChain with an empty segment succeeded")
	}
	segs := make([]Seg, 5)
	for i := range segs {
		segs[i] = Seg{b.Addr, 8, false}
	}
	if _, ok := p.drv.AddIndirect(tbl, segs); ok {
		t.Error("an indirect chain of 5 on a queue of 4 succeeded")
	}
	if _, ok := p.drv.AddIndirect(tbl, segs[:4]); !ok {
		t.Error("an indirect chain of 4 on a queue of 4 failed")
	}
	if p.drv.NumFree() != 3 {
		t.Errorf("NumFree %d after one indirect chain, want 3", p.drv.NumFree())
	}
}
