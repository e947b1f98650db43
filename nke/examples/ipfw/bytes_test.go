package ipfw

import (
	"testing"

	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/mbuf"
)

// FuzzBytes holds the byte path (DecideInput, DecideOutput: what the
// wasm twin runs) equal to the mbuf path on the same bytes, split across
// buffers: the same fields read, the same rule, the same verdict.
func FuzzBytes(f *testing.F) {
	for _, c := range verdictCases {
		b, off := c.p.build(f)
		f.Add(b, uint16(c.split), off, c.p.proto)
	}
	f.Add([]byte{0x45}, uint16(0), 20, uint8(6))
	f.Add([]byte{0x60, 0, 0, 0, 0, 8, 0, 64}, uint16(3), 40, uint8(17))
	pool, err := mbuf.NewPool(dma.NewHeap(32<<10), "fuzz", 8, 2048, 128)
	if err != nil {
		f.Fatal(err)
	}
	fw := &Firewall{}
	fw.set.Store(fuzzRuleset)
	f.Fuzz(func(t *testing.T, data []byte, split uint16, offset int, proto uint8) {
		data = data[:min(len(data), 2048-128)]
		for _, v6 := range []bool{false, true} {
			for _, dir := range []uint8{dirIn, dirOut} {
				m := fuzzChain(t, pool, data, 2, int(split))
				var pm, pb packet
				if dir == dirIn {
					pm.input(fuzzRuleset, m, v6, offset, proto)
				} else {
					pm.output(fuzzRuleset, m, v6)
				}
				want := filter(fw, m, v6, dir, offset, proto)
				m.Free()
				var got = fw.DecideOutput(data, v6)
				if dir == dirIn {
					got = fw.DecideInput(data, v6, offset, proto)
					pb.hasProto, pb.proto = true, proto
					n := 20
					if v6 {
						n = 40
					}
					h := data[:min(n, len(data))]
					pb.addresses(h, v6)
					if !(len(h) == n && !v6 && v4Later(h)) {
						pb.transportBytes(fuzzRuleset, data, offset)
					}
				} else {
					pb.outputBytes(fuzzRuleset, data, v6)
				}
				if pm != pb || got != want {
					t.Fatalf("v6 %v dir %d: bytes %+v verdict %v; mbuf %+v verdict %v", v6, dir, pb, got, pm, want)
				}
			}
		}
	})
}

// The byte path allocates nothing.
func TestBytesAllocs(t *testing.T) {
	fw := New(Rules{})
	if err := func() error { r, err := Parse(testRules); fw.Replace(r); return err }(); err != nil {
		t.Fatal(err)
	}
	b, off := verdictCases[0].p.build(t)
	if n := testing.AllocsPerRun(100, func() {
		fw.DecideInput(b, verdictCases[0].p.v6(), off, verdictCases[0].p.proto)
		fw.DecideOutput(b, verdictCases[0].p.v6())
	}); n != 0 {
		t.Errorf("%v allocations per packet, want 0", n)
	}
}
