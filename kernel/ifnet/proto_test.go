package ifnet

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// llcFrame is an 802.3 frame: a length instead of a type, then the LLC
// header hdr and a payload of n bytes of tag.
func llcFrame(hdr []byte, tag byte, n int) []byte {
	f := make([]byte, 14, 14+len(hdr)+n)
	copy(f, []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2})
	l := len(hdr) + n
	f[12], f[13] = byte(l>>8), byte(l)
	f = append(f, hdr...)
	for i := 0; i < n; i++ {
		f = append(f, tag)
	}
	return f
}

// recProto records every frame it gets, whole, and what it was asked.
type recProto struct {
	got     [][]byte
	bursts  []int // sizes of each burst-form call
	burst   bool
	panicOn byte // first payload byte that makes input panic; 0: never
	events  []nke.Event
	ioctl   error
	ioctls  int
	dest    []byte
	preErr  error
}

func (p *recProto) ProtoInput(_ nke.Interface, m *mbuf.Mbuf, frame []byte) {
	b := WholeFrame(m, frame)
	m.Free()
	if p.panicOn != 0 && len(b) > 14 && b[len(b)-1] == p.panicOn {
		panic("recProto: poisoned frame")
	}
	p.got = append(p.got, b)
}

func (p *recProto) ProtoPreOutput(_ nke.Interface, _ **mbuf.Mbuf, dest []byte) (uint16, [6]byte, error) {
	p.dest = append([]byte(nil), dest...)
	return 0x88b5, [6]byte{2, 0, 0, 0, 0, 9}, p.preErr
}

func (p *recProto) ProtoEvent(_ nke.Interface, ev nke.Event) { p.events = append(p.events, ev) }

func (p *recProto) ProtoIoctl(nke.Interface, uint32, []byte) error {
	p.ioctls++
	return p.ioctl
}

// burstProto is recProto in burst form.
type burstProto struct{ *recProto }

func (p burstProto) ProtoInputBurst(ifp nke.Interface, pkts []*mbuf.Mbuf, frames [][]byte) {
	p.bursts = append(p.bursts, len(pkts))
	for i, m := range pkts {
		p.ProtoInput(ifp, m, frames[i])
	}
}

