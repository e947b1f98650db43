package virtionet_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/virtio/devmodel"
	"github.com/nke-harness/nke/virtio/virtionet"
	"github.com/nke-harness/nke/virtio/virtqueue"
)

// The data path allocates nothing per burst: rx with the device delivering,
// tx with the device completing, each with recycling through the pool.
func TestBurstsDoNotAllocate(t *testing.T) {
	for _, burst := range []int{1, 8, 32} {
		r := newRig(t, devmodel.Options{Tx: func([]byte) {}}, virtionet.Options{})
		f := frame(mac, 1, 64)
		pkts := make([]*mbuf.Mbuf, burst)
		rx := testing.AllocsPerRun(200, func() {
			for i := 0; i < burst; i++ {
				if err := r.dev.Deliver(f); err != nil {
					t.Fatal(err)
				}
			}
			n, err := r.drv.RxBurst(pkts)
			if n != burst || err != nil {
				t.Fatalf("RxBurst = %d, %v", n, err)
			}
			for _, m := range pkts[:n] {
				m.Free()
			}
		})
		tx := testing.AllocsPerRun(200, func() {
			pool := r.drv.Pool()
			if pool.GetBatch(pkts) != burst {
				t.Fatal("pool empty")
			}
			for _, m := range pkts {
				b, _ := m.Append(64)
				copy(b, f)
			}
			if n, err := r.drv.TxBurst(pkts); n != burst || err != nil {
				t.Fatalf("TxBurst = %d, %v", n, err)
			}
		})
		if rx != 0 || tx != 0 {
			t.Errorf("burst %d: rx %v allocs, tx %v allocs; want 0", burst, rx, tx)
		}
	}
}

// A device delivering from another goroutine while the driver polls: run
// with -race. Frames arrive complete and in order.
func TestConcurrentDelivery(t *testing.T) {
	r := newRig(t, devmodel.Options{}, virtionet.Options{RxQueueSize: 64})
	const total = 5000
	var wg sync.WaitGroup
	wg.Add(1)
	stop := make(chan struct{})
	defer func() { close(stop); wg.Wait() }()
	go func() {
		defer wg.Done()
		for i := 0; i < total; {
			select {
			case <-stop:
				return
			default:
			}
			err := r.dev.Deliver(frame(mac, i, 60+i%200))
			if errors.Is(err, devmodel.ErrBacklog) {
				time.Sleep(50 * time.Microsecond)
				continue
			}
			i++
		}
	}()
	got := 0
	deadline := time.Now().Add(30 * time.Second)
	for got < total && time.Now().Before(deadline) {
		n, err := r.drv.RxBurst(r.pkts)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range r.pkts[:n] {
			want := frame(mac, got, 60+got%200)
			b := m.Bytes()
			if m.PktLen() != len(want) || b[14] != want[14] || b[len(b)-1] != want[len(want)-1] {
				t.Fatalf("frame %d: wrong content or length %d", got, m.PktLen())
			}
			m.Free()
			got++
		}
	}
	if got != total {
		t.Fatalf("received %d of %d (device backlog %d): a stalled ring", got, total, r.dev.Backlog())
	}
}

// BenchmarkRx measures the driver's receive cost per packet against the
// device model. The model's own share (copying each 64-byte frame into an
// rx buffer and publishing the burst) is included.
func BenchmarkRx(b *testing.B) {
	forLayouts(b, func(b *testing.B, burst int) {
		{
			r := newRig(b, devmodel.Options{}, virtionet.Options{})
			f := frame(mac, 1, 64)
			frames := make([][]byte, burst)
			for i := range frames {
				frames[i] = f
			}
			pkts := make([]*mbuf.Mbuf, burst)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r.dev.DeliverBurst(frames)
				n, _ := r.drv.RxBurst(pkts)
				for _, m := range pkts[:n] {
					m.Free()
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*burst), "ns/pkt")
		}
	})
}

// forLayouts runs a benchmark per ring layout and burst size, named
// e.g. "packed/burst=8".
func forLayouts(b *testing.B, run func(b *testing.B, burst int)) {
	defer func(l virtqueue.Layout) { rigLayout = l }(rigLayout)
	for _, l := range []virtqueue.Layout{virtqueue.Split, virtqueue.Packed} {
		rigLayout = l
		for _, burst := range []int{1, 8, 32} {
			b.Run(fmt.Sprintf("%v/burst=%d", l, burst), func(b *testing.B) { run(b, burst) })
		}
	}
}

// BenchmarkTx measures the driver's transmit cost per packet (filling
// buffers from the pool, TxBurst, reclaiming) against the device model,
// which consumes each burst synchronously on the kick.
func BenchmarkTx(b *testing.B) {
	forLayouts(b, func(b *testing.B, burst int) {
		{
			r := newRig(b, devmodel.Options{Tx: func([]byte) {}}, virtionet.Options{})
			f := frame(mac, 1, 64)
			pkts := make([]*mbuf.Mbuf, burst)
			pool := r.drv.Pool()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				pool.GetBatch(pkts)
				for _, m := range pkts {
					d, _ := m.Append(64)
					copy(d, f)
				}
				r.drv.TxBurst(pkts)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*burst), "ns/pkt")
		}
	})
}
