package virtqueue

import (
	"encoding/binary"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nke-harness/nke/nke/dma"
)

// The packed layout's entry in the conformance suite (conformance_test.go).

// packedRaw writes descs as one buffer with id at the driver's avail
// position, with the AVAIL/USED bits of each slot's lap, head last.
func packedRaw(e *env, id uint16, descs ...rawDesc) {
	q := e.drv.(*PackedQueue)
	head, pos, wrap := q.availPos, q.availPos, q.availWrap
	var headWord uint32
	for i, d := range descs {
		r := &q.v.ring[pos]
		r.addr, r.len = d.addr, d.len
		word := uint32(id) | uint32(d.flags|availBits(wrap))<<16
		if i == 0 {
			headWord = word
		} else {
			atomic.StoreUint32(&r.word, word)
		}
		pos, wrap = advance(pos, wrap, 1, q.size)
	}
	q.availPos, q.availWrap = pos, wrap
	atomic.StoreUint32(&q.v.ring[head].word, headWord)
}

// packedRawTable writes descs as a packed indirect table.
func packedRawTable(tbl dma.Block, descs ...rawDesc) {
	for i, d := range descs {
		b := tbl.Buf[16*i:]
		binary.LittleEndian.PutUint64(b, d.addr)
		binary.LittleEndian.PutUint32(b[8:], d.len)
		binary.LittleEndian.PutUint16(b[12:], 0)
		binary.LittleEndian.PutUint16(b[14:], d.flags)
	}
}

// pokeUsed writes a used descriptor as a device would, with any flags.
func pokeUsed(e *env, pos, id uint16, l uint32, flags uint16) {
	r := &e.drv.(*PackedQueue).v.ring[pos]
	r.len = l
	atomic.StoreUint32(&r.word, uint32(id)|uint32(flags)<<16)
}

var packedBadChains = []rawCase{
	{"chain never ends", false, func(e *env) {
		descs := make([]rawDesc, e.drv.Size())
		for i := range descs {
			descs[i] = rawDesc{dma.HeapBase, 16, DescFNext}
		}
		e.lc.raw(e, 0, descs...)
	}},
	{"chained descriptor not available", false, func(e *env) {
		q := e.drv.(*PackedQueue)
		q.v.ring[1] = ringDesc{addr: dma.HeapBase, len: 16, word: uint32(availBits(false)) << 16}
		q.v.ring[0].addr, q.v.ring[0].len = dma.HeapBase, 16
		atomic.StoreUint32(&q.v.ring[0].word, uint32(DescFNext|availBits(true))<<16)
	}},
	{"chained descriptor already used", false, func(e *env) {
		q := e.drv.(*PackedQueue)
		q.v.ring[1] = ringDesc{addr: dma.HeapBase, len: 16, word: uint32(usedBits(true)) << 16}
		q.v.ring[0].addr, q.v.ring[0].len = dma.HeapBase, 16
		atomic.StoreUint32(&q.v.ring[0].word, uint32(DescFNext|availBits(true))<<16)
	}},
	{"id already in use", false, func(e *env) {
		e.lc.raw(e, 3, rawDesc{dma.HeapBase, 16, 0})
		e.pop()
		e.lc.raw(e, 3, rawDesc{dma.HeapBase, 16, 0})
	}},
	{"chain overlaps buffers in flight", false, func(e *env) {
		e.lc.raw(e, 0, rawDesc{dma.HeapBase, 16, DescFNext}, rawDesc{dma.HeapBase, 16, DescFNext}, rawDesc{dma.HeapBase, 16, 0})
		e.pop()
		descs := make([]rawDesc, 6)
		for i := range descs {
			descs[i] = rawDesc{dma.HeapBase, 16, DescFNext}
		}
		descs[5].flags = 0
		e.lc.raw(e, 1, descs...)
	}},
	{"indirect table longer than the queue", true, func(e *env) {
		n := int(e.drv.Size()) + 1
		tbl := e.buf(16 * n)
		descs := make([]rawDesc, n)
		for i := range descs {
			descs[i] = rawDesc{dma.HeapBase, 16, 0}
		}
		packedRawTable(tbl, descs...)
		e.lc.raw(e, 0, rawDesc{tbl.Addr, uint32(16 * n), DescFIndirect})
	}},
}

