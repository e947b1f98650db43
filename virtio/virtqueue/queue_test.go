package virtqueue

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nke-harness/nke/kernel/dma"
)

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

func TestRoundTrip(t *testing.T) {
	for _, eventIdx := range []bool{false, true} {
		p := newPair(t, 8, eventIdx, false)
		var heads []uint16
		var bufs []dma.Block
		for i := 0; i < 8; i++ {
			b := p.buf(t, 64)
			h, ok := p.drv.Add1(b.Addr, 64, true)
			if !ok {
				t.Fatalf("Add1 %d failed", i)
			}
			heads, bufs = append(heads, h), append(bufs, b)
		}
		if _, ok := p.drv.Add1(0x1, 1, true); ok {
			t.Fatal("Add1 on a full queue succeeded")
		}
		if p.dev.Avail() != 0 {
			t.Fatal("device sees chains before Publish")
		}
		p.drv.Publish()
		var c Chain
		for i := 0; i < 8; i++ {
			ok, err := p.dev.Pop(&c)
			if !ok || err != nil {
				t.Fatalf("Pop %d: %v %v", i, ok, err)
			}
			if c.ID != heads[i] || len(c.Write) != 1 || len(c.Read) != 0 {
				t.Fatalf("Pop %d: head %d write %d read %d", i, c.ID, len(c.Write), len(c.Read))
			}
			c.Write[0][0] = byte(i)
			p.dev.Push(c.ID, uint32(i+1))
		}
		if p.drv.HasUsed() {
			t.Fatal("driver sees used entries before PublishUsed")
		}
		p.dev.PublishUsed()
		out := make([]Used, 5)
		n, err := p.drv.Reap(out)
		if err != nil || n != 5 {
			t.Fatalf("Reap = %d, %v", n, err)
		}
		n2, err := p.drv.Reap(out[n:])
		if err != nil || n2 != 0 {
			t.Fatalf("Reap into empty slice = %d, %v", n2, err)
		}
		rest := make([]Used, 8)
		n2, err = p.drv.Reap(rest)
		if err != nil || n2 != 3 {
			t.Fatalf("second Reap = %d, %v", n2, err)
		}
		got := append(out[:n], rest[:n2]...)
		for i, u := range got {
			if u.ID != heads[i] || u.Len != uint32(i+1) || bufs[i].Buf[0] != byte(i) {
				t.Errorf("used %d = %+v, want id %d len %d", i, u, heads[i], i+1)
			}
		}
		if p.drv.NumFree() != 8 || p.drv.InFlight() != 0 {
			t.Fatalf("after reaping all: free %d in flight %d", p.drv.NumFree(), p.drv.InFlight())
		}
	}
}

func TestChainsAndIndirect(t *testing.T) {
	p := newPair(t, 16, true, true)
	a, b, c := p.buf(t, 12), p.buf(t, 100), p.buf(t, 200)
	segs := []Seg{{a.Addr, 12, false}, {b.Addr, 100, false}, {c.Addr, 200, true}}
	h1, ok := p.drv.AddChain(segs)
	if !ok {
		t.Fatal("AddChain failed")
	}
	if p.drv.NumFree() != 13 {
		t.Fatalf("NumFree = %d after a 3-chain, want 13", p.drv.NumFree())
	}
	tbl := p.buf(t, 16*4)
	h2, ok := p.drv.AddIndirect(tbl, segs)
	if !ok {
		t.Fatal("AddIndirect failed")
	}
	if p.drv.NumFree() != 12 {
		t.Fatalf("NumFree = %d after an indirect chain, want 12", p.drv.NumFree())
	}
	if _, ok := p.drv.AddChain([]Seg{{a.Addr, 1, true}, {b.Addr, 1, false}}); ok {
		t.Fatal("AddChain accepted a readable segment after a writable one")
	}
	p.drv.Publish()
	for _, want := range []uint16{h1, h2} {
		var ch Chain
		ok, err := p.dev.Pop(&ch)
		if !ok || err != nil {
			t.Fatalf("Pop: %v %v", ok, err)
		}
		lens := func(bs [][]byte) []int {
			var out []int
			for _, b := range bs {
				out = append(out, len(b))
			}
			return out
		}
		if diff := cmp.Diff([]int{12, 100}, lens(ch.Read)); ch.ID != want || diff != "" {
			t.Fatalf("chain %d: head %d read lens diff %s", want, ch.ID, diff)
		}
		if ch.WritableLen() != 200 {
			t.Fatalf("writable = %d", ch.WritableLen())
		}
		p.dev.Push(ch.ID, 200)
	}
	p.dev.PublishUsed()
	out := make([]Used, 4)
	if n, err := p.drv.Reap(out); n != 2 || err != nil {
		t.Fatalf("Reap = %d %v", n, err)
	}
	if p.drv.NumFree() != 16 {
		t.Fatalf("NumFree = %d, want 16", p.drv.NumFree())
	}
	// The freed descriptors are reusable as a full-size chain.
	full := make([]Seg, 16)
	for i := range full {
		full[i] = Seg{a.Addr, 1, false}
	}
	if _, ok := p.drv.AddChain(full); !ok {
		t.Fatal("a 16-chain after freeing everything failed")
	}
}

