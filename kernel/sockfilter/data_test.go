package sockfilter_test

import (
	"errors"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/kernel/sockfilter"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/nke/mbuf/mbuftest"
	"github.com/nke-harness/nke/nke/nketest"
)

// dataFilter decides data by its content: "drop" refused, "keep"
// swallowed (and kept until release), "boom" panics; anything else
// passes. It records what it saw.
type dataFilter struct {
	name    string
	noPanic bool
	mu      sync.Mutex
	seen    []string
	kept    []*mbuf.Mbuf
}

func (d *dataFilter) SockAttach(nke.Socket) (any, error) { return nil, nil }
func (d *dataFilter) SockDetach(any, nke.Socket)         {}

func (d *dataFilter) decide(data **mbuf.Mbuf) error {
	s := payload(*data)
	d.mu.Lock()
	d.seen = append(d.seen, s)
	d.mu.Unlock()
	switch s {
	case "drop":
		return errors.New("dropped")
	case "keep":
		d.mu.Lock()
		d.kept = append(d.kept, *data)
		d.mu.Unlock()
		return nke.ErrSwallowed
	case "boom":
		if !d.noPanic {
			panic("boom")
		}
	}
	return nil
}

func (d *dataFilter) SockDataIn(_ any, _ nke.Socket, _ netip.AddrPort, data, _ **mbuf.Mbuf, _ nke.DataFlags) error {
	return d.decide(data)
}

func (d *dataFilter) SockDataOut(_ any, _ nke.Socket, _ netip.AddrPort, data, _ **mbuf.Mbuf, _ nke.DataFlags) error {
	return d.decide(data)
}

func (d *dataFilter) got() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.seen
	d.seen = nil
	return s
}

// The data rule: pass, swallow (the filter owns it: marked as held by
// it), refuse (the caller frees); counters per filter.
func TestDataRule(t *testing.T) {
	pool := mbuftest.NewPool(t, "sf", 8, 2048, 64)
	mbuftest.CheckPools(t, pool)
	r := sockfilter.New(nil)
	f := &dataFilter{name: "d"}
	a := mustRegister(t, r, tcpSpec("com.test.d", 1, f))
	so := nketest.TCP("10.0.2.15:1", "10.0.2.2:2")
	fs := r.NewSocket(so, &endpoint{})
	for _, tc := range []struct {
		s         string
		swallowed bool
		err       bool
	}{{"pass", false, false}, {"keep", true, false}, {"drop", false, true}} {
		m := packet(t, pool, tc.s)
		sw, err := fs.DataOut(so.Remote, &m, nil, 0)
		if sw != tc.swallowed || (err != nil) != tc.err {
			t.Errorf("%s: swallowed %v, err %v", tc.s, sw, err)
		}
		if sw {
			if m.Holder() == 0 {
				t.Errorf("%s: swallowed data not marked held", tc.s)
			}
			continue
		}
		if m.Holder() != 0 {
			t.Errorf("%s: data handed back still marked held by %d", tc.s, m.Holder())
		}
		m.Free()
	}
	st := r.Filters()
	if len(st) != 1 || st[0].Sockets != 1 || st[0].Packets != 3 || st[0].Bytes != 12 ||
		st[0].Continue != 1 || st[0].Swallow != 1 || st[0].Drop != 1 {
		t.Errorf("status %+v", st)
	}
	// The kept packet is reclaimed when the filter goes (it never gave
	// it back): nothing leaks.
	fs.Close()
	waitDone(t, a)
	st = r.Filters()
	if len(st) != 0 {
		t.Errorf("status after unregister %+v", st)
	}
}

