package socket_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/kernel/socket"
	"github.com/nke-harness/nke/kernel/sockfilter"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/examples/contentfilter"
	"github.com/nke-harness/nke/nke/examples/tcplog"
	"github.com/nke-harness/nke/nke/mbuf"
)

// serveEcho accepts on ln and echoes each connection; wait, if set, runs
// before the half-close that follows the peer's.
func serveEcho(t *testing.T, ln net.Listener, wait func()) { serveEchoN(t, ln, 0, wait) }

// serveEchoN echoes n bytes (0: up to the peer's half-close) of each
// connection.
func serveEchoN(t *testing.T, ln net.Listener, n int64, wait func()) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if n > 0 {
					io.CopyN(c, c, n)
				} else {
					io.Copy(c, c)
				}
				if wait != nil {
					wait()
				}
				c.(*socket.TCPConn).CloseWrite()
				io.Copy(io.Discard, c)
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
}

// echoFromPeer sends n random bytes from the peer and checks the echo's
// hash.
func echoFromPeer(t *testing.T, e *env, f family, port uint16, n int) {
	t.Helper()
	echoFromPeerHalf(t, e, f, port, n, true)
}

// echoFromPeerHalf is echoFromPeer, with the peer's half-close after the
// data (halfClose) or none: it reads n bytes and closes.
func echoFromPeerHalf(t *testing.T, e *env, f family, port uint16, n int, halfClose bool) {
	t.Helper()
	pc := e.peerDial(t, f, port)
	payload := make([]byte, n)
	rand.Read(payload)
	go func() {
		pc.Write(payload)
		if halfClose {
			pc.CloseWrite()
		}
	}()
	pc.SetReadDeadline(time.Now().Add(30 * time.Second))
	h := sha256.New()
	var got int64
	var err error
	if halfClose {
		got, err = io.Copy(h, pc)
	} else {
		got, err = io.CopyN(h, pc, int64(n))
	}
	if err != nil || got != int64(n) || !bytes.Equal(h.Sum(nil), sha(payload)) {
		t.Fatalf("echo: %d of %d bytes, %v, hash equal %v", got, n, err, bytes.Equal(h.Sum(nil), sha(payload)))
	}
	pc.Close()
}

func sha(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// reinjector swallows everything received and re-injects it, in order,
// from a goroutine through Registry.InjectDataIn.
type reinjector struct {
	reg *sockfilter.Registry
	att atomic.Pointer[nke.Attachment]
	q   chan held
	n   atomic.Int64
}

type held struct {
	so   nke.Socket
	from netip.AddrPort
	m    *mbuf.Mbuf
}

func (r *reinjector) SockAttach(so nke.Socket) (any, error) { return nil, nil }
func (r *reinjector) SockDetach(any, nke.Socket)            {}
func (r *reinjector) SockDataIn(_ any, so nke.Socket, from netip.AddrPort, data, _ **mbuf.Mbuf, _ nke.DataFlags) error {
	if a := r.att.Load(); a == nil || nke.InjectedByMe(*data, *a) {
		return nil
	}
	r.q <- held{so, from, *data}
	return nke.ErrSwallowed
}

func (r *reinjector) run() {
	for h := range r.q {
		// Slow at times, so that data waits behind the held.
		if r.n.Add(1)%16 == 0 {
			time.Sleep(time.Millisecond)
		}
		// On error (the socket is gone) the data is still marked as
		// held by the filter: its detach frees it, not the filter.
		r.reg.InjectDataIn(h.so, h.from, h.m, nil, 0, *r.att.Load())
	}
}

// A data-in filter that swallows everything and re-injects it later
// keeps the stream intact and in order.
func TestFilterReinjectIn(t *testing.T) {
	e, reg := newFilteredEnv(t, nil)
	ri := &reinjector{reg: reg, q: make(chan held, 4096)}
	a := register(t, reg, tcpSpec("com.test.reinject", 7, true, ri))
	ri.att.Store(&a)
	go ri.run()
	t.Cleanup(func() { close(ri.q) })
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			f := e.fam(t, f)
			// A fixed length, and the peer half-closes only after
			// the echo: a FIN may overtake data a filter holds (the
			// reader sees EOF once the transport has, as on Apple's).
			serveEchoN(t, listen(t, e.l, f.tcp, ":60"), 1<<20, nil)
			echoFromPeerHalf(t, e, f, 60, 1<<20, false)
		})
	}
	if ri.n.Load() == 0 {
		t.Error("nothing was swallowed")
	}
}

