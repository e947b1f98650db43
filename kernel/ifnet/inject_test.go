package ifnet

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nke-harness/nke/kernel/kevent"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// holder swallows every packet it did not inject itself and lets its own
// re-injected ones pass: the Apple pattern, with provenance instead of a
// private tag.
type holder struct {
	att   nke.Attachment
	held  []*mbuf.Mbuf
	seen  int
	frame [][]byte
}

func (h *holder) FilterInput(_ nke.Interface, _ uint16, m **mbuf.Mbuf, frame []byte) nke.Verdict {
	h.seen++
	if nke.InjectedByMe(*m, h.att) {
		return nke.Continue
	}
	h.held = append(h.held, *m)
	h.frame = append(h.frame, append([]byte(nil), frame...))
	return nke.Swallow
}

func (h *holder) FilterOutput(_ nke.Interface, _ uint16, m **mbuf.Mbuf) nke.Verdict {
	h.seen++
	if nke.InjectedByMe(*m, h.att) {
		return nke.Continue
	}
	h.held = append(h.held, *m)
	return nke.Swallow
}

// release re-injects what it held, as whole frames again.
func (h *holder) release(t *testing.T, ifp *Interface, out bool) {
	t.Helper()
	for i, m := range h.held {
		var err error
		if out {
			err = ifp.InjectOutput(m, h.att)
		} else {
			hdr, ok := m.Prepend(14)
			if !ok {
				t.Fatal("no headroom to put the frame header back")
			}
			copy(hdr, h.frame[i])
			err = ifp.InjectInput(m, h.att)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	h.held, h.frame = nil, nil
}

// A filter swallows frames, re-injects them later, recognises them by
// their provenance and passes them; the filters after it and the protocol
// see each frame once, in order; the provenance says who and how often.
func TestInjectInputTagged(t *testing.T) {
	r := newFilterRig(t)
	h := &holder{}
	h.att = attach(t, r, nke.InterfaceFilterSpec{Name: "holder", Filter: h})
	var log []string
	after := &tagFilter{name: "after", log: &log, verdicts: map[byte]nke.Verdict{}}
	attach(t, r, nke.InterfaceFilterSpec{Name: "after", Filter: after})
	var prov []nke.Provenance
	AttachFuncs(t, r.ifp, func(et uint16, m *mbuf.Mbuf, frame []byte) {
		p, _ := nke.InjectedBy(m)
		prov = append(prov, p)
		r.got[et] = append(r.got[et], WholeFrame(m, frame))
		m.Free()
	}, EtherTypeIPv4)
	frames := [][]byte{ethFrame(0x0800, 1, 60), ethFrame(0x0800, 2, 60)}
	r.wire(frames...)
	r.ifp.PollOnce()
	if len(h.held) != 2 || len(after.seen) != 0 || len(r.got[0x0800]) != 0 {
		t.Fatalf("held %d, after saw %d, delivered %d", len(h.held), len(after.seen), len(r.got[0x0800]))
	}
	h.release(t, r.ifp, false)
	r.ifp.PollOnce()
	if diff := cmp.Diff(frames, r.got[0x0800]); diff != "" {
		t.Errorf("delivered (-want +got):\n%s", diff)
	}
	want := nke.Provenance{Injector: h.att.ID(), Generation: 1}
	if diff := cmp.Diff([]nke.Provenance{want, want}, prov); diff != "" {
		t.Errorf("provenance (-want +got):\n%s", diff)
	}
	if h.seen != 4 || len(after.seen) != 2 || r.ifp.Stats().RxInjected != 2 {
		t.Errorf("holder saw %d (want 4), after %d (want 2), injected %d", h.seen, len(after.seen), r.ifp.Stats().RxInjected)
	}
}

// Output injection re-runs every output filter, the injector's too.
func TestInjectOutputTagged(t *testing.T) {
	r := newFilterRig(t)
	h := &holder{}
	h.att = attach(t, r, nke.InterfaceFilterSpec{Name: "holder", Filter: h})
	r.send(ethFrame(0x0800, 1, 60))
	r.ifp.PollOnce()
	if len(r.drv.sent) != 0 || len(h.held) != 1 {
		t.Fatalf("sent %d, held %d", len(r.drv.sent), len(h.held))
	}
	h.release(t, r.ifp, true)
	r.ifp.PollOnce()
	if diff := cmp.Diff([][]byte{ethFrame(0x0800, 1, 60)}, r.drv.sent); diff != "" {
		t.Errorf("sent (-want +got):\n%s", diff)
	}
	if st := r.ifp.Stats(); st.TxInjected != 1 || st.TxSwallowed != 1 {
		t.Errorf("stats %+v", st)
	}
}

// reinjector re-injects everything it sees at once, never recognising its
// own: a loop the hop limit must stop.
type reinjector struct {
	ifp  *Interface
	att  nke.Attachment
	errs []error
}

func (f *reinjector) FilterInput(_ nke.Interface, _ uint16, m **mbuf.Mbuf, frame []byte) nke.Verdict {
	hdr, _ := (*m).Prepend(14)
	copy(hdr, frame)
	if err := f.ifp.InjectInput(*m, f.att); err != nil {
		f.errs = append(f.errs, err)
	}
	return nke.Swallow
}

func TestInjectLoopIsStopped(t *testing.T) {
	r := newFilterRig(t)
	var bus kevent.Bus
	sub := bus.Subscribe(8, kevent.InjectLoop)
	defer sub.Close()
	r.ifp.cfg.Events = &bus
	f := &reinjector{ifp: r.ifp}
	f.att = attach(t, r, nke.InterfaceFilterSpec{Name: "loop", Filter: f})
	r.wire(ethFrame(0x0800, 1, 60))
	for i := 0; i < 3*nke.MaxInjections; i++ {
		r.ifp.PollOnce()
	}
	if len(f.errs) != 1 || !errors.Is(f.errs[0], nke.ErrInjectLoop) {
		t.Fatalf("inject errors %v, want one ErrInjectLoop", f.errs)
	}
	if st := r.ifp.Stats(); st.RxInjected != nke.MaxInjections || st.InjectDrops != 1 {
		t.Errorf("injected %d (want %d), inject drops %d (want 1)", st.RxInjected, nke.MaxInjections, st.InjectDrops)
	}
	if len(sub.C()) != 1 {
		t.Fatalf("%d inject-loop events, want 1", len(sub.C()))
	}
	if e := <-sub.C(); e.NKE != "loop" || e.Interface != "vt0" || e.ID != f.att.ID() || !strings.Contains(e.Detail, "injected too many times") {
		t.Errorf("inject-loop event %+v", e)
	}
	// The rig's cleanup checks the packet was freed, not leaked.
}

// A tag an interface filter puts on a packet is there when its protocol
// gets it.
func TestTagsReachTheProtocol(t *testing.T) {
	r := newFilterRig(t)
	id, err := mbuf.TagID("com.example.ifnet-test")
	if err != nil {
		t.Fatal(err)
	}
	attach(t, r, nke.InterfaceFilterSpec{Name: "tagger", Filter: tagger{id}})
	var got []uint32
	AttachFuncs(t, r.ifp, func(_ uint16, m *mbuf.Mbuf, _ []byte) {
		v, _ := mbuf.TagGet[uint32](m, id, 7)
		got = append(got, v)
		if fh := m.FrameHeader(); len(fh) != 14 || fh[12] != 0x08 {
			t.Errorf("frame header % x", fh)
		}
		m.Free()
	}, EtherTypeIPv4)
	r.wire(ethFrame(0x0800, 1, 60), ethFrame(0x0800, 2, 60))
	r.ifp.PollOnce()
	if !cmp.Equal(got, []uint32{1001, 1002}) {
		t.Errorf("tags at the protocol: %v", got)
	}
}

type tagger struct{ id mbuf.TagIDType }

func (f tagger) FilterInput(_ nke.Interface, _ uint16, m **mbuf.Mbuf, _ []byte) nke.Verdict {
	if err := mbuf.TagPut(*m, f.id, 7, uint32(1000+int((*m).Bytes()[0]))); err != nil {
		panic(err)
	}
	return nke.Continue
}

// A filter detached while holding swallowed packets it never gave back
// (it panicked, or just forgot) leaks nothing: once its Detached callback
// has returned the kernel frees them and counts them; the one it did
// re-inject is not touched.
func TestSwallowedPacketsAreReclaimed(t *testing.T) {
	r := newFilterRig(t)
	h := &holder{}
	h.att = attach(t, r, nke.InterfaceFilterSpec{Name: "holder", Filter: h})
	r.wire(ethFrame(0x0800, 1, 60), ethFrame(0x0800, 2, 60), ethFrame(0x0800, 3, 60))
	r.send(ethFrame(0x0806, 4, 60))
	r.ifp.PollOnce()
	if len(h.held) != 4 {
		t.Fatalf("held %d", len(h.held))
	}
	// Give one back; keep three.
	m := h.held[0]
	hdr, _ := m.Prepend(14)
	copy(hdr, h.frame[0])
	if err := r.ifp.InjectInput(m, h.att); err != nil {
		t.Fatal(err)
	}
	r.ifp.PollOnce()
	before := r.ifp.Filters()[0].Counters
	if err := h.att.(interface{ Close() error }).Close(); err != nil {
		t.Fatal(err)
	}
	if before.Reclaimed != 0 || len(r.got[0x0800]) != 1 {
		t.Fatalf("before detach: reclaimed %d, delivered %d", before.Reclaimed, len(r.got[0x0800]))
	}
	if !strings.Contains(r.logs.String(), "detached holding 3 swallowed packets") {
		t.Errorf("reclaim not reported:\n%s", r.logs.String())
	}
	// The rig's cleanup checks every buffer is back in the pool.
}