var packedHostile = []hostileCase{
	{"id added but not published", func(e *env, ids []uint16) {
		id, _ := e.drv.Add1(dma.HeapBase, 64, true)
		pokeUsed(e, 0, id, 0, usedBits(true))
	}, ErrUsedID},
	{"all flag bits set, bogus id", func(e *env, ids []uint16) {
		pokeUsed(e, 0, 0xabcd, 0, 0xffff)
	}, ErrUsedID},
	{"used past the buffers in flight", func(e *env, ids []uint16) {
		for _, id := range ids {
			e.dev.Push(id, 0)
		}
		e.dev.PublishUsed()
		pokeUsed(e, 3, ids[0], 0, usedBits(true))
	}, ErrUsedIndex},
	{"used after all but an unpublished buffer", func(e *env, ids []uint16) {
		e.drv.Add1(dma.HeapBase, 64, true)
		for _, id := range ids {
			e.dev.Push(id, 0)
		}
		e.dev.PublishUsed()
		pokeUsed(e, 3, 3, 0, usedBits(true))
	}, ErrUsedIndex},
}

func packedEnv(t testing.TB, size uint16, eventIdx, indirect bool) (*env, *PackedQueue, *PackedDeviceQueue) {
	t.Helper()
	e := newEnv(t, layouts[1], size, eventIdx, indirect)
	return e, e.drv.(*PackedQueue), e.dev.(*PackedDeviceQueue)
}

func ringWord(q *PackedQueue, pos uint16) (id, flags uint16) {
	w := atomic.LoadUint32(&q.v.ring[pos].word)
	return uint16(w), uint16(w >> 16)
}

