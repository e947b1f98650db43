package ifnet

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/mbuf"
)

// filterRig is an interface over a driver that hands the test's frames in
// and records what is sent, driven by PollOnce.
type filterRig struct {
	t     testing.TB
	ifp   *Interface
	pool  *mbuf.Pool
	drv   *loopDriver
	got   map[uint16][][]byte // what each protocol received
	logs  strings.Builder
	mu    sync.Mutex
	txMax int
}

// loopDriver delivers what the test queues and keeps what is sent; it
// takes at most txMax packets per TxBurst when txMax > 0.
type loopDriver struct {
	pool  *mbuf.Pool
	rxq   []*mbuf.Mbuf
	sent  [][]byte
	txMax int
}

func (d *loopDriver) RxBurst(p []*mbuf.Mbuf) (int, error) {
	n := copy(p, d.rxq)
	d.rxq = d.rxq[n:]
	return n, nil
}
func (d *loopDriver) TxBurst(p []*mbuf.Mbuf) (int, error) {
	n := len(p)
	if d.txMax > 0 {
		n = min(n, d.txMax)
	}
	for _, m := range p[:n] {
		b := make([]byte, m.PktLen())
		m.CopyOut(b)
		d.sent = append(d.sent, b)
		m.Free()
	}
	return n, nil
}
func (d *loopDriver) Reclaim() error        { return nil }
func (d *loopDriver) TxInFlight() int       { return 0 }
func (d *loopDriver) Health() error         { return nil }
func (d *loopDriver) Recover() error        { return nil }
func (d *loopDriver) LinkUp() (bool, error) { return true, nil }
func (d *loopDriver) MAC() []byte           { return []byte{2, 0, 0, 0, 0, 1} }
func (d *loopDriver) MTU() int              { return 1500 }
func (d *loopDriver) Pool() *mbuf.Pool      { return d.pool }

