package sockfilter_test

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/kernel/sockfilter"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/nke/mbuf/mbuftest"
	"github.com/nke-harness/nke/nke/nketest"
)

// log is a shared, ordered record of calls: "name:callback".
type log struct {
	mu    sync.Mutex
	calls []string
}

func (l *log) add(s string) {
	l.mu.Lock()
	l.calls = append(l.calls, s)
	l.mu.Unlock()
}

func (l *log) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.calls
	l.calls = nil
	return c
}

// rec is a filter implementing every callback, recording each call; ret
// says what a callback returns (by callback name), panic which panics.
type rec struct {
	name   string
	log    *log
	ret    map[string]error
	panics string
	attErr error
}

func (r *rec) do(cb string) error {
	r.log.add(r.name + ":" + cb)
	if cb == r.panics {
		panic(r.name + " panics in " + cb)
	}
	return r.ret[cb]
}

func (r *rec) SockAttach(so nke.Socket) (any, error) {
	r.log.add(r.name + ":attach")
	if r.attErr != nil {
		return nil, r.attErr
	}
	return r.name + "-cookie", nil
}

func (r *rec) SockDetach(cookie any, so nke.Socket) {
	if cookie != r.name+"-cookie" {
		panic("bad cookie")
	}
	r.log.add(r.name + ":detach")
}

func (r *rec) SockNotify(cookie any, so nke.Socket, ev nke.SocketEvent) {
	r.do("notify " + ev.String())
}

func (r *rec) SockDataIn(cookie any, so nke.Socket, from netip.AddrPort, data, control **mbuf.Mbuf, flags nke.DataFlags) error {
	return r.do("in")
}

func (r *rec) SockDataOut(cookie any, so nke.Socket, to netip.AddrPort, data, control **mbuf.Mbuf, flags nke.DataFlags) error {
	return r.do("out")
}

func (r *rec) SockConnectIn(cookie any, so nke.Socket, from netip.AddrPort) error {
	return r.do("connect-in")
}

func (r *rec) SockConnectOut(cookie any, so nke.Socket, to netip.AddrPort) error {
	return r.do("connect-out")
}
func (r *rec) SockBind(cookie any, so nke.Socket, to netip.AddrPort) error { return r.do("bind") }
func (r *rec) SockListen(cookie any, so nke.Socket) error                  { return r.do("listen") }
func (r *rec) SockAccept(cookie any, listener, so nke.Socket, local, remote netip.AddrPort) error {
	return r.do("accept")
}

func (r *rec) SockSetOption(cookie any, so nke.Socket, opt *nke.SockOpt) error {
	return r.do("setopt")
}

func (r *rec) SockGetOption(cookie any, so nke.Socket, opt *nke.SockOpt) error {
	return r.do("getopt")
}

func (r *rec) SockIoctl(cookie any, so nke.Socket, cmd uint32, arg []byte) error {
	return r.do("ioctl")
}

func (r *rec) SockGetPeerName(cookie any, so nke.Socket, addr *netip.AddrPort) error {
	return r.do("getpeername")
}

func (r *rec) SockGetSockName(cookie any, so nke.Socket, addr *netip.AddrPort) error {
	return r.do("getsockname")
}

// endpoint is a fake Endpoint recording what reaches the socket.
type endpoint struct {
	mu        sync.Mutex
	state     sockfilter.State
	in, out   []string
	sendErr   error
	delivered int
}

func (e *endpoint) State() sockfilter.State {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.state
}

func payload(m *mbuf.Mbuf) string {
	b := make([]byte, m.PktLen())
	m.CopyOut(b)
	return string(b)
}

func (e *endpoint) DeliverIn(from netip.AddrPort, data, control *mbuf.Mbuf, flags nke.DataFlags) error {
	e.mu.Lock()
	e.in = append(e.in, payload(data))
	e.mu.Unlock()
	data.Free()
	if control != nil {
		control.Free()
	}
	return nil
}

func (e *endpoint) SendOut(to netip.AddrPort, data, control *mbuf.Mbuf, flags nke.DataFlags) error {
	e.mu.Lock()
	e.out = append(e.out, payload(data))
	err := e.sendErr
	e.mu.Unlock()
	data.Free()
	if control != nil {
		control.Free()
	}
	return err
}

func (e *endpoint) got() (in, out []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.in), slices.Clone(e.out)
}

