package mbuf

import (
	"bytes"
	"sync"
	"testing"

	"github.com/nke-harness/nke/nke/dma"
)

func newPool(t testing.TB, n int) *Pool {
	t.Helper()
	p, err := NewPool(dma.NewHeap(n*2048+4096), "test", n, 2048, 128)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPoolGeometry(t *testing.T) {
	h := dma.NewHeap(1 << 16)
	for _, c := range []struct{ n, size, head int }{{0, 2048, 0}, {1, 0, 0}, {1, 64, 64}, {1, 64, -1}} {
		if _, err := NewPool(h, "bad", c.n, c.size, c.head); err == nil {
			t.Errorf("NewPool(%d, %d, %d) succeeded", c.n, c.size, c.head)
		}
	}
	if _, err := NewPool(dma.NewHeap(4096), "small", 4, 2048, 0); err == nil {
		t.Error("pool larger than its memory succeeded")
	}
}

func TestDataOps(t *testing.T) {
	p := newPool(t, 2)
	m := p.Get()
	if m.Headroom() != 128 || m.Len() != 0 || m.Tailroom() != 2048-128 || m.Cap() != 2048 {
		t.Fatalf("fresh buffer: headroom %d len %d tailroom %d", m.Headroom(), m.Len(), m.Tailroom())
	}
	b, ok := m.Append(10)
	copy(b, "0123456789")
	if !ok || string(m.Bytes()) != "0123456789" {
		t.Fatal("Append")
	}
	h, ok := m.Prepend(4)
	copy(h, "hdr:")
	if !ok || string(m.Bytes()) != "hdr:0123456789" || m.Addr() != m.BufAddr()+124 {
		t.Fatalf("Prepend: %q addr %#x", m.Bytes(), m.Addr())
	}
	if _, ok := m.Prepend(125); ok {
		t.Fatal("Prepend beyond headroom succeeded")
	}
	if !m.Adj(4) || !m.Trim(2) || string(m.Bytes()) != "01234567" {
		t.Fatalf("Adj/Trim: %q", m.Bytes())
	}
	if m.Adj(9) || m.Trim(-1) || m.SetData(2040, 9) {
		t.Fatal("out-of-range op succeeded")
	}
	n := p.Get()
	nb, _ := n.Append(3)
	copy(nb, "abc")
	m.SetNext(n)
	if m.PktLen() != 11 || m.Segs() != 2 {
		t.Fatalf("chain: len %d segs %d", m.PktLen(), m.Segs())
	}
	out := make([]byte, 20)
	if k := m.CopyOut(out); k != 11 || !bytes.Equal(out[:k], []byte("01234567abc")) {
		t.Fatalf("CopyOut = %q", out[:k])
	}
	m.Free()
	if p.Avail() != 2 {
		t.Fatalf("chain free returned %d of 2", p.Avail())
	}
}

func TestRefsAndDoubleFree(t *testing.T) {
	p := newPool(t, 1)
	m := p.Get()
	m.Ref()
	m.Free()
	if p.Avail() != 0 {
		t.Fatal("buffer returned while referenced")
	}
	m.Free()
	if p.Avail() != 1 {
		t.Fatal("buffer not returned at last reference")
	}
	defer func() {
		if recover() == nil {
			t.Fatal("double free did not panic")
		}
	}()
	m.Free()
}

func TestPoolExhaustionAndBatch(t *testing.T) {
	p := newPool(t, 4)
	dst := make([]*Mbuf, 6)
	if k := p.GetBatch(dst); k != 4 {
		t.Fatalf("GetBatch = %d, want 4", k)
	}
	if p.Get() != nil {
		t.Fatal("Get on an empty pool returned a buffer")
	}
	seen := map[uint64]bool{}
	for _, m := range dst[:4] {
		if seen[m.BufAddr()] {
			t.Fatal("same buffer handed out twice")
		}
		seen[m.BufAddr()] = true
		m.Free()
	}
}

func TestQueue(t *testing.T) {
	p := newPool(t, 8)
	q := NewQueue(4)
	var in []*Mbuf
	for i := 0; i < 5; i++ {
		m := p.Get()
		if ok := q.Enqueue(m); ok != (i < 4) {
			t.Fatalf("Enqueue %d = %v", i, ok)
		}
		if i < 4 {
			in = append(in, m)
		} else {
			m.Free()
		}
	}
	out := make([]*Mbuf, 3)
	if k := q.DequeueBatch(out); k != 3 || out[0] != in[0] || out[2] != in[2] {
		t.Fatal("DequeueBatch order")
	}
	for _, m := range out {
		m.Free()
	}
	q.Enqueue(p.Get()) // wraps around
	if q.Len() != 2 || q.Drain() != 2 || p.Avail() != 8 {
		t.Fatalf("Drain: len %d avail %d", q.Len(), p.Avail())
	}
}

func TestConcurrentPoolAndQueue(t *testing.T) {
	p := newPool(t, 256)
	q := NewQueue(64)
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				if m := p.Get(); m != nil && !q.Enqueue(m) {
					m.Free()
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	batch := make([]*Mbuf, 16)
	for {
		k := q.DequeueBatch(batch)
		for _, m := range batch[:k] {
			m.Free()
		}
		select {
		case <-done:
			q.Drain()
			if p.Avail() != 256 {
				t.Fatalf("%d of 256 buffers back", p.Avail())
			}
			return
		default:
		}
	}
}

func TestNoAllocs(t *testing.T) {
	p := newPool(t, 64)
	q := NewQueue(64)
	batch := make([]*Mbuf, 32)
	if a := testing.AllocsPerRun(100, func() {
		k := p.GetBatch(batch)
		for _, m := range batch[:k] {
			m.Append(60)
			m.Prepend(12)
			q.Enqueue(m)
		}
		k = q.DequeueBatch(batch)
		for _, m := range batch[:k] {
			m.Free()
		}
	}); a != 0 {
		t.Fatalf("%v allocs per burst", a)
	}
}

func BenchmarkGetFree(b *testing.B) {
	p := newPool(b, 64)
	batch := make([]*Mbuf, 32)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		k := p.GetBatch(batch)
		for _, m := range batch[:k] {
			m.Free()
		}
	}
}

func TestFreeBatch(t *testing.T) {
	p1, p2 := newPool(t, 40), newPool(t, 4)
	var ms []*Mbuf
	for i := 0; i < 40; i++ {
		ms = append(ms, p1.Get())
	}
	chain := p2.Get()
	chain.SetNext(p2.Get())
	shared := p2.Get()
	shared.Ref()
	ms = append(ms, chain, shared, nil)
	FreeBatch(ms)
	if p1.Avail() != 40 || p2.Avail() != 3 {
		t.Fatalf("after FreeBatch: %d/40 and %d/3 free", p1.Avail(), p2.Avail())
	}
	for _, m := range ms {
		if m != nil {
			t.Fatal("FreeBatch left a pointer behind")
		}
	}
	shared.Free()
	if p2.Avail() != 4 {
		t.Fatal("the referenced buffer did not come back on its last Free")
	}
	if a := testing.AllocsPerRun(50, func() {
		k := p1.GetBatch(ms[:32])
		FreeBatch(ms[:k])
	}); a != 0 {
		t.Fatalf("FreeBatch allocated %v times", a)
	}
}

func TestAllocPacketAndCopyBack(t *testing.T) {
	p := newPool(t, 8)
	for _, n := range []int{1, 1920, 1921, 2048 + 1920, 2048 + 1921, 9014} {
		m := p.AllocPacket(n)
		if m == nil {
			t.Fatalf("AllocPacket(%d) = nil", n)
		}
		want := 1 + (max(n-1920, 0)+2047)/2048
		if m.PktLen() != n || m.Segs() != want || m.Headroom() != 128 {
			t.Fatalf("AllocPacket(%d): len %d in %d buffers (want %d), headroom %d", n, m.PktLen(), m.Segs(), want, m.Headroom())
		}
		src := make([]byte, n)
		for i := range src {
			src[i] = byte(i * 7)
		}
		if k := m.CopyBack(0, src); k != n {
			t.Fatalf("CopyBack copied %d of %d", k, n)
		}
		if k := m.CopyBack(n-1, []byte{1, 2}); k != 1 {
			t.Fatalf("CopyBack past the end copied %d", k)
		}
		src[n-1] = 1
		got := make([]byte, n)
		if m.CopyOut(got); !bytes.Equal(got, src) {
			t.Fatalf("AllocPacket(%d): data differs after CopyBack", n)
		}
		m.Free()
	}
	if m := p.AllocPacket(9 * 2048); m != nil || p.Avail() != 8 {
		t.Fatalf("AllocPacket beyond the pool: %v, %d free", m, p.Avail())
	}
	if m := p.AllocPacket(0); m != nil {
		t.Fatal("AllocPacket(0) returned a packet")
	}
}

func TestChainRefs(t *testing.T) {
	p := newPool(t, 2)
	m := p.Get()
	m.SetNext(p.Get())
	if m.Shared() {
		t.Fatal("a fresh chain is shared")
	}
	m.Ref()
	if !m.Shared() || !m.Next().Shared() {
		t.Fatal("Ref did not reference the whole chain")
	}
	m.Free() // the first owner
	if p.Avail() != 0 || m.Shared() {
		t.Fatalf("after one of two Frees: %d free, shared %v", p.Avail(), m.Shared())
	}
	m.Free() // the second: the whole chain comes back, no double free
	if p.Avail() != 2 {
		t.Fatalf("after both Frees: %d of 2 free", p.Avail())
	}
}

// Producers and consumers on other goroutines: every chain AllocPacket
// hands out is its own, however the free list moves meanwhile (run with
// -race).
func TestAllocPacketConcurrent(t *testing.T) {
	p := newPool(t, 64)
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				m := p.AllocPacket(3000)
				if m == nil {
					continue
				}
				for b := m; b != nil; b = b.Next() {
					b.Bytes()[0] = byte(g)
				}
				for b := m; b != nil; b = b.Next() {
					if b.Bytes()[0] != byte(g) {
						t.Errorf("goroutine %d: a buffer of its chain was handed to another", g)
						return
					}
				}
				m.Free()
			}
		}(g)
	}
	wg.Wait()
	if p.Avail() != p.Cap() {
		t.Fatalf("%d of %d buffers free", p.Avail(), p.Cap())
	}
}