// The content filter through the real layer: an echo's data is held
// until its verdict (nothing reaches the peer before), then passes intact;
// a chunk with the marker never reaches the peer.
func TestContentFilterThroughLayer(t *testing.T) {
	e, reg := newFilteredEnv(t, nil)
	f := e.fam(t, families[0])
	marker := []byte("FORBIDDEN-MARKER")
	gate := make(chan struct{})
	var gateOnce sync.Once
	cf := contentfilter.New(reg, func(_ nke.Socket, chunk []byte) bool {
		<-gate
		return !bytes.Contains(chunk, marker)
	})
	ca := register(t, reg, cf.Spec(0xcf))
	cf.SetAttachment(ca)
	settled := func() {
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			// Decided, and the allowed written (Allowed counts before
			// the re-injection returns): nothing of the pool out.
			if st := cf.Stats(); st.Held == st.Allowed+st.Blocked+st.Dropped && e.l.FilterBuffersInUse() == 0 {
				return
			}
		}
	}
	serveEcho(t, listen(t, e.l, "tcp4", ":61"), settled)
	t.Cleanup(func() { gateOnce.Do(func() { close(gate) }) })

	// Held: the first chunk echoed does not reach the peer until a verdict.
	pc := e.peerDial(t, f, 61)
	pc.Write([]byte("first"))
	pc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := pc.Read(make([]byte, 8)); n != 0 || !peerTimeout(err) {
		t.Fatalf("the peer read %d bytes (%v) before the verdict", n, err)
	}
	if cf.Stats().Held == 0 {
		t.Fatal("nothing held")
	}
	gateOnce.Do(func() { close(gate) })
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 8)
	if _, err := io.ReadFull(pc, buf[:5]); err != nil || string(buf[:5]) != "first" {
		t.Fatalf("after the verdict: %q %v", buf[:5], err)
	}
	pc.Close()

	echoFromPeer(t, e, f, 61, 4<<20)

	// Blocked: the guest sends three chunks, the middle one marked.
	ln := listen(t, e.l, "tcp4", ":62")
	pc = e.peerDial(t, f, 62)
	c := accept(t, ln)
	before := cf.Stats()
	for _, s := range []string{"one ", "two " + string(marker), "three"} {
		if n, err := c.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatal(n, err)
		}
	}
	settled()
	c.Close()
	got, _ := io.ReadAll(pc)
	if string(got) != "one three" {
		t.Errorf("the peer got %q, want %q", got, "one three")
	}
	if st := cf.Stats(); st.Blocked != before.Blocked+1 {
		t.Errorf("stats %+v, before %+v", st, before)
	}
}

// tcplog through the real layer: the right byte counts for a 1 MiB echo
// and for an HTTP request.
func TestTCPLogThroughLayer(t *testing.T) {
	e, reg := newFilteredEnv(t, nil)
	f := e.fam(t, families[0])
	lg := tcplog.New(64, nil)
	register(t, reg, lg.Spec(0x7c9))
	serveEcho(t, listen(t, e.l, "tcp4", ":63"), nil)
	echoFromPeer(t, e, f, 63, 1<<20)
	rec := waitRecord(t, lg, 63)
	if rec.In != 1<<20 || rec.Out != 1<<20 {
		t.Errorf("echo record %v: want %d bytes each way", rec, 1<<20)
	}

	ln := listen(t, e.l, "tcp4", ":80")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello "+r.URL.Path)
	})}
	go srv.Serve(ln)
	defer srv.Close()
	var sent, recvd atomic.Int64
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			c, err := gonet.DialContextTCP(ctx, e.p.Stack, e.peerAddr(f, f.guest, 80), f.proto)
			if err != nil {
				return nil, err
			}
			return &countConn{Conn: c, in: &recvd, out: &sent}, nil
		}}}
	resp, err := client.Get("http://guest/logged")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "hello /logged" {
		t.Fatalf("body %q", body)
	}
	rec = waitRecord(t, lg, 80)
	deadline := time.Now().Add(5 * time.Second)
	for recvd.Load() < int64(rec.Out) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if rec.In != uint64(sent.Load()) || rec.Out != uint64(recvd.Load()) || rec.In == 0 {
		t.Errorf("http record %v: the client sent %d, received %d", rec, sent.Load(), recvd.Load())
	}
}