// A filter panicking in data out is detached from that socket and
// reported; the data goes on to the next filter and the socket; what it
// had swallowed is freed at its detach; another socket keeps it.
func TestPanicInData(t *testing.T) {
	pool := mbuftest.NewPool(t, "sf", 8, 2048, 64)
	mbuftest.CheckPools(t, pool)
	var faults []hook.Fault
	var fmu sync.Mutex
	r := sockfilter.New(func(f hook.Fault) { fmu.Lock(); faults = append(faults, f); fmu.Unlock() })
	after := &dataFilter{name: "after", noPanic: true}
	mustRegister(t, r, tcpSpec("com.test.after", 1, after))
	bad := &dataFilter{name: "bad"}
	mustRegister(t, r, tcpSpec("com.test.bad", 2, bad))
	so := nketest.TCP("10.0.2.15:1", "10.0.2.2:2")
	fs := r.NewSocket(so, &endpoint{})
	other := nketest.TCP("10.0.2.15:3", "10.0.2.2:4")
	ofs := r.NewSocket(other, &endpoint{})
	defer ofs.Close()

	m := packet(t, pool, "keep")
	if sw, _ := fs.DataOut(so.Remote, &m, nil, 0); !sw {
		t.Fatal("not swallowed")
	}
	m = packet(t, pool, "boom")
	sw, err := fs.DataOut(so.Remote, &m, nil, 0)
	if sw || err != nil {
		t.Fatalf("after a panic: swallowed %v, err %v", sw, err)
	}
	if got := after.got(); !slices.Equal(got, []string{"boom"}) {
		t.Errorf("the next filter saw %q", got)
	}
	m.Free()
	if got := fs.Names(); !slices.Equal(got, []string{"com.test.after"}) {
		t.Errorf("filters after the panic %q", got)
	}
	if got := ofs.Names(); !slices.Equal(got, []string{"com.test.bad", "com.test.after"}) {
		t.Errorf("other socket's filters %q", got)
	}
	// Its detach on the socket completes (reclaiming the kept packet):
	// the gone history says so.
	for deadline := time.Now().Add(5 * time.Second); len(fs.Gone()) == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if len(fs.Gone()) == 0 {
		t.Fatal("the faulting filter's detach never completed")
	}
	g := fs.Gone()[0]
	if g.Name != "com.test.bad" || g.Fault == "" || g.Faults != 1 {
		t.Errorf("gone %+v", g)
	}
	fmu.Lock()
	n := len(faults)
	fmu.Unlock()
	if n != 2 { // the panic, then the reclaim
		t.Errorf("%d faults reported, want the panic and the reclaim: %v", n, faults)
	}
	st := r.Filters()
	for _, s := range st {
		if s.Name == "com.test.bad" && (s.Faults != 1 || s.Reclaimed != 1 || s.Sockets != 1) {
			t.Errorf("bad's status %+v", s)
		}
	}
	fs.Close()
}

func (d *dataFilter) release() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, m := range d.kept {
		m.Free()
	}
	d.kept = nil
}

// reinjector swallows everything not injected by itself and re-injects
// it, through the registry, before returning.
type reinjector struct {
	r   *sockfilter.Registry
	att atomic.Pointer[nke.Attachment]
	in  bool
}

func (x *reinjector) SockAttach(nke.Socket) (any, error) { return nil, nil }
func (x *reinjector) SockDetach(any, nke.Socket)         {}
func (x *reinjector) mine(m *mbuf.Mbuf) bool {
	a := x.att.Load()
	return a == nil || nke.InjectedByMe(m, *a)
}

func (x *reinjector) SockDataIn(_ any, so nke.Socket, from netip.AddrPort, data, control **mbuf.Mbuf, flags nke.DataFlags) error {
	if x.mine(*data) {
		return nil
	}
	if err := x.r.InjectDataIn(so, from, *data, nil, flags, *x.att.Load()); err != nil {
		(*data).Free()
	}
	return nke.ErrSwallowed
}

func (x *reinjector) SockDataOut(_ any, so nke.Socket, to netip.AddrPort, data, control **mbuf.Mbuf, flags nke.DataFlags) error {
	if x.mine(*data) {
		return nil
	}
	x.r.InjectDataOut(so, to, *data, nil, flags, *x.att.Load())
	return nke.ErrSwallowed
}