func newFilterRig(t testing.TB) *filterRig {
	t.Helper()
	pool, err := mbuf.NewPool(dma.NewHeap(2<<20), "filter-test", 512, 2048, 128)
	if err != nil {
		t.Fatal(err)
	}
	r := &filterRig{t: t, pool: pool, drv: &loopDriver{pool: pool}, got: map[uint16][][]byte{}}
	r.ifp, err = New(r.drv, Config{Name: "vt0", Index: 1, Logf: func(f string, a ...any) {
		r.mu.Lock()
		fmt.Fprintf(&r.logs, f+"\n", a...)
		r.mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	AttachFuncs(t, r.ifp, func(et uint16, m *mbuf.Mbuf, frame []byte) {
		r.got[et] = append(r.got[et], WholeFrame(m, frame))
		m.Free()
	}, EtherTypeIPv4, EtherTypeARP, EtherTypeIPv6)
	t.Cleanup(func() {
		if n := pool.Avail(); n != pool.Cap() {
			t.Errorf("%d of %d buffers not back in the pool", pool.Cap()-n, pool.Cap())
		}
	})
	return r
}

// wire queues frames for the next poll.
func (r *filterRig) wire(frames ...[]byte) {
	for _, f := range frames {
		m := r.pool.Get()
		b, _ := m.Append(len(f))
		copy(b, f)
		r.drv.rxq = append(r.drv.rxq, m)
	}
}

func (r *filterRig) send(frames ...[]byte) {
	for _, f := range frames {
		m := r.pool.Get()
		b, _ := m.Append(len(f))
		copy(b, f)
		if err := r.ifp.Output(m); err != nil {
			r.t.Fatal(err)
		}
	}
}

func ethFrame(et uint16, tag byte, n int) []byte {
	f := make([]byte, n)
	copy(f, []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2})
	f[12], f[13] = byte(et>>8), byte(et)
	for i := 14; i < n; i++ {
		f[i] = tag
	}
	return f
}

// tagFilter decides by the first payload byte: verdicts[tag]. It records
// what it saw, and keeps what it swallows (freeing it at detach).
type tagFilter struct {
	name     string
	verdicts map[byte]nke.Verdict
	log      *[]string
	seen     [][]byte
	frames   [][]byte
	protos   []uint16
	kept     []*mbuf.Mbuf
	calls    atomic.Int64
}

func (f *tagFilter) decide(b []byte) nke.Verdict { return f.verdicts[b[0]] }

func (f *tagFilter) FilterInput(ifp nke.Interface, proto uint16, m **mbuf.Mbuf, frame []byte) nke.Verdict {
	f.calls.Add(1)
	b := make([]byte, (*m).PktLen())
	(*m).CopyOut(b)
	f.seen = append(f.seen, b)
	f.frames = append(f.frames, append([]byte(nil), frame...))
	f.protos = append(f.protos, proto)
	if f.log != nil {
		*f.log = append(*f.log, "in "+f.name)
	}
	v := f.decide(b)
	if v == nke.Swallow {
		f.kept = append(f.kept, *m)
	}
	return v
}

func (f *tagFilter) FilterOutput(ifp nke.Interface, proto uint16, m **mbuf.Mbuf) nke.Verdict {
	f.calls.Add(1)
	b := make([]byte, (*m).PktLen())
	(*m).CopyOut(b)
	if f.log != nil {
		*f.log = append(*f.log, "out "+f.name)
	}
	v := f.decide(b[14:])
	if v == nke.Swallow {
		f.kept = append(f.kept, *m)
	}
	return v
}

func (f *tagFilter) release() { mbuf.FreeBatch(f.kept) }

func attach(t testing.TB, r *filterRig, spec nke.InterfaceFilterSpec) nke.Attachment {
	t.Helper()
	a, err := r.ifp.AttachFilter(spec)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestFilterVerdicts(t *testing.T) {
	r := newFilterRig(t)
	var log []string
	a := &tagFilter{name: "a", log: &log, verdicts: map[byte]nke.Verdict{}}
	b := &tagFilter{name: "b", log: &log, verdicts: map[byte]nke.Verdict{2: nke.Drop, 3: nke.Swallow}}
	c := &tagFilter{name: "c", log: &log, verdicts: map[byte]nke.Verdict{}}
	for _, f := range []*tagFilter{a, b, c} {
		attach(t, r, nke.InterfaceFilterSpec{Name: f.name, Filter: f})
	}
	defer b.release()
	r.wire(ethFrame(0x0800, 1, 60), ethFrame(0x0800, 2, 60), ethFrame(0x0800, 3, 60), ethFrame(0x0806, 4, 60))
	r.ifp.PollOnce()
	// The protocols got what continued, whole frames.
	if diff := cmp.Diff(map[uint16][][]byte{0x0800: {ethFrame(0x0800, 1, 60)}, 0x0806: {ethFrame(0x0806, 4, 60)}}, r.got); diff != "" {
		t.Errorf("delivered (-want +got):\n%s", diff)
	}
	// a saw all four from the network header on, with the link header
	// beside; c saw only what b let through.
	if len(a.seen) != 4 || len(a.seen[0]) != 46 || a.seen[0][0] != 1 || !cmp.Equal(a.frames[0], ethFrame(0x0800, 1, 60)[:14]) {
		t.Errorf("a saw %d packets, first %d bytes, frame %x", len(a.seen), len(a.seen[0]), a.frames[0])
	}
	if len(c.seen) != 2 {
		t.Errorf("c saw %d packets, want the 2 b passed", len(c.seen))
	}
	if !cmp.Equal(a.protos, []uint16{0x0800, 0x0800, 0x0800, 0x0806}) {
		t.Errorf("a was told protocols %#x", a.protos)
	}
	if got := r.ifp.Filters(); got[1].Name != "b" || got[1].Drop != 1 || got[1].Swallow != 1 || got[1].Continue != 2 || got[1].Packets != 4 {
		t.Errorf("b's counters %+v", got[1])
	}
	if s := r.ifp.Stats(); s.RxFilterDrops != 1 || s.RxSwallowed != 1 {
		t.Errorf("interface counters %+v", s)
	}
	// Out: the same filters, the same order (Apple: FIFO both ways).
	log = nil
	r.send(ethFrame(0x0800, 1, 60), ethFrame(0x0800, 2, 60), ethFrame(0x0800, 3, 60))
	r.ifp.PollOnce()
	if diff := cmp.Diff([][]byte{ethFrame(0x0800, 1, 60)}, r.drv.sent); diff != "" {
		t.Errorf("sent (-want +got):\n%s", diff)
	}
	if want := []string{"out a", "out a", "out a", "out b", "out b", "out b", "out c"}; !cmp.Equal(want, log) {
		t.Errorf("output order %v, want %v", log, want)
	}
}

// A filter for one EtherType sees only those frames.
func TestFilterProtocolSelector(t *testing.T) {
	r := newFilterRig(t)
	arp := &tagFilter{name: "arp-only", verdicts: map[byte]nke.Verdict{}}
	attach(t, r, nke.InterfaceFilterSpec{Name: arp.name, Protocol: EtherTypeARP, Filter: arp})
	r.wire(ethFrame(0x0800, 1, 60), ethFrame(0x0806, 2, 60), ethFrame(0x86dd, 3, 60))
	r.ifp.PollOnce()
	if len(arp.seen) != 1 || arp.seen[0][0] != 2 {
		t.Fatalf("the ARP filter saw %d packets", len(arp.seen))
	}
	if len(r.got[0x0800]) != 1 || len(r.got[0x86dd]) != 1 {
		t.Fatalf("other protocols lost frames: %v", r.got)
	}
}

// replacer swaps every packet for a fresh one, rewriting the frame header's
// source MAC on the way.
type replacer struct{ pool *mbuf.Pool }

func (f replacer) FilterInput(ifp nke.Interface, proto uint16, m **mbuf.Mbuf, frame []byte) nke.Verdict {
	n := f.pool.AllocPacket((*m).PktLen())
	b := make([]byte, (*m).PktLen())
	(*m).CopyOut(b)
	b[0] = 0xee
	n.CopyBack(0, b)
	(*m).Free()
	*m = n
	frame[11] = 0x77
	return nke.Continue
}

func TestFilterReplacesPacket(t *testing.T) {
	r := newFilterRig(t)
	attach(t, r, nke.InterfaceFilterSpec{Name: "replacer", Filter: replacer{r.pool}})
	r.wire(ethFrame(0x0800, 1, 80))
	r.ifp.PollOnce()
	want := ethFrame(0x0800, 1, 80)
	want[11], want[14] = 0x77, 0xee
	if diff := cmp.Diff([][]byte{want}, r.got[0x0800]); diff != "" {
		t.Fatalf("the protocol got (-want +got):\n%s", diff)
	}
}

// burstDropOdd drops every packet whose first payload byte is odd, in one
// call per burst.
type burstDropOdd struct{ calls, pkts int }

func (f *burstDropOdd) FilterInputBurst(ifp nke.Interface, pkts []*mbuf.Mbuf, frames [][]byte, v []nke.Verdict) {
	f.calls++
	f.pkts += len(pkts)
	for i, m := range pkts {
		if m.Bytes()[0]&1 == 1 {
			v[i] = nke.Drop
		}
	}
}

func TestFilterBurstForm(t *testing.T) {
	r := newFilterRig(t)
	f := &burstDropOdd{}
	attach(t, r, nke.InterfaceFilterSpec{Name: "odd", Filter: f})
	for i := 0; i < 10; i++ {
		r.wire(ethFrame(0x0800, byte(i), 60))
	}
	r.ifp.PollOnce()
	if f.calls != 1 || f.pkts != 10 {
		t.Fatalf("burst filter: %d calls for %d packets, want 1 call", f.calls, f.pkts)
	}
	if len(r.got[0x0800]) != 5 {
		t.Fatalf("%d frames delivered, want the 5 even ones", len(r.got[0x0800]))
	}
	for i, b := range r.got[0x0800] {
		if b[14] != byte(2*i) {
			t.Fatalf("frame %d has tag %d: order lost", i, b[14])
		}
	}
}

// panicky panics on the packet tagged 9.
type panicky struct{}

func (panicky) FilterInput(ifp nke.Interface, proto uint16, m **mbuf.Mbuf, frame []byte) nke.Verdict {
	if (*m).Bytes()[0] == 9 {
		var table []int
		_ = table[9] // a bug in an NKE
	}
	return nke.Continue
}

// A filter that panics is detached and reported; its packet is dropped;
// the rest of the burst and the other filters go on.
func TestFilterPanicIsIsolated(t *testing.T) {
	r := newFilterRig(t)
	detached := make(chan struct{})
	bad := attach(t, r, nke.InterfaceFilterSpec{Name: "com.example.buggy", Filter: panicky{}, Detached: func() { close(detached) }})
	after := &tagFilter{name: "after", verdicts: map[byte]nke.Verdict{}}
	attach(t, r, nke.InterfaceFilterSpec{Name: after.name, Filter: after})
	r.wire(ethFrame(0x0800, 1, 60), ethFrame(0x0800, 9, 60), ethFrame(0x0800, 3, 60))
	r.ifp.PollOnce()
	<-detached
	<-bad.Done()
	if got := len(r.got[0x0800]); got != 2 {
		t.Fatalf("%d frames delivered, want the 2 the buggy filter did not panic on", got)
	}
	if len(after.seen) != 2 {
		t.Errorf("the next filter saw %d packets", len(after.seen))
	}
	r.mu.Lock()
	logs := r.logs.String()
	r.mu.Unlock()
	if !strings.Contains(logs, "filter com.example.buggy panicked: runtime error: index out of range") || !strings.Contains(logs, "panicky.FilterInput") {
		t.Errorf("the fault was not reported with its stack:\n%s", logs)
	}
	if names := r.ifp.filters.Names(); !cmp.Equal(names, []string{"after"}) {
		t.Errorf("filters after the fault: %v", names)
	}
	r.wire(ethFrame(0x0800, 9, 60))
	r.ifp.PollOnce()
	if got := len(r.got[0x0800]); got != 3 {
		t.Errorf("traffic did not go on after the fault: %d frames", got)
	}
}

// Packets the driver cannot take at once wait for it; the output filters
// see each packet once.
func TestFilterOutputSeesEachPacketOnce(t *testing.T) {
	r := newFilterRig(t)
	r.drv.txMax = 1
	f := &tagFilter{name: "count", verdicts: map[byte]nke.Verdict{}}
	attach(t, r, nke.InterfaceFilterSpec{Name: f.name, Filter: f})
	r.send(ethFrame(0x0800, 1, 60), ethFrame(0x0800, 2, 60), ethFrame(0x0800, 3, 60))
	for i := 0; i < 5; i++ {
		r.ifp.PollOnce()
	}
	if len(r.drv.sent) != 3 || f.calls.Load() != 3 {
		t.Fatalf("%d sent, output filter called %d times; want 3 and 3", len(r.drv.sent), f.calls.Load())
	}
}

type ioctler struct {
	err  error
	seen *[]string
	name string
}

func (f ioctler) FilterIoctl(ifp nke.Interface, proto uint16, cmd uint32, arg []byte) error {
	*f.seen = append(*f.seen, f.name)
	return f.err
}

func TestFilterIoctlRules(t *testing.T) {
	boom := errors.New("boom")
	cases := []struct {
		name  string
		errs  []error
		want  error // nil, ErrUnknownIoctl or boom
		calls int
	}{
		{"none handle it", []error{nke.ErrNotMine, nke.ErrNotMine}, ErrUnknownIoctl, 2},
		{"one handles it, the next sees it too", []error{nil, nke.ErrNotMine}, nil, 2},
		{"swallowed stops it as success", []error{nke.ErrSwallowed, nil}, nil, 1},
		{"an error stops it", []error{boom, nil}, boom, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newFilterRig(t)
			var seen []string
			for i, err := range c.errs {
				attach(t, r, nke.InterfaceFilterSpec{Name: fmt.Sprintf("f%d", i), Filter: ioctler{err, &seen, fmt.Sprint(i)}})
			}
			err := r.ifp.Ioctl(0, 0x1234, nil)
			if !errors.Is(err, c.want) || (c.want == nil && err != nil) {
				t.Fatalf("Ioctl = %v, want %v", err, c.want)
			}
			if len(seen) != c.calls {
				t.Fatalf("%d filters saw it, want %d", len(seen), c.calls)
			}
		})
	}
}

type eventLog struct {
	mu  sync.Mutex
	evs []nke.Event
}

func (f *eventLog) FilterEvent(ifp nke.Interface, proto uint16, ev nke.Event) {
	f.mu.Lock()
	f.evs = append(f.evs, ev)
	f.mu.Unlock()
}

// Stopping the interface says it is detaching, then detaches each filter,
// whose Detached is its last call.
func TestFilterDetachingEventThenDetached(t *testing.T) {
	r := newFilterRig(t)
	f := &eventLog{}
	var order []string
	var mu sync.Mutex
	attach(t, r, nke.InterfaceFilterSpec{Name: "ev", Filter: f, Detached: func() {
		mu.Lock()
		order = append(order, fmt.Sprint(f.evs))
		mu.Unlock()
	}})
	r.ifp.Start()
	r.ifp.Stop()
	mu.Lock()
	defer mu.Unlock()
	if !cmp.Equal(order, []string{"[detaching]"}) {
		t.Fatalf("at Detached the filter had seen %v, want [detaching]", order)
	}
}

func TestAttachFilterRefuses(t *testing.T) {
	r := newFilterRig(t)
	if _, err := r.ifp.AttachFilter(nke.InterfaceFilterSpec{Name: "nothing", Filter: struct{}{}}); !errors.Is(err, nke.ErrNoCallbacks) {
		t.Errorf("a filter with no callbacks: %v", err)
	}
	attach(t, r, nke.InterfaceFilterSpec{Name: "a", Filter: &eventLog{}})
	if _, err := r.ifp.AttachFilter(nke.InterfaceFilterSpec{Name: "b", Filter: &eventLog{}, Order: nke.Order{After: []string{"zz"}}}); err == nil || !strings.Contains(err.Error(), "zz") {
		t.Errorf("an unmet After: %v", err)
	}
}

type nop struct{}

func (nop) FilterInput(nke.Interface, uint16, **mbuf.Mbuf, []byte) nke.Verdict { return nke.Continue }
func (nop) FilterOutput(nke.Interface, uint16, **mbuf.Mbuf) nke.Verdict        { return nke.Continue }

type nopBurst struct{}

func (nopBurst) FilterInputBurst(nke.Interface, []*mbuf.Mbuf, [][]byte, []nke.Verdict) {}
func (nopBurst) FilterOutputBurst(nke.Interface, []*mbuf.Mbuf, []nke.Verdict)          {}

// With filters attached, receive and transmit allocate nothing.
func TestFiltersDoNotAllocate(t *testing.T) {
	r := newFilterRig(t)
	attach(t, r, nke.InterfaceFilterSpec{Name: "nop", Filter: nop{}})
	attach(t, r, nke.InterfaceFilterSpec{Name: "burst", Filter: nopBurst{}})
	pkts := make([]*mbuf.Mbuf, 32)
	AttachFuncs(t, r.ifp, freeIt, EtherTypeIPv4)
	if a := testing.AllocsPerRun(100, func() {
		r.pool.GetBatch(pkts)
		for _, m := range pkts {
			b, _ := m.Append(60)
			b[12], b[13] = 0x08, 0x00
		}
		r.ifp.input(pkts)
		r.pool.GetBatch(pkts)
		for _, m := range pkts {
			b, _ := m.Append(60)
			b[12], b[13] = 0x08, 0x00
		}
		n := r.ifp.filterOutput(pkts)
		mbuf.FreeBatch(pkts[:n])
	}); a != 0 {
		t.Fatalf("%v allocations per burst in and out with two filters", a)
	}
}

// BenchmarkFilters: receive of 32-packet bursts through k trivial filters,
// per-packet and burst form; ns/pkt/filter is the chain's cost per packet
// and filter over the bare interface layer (k=0).
func BenchmarkFilters(b *testing.B) {
	for _, form := range []string{"packet", "burst"} {
		for _, k := range []int{0, 1, 8} {
			b.Run(fmt.Sprintf("%s/filters=%d", form, k), func(b *testing.B) {
				r := newFilterRig(b)
				AttachFuncs(b, r.ifp, freeIt, EtherTypeIPv4)
				for i := 0; i < k; i++ {
					var f any = nop{}
					if form == "burst" {
						f = nopBurst{}
					}
					attach(b, r, nke.InterfaceFilterSpec{Name: fmt.Sprintf("f%d", i), Filter: f})
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
					r.ifp.input(pkts)
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*32), "ns/pkt")
			})
		}
	}
}

// BenchmarkFilterDispatch is the input filter chain alone over a prepared
// vector of 32 packets (no pool, demux or protocol around it), k trivial
// filters in each form: the chain's own cost per packet, whose growth
// with k is the cost of a filter.
func BenchmarkFilterDispatch(b *testing.B) {
	for _, form := range []string{"packet", "burst"} {
		for _, k := range []int{1, 8} {
			b.Run(fmt.Sprintf("%s/filters=%d", form, k), func(b *testing.B) {
				r := newFilterRig(b)
				for i := 0; i < k; i++ {
					var f any = nop{}
					if form == "burst" {
						f = nopBurst{}
					}
					attach(b, r, nke.InterfaceFilterSpec{Name: fmt.Sprintf("f%d", i), Filter: f})
				}
				const n = 32
				pkts := make([]*mbuf.Mbuf, n)
				r.pool.GetBatch(pkts)
				defer mbuf.FreeBatch(pkts)
				v := &r.ifp.fv
				hdr := ethFrame(0x0800, 1, 14)
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					for j, m := range pkts {
						v.pkts[j], v.lens[j], v.ets[j], v.frames[j] = m, 46, 0x0800, hdr
					}
					if r.ifp.filterInput(n) != n {
						b.Fatal("packets stopped")
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/pkt")
			})
		}
	}
}
