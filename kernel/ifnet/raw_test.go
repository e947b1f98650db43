package ifnet

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// reflector sends back every frame tagged 7 with its addresses swapped,
// drops those tagged 8, and passes the rest.
type reflector struct{ seen int }

func (f *reflector) FilterRaw(ifp nke.Interface, frame []byte) nke.RawVerdict {
	f.seen++
	switch frame[14] {
	case 7:
		var a [6]byte
		copy(a[:], frame[:6])
		copy(frame[:6], frame[6:12])
		copy(frame[6:12], a[:])
		return nke.RawTransmit
	case 8:
		return nke.RawDrop
	}
	return nke.RawPass
}

func TestRawHookVerdicts(t *testing.T) {
	r := newFilterRig(t)
	raw := &reflector{}
	if _, err := r.ifp.AttachRawHook(nke.RawHookSpec{Name: "reflect", Filter: raw}); err != nil {
		t.Fatal(err)
	}
	// An interface filter runs after the raw hook: it never sees what
	// the hook dropped or sent back.
	after := &tagFilter{name: "iflt", verdicts: map[byte]nke.Verdict{}}
	attach(t, r, nke.InterfaceFilterSpec{Name: after.name, Filter: after})
	r.wire(ethFrame(0x0800, 1, 60), ethFrame(0x0800, 7, 60), ethFrame(0x0800, 8, 60), ethFrame(0x0800, 2, 60))
	r.ifp.PollOnce()
	if raw.seen != 4 || len(after.seen) != 2 || len(r.got[0x0800]) != 2 {
		t.Fatalf("raw saw %d, interface filter %d, protocol %d; want 4, 2, 2", raw.seen, len(after.seen), len(r.got[0x0800]))
	}
	back := ethFrame(0x0800, 7, 60)
	copy(back, []byte{2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1})
	if diff := cmp.Diff([][]byte{back}, r.drv.sent); diff != "" {
		t.Fatalf("sent back (-want +got):\n%s", diff)
	}
	if got := r.ifp.RawHooks(); len(got) != 1 || got[0].Packets != 4 || got[0].Drop != 1 || got[0].Swallow != 1 || got[0].Continue != 2 {
		t.Errorf("raw hook counters %+v", got)
	}
	if s := r.ifp.Stats(); s.RxRawDrops != 1 || s.RxBounced != 1 {
		t.Errorf("interface counters %+v", s)
	}
}

type rawBurst struct{ calls int }

func (f *rawBurst) FilterRawBurst(ifp nke.Interface, frames [][]byte, v []nke.RawVerdict) {
	f.calls++
	for i, fr := range frames {
		if fr[14]%2 == 1 {
			v[i] = nke.RawDrop
		}
	}
}

// rawPanic panics on frames tagged 4 and passes the others.
type rawPanic struct{ seen []byte }

func (f *rawPanic) FilterRaw(_ nke.Interface, fr []byte) nke.RawVerdict {
	f.seen = append(f.seen, fr[14])
	if fr[14] == 4 {
		panic("raw hook bug")
	}
	return nke.RawPass
}

// rawBurstPanic is its burst form.
type rawBurstPanic struct{}

func (rawBurstPanic) FilterRawBurst(_ nke.Interface, frames [][]byte, _ []nke.RawVerdict) {
	panic("raw hook bug")
}

func TestRawHookBurstAndFault(t *testing.T) {
	r := newFilterRig(t)
	b := &rawBurst{}
	r.ifp.AttachRawHook(nke.RawHookSpec{Name: "odd", Filter: b})
	for i := 0; i < 6; i++ {
		r.wire(ethFrame(0x0800, byte(i), 60))
	}
	r.ifp.PollOnce()
	if b.calls != 1 || len(r.got[0x0800]) != 3 {
		t.Fatalf("burst hook: %d calls, %d frames on", b.calls, len(r.got[0x0800]))
	}
	bad, _ := r.ifp.AttachRawHook(nke.RawHookSpec{Name: "bad", Filter: rawBurstPanic{}})
	r.wire(ethFrame(0x0800, 2, 60), ethFrame(0x0800, 4, 60))
	r.ifp.PollOnce()
	<-bad.Done()
	if len(r.got[0x0800]) != 3 {
		t.Fatalf("the burst a faulting burst-form raw hook had was delivered: %d frames", len(r.got[0x0800]))
	}
	r.mu.Lock()
	logs := r.logs.String()
	r.mu.Unlock()
	if !strings.Contains(logs, "filter bad panicked: raw hook bug") {
		t.Errorf("fault not reported:\n%s", logs)
	}
	r.wire(ethFrame(0x0800, 6, 60))
	r.ifp.PollOnce()
	if len(r.got[0x0800]) != 4 {
		t.Fatalf("traffic did not go on after the fault")
	}
}

// BenchmarkRawHook: a burst of 32 through k raw hooks, per-frame form.
func BenchmarkRawHook(b *testing.B) {
	for _, k := range []int{0, 1, 8} {
		b.Run(fmt.Sprintf("hooks=%d", k), func(b *testing.B) {
			r := newFilterRig(b)
			AttachFuncs(b, r.ifp, freeIt, EtherTypeIPv4)
			for i := 0; i < k; i++ {
				r.ifp.AttachRawHook(nke.RawHookSpec{Name: fmt.Sprintf("h%d", i), Filter: passRaw{}})
			}
			pkts := make([]*mbuf.Mbuf, 32)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r.pool.GetBatch(pkts)
				for _, m := range pkts {
					m.Append(60)
					m.Bytes()[12] = 0x08
				}
				n := len(pkts)
				if !r.ifp.raw.Empty() {
					n = r.ifp.rawInput(pkts)
				}
				r.ifp.input(pkts[:n])
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*32), "ns/pkt")
		})
	}
}

type passRaw struct{}

func (passRaw) FilterRaw(nke.Interface, []byte) nke.RawVerdict { return nke.RawPass }

// A per-packet raw hook that panics drops the frame it was handling, not
// its burst, as at every other hook: the frames before keep their
// verdicts, those after pass (the hook, gone, never saw them). The
// conformance suite found it dropping the whole burst.
func TestRawHookPanicDropsOneFrame(t *testing.T) {
	r := newFilterRig(t)
	bad := &rawPanic{}
	a, _ := r.ifp.AttachRawHook(nke.RawHookSpec{Name: "bad", Filter: bad})
	r.wire(ethFrame(0x0800, 2, 60), ethFrame(0x0800, 4, 60), ethFrame(0x0800, 6, 60))
	r.ifp.PollOnce()
	<-a.Done()
	var got []byte
	for _, f := range r.got[0x0800] {
		got = append(got, f[14])
	}
	if fmt.Sprint(got) != "[2 6]" || fmt.Sprint(bad.seen) != "[2 4]" {
		t.Fatalf("delivered %v (want [2 6]), the hook saw %v (want [2 4])", got, bad.seen)
	}
	if s := r.ifp.Stats(); s.RxRawDrops != 1 {
		t.Errorf("raw drops %d, want 1", s.RxRawDrops)
	}
	if c := r.ifp.RawHooks(); len(c) != 0 {
		t.Errorf("the faulting hook is still attached: %+v", c)
	}
}