type countConn struct {
	net.Conn
	in, out *atomic.Int64
}

func (c *countConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.in.Add(int64(n))
	return n, err
}

func (c *countConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.out.Add(int64(n))
	return n, err
}

// waitRecord waits for tcplog's record of a connection to local port.
func waitRecord(t *testing.T, lg *tcplog.Logger, port uint16) tcplog.Record {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		recs, _ := lg.Records()
		for _, r := range recs {
			if r.Local.Port() == port {
				return r
			}
		}
	}
	t.Fatalf("no record for port %d", port)
	return tcplog.Record{}
}

// counter counts its calls and those that came after its Unregistered.
type counter struct {
	unreg, after, calls atomic.Int64
}

func (c *counter) call() {
	c.calls.Add(1)
	if c.unreg.Load() != 0 {
		c.after.Add(1)
	}
}
func (c *counter) SockAttach(nke.Socket) (any, error) { c.call(); return nil, nil }
func (c *counter) SockDetach(any, nke.Socket)         { c.call() }
func (c *counter) SockNotify(any, nke.Socket, nke.SocketEvent) {
	c.call()
}
func (c *counter) SockDataIn(any, nke.Socket, netip.AddrPort, **mbuf.Mbuf, **mbuf.Mbuf, nke.DataFlags) error {
	c.call()
	return nil
}
func (c *counter) SockDataOut(any, nke.Socket, netip.AddrPort, **mbuf.Mbuf, **mbuf.Mbuf, nke.DataFlags) error {
	c.call()
	return nil
}

// Unregistering tcplog and a counting filter while 200 short connections
// run: none is lost, nothing is called after Unregistered.
func TestUnregisterUnderLoad(t *testing.T) {
	e, reg := newFilteredEnv(t, nil)
	f := e.fam(t, families[0])
	serveEcho(t, listen(t, e.l, "tcp4", ":64"), nil)
	lg := tcplog.New(1024, nil)
	lspec := lg.Spec(0x7c9)
	cnt := &counter{}
	cspec := tcpSpec("com.test.counter", 8, true, cnt)
	cspec.Unregistered = func() { cnt.unreg.Store(1) }
	la, err := reg.RegisterSocketFilter(lspec)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := reg.RegisterSocketFilter(cspec)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var started, completed atomic.Int64
	errs := make(chan error, 200)
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			started.Add(1)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := gonet.DialContextTCP(ctx, e.p.Stack, e.peerAddr(f, f.guest, 64), f.proto)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			msg := []byte("a short connection, 32 bytes...")
			c.SetDeadline(time.Now().Add(20 * time.Second))
			c.Write(msg)
			c.CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, msg) {
				errs <- errors.Join(err, errors.New("echo "+string(got)))
			}
			completed.Add(1)
		}()
	}
	// Unregister with some connections done and most in flight.
	for deadline := time.Now().Add(20 * time.Second); completed.Load() < 20 && time.Now().Before(deadline); {
		time.Sleep(100 * time.Microsecond)
	}
	la.Detach()
	ca.Detach()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, a := range []nke.Attachment{la, ca} {
		select {
		case <-a.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("%s not unregistered", a.Name())
		}
	}
	if cnt.unreg.Load() == 0 || cnt.after.Load() != 0 || cnt.calls.Load() == 0 {
		t.Errorf("unregistered %d, %d calls, %d after", cnt.unreg.Load(), cnt.calls.Load(), cnt.after.Load())
	}
	if st := reg.Filters(); len(st) != 0 {
		t.Errorf("still registered: %+v", st)
	}
	recs, lost := lg.Records()
	t.Logf("tcplog reported %d connections (%d lost) before it went", len(recs), lost)
}

