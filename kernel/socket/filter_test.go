package socket_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/kernel/socket"
	"github.com/nke-harness/nke/kernel/sockfilter"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// journal is what recording filters saw, in order, across filters.
type journal struct {
	mu    sync.Mutex
	next  string
	names map[uint64]string
	log   []string
}

func newJournal() *journal { return &journal{names: map[uint64]string{}} }

func (j *journal) name(n string) { j.mu.Lock(); j.next = n; j.mu.Unlock() }

func (j *journal) add(f string, so nke.Socket, what string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	n, ok := j.names[so.ID()]
	if !ok {
		n = j.next
		j.names[so.ID()] = n
	}
	if f != "" {
		n = f + ":" + n
	}
	j.log = append(j.log, n+" "+what)
}

// expect waits (SockDetach runs on a goroutine of its own) for the log
// to have as many lines as want, then compares and empties it.
func (j *journal) expect(t *testing.T, step string, want ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		j.mu.Lock()
		n := len(j.log)
		j.mu.Unlock()
		if n >= len(want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(5 * time.Millisecond) // anything more would show
	j.mu.Lock()
	got := j.log
	j.log = nil
	j.mu.Unlock()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\n got %q\nwant %q", step, got, want)
	}
}

// recorder is a socket filter with every callback, journaling each; ctl
// gives the control callbacks' results (by callback name), data ones
// pass.
type recorder struct {
	tag string // prefix in the journal ("" for none)
	j   *journal
	mu  sync.Mutex
	ctl map[string]error
	// getopt, ioctl, peer: what a swallowing get-option, ioctl, or a
	// getpeername fills in.
	optVal int
	peer   netip.AddrPort
}

func (r *recorder) do(so nke.Socket, what string) error {
	r.j.add(r.tag, so, what)
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ctl[what]
}

func (r *recorder) set(what string, err error) {
	r.mu.Lock()
	if r.ctl == nil {
		r.ctl = map[string]error{}
	}
	r.ctl[what] = err
	r.mu.Unlock()
}

func (r *recorder) SockAttach(so nke.Socket) (any, error) { return nil, r.do(so, "attach") }
func (r *recorder) SockDetach(_ any, so nke.Socket)       { r.do(so, "detach") }
func (r *recorder) SockNotify(_ any, so nke.Socket, ev nke.SocketEvent) {
	r.do(so, "notify:"+ev.String())
}
func (r *recorder) SockDataIn(_ any, so nke.Socket, _ netip.AddrPort, data, _ **mbuf.Mbuf, fl nke.DataFlags) error {
	r.do(so, fmt.Sprintf("data_in %d", (*data).PktLen()))
	return nil
}
func (r *recorder) SockDataOut(_ any, so nke.Socket, _ netip.AddrPort, data, _ **mbuf.Mbuf, fl nke.DataFlags) error {
	r.do(so, fmt.Sprintf("data_out %d", (*data).PktLen()))
	return nil
}
func (r *recorder) SockConnectIn(_ any, so nke.Socket, from netip.AddrPort) error {
	return r.do(so, "connect_in")
}
func (r *recorder) SockConnectOut(_ any, so nke.Socket, to netip.AddrPort) error {
	return r.do(so, "connect_out")
}
func (r *recorder) SockBind(_ any, so nke.Socket, to netip.AddrPort) error { return r.do(so, "bind") }
func (r *recorder) SockListen(_ any, so nke.Socket) error                  { return r.do(so, "listen") }
func (r *recorder) SockAccept(_ any, _, so nke.Socket, _, _ netip.AddrPort) error {
	return r.do(so, "accept")
}
func (r *recorder) SockSetOption(_ any, so nke.Socket, opt *nke.SockOpt) error {
	return r.do(so, fmt.Sprintf("setoption %d/%d", opt.Level, opt.Name))
}
func (r *recorder) SockGetOption(_ any, so nke.Socket, opt *nke.SockOpt) error {
	err := r.do(so, "getoption")
	if errors.Is(err, nke.ErrSwallowed) {
		opt.Value = []byte{byte(r.optVal), 0, 0, 0}
	}
	return err
}
func (r *recorder) SockIoctl(_ any, so nke.Socket, cmd uint32, arg []byte) error {
	err := r.do(so, fmt.Sprintf("ioctl %#x", cmd))
	if errors.Is(err, nke.ErrSwallowed) {
		arg[0] = byte(r.optVal)
	}
	return err
}
func (r *recorder) SockGetPeerName(_ any, so nke.Socket, addr *netip.AddrPort) error {
	err := r.do(so, "getpeername")
	if r.peer.IsValid() {
		*addr = r.peer
	}
	return err
}
func (r *recorder) SockGetSockName(_ any, so nke.Socket, addr *netip.AddrPort) error {
	return r.do(so, "getsockname")
}

