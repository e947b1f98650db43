package ifnet

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nke-harness/nke/kernel/capture"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Every hook point shows each packet before and after each filter with
// its verdict; with the capturer removed nothing more is recorded.
func TestCapturePoints(t *testing.T) {
	r := newFilterRig(t)
	a := &tagFilter{name: "a", verdicts: map[byte]nke.Verdict{2: nke.Drop}}
	attach(t, r, nke.InterfaceFilterSpec{Name: "a", Filter: a})
	r.ifp.AttachRawHook(nke.RawHookSpec{Name: "raw", Filter: passRaw{}})
	ring := capture.NewRing(64, 64)
	r.ifp.Capture(ring)
	r.wire(ethFrame(0x0800, 1, 60), ethFrame(0x0800, 2, 60))
	r.send(ethFrame(0x0806, 3, 60))
	r.ifp.PollOnce()
	r.ifp.Capture(nil)
	r.wire(ethFrame(0x0800, 1, 60))
	r.ifp.PollOnce()

	recs, _ := ring.Records()
	var got []string
	for _, rec := range recs {
		got = append(got, capture.Comment(rec.Point)+" "+string(rune('0'+rec.Data[14])))
		if len(rec.Data) != 60 || rec.Len != 60 {
			t.Errorf("%s: %d bytes captured of %d, want the whole 60-byte frame", capture.Comment(rec.Point), len(rec.Data), rec.Len)
		}
	}
	want := []string{
		"vt0 raw in raw before 1", "vt0 raw in raw before 2",
		"vt0 raw in raw after: continue 1", "vt0 raw in raw after: continue 2",
		"vt0 filters in a before 1", "vt0 filters in a before 2",
		"vt0 filters in a after: continue 1", "vt0 filters in a after: drop 2",
		"vt0 protocols in proto-0800 before 1",
		"vt0 filters out a before 3", "vt0 filters out a after: continue 3",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("captured (-want +got):\n%s", diff)
	}
}

// Nobody capturing costs no allocation, capturing neither.
func TestCaptureDoesNotAllocate(t *testing.T) {
	r := newFilterRig(t)
	attach(t, r, nke.InterfaceFilterSpec{Name: "nop", Filter: nop{}})
	AttachFuncs(t, r.ifp, freeIt, EtherTypeIPv4)
	pkts := make([]*mbuf.Mbuf, 32)
	run := func() {
		r.pool.GetBatch(pkts)
		for _, m := range pkts {
			b, _ := m.Append(60)
			b[12], b[13] = 0x08, 0x00
		}
		r.ifp.input(pkts)
	}
	if a := testing.AllocsPerRun(50, run); a != 0 {
		t.Errorf("%v allocations per burst, not capturing", a)
	}
	r.ifp.Capture(capture.NewRing(128, 64))
	if a := testing.AllocsPerRun(50, run); a != 0 {
		t.Errorf("%v allocations per burst, capturing", a)
	}
}