func attachProto(t testing.TB, r *filterRig, name string, p any, ds ...nke.DemuxDesc) nke.ProtocolAttachment {
	t.Helper()
	a, err := r.ifp.AttachProto(nke.ProtocolSpec{Name: name, Demux: ds, Protocol: p})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Ethernet II, SAP and SNAP frames reach the protocol whose descriptor
// matches them, data after the 14-byte Ethernet header; what nobody
// claims is dropped and counted by what it was.
func TestDemuxDescriptors(t *testing.T) {
	r := newFilterRig(t)
	sap := []byte{0x42, 0x42, 0x03}                       // 802.1D spanning tree
	snap := []byte{0xaa, 0xaa, 0x03, 0, 0, 0x0c, 0x20, 0} // Cisco CDP
	et, s, sn := &recProto{}, &recProto{}, &recProto{}
	attachProto(t, r, "echo", et, nke.EtherType(0x88b5))
	attachProto(t, r, "stp", s, nke.DemuxDesc{Kind: nke.DemuxSAP, Data: sap})
	attachProto(t, r, "cdp", sn, nke.DemuxDesc{Kind: nke.DemuxSNAP, Data: snap[3:]})
	frames := [][]byte{
		ethFrame(0x88b5, 1, 60),
		llcFrame(sap, 2, 40),
		llcFrame(snap, 3, 40),
		ethFrame(0x1234, 4, 60),                           // unknown type
		ethFrame(0x1234, 5, 60),                           // again
		llcFrame([]byte{0xe0, 0xe0, 0x03}, 6, 40),         // IPX SAP, unclaimed
		llcFrame([]byte{0xaa, 0xaa, 0x03, 0, 0, 0}, 7, 0), // SNAP cut short
		ethFrame(0x88b5, 8, 14)[:12],                      // shorter than a header
	}
	r.wire(frames...)
	r.ifp.PollOnce()
	for _, c := range []struct {
		name string
		p    *recProto
		want [][]byte
	}{{"ethertype", et, frames[:1]}, {"sap", s, frames[1:2]}, {"snap", sn, frames[2:3]}} {
		if diff := cmp.Diff(c.want, c.p.got); diff != "" {
			t.Errorf("%s protocol got (-want +got):\n%s", c.name, diff)
		}
	}
	wantUnclaimed := []Unclaimed{{Kind: "ethertype", Value: 0x1234, Count: 2}, {Kind: "sap", Value: 0xe0e003, Count: 1}}
	if diff := cmp.Diff(wantUnclaimed, r.ifp.Unclaimed()); diff != "" {
		t.Errorf("unclaimed (-want +got):\n%s", diff)
	}
	st := r.ifp.Stats()
	if st.RxUnknown != 3 || st.RxShort != 2 || st.RxPackets != 8 {
		t.Errorf("stats: unknown %d short %d packets %d, want 3, 2, 8", st.RxUnknown, st.RxShort, st.RxPackets)
	}
	var names []string
	for _, p := range r.ifp.Protocols() {
		if p.Packets == 1 {
			names = append(names, p.Name+" "+strings.Join(p.Demux, ","))
		}
	}
	if diff := cmp.Diff([]string{"echo ethertype 0x88b5", "stp sap 424203", "cdp snap 00000c2000"}, names); diff != "" {
		t.Errorf("protocol counters (-want +got):\n%s", diff)
	}
}

func TestAttachProtoRefusals(t *testing.T) {
	r := newFilterRig(t) // has IPv4, ARP and IPv6 attached
	p := &recProto{}
	for _, c := range []struct {
		spec nke.ProtocolSpec
		want string
	}{
		{nke.ProtocolSpec{Name: "dup", Demux: []nke.DemuxDesc{nke.EtherType(0x88b5), nke.EtherType(EtherTypeIPv4)}, Protocol: p}, "ethertype 0800 is proto-0800's"},
		{nke.ProtocolSpec{Name: "none", Protocol: p}, "no demux descriptor"},
		{nke.ProtocolSpec{Name: "short", Demux: []nke.DemuxDesc{{Kind: nke.DemuxSAP, Data: []byte{1}}}, Protocol: p}, "1 bytes, want 3"},
		{nke.ProtocolSpec{Name: "nocb", Demux: []nke.DemuxDesc{nke.EtherType(0x88b5)}, Protocol: struct{}{}}, "needs ProtoInput"},
		{nke.ProtocolSpec{Name: "proto-0800", Demux: []nke.DemuxDesc{nke.EtherType(0x88b6)}, Protocol: p}, "of that name is attached"},
	} {
		_, err := r.ifp.AttachProto(c.spec)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("attach %s: %v, want an error saying %q", c.spec.Name, err, c.want)
		}
	}
	// The refused attach with one good descriptor attached nothing.
	r.wire(ethFrame(0x88b5, 1, 60))
	r.ifp.PollOnce()
	if len(p.got) != 0 || r.ifp.Stats().RxUnknown != 1 {
		t.Errorf("a refused protocol got %d frames", len(p.got))
	}
}

// A protocol sends through its attachment: pre-output names the frame
// type and destination, the framer adds the header with the interface's
// MAC, the interface filters see the frame, then the driver.
func TestProtoOutput(t *testing.T) {
	r := newFilterRig(t)
	p := &recProto{}
	a := attachProto(t, r, "echo", p, nke.EtherType(0x88b5))
	var log []string
	f := &tagFilter{name: "f", log: &log, verdicts: map[byte]nke.Verdict{}}
	attach(t, r, nke.InterfaceFilterSpec{Name: "f", Filter: f})
	m := r.pool.Get()
	b, _ := m.Append(4)
	copy(b, "ping")
	if err := a.Output(m, []byte("somewhere")); err != nil {
		t.Fatal(err)
	}
	r.ifp.PollOnce()
	want := [][]byte{append([]byte{2, 0, 0, 0, 0, 9, 2, 0, 0, 0, 0, 1, 0x88, 0xb5}, "ping"...)}
	if diff := cmp.Diff(want, r.drv.sent); diff != "" {
		t.Errorf("sent (-want +got):\n%s", diff)
	}
	if string(p.dest) != "somewhere" || !cmp.Equal(log, []string{"out f"}) {
		t.Errorf("pre-output got dest %q; filter log %v", p.dest, log)
	}

	// A pre-output error frees the packet and comes back.
	p.preErr = errors.New("no route")
	m = r.pool.Get()
	m.Append(4)
	if err := a.Output(m, nil); err == nil || err.Error() != "no route" {
		t.Errorf("output with pre-output failing: %v", err)
	}
	if r.ifp.Stats().TxPreOutputErrors != 1 {
		t.Errorf("pre-output error not counted")
	}
	// No headroom for the link header: refused, freed.
	p.preErr = nil
	m = r.pool.Get()
	m.SetData(0, 10)
	if err := a.Output(m, nil); !errors.Is(err, ErrNoHeadroom) {
		t.Errorf("output without headroom: %v", err)
	}
}