var (
	_ nke.SockNotifier   = (*recorder)(nil)
	_ nke.SockDataIn     = (*recorder)(nil)
	_ nke.SockDataOut    = (*recorder)(nil)
	_ nke.SockConnectIn  = (*recorder)(nil)
	_ nke.SockConnectOut = (*recorder)(nil)
	_ nke.SockBinder     = (*recorder)(nil)
	_ nke.SockListener   = (*recorder)(nil)
	_ nke.SockAcceptor   = (*recorder)(nil)
	_ nke.SockOptioner   = (*recorder)(nil)
	_ nke.SockIoctler    = (*recorder)(nil)
	_ nke.SockNamer      = (*recorder)(nil)
)

// newFilteredEnv is newEnv with a registry whose faults fail the test
// unless faults is given.
func newFilteredEnv(t *testing.T, faults chan<- hook.Fault) (*env, *sockfilter.Registry) {
	t.Helper()
	reg := sockfilter.New(func(f hook.Fault) {
		if faults == nil {
			t.Errorf("fault: %+v", f)
			return
		}
		select {
		case faults <- f:
		default:
		}
	})
	e := newEnv(t)
	e.l.Close()
	e.l = socket.New(e.r.Stack, socket.WithFilters(reg))
	l := e.l
	t.Cleanup(func() {
		l.Close()
		deadline := time.Now().Add(5 * time.Second)
		for l.FilterBuffersInUse() != 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if n := l.FilterBuffersInUse(); n != 0 {
			t.Errorf("%d filter buffers still in use after the layer's Close", n)
		}
	})
	return e, reg
}

func register(t *testing.T, reg *sockfilter.Registry, spec nke.SocketFilterSpec) nke.Attachment {
	t.Helper()
	a, err := reg.RegisterSocketFilter(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Detach()
		select {
		case <-a.Done():
		case <-time.After(5 * time.Second):
			t.Errorf("%s: not unregistered", a.Name())
		}
	})
	return a
}

func tcpSpec(name string, handle uint32, global bool, f any) nke.SocketFilterSpec {
	return nke.SocketFilterSpec{Name: name, Handle: handle, Type: nke.SockStream, Protocol: 6, Global: global, Filter: f}
}