// panicker panics on data containing "boom".
type panicker struct{ in atomic.Int64 }

func (p *panicker) SockAttach(nke.Socket) (any, error) { return nil, nil }
func (p *panicker) SockDetach(any, nke.Socket)         {}
func (p *panicker) SockDataIn(_ any, _ nke.Socket, _ netip.AddrPort, data, _ **mbuf.Mbuf, _ nke.DataFlags) error {
	p.in.Add(1)
	b := make([]byte, (*data).PktLen())
	(*data).CopyData(0, b)
	if bytes.Contains(b, []byte("boom")) {
		panic("boom")
	}
	return nil
}

// A filter that panics is detached from that socket and reported; the
// socket goes on, and the filter stays on other sockets.
func TestFilterPanic(t *testing.T) {
	faults := make(chan hook.Fault, 4)
	e, reg := newFilteredEnv(t, faults)
	f := e.fam(t, families[0])
	p := &panicker{}
	register(t, reg, tcpSpec("com.test.panic", 9, true, p))
	ln := listen(t, e.l, "tcp4", ":65")
	pa := e.peerDial(t, f, 65)
	a := accept(t, ln)
	pb := e.peerDial(t, f, 65)
	b := accept(t, ln)
	buf := make([]byte, 64)
	rd := func(c net.Conn, want string) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, buf[:len(want)]); err != nil || string(buf[:len(want)]) != want {
			t.Fatalf("read %q %v, want %q", buf[:len(want)], err, want)
		}
	}
	pa.Write([]byte("boom"))
	rd(a, "boom") // passed on as it was
	select {
	case fl := <-faults:
		if fl.Filter != "com.test.panic" {
			t.Errorf("fault %+v", fl)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no fault reported")
	}
	n := p.in.Load()
	pa.Write([]byte("after"))
	rd(a, "after")
	if p.in.Load() != n {
		t.Error("the filter was called on the socket after its panic")
	}
	pb.Write([]byte("other"))
	rd(b, "other")
	if p.in.Load() != n+1 {
		t.Error("the filter is not on the other socket any more")
	}
	a.Write([]byte("still"))
	rd(pa, "still")
}

// A connect-in refusal: the peer is reset, Accept returns the next one.
func TestFilterConnectInRefusal(t *testing.T) {
	e, reg := newFilteredEnv(t, nil)
	f := e.fam(t, families[0])
	j := newJournal()
	rec := &recorder{j: j}
	register(t, reg, tcpSpec("com.test.connin", 10, true, rec))
	ln := listen(t, e.l, "tcp4", ":66")
	rec.set("connect_in", errors.New("not you"))
	refused := e.peerDial(t, f, 66)
	done := make(chan *socket.TCPConn)
	go func() {
		ln.SetDeadline(time.Now().Add(10 * time.Second))
		c, _ := ln.AcceptTCP()
		done <- c
	}()
	refused.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := refused.Read(make([]byte, 1)); err == nil || peerTimeout(err) {
		t.Errorf("the refused peer read: %v, want a reset", err)
	}
	rec.set("connect_in", nil)
	ok := e.peerDial(t, f, 66)
	c := <-done
	if c == nil {
		t.Fatal("no connection accepted")
	}
	defer c.Close()
	if got, want := c.RemoteAddr().(*net.TCPAddr).Port, ok.LocalAddr().(*net.TCPAddr).Port; got != want {
		t.Errorf("accepted port %d, want the second peer's %d", got, want)
	}
}

