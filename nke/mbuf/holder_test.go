package mbuf_test

import (
	"testing"

	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/nke/mbuf/mbuftest"
)

func TestReclaimHeld(t *testing.T) {
	p := mbuftest.NewPool(t, "held", 8, 2048, 128)
	q := mbuftest.NewPool(t, "other", 8, 2048, 128)
	mbuftest.CheckPools(t, p, q)
	a, b, c := p.Get(), p.AllocPacket(5000), q.Get()
	a.SetHolder(7)
	b.SetHolder(7) // a three-buffer chain: freed whole
	c.SetHolder(7)
	d := p.Get()
	d.SetHolder(7)
	d.ClearHolder() // handed back: not reclaimed
	e := p.Get()
	e.SetHolder(7)
	e.Free() // freed by its holder: not freed again
	f := p.Get()
	f.SetHolder(8) // someone else's
	if n := mbuf.ReclaimHeld(7); n != 3 {
		t.Fatalf("reclaimed %d packets, want 3", n)
	}
	if n := mbuf.ReclaimHeld(7); n != 0 {
		t.Fatalf("reclaimed %d more on a second call", n)
	}
	if d.Holder() != 0 || f.Holder() != 8 {
		t.Fatalf("holders %d, %d", d.Holder(), f.Holder())
	}
	d.Free()
	f.Free()
	if g := p.Get(); g.Holder() != 0 {
		t.Fatalf("a fresh buffer is held by %d", g.Holder())
	} else {
		g.Free()
	}
}