func TestKickDecision(t *testing.T) {
	for _, eventIdx := range []bool{false, true} {
		p := newPair(t, 8, eventIdx, false)
		b := p.buf(t, 64)
		if p.drv.NeedsKick() {
			t.Fatal("kick with nothing published")
		}
		p.dev.SetNotify(true)
		p.drv.Add1(b.Addr, 64, true)
		p.drv.Publish()
		if !p.drv.NeedsKick() {
			t.Fatalf("eventIdx=%v: no kick although the device asked", eventIdx)
		}
		if p.drv.NeedsKick() {
			t.Fatal("second kick for the same chains")
		}
		p.dev.SetNotify(false)
		p.drv.Add1(b.Addr, 64, true)
		p.drv.Publish()
		if p.drv.NeedsKick() {
			t.Fatalf("eventIdx=%v: kick although the device suppressed it", eventIdx)
		}
		if eventIdx {
			// The device catches up and asks again: the next add kicks.
			var c Chain
			p.dev.Pop(&c)
			p.dev.SetNotify(true)
			p.drv.Add1(b.Addr, 64, true)
			p.drv.Publish()
			if !p.drv.NeedsKick() {
				t.Fatal("no kick after the device moved avail_event")
			}
		}
	}
}

func TestNoInterruptRequested(t *testing.T) {
	for _, eventIdx := range []bool{false, true} {
		p := newPair(t, 8, eventIdx, false)
		b := p.buf(t, 64)
		for i := 0; i < 20; i++ {
			p.drv.Add1(b.Addr, 64, true)
			p.drv.Publish()
			var c Chain
			p.dev.Pop(&c)
			old := p.dev.UsedIdx()
			p.dev.Push(c.ID, 1)
			p.dev.PublishUsed()
			if p.dev.DriverWantsInterrupt(old) {
				t.Fatalf("eventIdx=%v: driver asked for an interrupt (poll mode)", eventIdx)
			}
			out := make([]Used, 1)
			if n, err := p.drv.Reap(out); n != 1 || err != nil {
				t.Fatal(n, err)
			}
		}
	}
}

