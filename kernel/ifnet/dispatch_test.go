package ifnet

import (
	"fmt"
	"testing"

	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/mbuf"
)

// stubDriver is the least a Driver can be, for measuring the interface
// layer alone.
type stubDriver struct{ pool *mbuf.Pool }

func (d stubDriver) RxBurst([]*mbuf.Mbuf) (int, error) { return 0, nil }
func (d stubDriver) TxBurst(p []*mbuf.Mbuf) (int, error) {
	for _, m := range p {
		m.Free()
	}
	return len(p), nil
}
func (d stubDriver) Reclaim() error        { return nil }
func (d stubDriver) TxInFlight() int       { return 0 }
func (d stubDriver) Health() error         { return nil }
func (d stubDriver) Recover() error        { return nil }
func (d stubDriver) LinkUp() (bool, error) { return true, nil }
func (d stubDriver) MAC() []byte           { return []byte{2, 0, 0, 0, 0, 1} }
func (d stubDriver) MTU() int              { return 1500 }
func (d stubDriver) Pool() *mbuf.Pool      { return d.pool }

func newStub(tb testing.TB) (*Interface, *mbuf.Pool) {
	pool, err := mbuf.NewPool(dma.NewHeap(1<<20), "stub", 256, 2048, 128)
	if err != nil {
		tb.Fatal(err)
	}
	ifp, err := New(stubDriver{pool}, Config{})
	if err != nil {
		tb.Fatal(err)
	}
	AttachFuncs(tb, ifp, freeIt, EtherTypeARP, EtherTypeIPv6, EtherTypeIPv4)
	return ifp, pool
}

func fill(pool *mbuf.Pool, pkts []*mbuf.Mbuf) {
	pool.GetBatch(pkts)
	for _, m := range pkts {
		b, _ := m.Append(60)
		b[12], b[13] = 0x08, 0x00
	}
}

// Demultiplexing a burst allocates nothing.
func TestInputDoesNotAllocate(t *testing.T) {
	ifp, pool := newStub(t)
	pkts := make([]*mbuf.Mbuf, 32)
	if a := testing.AllocsPerRun(100, func() {
		fill(pool, pkts)
		ifp.input(pkts)
	}); a != 0 {
		t.Fatalf("input allocated %v times per burst", a)
	}
	if a := testing.AllocsPerRun(100, func() {
		m := pool.Get()
		m.Append(60)
		ifp.Output(m)
		var out [1]*mbuf.Mbuf
		ifp.txq.DequeueBatch(out[:])
		out[0].Free()
	}); a != 0 {
		t.Fatalf("Output allocated %v times per packet", a)
	}
}

// BenchmarkInput is the interface layer's receive cost: counting, stamping
// and EtherType demultiplexing of a burst, the handler freeing each packet.
func BenchmarkInput(b *testing.B) {
	for _, burst := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("burst=%d", burst), func(b *testing.B) {
			ifp, pool := newStub(b)
			pkts := make([]*mbuf.Mbuf, burst)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				fill(pool, pkts)
				ifp.input(pkts)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*burst), "ns/pkt")
		})
	}
}