// TestFilterEventOrder is TestEventOrder seen by a real socket filter:
// every callback in Apple's order for listen, accept, data both ways,
// shutdown and close, dial out, the control calls, for IPv4 and IPv6.
func TestFilterEventOrder(t *testing.T) {
	e, reg := newFilteredEnv(t, nil)
	j := newJournal()
	register(t, reg, tcpSpec("com.test.rec", 1, true, &recorder{j: j}))
	for i, f := range families {
		t.Run(f.name, func(t *testing.T) {
			f := e.fam(t, f)
			port := uint16(30 + i)
			j.name("L")
			ln, err := e.l.Listen(f.tcp, ":"+itoa(port))
			if err != nil {
				t.Fatal(err)
			}
			j.expect(t, "listen", "L attach", "L bind", "L notify:bound", "L listen")
			pc := e.peerDial(t, f, port)
			j.name("A")
			ln.SetDeadline(time.Now().Add(10 * time.Second))
			a, err := ln.AcceptTCP()
			if err != nil {
				t.Fatal(err)
			}
			j.expect(t, "accept", "L connect_in", "A attach", "A notify:connected", "A accept")
			pc.Write([]byte("hello"))
			buf := make([]byte, 10)
			if n, err := a.Read(buf); err != nil || string(buf[:n]) != "hello" {
				t.Fatal(n, err)
			}
			a.Write([]byte("world!"))
			if _, err := io.ReadFull(pc, buf[:6]); err != nil || string(buf[:6]) != "world!" {
				t.Fatal(err)
			}
			j.expect(t, "data", "A data_in 5", "A data_out 6")
			a.CloseWrite()
			j.expect(t, "close write", "A notify:shutdown", "A notify:cant-send-more")
			io.ReadAll(pc)
			pc.Close()
			if _, err := a.Read(buf); err != io.EOF {
				t.Fatalf("read after the peer's close: %v", err)
			}
			j.expect(t, "peer closed", "A notify:cant-recv-more")
			a.Close()
			j.expect(t, "close", "A notify:closing", "A notify:disconnecting", "A notify:disconnected", "A detach")

			pl, err := gonet.ListenTCP(e.p.Stack, e.peerAddr(f, f.peer, 8080), f.proto)
			if err != nil {
				t.Fatal(err)
			}
			defer pl.Close()
			go func() {
				c, err := pl.Accept()
				if err == nil {
					io.Copy(c, c)
					c.Close()
				}
			}()
			j.name("D")
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := e.l.Dial(ctx, f.tcp, net.JoinHostPort(f.peer, "8080"))
			if err != nil {
				t.Fatal(err)
			}
			d := c.(*socket.TCPConn)
			j.expect(t, "dial", "D attach", "D connect_out", "D notify:connecting", "D notify:connected")
			d.Write([]byte("ping"))
			io.ReadFull(d, buf[:4])
			j.expect(t, "echo", "D data_out 4", "D data_in 4")
			d.SetNoDelay(true)
			d.GetOption(socket.OptNoDelay)
			d.Ioctl(socket.FIONREAD)
			d.LocalAddr()
			d.RemoteAddr()
			j.expect(t, "control", "D setoption 6/1", "D getoption", "D ioctl 0x541b", "D getsockname", "D getpeername")
			d.CloseRead()
			j.expect(t, "close read", "D notify:shutdown", "D notify:flush-read", "D notify:cant-recv-more")
			d.Close()
			j.expect(t, "close", "D notify:closing", "D notify:disconnecting", "D notify:disconnected", "D detach")
			ln.Close()
			j.expect(t, "close listener", "L notify:closing", "L detach")
		})
	}
}

// Global filters attach to every new socket, programmatic ones on
// request (AttachFilter, OptNKE), newest first, the same order in and
// out; a listener's programmatic filters attach to what it accepts.
func TestFilterAttachOrder(t *testing.T) {
	e, reg := newFilteredEnv(t, nil)
	f := e.fam(t, families[0])
	j := newJournal()
	register(t, reg, tcpSpec("com.test.global", 1, true, &recorder{tag: "G", j: j}))
	register(t, reg, tcpSpec("com.test.prog", 2, false, &recorder{tag: "P", j: j}))
	register(t, reg, tcpSpec("com.test.opt", 3, false, &recorder{tag: "O", j: j}))
	j.name("L")
	ln := listen(t, e.l, "tcp4", ":40")
	j.expect(t, "listen", "G:L attach", "G:L bind", "G:L notify:bound", "G:L listen")
	if err := ln.AttachFilter(2); err != nil {
		t.Fatal(err)
	}
	if err := ln.AttachFilter(2); !errors.Is(err, sockfilter.ErrAttached) {
		t.Errorf("second attach: %v", err)
	}
	if err := ln.AttachFilter(99); !errors.Is(err, sockfilter.ErrUnknownHandle) {
		t.Errorf("unknown handle: %v", err)
	}
	j.expect(t, "attach P", "P:L attach")
	pc := e.peerDial(t, f, 40)
	j.name("A")
	a := accept(t, ln)
	j.expect(t, "accept", "P:L connect_in", "G:L connect_in",
		"G:A attach", "P:A attach", "P:A notify:connected", "G:A notify:connected", "P:A accept", "G:A accept")
	if err := a.SetOption(socket.OptNKE, 3); err != nil {
		t.Fatal(err)
	}
	j.expect(t, "SO_NKE", "P:A setoption 1/4353", "G:A setoption 1/4353", "O:A attach")
	pc.Write([]byte("in"))
	buf := make([]byte, 8)
	a.Read(buf)
	a.Write([]byte("out"))
	j.expect(t, "data", "O:A data_in 2", "P:A data_in 2", "G:A data_in 2", "O:A data_out 3", "P:A data_out 3", "G:A data_out 3")

	// No registry: no programmatic attach.
	plain := socket.New(e.r.Stack)
	defer plain.Close()
	pln, err := plain.Listen("tcp4", ":41")
	if err != nil {
		t.Fatal(err)
	}
	defer pln.Close()
	if err := pln.AttachFilter(2); !errors.Is(err, socket.ErrNoFilters) {
		t.Errorf("attach without registry: %v", err)
	}
}