// Detach: no frame reaches the protocol after it, its frames become
// unclaimed, its attachment no longer sends, and Detached comes last.
func TestProtoDetach(t *testing.T) {
	r := newFilterRig(t)
	p := &recProto{}
	var detached atomic.Bool
	a, err := r.ifp.AttachProto(nke.ProtocolSpec{Name: "echo", Demux: []nke.DemuxDesc{nke.EtherType(0x88b5)}, Protocol: p,
		Detached: func() { detached.Store(true) }})
	if err != nil {
		t.Fatal(err)
	}
	r.wire(ethFrame(0x88b5, 1, 60))
	r.ifp.PollOnce()
	if err := a.(interface{ Close() error }).Close(); err != nil {
		t.Fatal(err)
	}
	if !detached.Load() {
		t.Fatal("Detached not called by the time Close returned")
	}
	r.wire(ethFrame(0x88b5, 2, 60))
	r.ifp.PollOnce()
	if len(p.got) != 1 || r.ifp.Stats().RxUnknown != 1 {
		t.Errorf("after detach: protocol has %d frames, %d unknown", len(p.got), r.ifp.Stats().RxUnknown)
	}
	m := r.pool.Get()
	if err := a.Output(m, nil); !errors.Is(err, ErrDetached) {
		t.Errorf("output after detach: %v", err)
	}
	// Its EtherType is free again.
	attachProto(t, r, "echo2", &recProto{}, nke.EtherType(0x88b5))
}

// Consecutive frames of one protocol go to a burst-form protocol in one
// call; interleaved protocols get runs.
func TestProtoBurstRuns(t *testing.T) {
	r := newFilterRig(t)
	p := &recProto{}
	attachProto(t, r, "echo", burstProto{p}, nke.EtherType(0x88b5))
	r.wire(ethFrame(0x88b5, 1, 60), ethFrame(0x88b5, 2, 60), ethFrame(0x88b5, 3, 60), ethFrame(0x0800, 4, 60), ethFrame(0x88b5, 5, 60))
	r.ifp.PollOnce()
	if !cmp.Equal(p.bursts, []int{3, 1}) || len(p.got) != 4 || len(r.got[0x0800]) != 1 {
		t.Errorf("bursts %v, %d frames, %d IPv4", p.bursts, len(p.got), len(r.got[0x0800]))
	}
}

// A protocol that panics is detached and reported; the frames after the
// poisoned one in its run are freed, not leaked; other protocols go on.
func TestProtoPanics(t *testing.T) {
	r := newFilterRig(t)
	p := &recProto{panicOn: 9}
	attachProto(t, r, "echo", p, nke.EtherType(0x88b5))
	r.wire(ethFrame(0x88b5, 1, 60), ethFrame(0x88b5, 9, 60), ethFrame(0x88b5, 3, 60), ethFrame(0x0800, 4, 60))
	r.ifp.PollOnce()
	if len(p.got) != 1 || len(r.got[0x0800]) != 1 {
		t.Errorf("echo got %d, IPv4 %d", len(p.got), len(r.got[0x0800]))
	}
	if !strings.Contains(r.logs.String(), "filter echo panicked: recProto: poisoned frame") {
		t.Errorf("fault not reported: %s", r.logs.String())
	}
	for _, st := range r.ifp.Protocols() {
		if st.Name == "echo" {
			t.Errorf("a panicking protocol is still attached")
		}
	}
	r.wire(ethFrame(0x88b5, 1, 60))
	r.ifp.PollOnce()
	if len(p.got) != 1 {
		t.Errorf("a detached protocol still gets frames")
	}
	// It is remembered, with its fault and last counters, once gone.
	deadline := time.Now().Add(5 * time.Second)
	for len(r.ifp.Gone()) == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	g := r.ifp.Gone()
	if len(g) != 1 || g[0].Name != "echo" || g[0].Hook != "vt0 protocols" || g[0].Fault != "recProto: poisoned frame" || g[0].Packets != 3 || g[0].Faults != 1 {
		t.Errorf("gone: %+v", g)
	}
}