// Inject in and out run every filter's data again, from the first, then
// reach the socket; out-of-band data, an unknown socket and a loop are
// refused, with Apple's ownership.
func TestInject(t *testing.T) {
	pool := mbuftest.NewPool(t, "sf", 8, 2048, 64)
	mbuftest.CheckPools(t, pool)
	r := sockfilter.New(func(f hook.Fault) { t.Errorf("fault %v", f) })
	last := &dataFilter{name: "last"}
	mustRegister(t, r, tcpSpec("com.test.last", 1, last))
	x := &reinjector{r: r}
	xa := mustRegister(t, r, tcpSpec("com.test.x", 2, x))
	x.att.Store(&xa)
	first := &dataFilter{name: "first"}
	mustRegister(t, r, tcpSpec("com.test.first", 3, first))
	so := nketest.TCP("10.0.2.15:1", "10.0.2.2:2")
	ep := &endpoint{}
	fs := r.NewSocket(so, ep)
	defer fs.Close()

	m := packet(t, pool, "out")
	if sw, err := fs.DataOut(so.Remote, &m, nil, 0); !sw || err != nil {
		t.Fatalf("data out: %v %v", sw, err)
	}
	m = packet(t, pool, "in")
	if sw, err := fs.DataIn(so.Remote, &m, nil, 0); !sw || err != nil {
		t.Fatalf("data in: %v %v", sw, err)
	}
	// first saw each twice (the second time re-injected), last once.
	if got := first.got(); !slices.Equal(got, []string{"out", "out", "in", "in"}) {
		t.Errorf("first saw %q", got)
	}
	if got := last.got(); !slices.Equal(got, []string{"out", "in"}) {
		t.Errorf("last saw %q", got)
	}
	in, out := ep.got()
	if !slices.Equal(in, []string{"in"}) || !slices.Equal(out, []string{"out"}) {
		t.Errorf("socket got in %q, out %q", in, out)
	}
	// Refused by a filter on inject: in is consumed, nil returned; out
	// consumed and the error returned.
	if err := r.InjectDataIn(so, so.Remote, packet(t, pool, "drop"), nil, 0, nil); err != nil {
		t.Errorf("inject in refused by a filter: %v", err)
	}
	if err := r.InjectDataOut(so, so.Remote, packet(t, pool, "drop"), nil, 0, nil); err == nil {
		t.Error("inject out refused by a filter: no error")
	}
	// Out-of-band: in leaves it with the caller, out consumes it.
	m = packet(t, pool, "urgent")
	if err := r.InjectDataIn(so, so.Remote, m, nil, nke.DataOOB, nil); !errors.Is(err, sockfilter.ErrOOB) {
		t.Errorf("oob in: %v", err)
	}
	m.Free()
	if err := r.InjectDataOut(so, so.Remote, packet(t, pool, "urgent"), nil, nke.DataOOB, nil); !errors.Is(err, sockfilter.ErrOOB) {
		t.Errorf("oob out: %v", err)
	}
	// Unknown socket.
	gone := nketest.TCP("10.0.2.15:9", "10.0.2.2:9")
	m = packet(t, pool, "x")
	if err := r.InjectDataIn(gone, so.Remote, m, nil, 0, nil); !errors.Is(err, sockfilter.ErrNoSocket) {
		t.Errorf("unknown socket: %v", err)
	}
	m.Free()
	// Past MaxInjections.
	m = packet(t, pool, "loop")
	for i := 0; i < nke.MaxInjections; i++ {
		if _, err := nke.StampInjection(m, 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.InjectDataIn(so, so.Remote, m, nil, 0, nil); !errors.Is(err, nke.ErrInjectLoop) {
		t.Errorf("loop in: %v", err)
	}
	if err := r.InjectDataOut(so, so.Remote, m, nil, 0, nil); !errors.Is(err, nke.ErrInjectLoop) {
		t.Errorf("loop out: %v", err)
	}
	if _, out := ep.got(); len(out) != 1 {
		t.Errorf("sent %q", out)
	}
}

// Unregistering while many goroutines call into many sockets: no call
// reaches the filter on a socket after its SockDetach there, each
// socket's SockDetach runs once, Unregistered exactly once and last, and
// Done closes. Run under -race.
func TestUnregisterInFlight(t *testing.T) {
	pool := mbuftest.NewPool(t, "sf", 64, 2048, 64)
	mbuftest.CheckPools(t, pool)
	r := sockfilter.New(func(f hook.Fault) { t.Errorf("fault %v", f) })
	c := &counting{}
	spec := tcpSpec("com.test.count", 1, c)
	spec.Unregistered = func() {
		if c.unregistered.Add(1) != 1 {
			t.Error("Unregistered twice")
		}
		if c.live.Load() != 0 {
			t.Errorf("Unregistered with %d sockets attached", c.live.Load())
		}
	}
	a := mustRegister(t, r, spec)
	const sockets, workers = 8, 4
	var fss []*sockfilter.Filters
	for i := 0; i < sockets; i++ {
		fss = append(fss, r.NewSocket(nketest.TCP("10.0.2.15:1", "10.0.2.2:2"), &endpoint{}))
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for _, fs := range fss {
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					m := pool.AllocPacket(10)
					if m == nil {
						continue
					}
					fs.DataOut(netip.AddrPort{}, &m, nil, 0)
					m.Free()
					fs.Notify(nke.SockEventFlushRead)
					var ap netip.AddrPort
					fs.GetPeerName(&ap)
				}
			}()
		}
	}
	for c.calls.Load() < 1000 {
		// let calls be in flight
	}
	a.Detach()
	<-a.Done()
	after := c.calls.Load()
	close(stop)
	wg.Wait()
	if c.unregistered.Load() != 1 || c.detaches.Load() != sockets {
		t.Errorf("unregistered %d, detaches %d", c.unregistered.Load(), c.detaches.Load())
	}
	if c.late.Load() != 0 || c.calls.Load() != after {
		t.Errorf("%d calls after detach, %d after Unregistered", c.late.Load(), c.calls.Load()-after)
	}
	for _, fs := range fss {
		if !fs.Empty() {
			t.Errorf("socket still has %q", fs.Names())
		}
		fs.Close()
	}
}

