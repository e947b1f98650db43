package netstack

import (
	"fmt"
	"testing"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Trivial filters, per-packet and burst form, both directions.
type passFilter struct{}

func (passFilter) FilterIPInput(**mbuf.Mbuf, int, uint8) nke.Verdict { return nke.Continue }
func (passFilter) FilterIPOutput(**mbuf.Mbuf) nke.Verdict            { return nke.Continue }

type passBurst struct{}

func (passBurst) FilterIPInputBurst([]*mbuf.Mbuf, []int, []uint8, []nke.Verdict) {}
func (passBurst) FilterIPOutputBurst([]*mbuf.Mbuf, []nke.Verdict)                {}

// dispatchRig is an endpoint's IP filter dispatcher without gVisor: a
// vector of n packets run through k filters.
func dispatchRig(tb testing.TB, k, n int, burst bool) (*Stack, *ipVec, []*mbuf.Mbuf) {
	s, ifp, _ := newStack(tb)
	for i := 0; i < k; i++ {
		var f any = passFilter{}
		if burst {
			f = passBurst{}
		}
		if _, err := s.AttachIPFilter(nke.IPFilterSpec{Name: fmt.Sprintf("f%d", i), Family: nke.IPv4, Filter: f}); err != nil {
			tb.Fatal(err)
		}
	}
	pkts := make([]*mbuf.Mbuf, n)
	for i := range pkts {
		pkts[i] = packet(tb, ifp.Pool(), echo(false, uint16(i), 32))
	}
	tb.Cleanup(func() { mbuf.FreeBatch(pkts) })
	return s, newIPVec(vecLen), pkts
}

func runVec(s *Stack, v *ipVec, pkts []*mbuf.Mbuf, out bool) int {
	for i, m := range pkts {
		v.pkts[i], v.offs[i], v.protos[i], v.lens[i] = m, ipv4MinLen, 1, 60
	}
	c := s.ep.ipf.v4
	if c.Empty() {
		return len(pkts)
	}
	snap := c.Acquire()
	lane := 0
	if out {
		lane = hook.SharedLane
	}
	n := s.ep.runFilters(snap, 0, v, len(pkts), out, lane)
	snap.Release()
	return n
}

// The input burst path allocates nothing with 0, 1 and 8 filters, in
// either form.
func TestIPFilterDispatchAllocs(t *testing.T) {
	for _, burst := range []bool{false, true} {
		for _, k := range []int{0, 1, 8} {
			s, v, pkts := dispatchRig(t, k, 32, burst)
			for _, out := range []bool{false, true} {
				if a := testing.AllocsPerRun(200, func() {
					if runVec(s, v, pkts, out) != len(pkts) {
						t.Fatal("packets stopped")
					}
				}); a != 0 {
					t.Fatalf("%d filters (burst %v, out %v): %v allocations per burst", k, burst, out, a)
				}
			}
		}
	}
}

// BenchmarkIPFilterDispatch: bursts of 32 through 0, 1 and 8 trivial
// filters; ns/pkt/filter is the cost of one filter on one packet.
func BenchmarkIPFilterDispatch(b *testing.B) {
	for _, dir := range []string{"input", "output"} {
		for _, form := range []string{"packet", "burst"} {
			for _, k := range []int{0, 1, 8} {
				b.Run(fmt.Sprintf("%s/%s/filters=%d", dir, form, k), func(b *testing.B) {
					s, v, pkts := dispatchRig(b, k, 32, form == "burst")
					b.ReportAllocs()
					b.ResetTimer()
					for i := 0; i < b.N; i++ {
						runVec(s, v, pkts, dir == "output")
					}
					ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N) / 32
					b.ReportMetric(ns, "ns/pkt")
					if k > 0 {
						b.ReportMetric(ns/float64(k), "ns/pkt/filter")
					}
				})
			}
		}
	}
}