// The control rule at bind, listen, connect out, options, ioctl and the
// names: an error goes back to the caller (the *net.OpError's Err),
// nke.ErrSwallowed succeeds without doing it.
func TestFilterControlRule(t *testing.T) {
	e, reg := newFilteredEnv(t, nil)
	f := e.fam(t, families[0])
	j := newJournal()
	rec := &recorder{j: j, optVal: 42}
	udpSpec := nke.SocketFilterSpec{Name: "com.test.udp", Handle: 2, Type: nke.SockDgram, Global: true, Filter: rec}
	register(t, reg, tcpSpec("com.test.ctl", 1, true, rec))
	register(t, reg, udpSpec)
	deny := errors.New("denied by filter")
	swallow := fmt.Errorf("swallowed: %w", nke.ErrSwallowed)

	rec.set("bind", deny)
	if _, err := e.l.Listen("tcp4", ":50"); !errors.Is(err, deny) {
		t.Errorf("bind refused: Listen %v", err)
	}
	rec.set("bind", swallow)
	u, err := e.l.ListenPacket("udp4", ":51")
	if err != nil {
		t.Fatalf("bind swallowed: %v", err)
	}
	if p := u.LocalAddr().(*net.UDPAddr).Port; p == 51 {
		t.Errorf("bind swallowed but done: port %d", p)
	}
	u.Close()
	rec.set("bind", nil)
	rec.set("listen", deny)
	if _, err := e.l.Listen("tcp4", ":52"); !errors.Is(err, deny) {
		t.Errorf("listen refused: %v", err)
	}
	rec.set("listen", nil)
	j.take()

	rec.set("connect_out", deny)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := e.l.Dial(ctx, "tcp4", f.peer+":9"); !errors.Is(err, deny) {
		t.Errorf("connect refused: %v", err)
	}
	rec.set("connect_out", swallow)
	c, err := e.l.Dial(ctx, "udp4", f.peer+":9")
	if err != nil {
		t.Fatalf("connect swallowed: %v", err)
	}
	if ra := c.RemoteAddr(); ra != nil {
		t.Errorf("connect swallowed but done: %v", ra)
	}
	c.Close()
	rec.set("connect_out", nil)
	c, err = e.l.Dial(ctx, "udp4", f.peer+":9")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	uc := c.(*socket.UDPConn)

	rec.set("setoption 1/7", deny)
	if err := uc.SetOption(socket.OptSndBuf, 1<<16); !errors.Is(err, deny) {
		t.Errorf("setoption refused: %v", err)
	}
	before, _ := uc.GetOption(socket.OptSndBuf)
	rec.set("setoption 1/7", swallow)
	if err := uc.SetOption(socket.OptSndBuf, before*2); err != nil {
		t.Errorf("setoption swallowed: %v", err)
	}
	if after, _ := uc.GetOption(socket.OptSndBuf); after != before {
		t.Errorf("setoption swallowed but done: %d -> %d", before, after)
	}
	rec.set("getoption", swallow)
	if v, err := uc.GetOption(socket.OptSndBuf); v != 42 || err != nil {
		t.Errorf("getoption swallowed: %d %v, want the filter's 42", v, err)
	}
	rec.set("getoption", deny)
	if _, err := uc.GetOption(socket.OptSndBuf); !errors.Is(err, deny) {
		t.Errorf("getoption refused: %v", err)
	}
	rec.set("ioctl 0x541b", swallow)
	if v, err := uc.Ioctl(socket.FIONREAD); v != 42 || err != nil {
		t.Errorf("ioctl swallowed: %d %v", v, err)
	}
	rec.set("ioctl 0x541b", deny)
	if _, err := uc.Ioctl(socket.FIONREAD); !errors.Is(err, deny) {
		t.Errorf("ioctl refused: %v", err)
	}
	rec.peer = netip.MustParseAddrPort("192.0.2.1:99")
	if ra := uc.RemoteAddr().String(); ra != "192.0.2.1:99" {
		t.Errorf("getpeername changed by the filter: %s", ra)
	}
	rec.set("getsockname", deny)
	if la := uc.LocalAddr().(*net.UDPAddr); la.Port != 0 {
		t.Errorf("getsockname refused: %v", la)
	}
}

func (j *journal) take() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	l := j.log
	j.log = nil
	return l
}