// counting counts calls and flags any after its socket's detach.
type counting struct {
	calls, late, detaches, unregistered, live atomic.Int64
}

type countCookie struct{ detached atomic.Bool }

func (c *counting) SockAttach(nke.Socket) (any, error) { c.live.Add(1); return &countCookie{}, nil }
func (c *counting) SockDetach(ck any, _ nke.Socket) {
	if ck.(*countCookie).detached.Swap(true) {
		c.late.Add(1)
	}
	c.detaches.Add(1)
	c.live.Add(-1)
}

func (c *counting) call(ck any) {
	c.calls.Add(1)
	if ck.(*countCookie).detached.Load() || c.unregistered.Load() != 0 {
		c.late.Add(1)
	}
}

func (c *counting) SockNotify(ck any, _ nke.Socket, _ nke.SocketEvent) { c.call(ck) }
func (c *counting) SockDataOut(ck any, _ nke.Socket, _ netip.AddrPort, _, _ **mbuf.Mbuf, _ nke.DataFlags) error {
	c.call(ck)
	return nil
}

func (c *counting) SockGetPeerName(ck any, _ nke.Socket, _ *netip.AddrPort) error {
	c.call(ck)
	return nil
}

func (c *counting) SockGetSockName(ck any, _ nke.Socket, _ *netip.AddrPort) error {
	c.call(ck)
	return nil
}

// passFilter passes all data, doing nothing.
type passFilter struct{}

func (passFilter) SockAttach(nke.Socket) (any, error) { return nil, nil }
func (passFilter) SockDetach(any, nke.Socket)         {}
func (passFilter) SockDataIn(any, nke.Socket, netip.AddrPort, **mbuf.Mbuf, **mbuf.Mbuf, nke.DataFlags) error {
	return nil
}

func (passFilter) SockDataOut(any, nke.Socket, netip.AddrPort, **mbuf.Mbuf, **mbuf.Mbuf, nke.DataFlags) error {
	return nil
}

func withFilters(tb testing.TB, n int) (*sockfilter.Filters, *mbuf.Mbuf) {
	pool := mbuftest.NewPool(tb, "sf", 2, 2048, 64)
	r := sockfilter.New(nil)
	for i := 0; i < n; i++ {
		mustRegister(tb, r, tcpSpec("com.test.pass"+string(rune('a'+i)), uint32(i+1), passFilter{}))
	}
	fs := r.NewSocket(nketest.TCP("10.0.2.15:1", "10.0.2.2:2"), &endpoint{})
	tb.Cleanup(fs.Close)
	m := packet(tb, pool, "0123456789abcdef")
	tb.Cleanup(m.Free)
	return fs, m
}

// Data calls allocate nothing, with no filter and with filters.
func TestDataAllocs(t *testing.T) {
	for _, n := range []int{0, 1, 4} {
		fs, m := withFilters(t, n)
		to := netip.MustParseAddrPort("10.0.2.2:2")
		if a := testing.AllocsPerRun(200, func() {
			fs.DataOut(to, &m, nil, 0)
			fs.DataIn(to, &m, nil, 0)
			fs.Notify(nke.SockEventFlushRead)
		}); a != 0 {
			t.Errorf("%d filters: %v allocations per call", n, a)
		}
	}
}

func BenchmarkDataOut(b *testing.B) {
	for _, n := range []int{0, 1, 4} {
		b.Run(string(rune('0'+n))+"filters", func(b *testing.B) {
			fs, m := withFilters(b, n)
			to := netip.MustParseAddrPort("10.0.2.2:2")
			b.ReportAllocs()
			for b.Loop() {
				fs.DataOut(to, &m, nil, 0)
			}
		})
	}
}