func mustRegister(t testing.TB, r *sockfilter.Registry, spec nke.SocketFilterSpec) nke.Attachment {
	t.Helper()
	a, err := r.RegisterSocketFilter(spec)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func tcpSpec(name string, handle uint32, f any) nke.SocketFilterSpec {
	return nke.SocketFilterSpec{Name: name, Handle: handle, Type: nke.SockStream, Global: true, Filter: f}
}

func packet(t testing.TB, p *mbuf.Pool, s string) *mbuf.Mbuf {
	m := p.AllocPacket(len(s))
	if m == nil {
		t.Fatal("pool empty")
	}
	m.CopyBack(0, []byte(s))
	return m
}

func wantCalls(t *testing.T, l *log, want ...string) {
	t.Helper()
	if got := l.take(); !slices.Equal(got, want) {
		t.Errorf("calls:\n got %q\nwant %q", got, want)
	}
}

// waitDone waits for an attachment's unregistering to finish.
func waitDone(t *testing.T, a nke.Attachment) {
	t.Helper()
	a.Detach()
	<-a.Done()
}

// Every callback is reached, in the order the socket layer calls them,
// through two filters, newest first, and the socket's close detaches
// both, each once.
func TestEveryCallback(t *testing.T) {
	pool := mbuftest.NewPool(t, "sf", 8, 2048, 64)
	mbuftest.CheckPools(t, pool)
	l := &log{}
	r := sockfilter.New(func(f hook.Fault) { t.Errorf("fault: %v", f) })
	a := mustRegister(t, r, tcpSpec("com.test.a", 1, &rec{name: "a", log: l}))
	b := mustRegister(t, r, tcpSpec("com.test.b", 2, &rec{name: "b", log: l}))
	so := nketest.TCP("10.0.2.15:40000", "10.0.2.2:80")
	ep := &endpoint{}
	fs := r.NewSocket(so, ep)
	wantCalls(t, l, "a:attach", "b:attach")
	if got := fs.Names(); !slices.Equal(got, []string{"com.test.b", "com.test.a"}) {
		t.Fatalf("order %q, want newest first", got)
	}
	// connect, data both ways, options, names, shutdown, close.
	must := func(done bool, err error) {
		t.Helper()
		if done || err != nil {
			t.Fatalf("done %v, err %v", done, err)
		}
	}
	must(fs.Bind(so.Local))
	fs.Notify(nke.SockEventBound)
	must(fs.ConnectOut(so.Remote))
	fs.Notify(nke.SockEventConnecting)
	fs.Notify(nke.SockEventConnected)
	m := packet(t, pool, "hello")
	var ctl *mbuf.Mbuf
	if sw, err := fs.DataOut(so.Remote, &m, &ctl, 0); sw || err != nil {
		t.Fatal(sw, err)
	}
	m.Free()
	m = packet(t, pool, "world")
	if sw, err := fs.DataIn(so.Remote, &m, nil, nke.DataRecord); sw || err != nil {
		t.Fatal(sw, err)
	}
	m.Free()
	must(fs.SetOption(&nke.SockOpt{Level: 6, Name: 1}))
	must(fs.GetOption(&nke.SockOpt{Level: 6, Name: 1}))
	must(fs.Ioctl(0x8004667e, nil))
	addr := so.Remote
	must(fs.GetPeerName(&addr))
	must(fs.GetSockName(&addr))
	fs.Notify(nke.SockEventShutdown)
	fs.Notify(nke.SockEventCantSendMore)
	fs.Notify(nke.SockEventDisconnecting)
	fs.Notify(nke.SockEventCantRecvMore)
	fs.Notify(nke.SockEventDisconnected)
	fs.Notify(nke.SockEventFlushRead)
	fs.Notify(nke.SockEventClosing)
	fs.Close()
	waitDone(t, a)
	waitDone(t, b)
	var want []string
	for _, cb := range []string{"bind", "notify bound", "connect-out", "notify connecting", "notify connected",
		"out", "in", "setopt", "getopt", "ioctl", "getpeername", "getsockname",
		"notify shutdown", "notify cant-send-more", "notify disconnecting", "notify cant-recv-more",
		"notify disconnected", "notify flush-read", "notify closing"} {
		want = append(want, "b:"+cb, "a:"+cb)
	}
	got := l.take()
	if len(got) < 2 || !slices.Equal(got[:len(got)-2], want) {
		t.Errorf("calls:\n got %q\nwant %q then the detaches", got, want)
	}
	if tail := got[len(got)-2:]; !slices.Contains(tail, "a:detach") || !slices.Contains(tail, "b:detach") {
		t.Errorf("last calls %q, want both detaches", tail)
	}
	// The accept and connect-in side.
	la := mustRegister(t, r, tcpSpec("com.test.a", 1, &rec{name: "a", log: l}))
	lst := nketest.TCP("10.0.2.15:80", "0.0.0.0:0")
	lst.Remote = netip.AddrPort{}
	lfs := r.NewSocket(lst, &endpoint{})
	must(lfs.Listen())
	if err := lfs.ConnectIn(netip.MustParseAddrPort("10.0.2.2:5555")); err != nil {
		t.Fatal(err)
	}
	acc := nketest.TCP("10.0.2.15:80", "10.0.2.2:5555")
	afs := r.NewSocket(acc, &endpoint{})
	if res, err := afs.Accept(lst, acc.Local, acc.Remote); res != sockfilter.AcceptOK || err != nil {
		t.Fatal(res, err)
	}
	afs.Close()
	lfs.Close()
	waitDone(t, la)
	got = l.take()
	if want := []string{"a:attach", "a:listen", "a:connect-in", "a:attach", "a:accept"}; !slices.Equal(got[:5], want) {
		t.Errorf("calls %q, want %q then the detaches", got, want)
	}
	if len(got) != 7 {
		t.Errorf("calls %q", got)
	}
}

// Newest first, the same order in and out, and Order constraints
// override it.
func TestOrder(t *testing.T) {
	pool := mbuftest.NewPool(t, "sf", 4, 2048, 64)
	mbuftest.CheckPools(t, pool)
	l := &log{}
	r := sockfilter.New(nil)
	mustRegister(t, r, tcpSpec("com.test.a", 1, &rec{name: "a", log: l}))
	s := tcpSpec("com.test.b", 2, &rec{name: "b", log: l})
	s.Order = nke.Order{After: []string{"com.test.c"}} // registered later: attached once c is
	mustRegister(t, r, s)
	mustRegister(t, r, tcpSpec("com.test.c", 3, &rec{name: "c", log: l}))
	fs := r.NewSocket(nketest.TCP("10.0.2.15:1", "10.0.2.2:2"), &endpoint{})
	defer fs.Close()
	l.take()
	if got := fs.Names(); !slices.Equal(got, []string{"com.test.c", "com.test.b", "com.test.a"}) {
		t.Fatalf("order %q", got)
	}
	m := packet(t, pool, "x")
	defer m.Free()
	fs.DataOut(netip.AddrPort{}, &m, nil, 0)
	fs.DataIn(netip.AddrPort{}, &m, nil, 0)
	wantCalls(t, l, "c:out", "b:out", "a:out", "c:in", "b:in", "a:in")
}

// An attach refused by the filter means not attached and no detach;
// a duplicate handle or name is refused.
func TestRefusals(t *testing.T) {
	l := &log{}
	r := sockfilter.New(nil)
	a := mustRegister(t, r, tcpSpec("com.test.a", 1, &rec{name: "a", log: l, attErr: errors.New("not this one")}))
	fs := r.NewSocket(nketest.TCP("10.0.2.15:1", "10.0.2.2:2"), &endpoint{})
	if !fs.Empty() {
		t.Errorf("attached after a refusal: %q", fs.Names())
	}
	fs.Close()
	waitDone(t, a)
	wantCalls(t, l, "a:attach")

	mustRegister(t, r, tcpSpec("com.test.a", 1, &rec{name: "a", log: l}))
	if _, err := r.RegisterSocketFilter(tcpSpec("com.test.z", 1, &rec{name: "z", log: l})); !errors.Is(err, sockfilter.ErrDuplicateHandle) {
		t.Errorf("duplicate handle: %v", err)
	}
	if _, err := r.RegisterSocketFilter(tcpSpec("com.test.a", 9, &rec{name: "z", log: l})); !errors.Is(err, sockfilter.ErrDuplicateName) {
		t.Errorf("duplicate name: %v", err)
	}
	if _, err := r.RegisterSocketFilter(tcpSpec("com.test.y", 0, &rec{name: "y", log: l})); err == nil {
		t.Error("handle 0 accepted")
	}
	if _, err := r.RegisterSocketFilter(tcpSpec("com.test.y", 7, struct{}{})); !errors.Is(err, nke.ErrSocketFilterCallbacks) {
		t.Errorf("no callbacks: %v", err)
	}
}

// A programmatic filter attaches on request only; an unknown handle, a
// second attach, an unregistering filter and a socket it is not for are
// refused.
func TestProgrammatic(t *testing.T) {
	l := &log{}
	r := sockfilter.New(nil)
	s := tcpSpec("com.test.p", 5, &rec{name: "p", log: l})
	s.Global = false
	a := mustRegister(t, r, s)
	so := nketest.TCP("10.0.2.15:1", "10.0.2.2:2")
	fs := r.NewSocket(so, &endpoint{})
	if !fs.Empty() {
		t.Fatal("a programmatic filter attached by itself")
	}
	if err := r.AttachSocketFilter(so, 6); !errors.Is(err, sockfilter.ErrUnknownHandle) {
		t.Errorf("unknown handle: %v", err)
	}
	if err := r.AttachSocketFilter(so, 5); err != nil {
		t.Fatal(err)
	}
	if err := r.AttachSocketFilter(so, 5); !errors.Is(err, sockfilter.ErrAttached) {
		t.Errorf("second attach: %v", err)
	}
	udp := &nketest.Socket{SockID: 1 << 40, SockFamily: nke.IPv4, SockType: nke.SockDgram, SockProto: 17}
	ufs := r.NewSocket(udp, &endpoint{})
	defer ufs.Close()
	if err := r.AttachSocketFilter(udp, 5); !errors.Is(err, sockfilter.ErrNoMatch) {
		t.Errorf("udp socket: %v", err)
	}
	fs.Notify(nke.SockEventConnected)
	a.Detach() // the socket detaches it; then Unregistered; then Done
	<-a.Done()
	if err := r.AttachSocketFilter(so, 5); !errors.Is(err, sockfilter.ErrUnknownHandle) {
		t.Errorf("after unregister: %v", err)
	}
	fs.Close()
	wantCalls(t, l, "p:attach", "p:notify connected", "p:detach")
}

// An extended filter attaches to the sockets open at registration and is
// told their state.
func TestExtendedReplay(t *testing.T) {
	l := &log{}
	r := sockfilter.New(nil)
	conn := nketest.TCP("10.0.2.15:1", "10.0.2.2:2")
	cfs := r.NewSocket(conn, &endpoint{state: sockfilter.StateBound | sockfilter.StateConnected | sockfilter.StateCantSendMore})
	defer cfs.Close()
	half := nketest.TCP("[fe80::1]:1", "[fe80::2]:2")
	hfs := r.NewSocket(half, &endpoint{state: sockfilter.StateBound | sockfilter.StateDisconnected | sockfilter.StateCantRecvMore | sockfilter.StateCantSendMore})
	defer hfs.Close()
	udp := &nketest.Socket{SockID: 1 << 41, SockFamily: nke.IPv4, SockType: nke.SockDgram, SockProto: 17}
	ufs := r.NewSocket(udp, &endpoint{state: sockfilter.StateBound})
	defer ufs.Close()

	s := tcpSpec("com.test.x", 8, &rec{name: "x", log: l})
	s.Extended = true
	a := mustRegister(t, r, s)
	got := l.take()
	// The order among sockets is the registry's; each socket's own is fixed.
	one := []string{"x:attach", "x:notify bound", "x:notify connected", "x:notify cant-send-more"}
	two := []string{"x:attach", "x:notify bound", "x:notify disconnected"}
	if !(slices.Equal(got, append(slices.Clone(one), two...)) || slices.Equal(got, append(slices.Clone(two), one...))) {
		t.Errorf("replay %q, want %q and %q", got, one, two)
	}
	if !ufs.Empty() {
		t.Error("attached to a udp socket")
	}
	waitDone(t, a)
	wantCalls(t, l, "x:detach", "x:detach")

	for st, want := range map[sockfilter.State]string{
		0:                          "",
		sockfilter.StateConnecting: "connecting",
		sockfilter.StateListening | sockfilter.StateBound:                                   "bound",
		sockfilter.StateDisconnecting | sockfilter.StateCantRecvMore:                        "disconnecting",
		sockfilter.StateBound | sockfilter.StateCantRecvMore | sockfilter.StateCantSendMore: "bound cant-recv-more cant-send-more",
	} {
		var evs []string
		for _, ev := range sockfilter.Replay(st) {
			evs = append(evs, ev.String())
		}
		if got := strings.Join(evs, " "); got != want {
			t.Errorf("Replay(%#x) = %q, want %q", st, got, want)
		}
	}
}

// The control rule, for each control callback: nil goes on to the next
// filter, then the operation; ErrSwallowed succeeds without it (the next
// filter is not called); another error is returned (nor is it); a panic
// counts as nil (and detaches the filter).
func TestControlRule(t *testing.T) {
	errNo := errors.New("no")
	calls := []struct {
		cb  string
		run func(fs *sockfilter.Filters) (done bool, err error)
	}{
		{"bind", func(fs *sockfilter.Filters) (bool, error) { return fs.Bind(netip.AddrPort{}) }},
		{"listen", func(fs *sockfilter.Filters) (bool, error) { return fs.Listen() }},
		{"connect-out", func(fs *sockfilter.Filters) (bool, error) { return fs.ConnectOut(netip.AddrPort{}) }},
		{"setopt", func(fs *sockfilter.Filters) (bool, error) { return fs.SetOption(&nke.SockOpt{}) }},
		{"getopt", func(fs *sockfilter.Filters) (bool, error) { return fs.GetOption(&nke.SockOpt{}) }},
		{"ioctl", func(fs *sockfilter.Filters) (bool, error) { return fs.Ioctl(1, nil) }},
		{"getpeername", func(fs *sockfilter.Filters) (bool, error) { var a netip.AddrPort; return fs.GetPeerName(&a) }},
		{"getsockname", func(fs *sockfilter.Filters) (bool, error) { var a netip.AddrPort; return fs.GetSockName(&a) }},
		{"connect-in", func(fs *sockfilter.Filters) (bool, error) {
			err := fs.ConnectIn(netip.AddrPort{})
			if errors.Is(err, nke.ErrSwallowed) {
				return true, nil // rejects the peer too
			}
			return false, err
		}},
		{"accept", func(fs *sockfilter.Filters) (bool, error) {
			res, err := fs.Accept(fs.Socket(), netip.AddrPort{}, netip.AddrPort{})
			switch {
			case res == sockfilter.AcceptDisconnect && err == nil:
				return true, nil
			case res == sockfilter.AcceptClose && err != nil:
				return false, err
			case res == sockfilter.AcceptOK && err == nil:
				return false, nil
			}
			return false, fmt.Errorf("accept %v with %v", res, err)
		}},
	}
	for _, c := range calls {
		for _, tc := range []struct {
			ret      error
			panics   bool
			done     bool
			wantErr  error
			nextRuns bool
		}{
			{ret: nil, nextRuns: true},
			{ret: nke.ErrNotMine, nextRuns: true},
			{ret: nke.ErrSwallowed, done: true},
			{ret: errNo, wantErr: errNo},
			{panics: true, nextRuns: true},
		} {
			name := fmt.Sprintf("%s/%v/panic=%v", c.cb, tc.ret, tc.panics)
			t.Run(name, func(t *testing.T) {
				l := &log{}
				faults := 0
				r := sockfilter.New(func(hook.Fault) { faults++ })
				mustRegister(t, r, tcpSpec("com.test.second", 1, &rec{name: "second", log: l}))
				first := &rec{name: "first", log: l, ret: map[string]error{c.cb: tc.ret}}
				if tc.panics {
					first.panics = c.cb
				}
				mustRegister(t, r, tcpSpec("com.test.first", 2, first))
				fs := r.NewSocket(nketest.TCP("10.0.2.15:1", "10.0.2.2:2"), &endpoint{})
				defer fs.Close()
				l.take()
				done, err := c.run(fs)
				if done != tc.done || !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
					t.Errorf("done %v, err %v; want %v, %v", done, err, tc.done, tc.wantErr)
				}
				want := []string{"first:" + c.cb}
				if tc.nextRuns {
					want = append(want, "second:"+c.cb)
				}
				// A faulting filter's detach comes when it comes.
				got := slices.DeleteFunc(l.take(), func(s string) bool { return s == "first:detach" })
				if !slices.Equal(got, want) {
					t.Errorf("calls %q, want %q", got, want)
				}
				if tc.panics != (faults == 1) || (tc.panics && !slices.Equal(fs.Names(), []string{"com.test.second"})) {
					t.Errorf("%d faults, filters %q", faults, fs.Names())
				}
			})
		}
	}
}