// sf_accept: a swallow disconnects the accepted socket and Accept waits
// for the next; another error closes it and is returned from Accept.
func TestFilterAcceptResults(t *testing.T) {
	e, reg := newFilteredEnv(t, nil)
	f := e.fam(t, families[0])
	deny := errors.New("accept denied")
	var n atomic.Int64
	acc := &acceptor{decide: func() error {
		switch n.Add(1) {
		case 1:
			return nke.ErrSwallowed
		case 2:
			return deny
		}
		return nil
	}}
	register(t, reg, tcpSpec("com.test.accept", 11, true, acc))
	ln := listen(t, e.l, "tcp4", ":67")
	p1 := e.peerDial(t, f, 67)
	p2 := e.peerDial(t, f, 67)
	ln.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := ln.Accept(); !errors.Is(err, deny) {
		t.Fatalf("Accept: %v, want %v", err, deny)
	}
	for _, p := range []*gonet.TCPConn{p1, p2} {
		p.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := p.Read(make([]byte, 1)); err == nil || peerTimeout(err) {
			t.Errorf("peer of a refused accept read: %v, want EOF or a reset", err)
		}
	}
	if _, err := p1.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("swallowed accept: the peer read %v, want EOF (a graceful close)", err)
	}
	p3 := e.peerDial(t, f, 67)
	c := accept(t, ln)
	if got, want := c.RemoteAddr().(*net.TCPAddr).Port, p3.LocalAddr().(*net.TCPAddr).Port; got != want {
		t.Errorf("accepted port %d, want the third peer's %d", got, want)
	}
}

type acceptor struct{ decide func() error }

func (a *acceptor) SockAttach(nke.Socket) (any, error) { return nil, nil }
func (a *acceptor) SockDetach(any, nke.Socket)         {}
func (a *acceptor) SockAccept(any, nke.Socket, nke.Socket, netip.AddrPort, netip.AddrPort) error {
	return a.decide()
}

// A registry with no filter attached costs the data path no allocation.
func TestNoFilterAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	reg := sockfilter.New(nil)
	for _, tc := range []struct {
		name string
		opts []socket.LayerOption
	}{{"none", nil}, {"registry", []socket.LayerOption{socket.WithFilters(reg)}}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.l.Close()
			e.l = socket.New(e.r.Stack, tc.opts...)
			defer e.l.Close()
			ln := listen(t, e.l, "tcp4", ":68")
			ctx := context.Background()
			done := make(chan net.Conn, 1)
			go func() { c, _ := ln.Accept(); done <- c }()
			c, err := e.l.Dial(ctx, "tcp4", "10.0.2.15:68")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s := <-done
			defer s.Close()
			buf := make([]byte, 1024)
			in := make([]byte, 1024)
			// The least of three runs: other goroutines' allocations
			// (timers of earlier tests) count too.
			allocs := 1e9
			for i := 0; i < 3; i++ {
				allocs = min(allocs, testing.AllocsPerRun(200, func() {
					c.Write(buf)
					io.ReadFull(s, in)
				}))
			}
			t.Logf("%s: %.1f allocations per 1 KiB write and read", tc.name, allocs)
			noFilterAllocs[tc.name] = allocs
		})
	}
	if noFilterAllocs["registry"] > noFilterAllocs["none"]+0.5 {
		t.Errorf("a registry with no filter attached allocates: %.1f per op, %.1f without", noFilterAllocs["registry"], noFilterAllocs["none"])
	}
}

var noFilterAllocs = map[string]float64{}