// Sockets made and closed while an extended global filter is registered
// and unregistered over and over: every SockAttach that succeeded gets
// exactly one SockDetach, no call comes after it, and each registration
// ends with its Unregistered. Run under -race.
func TestChurn(t *testing.T) {
	pool := mbuftest.NewPool(t, "sf", 16, 2048, 64)
	mbuftest.CheckPools(t, pool)
	r := sockfilter.New(func(f hook.Fault) { t.Errorf("fault %v", f) })
	c := &counting{}
	var attaches atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				so := nketest.TCP("10.0.2.15:1", "10.0.2.2:2")
				fs := r.NewSocket(so, &endpoint{state: sockfilter.StateConnected})
				if m := pool.AllocPacket(8); m != nil {
					fs.DataOut(so.Remote, &m, nil, 0)
					m.Free()
				}
				fs.Notify(nke.SockEventClosing)
				fs.Close()
			}
		}()
	}
	for i := 0; i < 200; i++ {
		var unreg atomic.Int64
		spec := tcpSpec("com.test.churn", 1, &attachCounter{c, &attaches})
		spec.Extended = true
		spec.Unregistered = func() { unreg.Add(1) }
		a := mustRegister(t, r, spec)
		a.Detach()
		<-a.Done()
		if unreg.Load() != 1 {
			t.Fatalf("round %d: Unregistered %d times", i, unreg.Load())
		}
		if c.live.Load() != 0 {
			t.Fatalf("round %d: Unregistered with %d sockets attached", i, c.live.Load())
		}
	}
	close(stop)
	wg.Wait()
	if attaches.Load() != c.detaches.Load() || c.late.Load() != 0 {
		t.Errorf("%d attaches, %d detaches, %d late calls", attaches.Load(), c.detaches.Load(), c.late.Load())
	}
}

type attachCounter struct {
	*counting
	n *atomic.Int64
}

func (a *attachCounter) SockAttach(so nke.Socket) (any, error) {
	a.n.Add(1)
	return a.counting.SockAttach(so)
}

// A panicking SockAttach is a refusal, reported; an attach the chain
// refuses for its order after SockAttach succeeded gets its SockDetach; a
// panic in notify detaches the filter from that socket.
func TestAttachEdges(t *testing.T) {
	l := &log{}
	var faults atomic.Int64
	r := sockfilter.New(func(hook.Fault) { faults.Add(1) })
	p := &rec{name: "p", log: l}
	pa := mustRegister(t, r, tcpSpec("com.test.p", 1, &panicAttach{p}))
	so := nketest.TCP("10.0.2.15:1", "10.0.2.2:2")
	fs := r.NewSocket(so, &endpoint{})
	if !fs.Empty() || faults.Load() != 1 {
		t.Errorf("after a panicking attach: filters %q, %d faults", fs.Names(), faults.Load())
	}
	waitDone(t, pa)

	s := tcpSpec("com.test.o", 2, &rec{name: "o", log: l})
	s.Global = false
	s.Order = nke.Order{After: []string{"com.test.absent"}}
	mustRegister(t, r, s)
	if err := r.AttachSocketFilter(so, 2); !errors.Is(err, hook.ErrOrder) {
		t.Errorf("attach with an unmet order: %v", err)
	}
	wantCalls(t, l, "p:attach", "o:attach", "o:detach")

	n := &rec{name: "n", log: l, panics: "notify connected"}
	mustRegister(t, r, tcpSpec("com.test.n", 3, n))
	fs2 := r.NewSocket(nketest.TCP("10.0.2.15:3", "10.0.2.2:4"), &endpoint{})
	fs2.Notify(nke.SockEventConnected)
	fs2.Notify(nke.SockEventClosing)
	for deadline := time.Now().Add(5 * time.Second); len(fs2.Gone()) == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	wantCalls(t, l, "n:attach", "n:notify connected", "n:detach")
	if !fs2.Empty() || faults.Load() != 2 {
		t.Errorf("after a panicking notify: filters %q, %d faults", fs2.Names(), faults.Load())
	}
	fs.Close()
	fs2.Close()
}

type panicAttach struct{ *rec }

func (p *panicAttach) SockAttach(so nke.Socket) (any, error) {
	p.rec.SockAttach(so)
	panic("attach")
}