// TestPackedDescriptorFormat checks what the driver writes against spec
// 2.8.6, 2.8.7 and 2.8.21.1: ids in every descriptor, NEXT on all but the
// last, AVAIL/USED from each slot's lap, the head left unavailable until
// Publish, packed indirect tables with only WRITE.
func TestPackedDescriptorFormat(t *testing.T) {
	e, q, dev := packedEnv(t, 4, false, true)
	b := e.buf(64)
	type slot struct{ id, flags uint16 }
	words := func() []slot {
		var s []slot
		for i := uint16(0); i < q.size; i++ {
			id, f := ringWord(q, i)
			s = append(s, slot{id, f})
		}
		return s
	}
	check := func(what string, want []slot) {
		t.Helper()
		if diff := cmp.Diff(want, words(), cmp.AllowUnexported(slot{})); diff != "" {
			t.Fatalf("%s: ring words (-want +got):\n%s", what, diff)
		}
	}
	const A, U, N, W, I = PackedDescFAvail, PackedDescFUsed, DescFNext, DescFWrite, DescFIndirect
	id0, _ := q.Add1(b.Addr, 64, true)
	id1, _ := q.AddChain([]Seg{{b.Addr, 8, false}, {b.Addr + 8, 8, false}, {b.Addr + 16, 48, true}})
	check("before Publish", []slot{{0, 0}, {0, 0}, {id1, A | N}, {id1, A | W}})
	if dev.HasAvail() {
		t.Fatal("device sees a head before Publish")
	}
	q.Publish()
	check("after Publish", []slot{{id0, A | W}, {id1, A | N}, {id1, A | N}, {id1, A | W}})
	if q.v.ring[1].addr != b.Addr || q.v.ring[3].len != 48 {
		t.Fatalf("chain descriptors hold %#x/%d", q.v.ring[1].addr, q.v.ring[3].len)
	}
	// The device completes the chain first, then the single buffer: the
	// used descriptors go to slots 0 and 3 (the chain's stride).
	dev.Pop(new(Chain))
	dev.Pop(new(Chain))
	dev.Push(id1, 48)
	dev.Push(id0, 0)
	dev.PublishUsed()
	check("used", []slot{{id1, A | U | W}, {id1, A | N}, {id1, A | N}, {id0, A | U}})
	if q.v.ring[0].len != 48 || q.v.ring[3].len != 0 {
		t.Fatalf("used lengths %d, %d", q.v.ring[0].len, q.v.ring[3].len)
	}
	got := e.reap(4)
	if diff := cmp.Diff([]Used{{id1, 48}, {id0, 0}}, got); diff != "" {
		t.Fatalf("reaped (-want +got):\n%s", diff)
	}
	if q.usedPos != 0 || q.usedWrap || q.availPos != 0 || q.availWrap {
		t.Fatalf("after one lap: used %d/%v avail %d/%v, want 0/false both", q.usedPos, q.usedWrap, q.availPos, q.availWrap)
	}
	// Second lap: AVAIL clear, USED set. Three buffers (ids 0, 1, 2 in
	// slots 0-2) complete, then a 3-chain from slot 3 wraps: its
	// descriptors in slots 0 and 1 get the third lap's bits, AVAIL set.
	q.Add1(b.Addr, 64, false)
	q.Add1(b.Addr, 64, false)
	q.Add1(b.Addr, 64, false)
	q.Publish()
	for i := 0; i < 3; i++ {
		c := e.pop()
		dev.Push(c.ID, 0)
	}
	dev.PublishUsed()
	e.reap(4)
	tbl := e.buf(16 * 2)
	idc, _ := q.AddChain([]Seg{{b.Addr, 8, false}, {b.Addr, 8, true}, {b.Addr, 8, true}})
	// Slot 2 still holds the used descriptor of id 2 (second lap: no
	// bits), slot 3 the first lap's used descriptor of id 0.
	check("wrapping chain before Publish", []slot{{idc, A | N | W}, {idc, A | W}, {2, 0}, {id0, A | U}})
	q.Publish()
	_, f3 := ringWord(q, 3)
	if f3 != U|N {
		t.Fatalf("wrapping chain head flags %#x, want %#x", f3, U|N)
	}
	e.dev.Push(e.pop().ID, 16)
	e.dev.PublishUsed()
	e.reap(1)
	idi, _ := q.AddIndirect(tbl, []Seg{{b.Addr, 8, false}, {b.Addr + 8, 56, true}})
	q.Publish()
	pos := uint16(2)
	if id, f := ringWord(q, pos); id != idi || f != A|I || q.v.ring[pos].len != 32 || q.v.ring[pos].addr != tbl.Addr {
		t.Fatalf("indirect descriptor id %d flags %#x len %d addr %#x", id, f, q.v.ring[pos].len, q.v.ring[pos].addr)
	}
	want := []PackedDesc{{Addr: b.Addr, Len: 8}, {Addr: b.Addr + 8, Len: 56, Flags: W}}
	if diff := cmp.Diff(want, PackedDescTable(tbl.Buf)); diff != "" {
		t.Fatalf("indirect table (-want +got):\n%s", diff)
	}
}

// TestPackedUsedGarbageIgnored: descriptors that do not look used for the
// driver's wrap counter at its used position are not used buffers, whatever
// else they hold (spec 2.8.1, 2.8.2). Nothing breaks; the real completion
// afterwards is taken.
func TestPackedUsedGarbageIgnored(t *testing.T) {
	const A, U = PackedDescFAvail, PackedDescFUsed
	for _, c := range []struct {
		name      string
		pos       uint16
		flags, id uint16
	}{
		{"previous lap's used bits", 0, 0, 0},
		{"available bits", 0, A, 0},
		{"USED without AVAIL", 0, U, 0},
		{"other flags only", 0, DescFWrite | DescFNext | DescFIndirect | 0x7f00&^A, 0},
		{"used, but not at the used position", 1, A | U, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			e, q, dev := packedEnv(t, 8, true, false)
			b := e.buf(64)
			for i := 0; i < 3; i++ {
				q.Add1(b.Addr, 64, true)
			}
			q.Publish()
			first := e.pop()
			e.pop()
			pokeUsed(e, c.pos, c.id, 7, c.flags)
			if q.HasUsed() {
				t.Fatal("HasUsed")
			}
			if got := e.reap(8); len(got) != 0 {
				t.Fatalf("reaped %+v", got)
			}
			dev.Push(first.ID, 5)
			dev.PublishUsed()
			got := e.reap(8)
			if len(got) == 0 || got[0] != (Used{0, 5}) || q.Broken() != nil {
				t.Fatalf("after the real completion: reaped %+v, broken %v", got, q.Broken())
			}
		})
	}
}