// peerTimeout is a gonet read timeout.
func peerTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Datagrams through a filter that swallows and re-injects them keep
// their boundaries and sender; a truncated read is flagged.
func TestFilterDatagrams(t *testing.T) {
	e, reg := newFilteredEnv(t, nil)
	f := e.fam(t, families[0])
	ri := &reinjector{reg: reg, q: make(chan held, 64)}
	a := register(t, reg, nke.SocketFilterSpec{Name: "com.test.udp", Handle: 12, Type: nke.SockDgram, Protocol: 17, Global: true, Filter: ri})
	ri.att.Store(&a)
	go ri.run()
	t.Cleanup(func() { close(ri.q) })
	u, err := e.l.ListenPacket("udp4", ":69")
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	pu, err := gonet.DialUDP(e.p.Stack, nil, ptr(e.peerAddr(f, f.guest, 69)), f.proto)
	if err != nil {
		t.Fatal(err)
	}
	defer pu.Close()
	sizes := []int{1, 700, 1400, 3}
	for _, n := range sizes {
		if _, err := pu.Write(bytes.Repeat([]byte{byte(n)}, n)); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 2048)
	u.SetReadDeadline(time.Now().Add(5 * time.Second))
	for _, n := range sizes[:3] {
		got, from, err := u.ReadFrom(buf)
		if err != nil || got != n || buf[0] != byte(n) {
			t.Fatalf("datagram of %d: read %d, %v", n, got, err)
		}
		if from.String() != pu.LocalAddr().String() {
			t.Errorf("from %v, want %v", from, pu.LocalAddr())
		}
	}
	uc := u.(*socket.UDPConn)
	n, _, flags, _, err := uc.ReadMsgUDP(buf[:2], nil)
	if err != nil || n != 2 || flags&0x20 == 0 { // MSG_TRUNC
		t.Errorf("truncated read: %d, flags %#x, %v", n, flags, err)
	}
	if ri.n.Load() != int64(len(sizes)) {
		t.Errorf("%d datagrams swallowed, want %d", ri.n.Load(), len(sizes))
	}
	// Out: a datagram the guest sends reaches the peer whole.
	if _, err := u.WriteTo(bytes.Repeat([]byte("x"), 1000), pu.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	pu.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := pu.Read(buf); n != 1000 || err != nil {
		t.Errorf("peer read %d, %v", n, err)
	}
}

func ptr[T any](v T) *T { return &v }

// Closing a socket whose output a filter holds waits for it: the peer
// gets every chunk the filter lets through, though the writer closed at
// once (socket.Linger).
func TestCloseLingersForHeldOutput(t *testing.T) {
	e, reg := newFilteredEnv(t, nil)
	f := e.fam(t, families[0])
	cf := contentfilter.New(reg, func(nke.Socket, []byte) bool {
		time.Sleep(20 * time.Millisecond) // a slow verdict
		return true
	})
	ca := register(t, reg, cf.Spec(0xcf))
	cf.SetAttachment(ca)
	ln := listen(t, e.l, "tcp4", ":63")
	pc := e.peerDial(t, f, 63)
	c := accept(t, ln)
	for _, s := range []string{"one ", "two ", "three"} {
		if n, err := c.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatal(n, err)
		}
	}
	c.Close() // no waiting for the verdicts
	pc.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(pc)
	if string(got) != "one two three" {
		t.Errorf("the peer got %q (%v), want every chunk", got, err)
	}
	if st := cf.Stats(); st.Allowed != 3 || st.Dropped != 0 {
		t.Errorf("content filter stats %+v", st)
	}
}

// keepThenPanic swallows the first data it sees and keeps it, then
// panics: a filter dying with data of the stream in its hands.
type keepThenPanic struct{ calls atomic.Int64 }

func (p *keepThenPanic) SockAttach(nke.Socket) (any, error) { return nil, nil }
func (p *keepThenPanic) SockDetach(any, nke.Socket)         {}
func (p *keepThenPanic) SockDataIn(_ any, _ nke.Socket, _ netip.AddrPort, data, _ **mbuf.Mbuf, _ nke.DataFlags) error {
	if p.calls.Add(1) == 1 {
		return nke.ErrSwallowed // kept, never given back
	}
	panic("keepThenPanic")
}

// A filter that detaches (here: panics) holding data it swallowed leaves
// a stream with a hole: the kernel frees the data and aborts the socket
// with sockfilter.ErrLostData instead of going on as if nothing was lost.
func TestFilterDiesHoldingData(t *testing.T) {
	faults := make(chan hook.Fault, 4)
	e, reg := newFilteredEnv(t, faults)
	f := e.fam(t, families[0])
	p := &keepThenPanic{}
	register(t, reg, tcpSpec("com.test.keeper", 11, true, p))
	ln := listen(t, e.l, "tcp4", ":66")
	pa := e.peerDial(t, f, 66)
	a := accept(t, ln)
	pa.Write([]byte("kept"))
	deadline := time.Now().Add(5 * time.Second)
	for p.calls.Load() < 1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	pa.Write([]byte("boom"))
	a.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.ReadAll(a)
	a.Close()
	pa.Close()
	if !errors.Is(err, sockfilter.ErrLostData) {
		t.Fatalf("read after the filter died holding data: %v, want ErrLostData", err)
	}
}
