package virtqueue

import (
	"fmt"
	"testing"
)

// BenchmarkRing measures the cost per buffer of the whole exchange, split
// against packed, in bursts: the driver adds a burst of one-descriptor rx
// buffers (or two-descriptor tx chains), publishes and decides on a kick;
// the device pops, pushes and publishes them; the driver reaps. EVENT_IDX
// is on and the device asks for kicks, so the kick decision reads the
// device's event. ns/op is per buffer.
func BenchmarkRing(b *testing.B) {
	for _, lc := range layouts {
		for _, kind := range []string{"rx", "tx"} {
			for _, burst := range []int{1, 8, 32} {
				b.Run(fmt.Sprintf("%s/%s/burst=%d", lc.name, kind, burst), func(b *testing.B) {
					benchRing(b, lc, kind == "tx", burst)
				})
			}
		}
	}
}

func benchRing(b *testing.B, lc layoutCase, tx bool, burst int) {
	e := newEnv(b, lc, 256, true, false)
	buf := e.buf(2048)
	hdr := e.buf(12)
	segs := []Seg{{hdr.Addr, 12, false}, {buf.Addr, 1514, false}}
	e.dev.SetNotify(true)
	out := make([]Used, burst)
	var c Chain
	c.Read, c.Write = make([][]byte, 0, 4), make([][]byte, 0, 4)
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(burst, b.N-done)
		for i := 0; i < n; i++ {
			var ok bool
			if tx {
				_, ok = e.drv.AddChain(segs)
			} else {
				_, ok = e.drv.Add1(buf.Addr, 2048, true)
			}
			if !ok {
				b.Fatal("add failed")
			}
		}
		e.drv.Publish()
		e.drv.NeedsKick()
		for i := 0; i < n; i++ {
			if ok, err := e.dev.Pop(&c); !ok || err != nil {
				b.Fatal(ok, err)
			}
			e.dev.Push(c.ID, uint32(c.WritableLen()))
		}
		e.dev.PublishUsed()
		if got, err := e.drv.Reap(out[:n]); got != n || err != nil {
			b.Fatal(got, err)
		}
		done += n
	}
}