// Ioctl: the filters first, then the protocol of that EtherType, each
// with Apple's rules; events reach filters, then protocols.
func TestProtoIoctlAndEvents(t *testing.T) {
	r := newFilterRig(t)
	p := &recProto{}
	attachProto(t, r, "echo", p, nke.EtherType(0x88b5))
	fi := &ioctlFilter{err: nke.ErrNotMine}
	attach(t, r, nke.InterfaceFilterSpec{Name: "f", Filter: fi})
	if err := r.ifp.Ioctl(0x88b5, 1, nil); err != nil || p.ioctls != 1 {
		t.Errorf("filter not mine, protocol handles: %v, %d calls", err, p.ioctls)
	}
	p.ioctl = nke.ErrNotMine
	if err := r.ifp.Ioctl(0x88b5, 1, nil); !errors.Is(err, ErrUnknownIoctl) {
		t.Errorf("nobody handles: %v", err)
	}
	p.ioctl = errors.New("bad argument")
	if err := r.ifp.Ioctl(0x88b5, 1, nil); err == nil || err.Error() != "bad argument" {
		t.Errorf("protocol error: %v", err)
	}
	fi.err = nke.ErrSwallowed
	if err := r.ifp.Ioctl(0x88b5, 1, nil); err != nil || p.ioctls != 3 {
		t.Errorf("filter swallows: %v, protocol called %d times (want 3)", err, p.ioctls)
	}
	r.ifp.event(nke.EventLinkDown)
	if !cmp.Equal(p.events, []nke.Event{nke.EventLinkDown}) {
		t.Errorf("protocol events %v", p.events)
	}
	if _, err := r.ifp.ResolveMulticast(0x88b5, []byte{1}); !errors.Is(err, ErrNoProtocol) {
		t.Errorf("resolve on a protocol without it: %v", err)
	}
	if err := r.ifp.SendARP(0x88b5, 1, [6]byte{}, nil, [6]byte{}, nil); !errors.Is(err, ErrNoProtocol) {
		t.Errorf("send ARP on a protocol without it: %v", err)
	}
}

type ioctlFilter struct{ err error }

func (f *ioctlFilter) FilterIoctl(nke.Interface, uint16, uint32, []byte) error { return f.err }

// Demux to protocols allocates nothing per burst.
func TestProtoInputDoesNotAllocate(t *testing.T) {
	r := newFilterRig(t)
	AttachFuncs(t, r.ifp, freeIt, EtherTypeARP, EtherTypeIPv6, EtherTypeIPv4)
	attachProto(t, r, "sap", burstProto{&recProto{}}, nke.DemuxDesc{Kind: nke.DemuxSAP, Data: []byte{0x42, 0x42, 3}})
	pkts := make([]*mbuf.Mbuf, 32)
	if a := testing.AllocsPerRun(100, func() {
		r.pool.GetBatch(pkts)
		for i, m := range pkts {
			b, _ := m.Append(60)
			b[12], b[13] = 0x08, 0x00
			if i%8 == 7 {
				b[12], b[13] = 0x86, 0xdd
			}
		}
		r.ifp.input(pkts)
	}); a != 0 {
		t.Fatalf("%v allocations per burst", a)
	}
}

// Apple's input order is demux, the interface filters, then unmatched
// frames dropped: a filter sees a frame no protocol claims (and may keep
// it), the rest are dropped and counted after the filters.
func TestFiltersSeeUnclaimedFrames(t *testing.T) {
	r := newFilterRig(t)
	f := &tagFilter{name: "f", verdicts: map[byte]nke.Verdict{2: nke.Swallow}}
	attach(t, r, nke.InterfaceFilterSpec{Name: "f", Filter: f})
	defer f.release()
	r.wire(ethFrame(0x1234, 1, 60), ethFrame(0x1234, 2, 60), ethFrame(0x0800, 3, 60))
	r.ifp.PollOnce()
	if len(f.seen) != 3 || !cmp.Equal(f.protos, []uint16{0x1234, 0x1234, 0x0800}) {
		t.Errorf("the filter saw %d frames of %x", len(f.seen), f.protos)
	}
	if diff := cmp.Diff([]Unclaimed{{Kind: "ethertype", Value: 0x1234, Count: 1}}, r.ifp.Unclaimed()); diff != "" {
		t.Errorf("unclaimed (-want +got):\n%s", diff)
	}
	if len(r.got[0x0800]) != 1 || r.ifp.Stats().RxUnknown != 1 {
		t.Errorf("IPv4 got %d, unknown %d", len(r.got[0x0800]), r.ifp.Stats().RxUnknown)
	}
}
