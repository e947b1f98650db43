package virtqueue

// The conformance suite: each test runs against every ring layout through
// the Ring and DeviceRing interfaces, one table entry per layout, as
// cilium/ebpf runs one suite against several implementations. What only one
// layout can express (a split next-pointer loop, packed wrap-counter
// garbage) lives in that layout's table entry.

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nke-harness/nke/nke/dma"
)

// rawDesc is one descriptor written straight into ring memory, bypassing
// the driver's checks, to show the device a malformed buffer.
type rawDesc struct {
	addr  uint64
	len   uint32
	flags uint16 // DescFNext, DescFWrite, DescFIndirect
}

// rawCase is a malformed buffer the device must refuse.
type rawCase struct {
	name     string
	indirect bool // negotiate VIRTIO_F_INDIRECT_DESC
	write    func(e *env)
}

// hostileCase is a device fault the driver must refuse.
type hostileCase struct {
	name   string
	inject func(e *env, ids []uint16) // ids: three writable 64-byte buffers in flight
	want   error
}

type layoutCase struct {
	name   string
	alloc  func(dma.Allocator, uint16) (Rings, error)
	driver func(string, Rings, bool) (Ring, error)
	device func(Rings, Translator, bool, bool) (DeviceRing, error)
	// sizes are queue sizes every round-trip test also runs with.
	sizes, badSizes []uint16
	// wantsIRQ reports whether the driver asked for an interrupt for
	// what the device published since the previous call.
	wantsIRQ func(e *env) bool
	// raw writes one buffer with id straight into the ring and makes it
	// available; rawTable writes an indirect table.
	raw      func(e *env, id uint16, descs ...rawDesc)
	rawTable func(tbl dma.Block, descs ...rawDesc)
	// Layout-only cases.
	badChains []rawCase
	hostile   []hostileCase
}

var layouts = []layoutCase{
	{
		name:      "split",
		alloc:     AllocRings,
		driver:    func(n string, r Rings, ev bool) (Ring, error) { return New(n, r, ev) },
		device:    func(r Rings, m Translator, ev, ind bool) (DeviceRing, error) { return NewDevice(r, m, ev, ind) },
		sizes:     []uint16{8, 2},
		badSizes:  []uint16{0, 1, 3, 100, 65535},
		wantsIRQ:  splitWantsIRQ,
		raw:       splitRaw,
		rawTable:  splitRawTable,
		badChains: splitBadChains,
		hostile:   splitHostile,
	},
	{
		name:      "packed",
		alloc:     AllocPackedRings,
		driver:    func(n string, r Rings, ev bool) (Ring, error) { return NewPacked(n, r, ev) },
		device:    func(r Rings, m Translator, ev, ind bool) (DeviceRing, error) { return NewPackedDevice(r, m, ev, ind) },
		sizes:     []uint16{8, 2, 5, 7},
		badSizes:  []uint16{0, 1, MaxSize + 1, 65535},
		wantsIRQ:  func(e *env) bool { return e.dev.(*PackedDeviceQueue).DriverWantsInterrupt() },
		raw:       packedRaw,
		rawTable:  packedRawTable,
		badChains: packedBadChains,
		hostile:   packedHostile,
	},
}

func forEachLayout(t *testing.T, fn func(t *testing.T, lc layoutCase)) {
	for _, lc := range layouts {
		t.Run(lc.name, func(t *testing.T) { fn(t, lc) })
	}
}

// env is one driver and device over shared rings in a heap.
type env struct {
	t        testing.TB
	lc       layoutCase
	heap     *dma.Heap
	rings    Rings
	drv      Ring
	dev      DeviceRing
	eventIdx bool
	indirect bool
	sigOld   uint16 // split: used index at the last wantsIRQ
}

const envHeap = 256 << 10

func newEnv(t testing.TB, lc layoutCase, size uint16, eventIdx, indirect bool) *env {
	t.Helper()
	return newEnvHeap(t, lc, size, eventIdx, indirect, envHeap)
}

// newEnvHeap is newEnv with heapSize bytes of memory: fuzzing wants less.
func newEnvHeap(t testing.TB, lc layoutCase, size uint16, eventIdx, indirect bool, heapSize int) *env {
	t.Helper()
	h := dma.NewHeap(heapSize)
	r, err := lc.alloc(h, size)
	if err != nil {
		t.Fatal(err)
	}
	if r.Layout.String() != lc.name {
		t.Fatalf("alloc returned %v rings", r.Layout)
	}
	drv, err := lc.driver("test", r, eventIdx)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, lc: lc, heap: h, rings: r, drv: drv, eventIdx: eventIdx, indirect: indirect}
	e.newDevice()
	return e
}

// newDevice sets the queue up on a fresh device, as after a reset.
func (e *env) newDevice() {
	e.t.Helper()
	dev, err := e.lc.device(e.rings, e.heap, e.eventIdx, e.indirect)
	if err != nil {
		e.t.Fatal(err)
	}
	e.dev, e.sigOld = dev, 0
}

