package loader

import (
	"testing"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/bundles"
	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/nke/nketest"
)

// TestIPFirewallBundle runs the real ipfw through the loader: its rules
// from the preference-style settings drop ICMP; observe-only, the drop
// is refused and counted.
func TestIPFirewallBundle(t *testing.T) {
	pool, err := mbuf.NewPool(dma.NewHeap(1<<20), "loader-ipfw", 16, 2048, 128)
	if err != nil {
		t.Fatal(err)
	}
	icmp := []byte{0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 2, 2, 10, 0, 2, 15, 8, 0, 0, 0, 0, 0, 0, 0}
	for _, observeOnly := range []bool{false, true} {
		l, k := builtinRig(t)
		b, err := bundles.Find("IPFirewall.nke")
		if err != nil {
			t.Fatal(err)
		}
		if observeOnly {
			m := *b.Manifest
			m.Harness.Capabilities = []string{"observe"}
			b.Manifest = &m
		}
		must(t, l.Load(ctx, b, Options{Settings: "block in proto icmp", OverrideSettings: true}))
		var v nke.Verdict
		for _, s := range k.IPHook.(*nketest.IPHook).Attached() {
			if s.Family != nke.IPv4 {
				continue
			}
			m := pool.AllocPacket(len(icmp))
			m.CopyBack(0, icmp)
			switch f := s.Filter.(type) {
			case nke.IPInputBurstFilter:
				vs := []nke.Verdict{nke.Continue}
				f.FilterIPInputBurst([]*mbuf.Mbuf{m}, []int{20}, []uint8{1}, vs)
				v = vs[0]
			case nke.IPInputFilter:
				v = f.FilterIPInput(&m, 20, 1)
			}
			m.Free()
		}
		want, refused := nke.Drop, uint64(0)
		if observeOnly {
			want, refused = nke.Continue, 1
		}
		if rows := l.Stat(); v != want || rows[0].Refused != refused {
			t.Errorf("observe-only %v: verdict %v, refused %d", observeOnly, v, rows[0].Refused)
		}
		must(t, l.UnloadAll(ctx))
	}
	if pool.InUse() != 0 {
		t.Errorf("%d buffers leaked", pool.InUse())
	}
}
