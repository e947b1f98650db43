package mbuf_test

import (
	"testing"

	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/nke/mbuf/mbuftest"
)

const (
	testBuf  = 64
	testHead = 16
	data36   = "abcdefghijklmnopqrstuvwxyz0123456789"
)

// chainShapes split data36 into chains of 1..4 buffers, one with an empty
// buffer in the middle.
var chainShapes = []struct {
	name string
	segs []int
}{
	{"1buf", []int{36}},
	{"2buf", []int{10, 26}},
	{"3buf-empty", []int{5, 0, 31}},
	{"4buf", []int{9, 9, 9, 9}},
	{"4buf-ragged", []int{1, 20, 14, 1}},
}

func pools(t testing.TB, count int) *mbuf.Pool {
	t.Helper()
	p := mbuftest.NewPool(t, t.Name(), count, testBuf, testHead)
	mbuftest.CheckPools(t, p)
	return p
}

// chain builds a packet from p holding data split after the given lengths;
// the first buffer has the pool's headroom, the others start at offset 0.
func chain(t testing.TB, p *mbuf.Pool, data string, segs ...int) *mbuf.Mbuf {
	t.Helper()
	var head, last *mbuf.Mbuf
	for i, n := range segs {
		b := p.Get()
		if b == nil {
			t.Fatal("pool empty")
		}
		off := p.Headroom()
		if i > 0 {
			off = 0
		}
		if !b.SetData(off, n) {
			t.Fatalf("SetData(%d, %d)", off, n)
		}
		copy(b.Bytes(), data[:n])
		data = data[n:]
		if head == nil {
			head = b
		} else {
			last.SetNext(b)
		}
		last = b
	}
	if data != "" {
		t.Fatalf("chain: %d bytes left over", len(data))
	}
	return head
}

func contents(m *mbuf.Mbuf) string {
	b := make([]byte, m.PktLen())
	m.CopyOut(b)
	return string(b)
}

func checkPkt(t testing.TB, what string, m *mbuf.Mbuf, want string) {
	t.Helper()
	if got := contents(m); got != want || m.PktLen() != len(want) {
		t.Errorf("%s: contents %q (PktLen %d), want %q", what, got, m.PktLen(), want)
	}
}

func mbuftestPool(t testing.TB, count, size int) *mbuf.Pool {
	t.Helper()
	p := mbuftest.NewPool(t, t.Name()+"-small", count, size, 0)
	mbuftest.CheckPools(t, p)
	return p
}