func TestPackedNeedEvent(t *testing.T) {
	const size = 8
	for _, c := range []struct {
		off   uint16
		ewrap bool
		pos   uint16
		wrap  bool
		n     uint32
		want  bool
	}{
		// Window slots 3, 4 of the lap with wrap counter 1.
		{3, true, 5, true, 2, true},
		{4, true, 5, true, 2, true},
		{5, true, 5, true, 2, false},
		{2, true, 5, true, 2, false},
		{3, false, 5, true, 2, false}, // slot 3 of the previous lap
		// Window 6, 7 (wrap 1), 0, 1 (wrap 0): it crosses the end.
		{6, true, 2, false, 4, true},
		{7, true, 2, false, 4, true},
		{0, false, 2, false, 4, true},
		{1, false, 2, false, 4, true},
		{2, false, 2, false, 4, false},
		{5, true, 2, false, 4, false},
		{7, false, 2, false, 4, false}, // a lap ahead: not yet
		// Window ending exactly at the end of the ring.
		{7, true, 0, false, 1, true},
		{0, false, 0, false, 1, false},
		{0x7fff, true, 5, true, 2, false},
		// A whole ring or more always kicks.
		{3, false, 5, true, size, true},
		{3, false, 5, true, 1 << 20, true},
	} {
		ev := offWrap(c.off, c.ewrap)
		if got := needEvent(ev, c.pos, c.wrap, c.n, size); got != c.want {
			t.Errorf("event %d/%v, %d descriptors before %d/%v: %v, want %v", c.off, c.ewrap, c.n, c.pos, c.wrap, got, c.want)
		}
	}
}

// TestPackedEventSuppression checks both structures word for word and the
// decisions drawn from them (spec 2.8.10, 2.8.14).
func TestPackedEventSuppression(t *testing.T) {
	for _, eventIdx := range []bool{false, true} {
		e, q, dev := packedEnv(t, 8, eventIdx, false)
		if w := atomic.LoadUint32(q.v.drvEvent); w != uint32(EventDisable)<<16 {
			t.Fatalf("driver event suppression %#x, want DISABLE", w)
		}
		dev.SetNotify(false)
		if w := atomic.LoadUint32(q.v.devEvent); w != uint32(EventDisable)<<16 {
			t.Fatalf("device event suppression %#x after SetNotify(false)", w)
		}
		b := e.buf(64)
		q.Add1(b.Addr, 64, true)
		q.Add1(b.Addr, 64, true)
		q.Publish()
		dev.Pop(new(Chain))
		dev.SetNotify(true)
		want := uint32(EventEnable) << 16
		if eventIdx {
			want = uint32(EventDesc)<<16 | uint32(offWrap(1, true))
		}
		if w := atomic.LoadUint32(q.v.devEvent); w != want {
			t.Fatalf("eventIdx=%v: device event suppression %#x, want %#x", eventIdx, w, want)
		}
		// Reserved flag values and DESC without EVENT_IDX kick.
		for _, flags := range []uint16{3, 0x8001, EventDesc} {
			atomic.StoreUint32(q.v.devEvent, uint32(flags)<<16|uint32(offWrap(6, true)))
			q.Add1(b.Addr, 64, true)
			q.Publish()
			want := !(flags == EventDesc && eventIdx)
			if got := q.NeedsKick(); got != want {
				t.Errorf("eventIdx=%v: device flags %#x: kick %v, want %v", eventIdx, flags, got, want)
			}
		}
		// The device side honours the driver's structure the same way.
		dev.Push(0, 1)
		dev.PublishUsed()
		if dev.DriverWantsInterrupt() {
			t.Fatal("interrupt wanted under DISABLE")
		}
		atomic.StoreUint32(q.v.drvEvent, uint32(EventEnable)<<16)
		dev.Push(1, 1)
		dev.PublishUsed()
		if !dev.DriverWantsInterrupt() || dev.DriverWantsInterrupt() {
			t.Fatal("ENABLE: want one interrupt for one publish")
		}
		if eventIdx {
			// Used descriptors so far: slots 0, 1; ask for slot 3.
			atomic.StoreUint32(q.v.drvEvent, uint32(EventDesc)<<16|uint32(offWrap(3, true)))
			dev.Pop(new(Chain))
			dev.Push(2, 1) // slot 2
			dev.PublishUsed()
			if dev.DriverWantsInterrupt() {
				t.Fatal("DESC 3: interrupt for slot 2")
			}
			dev.Pop(new(Chain))
			dev.Push(3, 1) // slot 3
			dev.PublishUsed()
			if !dev.DriverWantsInterrupt() {
				t.Fatal("DESC 3: no interrupt for slot 3")
			}
		}
	}
}

