package loader

import (
	"testing"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// BenchmarkIPInput compares a call through the loader's wrapper with a
// direct call of the same filter: the cost per packet of capabilities,
// drain accounting and the replace slot.
func BenchmarkIPInput(b *testing.B) {
	for _, wrapped := range []bool{false, true} {
		name := "direct"
		if wrapped {
			name = "wrapped"
		}
		b.Run(name, func(b *testing.B) {
			c := &counter{}
			var f nke.IPInputFilter = c
			if wrapped {
				r := newRig(b, 0)
				r.register(ipModule("a", "com.a", c, nil))
				if err := r.l.Load(ctx, mk("com.a", "1.0", "1.0", "a", nil), Options{}); err != nil {
					b.Fatal(err)
				}
				f = r.ip.Attached()[0].Filter.(nke.IPInputFilter)
			}
			m := &mbuf.Mbuf{}
			b.ReportAllocs()
			for b.Loop() {
				f.FilterIPInput(&m, 20, 6)
			}
		})
	}
}
