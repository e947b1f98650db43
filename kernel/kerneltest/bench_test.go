package kerneltest_test

import (
	"fmt"
	"testing"

	"github.com/nke-harness/nke/kernel/kerneltest"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/frametest"
	"github.com/nke-harness/nke/nke/mbuf"
)

type passIn struct{}

func (passIn) FilterInput(nke.Interface, uint16, **mbuf.Mbuf, []byte) nke.Verdict {
	return nke.Continue
}

// sinkBurst is a burst-form protocol that frees each run in one batch,
// as the bare driver loop does.
type sinkBurst struct{}

func (sinkBurst) ProtoInputBurst(_ nke.Interface, pkts []*mbuf.Mbuf, _ [][]byte) {
	mbuf.FreeBatch(pkts)
}
func (sinkBurst) ProtoPreOutput(nke.Interface, **mbuf.Mbuf, []byte) (uint16, [6]byte, error) {
	return 0x88b5, [6]byte{}, nil
}

type passBurstIn struct{}

func (passBurstIn) FilterInputBurst(nke.Interface, []*mbuf.Mbuf, [][]byte, []nke.Verdict) {}

// BenchmarkHookOverhead is receive of 32-frame bursts from the device
// model: the bare driver (RxBurst and a batch free), then the interface
// layer over it (demux to a protocol that frees each run in a batch) with
// every hook empty, and with one interface filter of each form. The first
// two differ by the interface layer (poll bookkeeping, demux, the
// hand-off); its empty hooks cost one atomic load per burst each.
func BenchmarkHookOverhead(b *testing.B) {
	const burst = 32
	setup := func(b *testing.B) (*kerneltest.Rig, [][]byte) {
		r := kerneltest.New(b, kerneltest.QueueSize(256))
		f := frametest.NewEthernet(r.Guest.MAC, r.Peer.MAC, 0x88b5, make([]byte, 50)).Bytes()
		frames := make([][]byte, burst)
		for i := range frames {
			frames[i] = f
		}
		return r, frames
	}
	b.Run("bare-driver", func(b *testing.B) {
		r, frames := setup(b)
		pkts := make([]*mbuf.Mbuf, burst)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			r.Dev.DeliverBurst(frames)
			n, _ := r.Drv.RxBurst(pkts)
			mbuf.FreeBatch(pkts[:n])
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*burst), "ns/pkt")
	})
	for _, c := range []struct {
		name   string
		filter any
	}{{"ifnet/hooks-empty", nil}, {"ifnet/1-filter", passIn{}}, {"ifnet/1-burst-filter", passBurstIn{}}} {
		b.Run(c.name, func(b *testing.B) {
			r, frames := setup(b)
			if _, err := r.Ifp.AttachProto(nke.ProtocolSpec{Name: "sink", Demux: []nke.DemuxDesc{nke.EtherType(0x88b5)},
				Protocol: sinkBurst{}}); err != nil {
				b.Fatal(err)
			}
			if c.filter != nil {
				if _, err := r.Ifp.AttachFilter(nke.InterfaceFilterSpec{Name: fmt.Sprint("f"), Filter: c.filter}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r.Dev.DeliverBurst(frames)
				r.Poll()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*burst), "ns/pkt")
		})
	}
}