func TestHostileDevice(t *testing.T) {
	cases := []struct {
		name   string
		inject func(p pair, heads []uint16)
		want   error
	}{
		{"id out of range", func(p pair, h []uint16) { p.dev.PushRaw(99, 0) }, ErrUsedID},
		{"id not in flight", func(p pair, h []uint16) { p.dev.PushRaw(5, 0) }, ErrUsedID},
		{"len too big", func(p pair, h []uint16) { p.dev.PushRaw(uint32(h[0]), 65) }, ErrUsedLen},
		{"index jump", func(p pair, h []uint16) { p.dev.SetUsedIdx(40) }, ErrUsedIndex},
		{"index backwards", func(p pair, h []uint16) { p.dev.SetUsedIdx(0xffff) }, ErrUsedIndex},
		{"same id twice", func(p pair, h []uint16) { p.dev.PushRaw(uint32(h[0]), 1); p.dev.PushRaw(uint32(h[0]), 1) }, ErrUsedID},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := newPair(t, 8, true, false)
			b := p.buf(t, 64)
			var heads []uint16
			for i := 0; i < 3; i++ {
				h, _ := p.drv.Add1(b.Addr, 64, true)
				heads = append(heads, h)
			}
			p.drv.Publish()
			c.inject(p, heads)
			p.dev.PublishUsed()
			out := make([]Used, 8)
			_, err := p.drv.Reap(out)
			var de *DeviceError
			if !errors.Is(err, c.want) || !errors.As(err, &de) {
				t.Fatalf("Reap error = %v, want %v", err, c.want)
			}
			if _, ok := p.drv.Add1(b.Addr, 1, true); ok {
				t.Fatal("Add1 on a broken queue succeeded")
			}
			if _, err2 := p.drv.Reap(out); !errors.Is(err2, c.want) {
				t.Fatalf("broken queue Reap = %v", err2)
			}
			// Reset recovers.
			var reclaimed int
			p.drv.InFlightIDs(func(uint16) { reclaimed++ })
			if reclaimed == 0 {
				t.Fatal("no heads in flight to reclaim")
			}
			p.drv.Reset()
			if p.drv.Broken() != nil || p.drv.NumFree() != 8 {
				t.Fatalf("after Reset: broken %v free %d", p.drv.Broken(), p.drv.NumFree())
			}
		})
	}
}

func TestDeviceRefusesBadChains(t *testing.T) {
	p := newPair(t, 4, false, false)
	// Hand-write a looping chain: 0 -> 1 -> 0.
	p.drv.v.desc[0] = Desc{Addr: dma.HeapBase, Len: 1, Flags: DescFNext, Next: 1}
	p.drv.v.desc[1] = Desc{Addr: dma.HeapBase, Len: 1, Flags: DescFNext, Next: 0}
	p.drv.v.availRing[0] = 0
	p.drv.availIdx = 1
	p.drv.Publish()
	var c Chain
	if _, err := p.dev.Pop(&c); !errors.Is(err, ErrBadChain) {
		t.Fatalf("looping chain: %v", err)
	}
	// Out-of-memory address.
	p.drv.v.desc[2] = Desc{Addr: 0x10, Len: 1}
	p.drv.v.availRing[1] = 2
	p.drv.availIdx = 2
	p.drv.Publish()
	if _, err := p.dev.Pop(&c); !errors.Is(err, ErrBadChain) {
		t.Fatalf("bad address: %v", err)
	}
	// Indirect without the feature.
	p.drv.v.desc[3] = Desc{Addr: dma.HeapBase, Len: 16, Flags: DescFIndirect}
	p.drv.v.availRing[2] = 3
	p.drv.availIdx = 3
	p.drv.Publish()
	if _, err := p.dev.Pop(&c); !errors.Is(err, ErrBadChain) {
		t.Fatalf("indirect without feature: %v", err)
	}
}

func TestAllocRingsRejectsBadSizes(t *testing.T) {
	h := dma.NewHeap(1 << 16)
	for _, n := range []uint16{0, 1, 3, 100} {
		if _, err := AllocRings(h, n); err == nil {
			t.Errorf("AllocRings(%d) succeeded", n)
		}
	}
}

func TestHotPathAllocs(t *testing.T) {
	p := newPair(t, 256, true, false)
	b := p.buf(t, 2048)
	out := make([]Used, 32)
	var c Chain
	c.Write = make([][]byte, 0, 4)
	allocs := testing.AllocsPerRun(100, func() {
		for i := 0; i < 32; i++ {
			p.drv.Add1(b.Addr, 2048, true)
		}
		p.drv.Publish()
		p.drv.NeedsKick()
		for i := 0; i < 32; i++ {
			p.dev.Pop(&c)
			p.dev.Push(c.ID, 60)
		}
		p.dev.PublishUsed()
		if n, err := p.drv.Reap(out); n != 32 || err != nil {
			t.Fatal(n, err)
		}
	})
	if allocs != 0 {
		t.Fatalf("burst of 32 allocated %v times, want 0", allocs)
	}
}