// TestPackedKickNeedsPublish: buffers added but not published do not count
// for the kick decision, and are not lost from it either.
func TestPackedKickNeedsPublish(t *testing.T) {
	e, q, dev := packedEnv(t, 8, true, false)
	dev.SetNotify(true)
	b := e.buf(64)
	q.Add1(b.Addr, 64, true)
	if q.NeedsKick() {
		t.Fatal("kick before Publish")
	}
	q.Publish()
	if !q.NeedsKick() {
		t.Fatal("no kick after Publish")
	}
}

func TestPackedUnpopMisuse(t *testing.T) {
	mustPanic := func(name string, f func()) {
		t.Helper()
		defer func() {
			if recover() == nil {
				t.Errorf("%s did not panic", name)
			}
		}()
		f()
	}
	e, q, dev := packedEnv(t, 128, false, false)
	b := e.buf(64)
	for i := 0; i < 100; i++ {
		q.Add1(b.Addr, 64, true)
	}
	q.Publish()
	for i := 0; i < 100; i++ {
		e.pop()
	}
	mustPanic("Unpop(65)", func() { dev.Unpop(65) })
	mustPanic("Unpop(-1)", func() { dev.Unpop(-1) })
	dev.Unpop(64)
	if c := e.pop(); c.ID != 36 {
		t.Fatalf("after Unpop(64): popped %d, want 36", c.ID)
	}
	dev.Push(36, 0)
	mustPanic("Unpop of a pushed buffer", func() { dev.Unpop(1) })
}

// TestPackedJumpUsedWraps: fault injection past a whole ring must not
// panic and the driver must still refuse what it sees.
func TestPackedJumpUsedWraps(t *testing.T) {
	e, q, dev := packedEnv(t, 8, false, false)
	b := e.buf(64)
	for i := 0; i < 3; i++ {
		q.Add1(b.Addr, 64, true)
	}
	q.Publish()
	// Nine slots: the ninth marks slot 0 again, for the next lap, so
	// the driver sees nothing used yet.
	dev.JumpUsed(9)
	if got := e.reap(8); len(got) != 0 {
		t.Fatalf("reaped %+v after a jump of a ring and one", got)
	}
	for _, delta := range []uint16{7, 0xffff, 3} {
		dev.JumpUsed(delta)
		out := make([]Used, 8)
		_, err := q.Reap(out)
		var de *DeviceError
		if err != nil && !errors.As(err, &de) {
			t.Fatalf("Reap after a jump of %d: %v", delta, err)
		}
	}
}