func (e *env) buf(n int) dma.Block {
	e.t.Helper()
	b, err := e.heap.Alloc(n, 16)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

func (e *env) pop() Chain {
	e.t.Helper()
	var c Chain
	ok, err := e.dev.Pop(&c)
	if !ok || err != nil {
		e.t.Fatalf("Pop = %v, %v", ok, err)
	}
	return c
}

func (e *env) reap(limit int) []Used {
	e.t.Helper()
	out := make([]Used, limit)
	n, err := e.drv.Reap(out)
	if err != nil {
		e.t.Fatalf("Reap: %v", err)
	}
	return out[:n]
}

func lens(bs [][]byte) []int {
	out := []int{}
	for _, b := range bs {
		out = append(out, len(b))
	}
	return out
}

func TestRingRoundTrip(t *testing.T) {
	forEachLayout(t, func(t *testing.T, lc layoutCase) {
		for _, size := range lc.sizes {
			for _, eventIdx := range []bool{false, true} {
				t.Run(fmt.Sprintf("size=%d/eventIdx=%v", size, eventIdx), func(t *testing.T) {
					testRoundTrip(t, lc, size, eventIdx)
				})
			}
		}
	})
}

func testRoundTrip(t *testing.T, lc layoutCase, size uint16, eventIdx bool) {
	e := newEnv(t, lc, size, eventIdx, false)
	n := int(size)
	// Three laps, so that the wrap counters (packed) and free-running
	// indices (split) both turn over.
	for lap := 0; lap < 3; lap++ {
		var ids []uint16
		var bufs []dma.Block
		for i := 0; i < n; i++ {
			b := e.buf(64)
			want, ok := e.drv.PeekID()
			if !ok {
				t.Fatalf("lap %d: PeekID on a queue with %d free failed", lap, e.drv.NumFree())
			}
			id, ok := e.drv.Add1(b.Addr, 64, true)
			if !ok || id != want || id >= size {
				t.Fatalf("lap %d: Add1 %d = %d, %v; PeekID said %d", lap, i, id, ok, want)
			}
			ids, bufs = append(ids, id), append(bufs, b)
		}
		if _, ok := e.drv.Add1(0x1, 1, true); ok {
			t.Fatal("Add1 on a full queue succeeded")
		}
		if _, ok := e.drv.PeekID(); ok {
			t.Fatal("PeekID on a full queue succeeded")
		}
		if e.drv.NumFree() != 0 || e.drv.InFlight() != size {
			t.Fatalf("full queue: free %d in flight %d", e.drv.NumFree(), e.drv.InFlight())
		}
		if e.dev.HasAvail() {
			t.Fatal("device sees buffers before Publish")
		}
		e.drv.Publish()
		for i := 0; i < n; i++ {
			c := e.pop()
			if c.ID != ids[i] || len(c.Write) != 1 || len(c.Read) != 0 || len(c.Write[0]) != 64 {
				t.Fatalf("Pop %d: id %d (want %d) write %v read %v", i, c.ID, ids[i], lens(c.Write), lens(c.Read))
			}
			c.Write[0][0] = byte(i + lap)
			e.dev.Push(c.ID, uint32(i+1))
		}
		if ok, err := e.dev.Pop(new(Chain)); ok || err != nil {
			t.Fatalf("Pop on an empty ring = %v, %v", ok, err)
		}
		if e.drv.HasUsed() {
			t.Fatal("driver sees used buffers before PublishUsed")
		}
		e.dev.PublishUsed()
		if !e.drv.HasUsed() {
			t.Fatal("driver sees no used buffer after PublishUsed")
		}
		// Reap in parts, including into an empty slice.
		got := e.reap(n / 2)
		if len(got) != n/2 {
			t.Fatalf("first Reap = %d, want %d", len(got), n/2)
		}
		if more := e.reap(0); len(more) != 0 {
			t.Fatalf("Reap into an empty slice = %d", len(more))
		}
		got = append(got, e.reap(n+1)...)
		if len(got) != n {
			t.Fatalf("reaped %d of %d", len(got), n)
		}
		for i, u := range got {
			if u.ID != ids[i] || u.Len != uint32(i+1) || bufs[i].Buf[0] != byte(i+lap) {
				t.Errorf("used %d = %+v, want id %d len %d", i, u, ids[i], i+1)
			}
		}
		if e.drv.HasUsed() {
			t.Fatal("HasUsed after reaping everything")
		}
		if e.drv.NumFree() != size || e.drv.InFlight() != 0 {
			t.Fatalf("after reaping all: free %d in flight %d", e.drv.NumFree(), e.drv.InFlight())
		}
	}
}

func TestRingChainsAndIndirect(t *testing.T) {
	forEachLayout(t, func(t *testing.T, lc layoutCase) {
		e := newEnv(t, lc, 16, true, true)
		a, b, c := e.buf(12), e.buf(100), e.buf(200)
		segs := []Seg{{a.Addr, 12, false}, {b.Addr, 100, false}, {c.Addr, 200, true}}
		// Move off position 0 so that the full-size chain below wraps.
		for i := 0; i < 5; i++ {
			e.drv.Add1(a.Addr, 12, false)
		}
		e.drv.Publish()
		for i := 0; i < 5; i++ {
			e.dev.Push(e.pop().ID, 0)
		}
		e.dev.PublishUsed()
		if got := e.reap(8); len(got) != 5 {
			t.Fatalf("reaped %d of 5", len(got))
		}

		h1, ok := e.drv.AddChain(segs)
		if !ok {
			t.Fatal("AddChain failed")
		}
		if e.drv.NumFree() != 13 {
			t.Fatalf("NumFree = %d after a 3-chain, want 13", e.drv.NumFree())
		}
		tbl := e.buf(16 * 4)
		h2, ok := e.drv.AddIndirect(tbl, segs)
		if !ok {
			t.Fatal("AddIndirect failed")
		}
		if e.drv.NumFree() != 12 || e.drv.InFlight() != 2 {
			t.Fatalf("NumFree = %d, InFlight = %d after an indirect chain, want 12, 2", e.drv.NumFree(), e.drv.InFlight())
		}
		for _, bad := range []struct {
			name string
			add  func() bool
		}{
			{"readable after writable", func() bool {
				_, ok := e.drv.AddChain([]Seg{{a.Addr, 1, true}, {b.Addr, 1, false}})
				return ok
			}},
			{"empty chain", func() bool { _, ok := e.drv.AddChain(nil); return ok }},
			{"chain longer than NumFree", func() bool { _, ok := e.drv.AddChain(make([]Seg, 13)); return ok }},
			{"empty indirect", func() bool { _, ok := e.drv.AddIndirect(tbl, nil); return ok }},
			{"indirect table too small", func() bool { _, ok := e.drv.AddIndirect(e.buf(16*2), segs); return ok }},
			{"indirect table misaligned", func() bool {
				t2 := e.buf(16 * 5)
				_, ok := e.drv.AddIndirect(dma.Block{Buf: t2.Buf[8:], Addr: t2.Addr + 8}, segs)
				return ok
			}},
			{"indirect readable after writable", func() bool {
				_, ok := e.drv.AddIndirect(tbl, []Seg{{a.Addr, 1, true}, {b.Addr, 1, false}})
				return ok
			}},
		} {
			if bad.add() {
				t.Errorf("%s: accepted", bad.name)
			}
		}
		if e.drv.NumFree() != 12 || e.drv.InFlight() != 2 {
			t.Fatalf("refused adds changed the accounting: free %d in flight %d", e.drv.NumFree(), e.drv.InFlight())
		}
		e.drv.Publish()
		for i, want := range []uint16{h1, h2} {
			ch := e.pop()
			if diff := cmp.Diff([]int{12, 100}, lens(ch.Read)); ch.ID != want || diff != "" {
				t.Fatalf("buffer %d: id %d (want %d), read lengths (-want +got):\n%s", i, ch.ID, want, diff)
			}
			if &ch.Read[1][0] != &b.Buf[0] || &ch.Write[0][0] != &c.Buf[0] {
				t.Fatalf("buffer %d: the device's slices are not the driver's buffers", i)
			}
			if ch.WritableLen() != 200 {
				t.Fatalf("writable = %d", ch.WritableLen())
			}
			e.dev.Push(ch.ID, 200)
		}
		e.dev.PublishUsed()
		got := e.reap(4)
		if diff := cmp.Diff([]Used{{h1, 200}, {h2, 200}}, got); diff != "" {
			t.Fatalf("reaped (-want +got):\n%s", diff)
		}
		if e.drv.NumFree() != 16 {
			t.Fatalf("NumFree = %d, want 16", e.drv.NumFree())
		}
		// Every descriptor is reusable in one chain; for packed it
		// starts at slot 9 and wraps round the end of the ring.
		full := make([]Seg, 16)
		for i := range full {
			full[i] = Seg{a.Addr + uint64(i), 1, i >= 10}
		}
		id, ok := e.drv.AddChain(full)
		if !ok {
			t.Fatal("a 16-chain after freeing everything failed")
		}
		if _, ok := e.drv.Add1(a.Addr, 1, true); ok {
			t.Fatal("Add1 with no descriptor free succeeded")
		}
		e.drv.Publish()
		ch := e.pop()
		if ch.ID != id || len(ch.Read) != 10 || len(ch.Write) != 6 || &ch.Read[3][0] != &a.Buf[3] {
			t.Fatalf("16-chain popped as id %d, %d read, %d write", ch.ID, len(ch.Read), len(ch.Write))
		}
		e.dev.Push(ch.ID, 6)
		e.dev.PublishUsed()
		if got := e.reap(2); len(got) != 1 || got[0] != (Used{id, 6}) || e.drv.NumFree() != 16 {
			t.Fatalf("16-chain reaped as %+v, free %d", got, e.drv.NumFree())
		}
	})
}

// TestRingOutOfOrder completes buffers in shuffled order, some of them only
// in a later round, over many laps of chains of mixed lengths, direct and
// indirect, and checks each comes back exactly once with its length.
func TestRingOutOfOrder(t *testing.T) {
	forEachLayout(t, func(t *testing.T, lc layoutCase) {
		for _, size := range lc.sizes {
			for _, order := range []string{"in-order", "reverse", "shuffled"} {
				t.Run(fmt.Sprintf("size=%d/%s", size, order), func(t *testing.T) {
					testOutOfOrder(t, lc, size, order)
				})
			}
		}
	})
}

func testOutOfOrder(t *testing.T, lc layoutCase, size uint16, order string) {
	e := newEnv(t, lc, size, true, true)
	rng := rand.New(rand.NewPCG(uint64(size), 7))
	data := e.buf(256)
	tables := make([]dma.Block, size)
	for i := range tables {
		tables[i] = e.buf(16 * 3)
	}
	want := map[uint16]uint32{} // in flight: id -> writable bytes
	var held []Chain            // popped, not yet pushed
	total := 0
	for round := 0; round < 200; round++ {
		// Add until something does not fit.
		for {
			n := 1 + rng.IntN(3)
			segs := make([]Seg, n)
			w := uint32(0)
			for i := range segs {
				segs[i] = Seg{data.Addr + uint64(16*i), uint32(8 + i), i == n-1}
				if segs[i].Writable {
					w += segs[i].Len
				}
			}
			var id uint16
			var ok bool
			if rng.IntN(3) == 0 {
				next, ok2 := e.drv.PeekID()
				if !ok2 {
					break
				}
				id, ok = e.drv.AddIndirect(tables[next], segs)
			} else {
				id, ok = e.drv.AddChain(segs)
			}
			if !ok {
				break
			}
			if _, dup := want[id]; dup {
				t.Fatalf("id %d handed out twice", id)
			}
			want[id] = w
		}
		e.drv.Publish()
		for e.dev.HasAvail() {
			held = append(held, e.pop())
		}
		switch order {
		case "reverse":
			for i, j := 0, len(held)-1; i < j; i, j = i+1, j-1 {
				held[i], held[j] = held[j], held[i]
			}
		case "shuffled":
			rng.Shuffle(len(held), func(i, j int) { held[i], held[j] = held[j], held[i] })
		}
		// Complete a prefix; the rest stay with the device a while.
		k := len(held)
		if order != "in-order" && k > 0 {
			k = rng.IntN(k + 1)
		}
		for _, c := range held[:k] {
			e.dev.Push(c.ID, uint32(c.WritableLen()))
		}
		held = append(held[:0], held[k:]...)
		e.dev.PublishUsed()
		for _, u := range e.reap(int(size) + 1) {
			w, ok := want[u.ID]
			if !ok {
				t.Fatalf("round %d: reaped id %d not in flight", round, u.ID)
			}
			if u.Len != w {
				t.Fatalf("round %d: id %d came back with %d bytes, want %d", round, u.ID, u.Len, w)
			}
			delete(want, u.ID)
			total++
		}
		if int(e.drv.InFlight()) != len(want) {
			t.Fatalf("round %d: InFlight %d, test has %d", round, e.drv.InFlight(), len(want))
		}
	}
	if total < 100 {
		t.Fatalf("only %d buffers completed", total)
	}
}

func TestRingUnpop(t *testing.T) {
	forEachLayout(t, func(t *testing.T, lc layoutCase) {
		e := newEnv(t, lc, 8, true, false)
		b := e.buf(64)
		var ids []uint16
		for i := 0; i < 3; i++ {
			id, _ := e.drv.AddChain([]Seg{{b.Addr, 8, false}, {b.Addr, 56, true}})
			ids = append(ids, id)
		}
		e.drv.Publish()
		first := e.pop()
		e.pop()
		e.pop()
		e.dev.Unpop(2)
		for _, want := range ids[1:] {
			if c := e.pop(); c.ID != want || c.WritableLen() != 56 {
				t.Fatalf("after Unpop: popped %d (%d writable), want %d", c.ID, c.WritableLen(), want)
			}
		}
		if e.dev.HasAvail() {
			t.Fatal("HasAvail after popping everything again")
		}
		e.dev.Push(first.ID, 1)
		e.dev.PublishUsed()
		if got := e.reap(4); len(got) != 1 || got[0].ID != ids[0] {
			t.Fatalf("reaped %+v", got)
		}
	})
}

func TestRingKickDecision(t *testing.T) {
	forEachLayout(t, func(t *testing.T, lc layoutCase) {
		for _, eventIdx := range []bool{false, true} {
			t.Run(fmt.Sprintf("eventIdx=%v", eventIdx), func(t *testing.T) {
				e := newEnv(t, lc, 8, eventIdx, false)
				b := e.buf(64)
				add := func(n int) {
					for i := 0; i < n; i++ {
						if _, ok := e.drv.Add1(b.Addr, 64, true); !ok {
							t.Fatal("Add1 failed")
						}
					}
				}
				if e.drv.NeedsKick() {
					t.Fatal("kick with nothing published")
				}
				e.dev.SetNotify(true)
				add(1)
				e.drv.Publish()
				if !e.drv.NeedsKick() {
					t.Fatal("no kick although the device asked")
				}
				if e.drv.NeedsKick() {
					t.Fatal("second kick for the same buffers")
				}
				e.dev.SetNotify(false)
				add(2)
				e.drv.Publish()
				if e.drv.NeedsKick() {
					t.Fatal("kick although the device suppressed it")
				}
				// The device catches up and asks again: the next
				// buffer kicks, however many laps the ring went.
				for round := 0; round < 12; round++ {
					for e.dev.HasAvail() {
						e.dev.Push(e.pop().ID, 0)
					}
					e.dev.PublishUsed()
					e.reap(8)
					e.dev.SetNotify(true)
					add(1 + round%3)
					e.drv.Publish()
					if !e.drv.NeedsKick() {
						t.Fatalf("round %d: no kick after the device asked again", round)
					}
					if eventIdx {
						// The device has not looked since: the next
						// buffers are past its event, no kick.
						add(1)
						e.drv.Publish()
						if e.drv.NeedsKick() {
							t.Fatalf("round %d: kick past the device's event", round)
						}
					}
				}
			})
		}
	})
}

// TestRingPollMode checks the driver never asks the device for interrupts.
func TestRingPollMode(t *testing.T) {
	forEachLayout(t, func(t *testing.T, lc layoutCase) {
		for _, eventIdx := range []bool{false, true} {
			e := newEnv(t, lc, 8, eventIdx, false)
			b := e.buf(64)
			for i := 0; i < 20; i++ {
				e.drv.Add1(b.Addr, 64, true)
				e.drv.Publish()
				e.dev.Push(e.pop().ID, 1)
				e.dev.PublishUsed()
				if lc.wantsIRQ(e) {
					t.Fatalf("eventIdx=%v: driver asked for an interrupt", eventIdx)
				}
				if got := e.reap(1); len(got) != 1 {
					t.Fatal("nothing reaped")
				}
			}
		}
	})
}

func TestRingHostileDevice(t *testing.T) {
	common := []hostileCase{
		{"id out of range", func(e *env, ids []uint16) { e.dev.PushRaw(99, 0) }, ErrUsedID},
		{"id equal to the size", func(e *env, ids []uint16) { e.dev.PushRaw(uint32(e.drv.Size()), 0) }, ErrUsedID},
		{"id not in flight", func(e *env, ids []uint16) { e.dev.PushRaw(5, 0) }, ErrUsedID},
		{"length too big", func(e *env, ids []uint16) { e.dev.PushRaw(uint32(ids[0]), 65) }, ErrUsedLen},
		{"readable buffer written", func(e *env, ids []uint16) {
			id, _ := e.drv.Add1(dma.HeapBase, 64, false)
			e.drv.Publish()
			e.dev.PushRaw(uint32(id), 1)
		}, ErrUsedLen},
		{"used index jump", func(e *env, ids []uint16) { e.dev.JumpUsed(5) }, ErrUsedIndex},
		{"same id twice", func(e *env, ids []uint16) {
			e.dev.PushRaw(uint32(ids[0]), 1)
			e.dev.PushRaw(uint32(ids[0]), 1)
		}, ErrUsedID},
	}
	forEachLayout(t, func(t *testing.T, lc layoutCase) {
		for _, c := range append(common, lc.hostile...) {
			t.Run(c.name, func(t *testing.T) {
				e := newEnv(t, lc, 8, true, false)
				b := e.buf(64)
				var ids []uint16
				for i := 0; i < 3; i++ {
					id, _ := e.drv.Add1(b.Addr, 64, true)
					ids = append(ids, id)
				}
				e.drv.Publish()
				c.inject(e, ids)
				e.dev.PublishUsed()
				out := make([]Used, 8)
				n, err := e.drv.Reap(out)
				var de *DeviceError
				if !errors.Is(err, c.want) || !errors.As(err, &de) || de.Queue != "test" {
					t.Fatalf("Reap = %d, %v; want a *DeviceError for %v", n, err, c.want)
				}
				for _, u := range out[:n] {
					if u.ID >= 3 {
						t.Fatalf("reaped id %d before the error, not one added", u.ID)
					}
				}
				if e.drv.Broken() != err {
					t.Fatalf("Broken = %v", e.drv.Broken())
				}
				if _, ok := e.drv.Add1(b.Addr, 1, true); ok {
					t.Fatal("Add1 on a broken queue succeeded")
				}
				if _, ok := e.drv.PeekID(); ok {
					t.Fatal("PeekID on a broken queue succeeded")
				}
				if n2, err2 := e.drv.Reap(out); n2 != 0 || err2 != err {
					t.Fatalf("broken queue Reap = %d, %v", n2, err2)
				}
				var inFlight []uint16
				e.drv.InFlightIDs(func(id uint16) { inFlight = append(inFlight, id) })
				if len(inFlight) != int(e.drv.InFlight()) || len(inFlight)+n < 3 {
					t.Fatalf("InFlightIDs %v, InFlight %d", inFlight, e.drv.InFlight())
				}
				// Reset recovers, with a fresh device.
				e.drv.Reset()
				e.newDevice()
				if e.drv.Broken() != nil || e.drv.NumFree() != 8 || e.drv.InFlight() != 0 {
					t.Fatalf("after Reset: broken %v free %d in flight %d", e.drv.Broken(), e.drv.NumFree(), e.drv.InFlight())
				}
				e.drv.InFlightIDs(func(id uint16) { t.Fatalf("id %d in flight after Reset", id) })
				for i := 0; i < 20; i++ {
					id, ok := e.drv.Add1(b.Addr, 64, true)
					if !ok {
						t.Fatal("Add1 after Reset failed")
					}
					e.drv.Publish()
					e.dev.Push(e.pop().ID, 64)
					e.dev.PublishUsed()
					if got := e.reap(2); len(got) != 1 || got[0] != (Used{id, 64}) {
						t.Fatalf("after Reset: reaped %+v, want id %d", got, id)
					}
				}
			})
		}
	})
}

func TestRingDeviceRefusesBadChains(t *testing.T) {
	common := []rawCase{
		{"readable after writable", false, func(e *env) {
			e.lc.raw(e, 0, rawDesc{dma.HeapBase, 16, DescFWrite | DescFNext}, rawDesc{dma.HeapBase, 16, 0})
		}},
		{"address outside memory", false, func(e *env) { e.lc.raw(e, 0, rawDesc{0x10, 1, 0}) }},
		{"empty buffer", false, func(e *env) {
			e.lc.raw(e, 0, rawDesc{dma.HeapBase, 16, DescFNext}, rawDesc{dma.HeapBase, 0, 0})
		}},
		{"length past the end of memory", false, func(e *env) {
			e.lc.raw(e, 0, rawDesc{dma.HeapBase + envHeap - 8, 16, 0})
		}},
		{"id out of range", false, func(e *env) { e.lc.raw(e, 99, rawDesc{dma.HeapBase, 16, 0}) }},
		{"indirect without the feature", false, func(e *env) {
			tbl := e.buf(32)
			e.lc.rawTable(tbl, rawDesc{dma.HeapBase, 16, 0})
			e.lc.raw(e, 0, rawDesc{tbl.Addr, 16, DescFIndirect})
		}},
		{"indirect with next", true, func(e *env) {
			tbl := e.buf(32)
			e.lc.rawTable(tbl, rawDesc{dma.HeapBase, 16, 0})
			e.lc.raw(e, 0, rawDesc{tbl.Addr, 16, DescFIndirect | DescFNext}, rawDesc{dma.HeapBase, 16, 0})
		}},
		{"indirect after a direct descriptor", true, func(e *env) {
			tbl := e.buf(32)
			e.lc.rawTable(tbl, rawDesc{dma.HeapBase, 16, 0})
			e.lc.raw(e, 0, rawDesc{dma.HeapBase, 16, DescFNext}, rawDesc{tbl.Addr, 16, DescFIndirect})
		}},
		{"indirect table length not a multiple of 16", true, func(e *env) {
			tbl := e.buf(32)
			e.lc.raw(e, 0, rawDesc{tbl.Addr, 24, DescFIndirect})
		}},
		{"indirect table of length 0", true, func(e *env) {
			tbl := e.buf(32)
			e.lc.raw(e, 0, rawDesc{tbl.Addr, 0, DescFIndirect})
		}},
		{"indirect table outside memory", true, func(e *env) { e.lc.raw(e, 0, rawDesc{0x10, 16, DescFIndirect}) }},
		{"indirect table misaligned", true, func(e *env) {
			tbl := e.buf(48)
			e.lc.rawTable(dma.Block{Buf: tbl.Buf[4:], Addr: tbl.Addr + 4}, rawDesc{dma.HeapBase, 16, 0})
			e.lc.raw(e, 0, rawDesc{tbl.Addr + 4, 16, DescFIndirect})
		}},
		{"indirect readable after writable", true, func(e *env) {
			tbl := e.buf(32)
			e.lc.rawTable(tbl, rawDesc{dma.HeapBase, 16, DescFWrite}, rawDesc{dma.HeapBase, 16, 0})
			e.lc.raw(e, 0, rawDesc{tbl.Addr, 32, DescFIndirect})
		}},
		{"indirect buffer outside memory", true, func(e *env) {
			tbl := e.buf(32)
			e.lc.rawTable(tbl, rawDesc{dma.HeapBase, 16, 0}, rawDesc{0x10, 16, DescFWrite})
			e.lc.raw(e, 0, rawDesc{tbl.Addr, 32, DescFIndirect})
		}},
	}
	forEachLayout(t, func(t *testing.T, lc layoutCase) {
		for _, c := range append(common, lc.badChains...) {
			t.Run(c.name, func(t *testing.T) {
				e := newEnv(t, lc, 8, false, c.indirect)
				c.write(e)
				var ch Chain
				ok, err := e.dev.Pop(&ch)
				if ok || !errors.Is(err, ErrBadChain) {
					t.Fatalf("Pop = %v, %v; want ErrBadChain", ok, err)
				}
			})
		}
		// The well-formed versions of the buffers above pass, so the
		// cases fail for the reason they name.
		t.Run("well-formed", func(t *testing.T) {
			e := newEnv(t, lc, 8, false, true)
			tbl := e.buf(32)
			e.lc.rawTable(tbl, rawDesc{dma.HeapBase, 16, 0}, rawDesc{dma.HeapBase + 16, 16, DescFWrite})
			e.lc.raw(e, 0, rawDesc{tbl.Addr, 32, DescFIndirect})
			e.lc.raw(e, 1, rawDesc{dma.HeapBase, 16, DescFNext}, rawDesc{dma.HeapBase + envHeap - 16, 16, DescFWrite})
			for _, want := range []uint16{0, 1} {
				if c := e.pop(); c.ID != want || len(c.Read) != 1 || len(c.Write) != 1 {
					t.Fatalf("popped id %d read %v write %v, want id %d", c.ID, lens(c.Read), lens(c.Write), want)
				}
			}
		})
	})
}

func TestRingAllocRingsRejectsBadSizes(t *testing.T) {
	forEachLayout(t, func(t *testing.T, lc layoutCase) {
		h := dma.NewHeap(1 << 20)
		for _, n := range lc.badSizes {
			if _, err := lc.alloc(h, n); err == nil {
				t.Errorf("size %d accepted", n)
			}
		}
		for _, n := range append(lc.sizes, MaxSize) {
			r, err := lc.alloc(h, n)
			if err != nil {
				t.Errorf("size %d: %v", n, err)
				continue
			}
			if _, err := lc.driver("ok", r, false); err != nil {
				t.Errorf("size %d: driver: %v", n, err)
			}
		}
		// Rings of the other layout are refused.
		for _, other := range layouts {
			if other.name == lc.name {
				continue
			}
			r, err := other.alloc(h, 8)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := lc.driver("x", r, false); err == nil {
				t.Errorf("driver accepted %s rings", other.name)
			}
			if _, err := lc.device(r, h, false, false); err == nil {
				t.Errorf("device accepted %s rings", other.name)
			}
		}
	})
}

// TestRingHotPathAllocs checks the whole exchange allocates nothing: Add1,
// AddChain, AddIndirect, Publish, NeedsKick and Reap on the driver, Pop,
// Push and PublishUsed on the device, each in the measured function.
func TestRingHotPathAllocs(t *testing.T) {
	forEachLayout(t, func(t *testing.T, lc layoutCase) {
		e := newEnv(t, lc, 256, true, true)
		e.dev.SetNotify(true)
		b := e.buf(2048)
		tbl := e.buf(16 * 4)
		segs := []Seg{{b.Addr, 12, false}, {b.Addr + 12, 100, false}, {b.Addr + 112, 1000, true}}
		out := make([]Used, 64)
		var c Chain
		c.Read, c.Write = make([][]byte, 0, 4), make([][]byte, 0, 4)
		kicks := 0
		allocs := testing.AllocsPerRun(100, func() {
			for i := 0; i < 30; i++ {
				e.drv.Add1(b.Addr, 2048, true)
			}
			e.drv.AddChain(segs)
			e.drv.AddIndirect(tbl, segs)
			e.drv.Publish()
			if e.drv.NeedsKick() {
				kicks++
			}
			for i := 0; i < 32; i++ {
				if ok, err := e.dev.Pop(&c); !ok || err != nil {
					t.Fatal(ok, err)
				}
				e.dev.Push(c.ID, uint32(c.WritableLen()))
			}
			e.dev.PublishUsed()
			if n, err := e.drv.Reap(out); n != 32 || err != nil {
				t.Fatal(n, err)
			}
		})
		if allocs != 0 {
			t.Fatalf("a burst of 32 allocated %v times, want 0", allocs)
		}
		if kicks == 0 {
			t.Fatal("no kick: the device's event was never hit")
		}
	})
}

// TestRingConcurrent runs driver and device in two goroutines, the device
// woken only by kicks, as the device model runs. A lost wakeup (a kick
// decision that misses the device re-enabling notifications) stalls the
// exchange and fails the test; -race checks that every shared access is
// ordered.
func TestRingConcurrent(t *testing.T) {
	forEachLayout(t, func(t *testing.T, lc layoutCase) {
		for _, eventIdx := range []bool{false, true} {
			t.Run(fmt.Sprintf("eventIdx=%v", eventIdx), func(t *testing.T) {
				testConcurrent(t, lc, eventIdx)
			})
		}
	})
}

func testConcurrent(t *testing.T, lc layoutCase, eventIdx bool) {
	const total = 20000
	e := newEnv(t, lc, 64, eventIdx, true)
	data := e.buf(64 * 64)
	tables := make([]dma.Block, 64)
	for i := range tables {
		tables[i] = e.buf(32)
	}
	kick := make(chan struct{}, 1)
	done := make(chan struct{})
	var devErr atomic.Value
	dev := e.dev
	dev.SetNotify(true) // idle: wake me when something arrives
	go func() {
		var c Chain
		for {
			select {
			case <-kick:
			case <-done:
				return
			}
			for {
				dev.SetNotify(false)
				n := 0
				for {
					ok, err := dev.Pop(&c)
					if err != nil {
						devErr.Store(err)
						return
					}
					if !ok {
						break
					}
					if len(c.Write) > 0 {
						c.Write[0][0] = byte(c.ID)
					}
					dev.Push(c.ID, uint32(c.WritableLen()))
					n++
				}
				if n > 0 {
					dev.PublishUsed()
				}
				// Ask for the next kick, then look once more.
				dev.SetNotify(true)
				if !dev.HasAvail() {
					break
				}
			}
		}
	}()
	defer close(done)
	want := make([]uint32, 64)
	out := make([]Used, 64)
	sent, reaped, kicks := 0, 0, 0
	rng := rand.New(rand.NewPCG(1, 2))
	progress := time.Now()
	for reaped < total {
		added := 0
		for sent < total {
			id, ok := e.drv.PeekID()
			if !ok {
				break
			}
			buf := data.Addr + uint64(id)*64
			segs := []Seg{{buf, 8, false}, {buf + 8, uint32(8 + rng.IntN(48)), true}}
			switch rng.IntN(3) {
			case 0:
				_, ok = e.drv.Add1(buf, 64, true)
				want[id] = 64
			case 1:
				_, ok = e.drv.AddChain(segs)
				want[id] = segs[1].Len
			default:
				_, ok = e.drv.AddIndirect(tables[id], segs)
				want[id] = segs[1].Len
			}
			if !ok {
				break
			}
			sent++
			added++
		}
		if added > 0 {
			e.drv.Publish()
			if e.drv.NeedsKick() {
				kicks++
				select {
				case kick <- struct{}{}:
				default:
				}
			}
		}
		n, err := e.drv.Reap(out)
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range out[:n] {
			if u.Len != want[u.ID] {
				t.Fatalf("id %d: %d bytes, want %d", u.ID, u.Len, want[u.ID])
			}
		}
		reaped += n
		if n > 0 {
			progress = time.Now()
			continue
		}
		if err, _ := devErr.Load().(error); err != nil {
			t.Fatal(err)
		}
		if time.Since(progress) > 10*time.Second {
			t.Fatalf("stalled: %d sent, %d reaped, %d in flight, %d kicks: a lost wakeup", sent, reaped, e.drv.InFlight(), kicks)
		}
		runtime.Gosched()
	}
	if kicks == 0 {
		t.Fatal("no kicks at all")
	}
	t.Logf("%d kicks for %d buffers", kicks, total)
}

func TestRingDispatch(t *testing.T) {
	h := dma.NewHeap(64 << 10)
	for _, c := range []struct {
		l   Layout
		drv Ring
		dev DeviceRing
	}{{Split, (*Queue)(nil), (*DeviceQueue)(nil)}, {Packed, (*PackedQueue)(nil), (*PackedDeviceQueue)(nil)}} {
		r, err := AllocLayout(h, c.l, 8)
		if err != nil || r.Layout != c.l {
			t.Fatalf("AllocLayout(%v) = %v, %v", c.l, r.Layout, err)
		}
		drv, err := NewRing("x", r, true)
		if err != nil || fmt.Sprintf("%T", drv) != fmt.Sprintf("%T", c.drv) {
			t.Fatalf("NewRing(%v) = %T, %v", c.l, drv, err)
		}
		dev, err := NewDeviceRing(r, h, true, true)
		if err != nil || fmt.Sprintf("%T", dev) != fmt.Sprintf("%T", c.dev) {
			t.Fatalf("NewDeviceRing(%v) = %T, %v", c.l, dev, err)
		}
		r.Size = 0
		if drv, err := NewRing("x", r, true); err == nil || drv != nil {
			t.Fatalf("NewRing(%v) of size 0 = %v, %v: want a nil interface and an error", c.l, drv, err)
		}
		if dev, err := NewDeviceRing(r, h, true, true); err == nil || dev != nil {
			t.Fatalf("NewDeviceRing(%v) of size 0 = %v, %v", c.l, dev, err)
		}
	}
	if _, err := AllocLayout(h, Layout(7), 8); err == nil {
		t.Fatal("AllocLayout of an unknown layout succeeded")
	}
	if _, err := NewRing("x", Rings{Layout: 7, Size: 8}, false); err == nil {
		t.Fatal("NewRing of an unknown layout succeeded")
	}
}
