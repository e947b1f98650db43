package socket_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"

	"github.com/nke-harness/nke/kernel/kerneltest"
	"github.com/nke-harness/nke/kernel/socket"
)

// TestMain checks that no goroutine outlives the tests: every socket,
// rig and peer is gone by then (the rig checks its pools at each
// test's cleanup).
func TestMain(m *testing.M) {
	before := runtime.NumGoroutine()
	code := m.Run()
	if code == 0 {
		n := 0
		for i := 0; i < 500; i++ {
			if n = runtime.NumGoroutine(); n <= before {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if n > before {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			os.Stderr.Write(buf)
			os.Stderr.WriteString("socket: " + strconv.Itoa(n-before) + " goroutines leaked\n")
			code = 1
		}
	}
	os.Exit(code)
}

type env struct {
	r *kerneltest.Rig
	p *kerneltest.PeerStack
	l *socket.Layer
}

// family is one address family's view of the rig.
type family struct {
	name  string
	tcp   string
	udp   string
	ping  string
	guest string // the guest's address, for the peer to dial
	peer  string // the peer's
	proto tcpip.NetworkProtocolNumber
}

var families = []family{
	{"ipv4", "tcp4", "udp4", "ping4", "10.0.2.15", "10.0.2.2", ipv4.ProtocolNumber},
	{"ipv6", "tcp6", "udp6", "ping6", "", "", ipv6.ProtocolNumber},
}

func newEnv(t *testing.T) *env {
	t.Helper()
	r := kerneltest.New(t, kerneltest.WithStack())
	p := r.NewPeer()
	l := socket.New(r.Stack)
	t.Cleanup(func() {
		l.Close()
		if n := l.Sockets(); n != 0 {
			t.Errorf("%d sockets open after the layer's Close", n)
		}
	})
	return &env{r, p, l}
}

// fam fills in the IPv6 addresses (and waits for the guest's).
func (e *env) fam(t *testing.T, f family) family {
	if f.proto == ipv6.ProtocolNumber {
		e.r.WaitIPv6(10 * time.Second)
		f.guest, f.peer = e.p.GuestIP6().String(), e.p.PeerIP6().String()
	}
	return f
}

func (e *env) peerAddr(f family, ip string, port uint16) tcpip.FullAddress {
	a := netip.MustParseAddr(ip)
	return tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFromSlice(a.AsSlice()), Port: port}
}

// peerDial dials the guest from the peer.
func (e *env) peerDial(t *testing.T, f family, port uint16) *gonet.TCPConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := gonet.DialContextTCP(ctx, e.p.Stack, e.peerAddr(f, f.guest, port), f.proto)
	if err != nil {
		t.Fatalf("peer dial %s:%d: %v", f.guest, port, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func listen(t *testing.T, l *socket.Layer, network, addr string) *socket.TCPListener {
	t.Helper()
	ln, err := l.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func accept(t *testing.T, ln *socket.TCPListener) *socket.TCPConn {
	t.Helper()
	ln.SetDeadline(time.Now().Add(10 * time.Second))
	c, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestTCPEchoAndHalfClose(t *testing.T) {
	e := newEnv(t)
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			f := e.fam(t, f)
			ln := listen(t, e.l, f.tcp, ":7")
			pc := e.peerDial(t, f, 7)
			c := accept(t, ln)
			if got := c.RemoteAddr().(*net.TCPAddr); got.IP.String() != f.peer || got.Port != pc.LocalAddr().(*net.TCPAddr).Port {
				t.Errorf("RemoteAddr %v, want %s:%v", got, f.peer, pc.LocalAddr())
			}
			if got := c.LocalAddr().(*net.TCPAddr); got.IP.String() != f.guest || got.Port != 7 {
				t.Errorf("LocalAddr %v", got)
			}
			go func() { io.Copy(c, c); c.CloseWrite() }()
			payload := make([]byte, 1<<20)
			rand.Read(payload)
			go func() { pc.Write(payload); pc.CloseWrite() }()
			got, err := io.ReadAll(pc)
			if err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("echo: %d of %d bytes, %v", len(got), len(payload), err)
			}
		})
	}
}

func TestHalfClose(t *testing.T) {
	e := newEnv(t)
	f := e.fam(t, families[0])
	ln := listen(t, e.l, "tcp", ":9")
	pc := e.peerDial(t, f, 9)
	c := accept(t, ln)
	// CloseWrite: the peer reads EOF and can still send.
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := pc.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("peer read after CloseWrite: %d %v", n, err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, syscall.EPIPE) {
		t.Errorf("write after CloseWrite: %v, want EPIPE", err)
	}
	pc.Write([]byte("still open"))
	buf := make([]byte, 20)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := io.ReadAtLeast(c, buf, 10)
	if err != nil || string(buf[:n]) != "still open" {
		t.Fatalf("read after CloseWrite: %q %v", buf[:n], err)
	}
	// CloseRead: reads return EOF.
	if err := c.CloseRead(); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("read after CloseRead: %d %v", n, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	var oe *net.OpError
	return errors.Is(err, os.ErrDeadlineExceeded) && errors.As(err, &ne) && ne.Timeout() && errors.As(err, &oe)
}

func TestDeadlines(t *testing.T) {
	e := newEnv(t)
	f := e.fam(t, families[0])
	ln := listen(t, e.l, "tcp4", ":10")
	// Accept.
	ln.SetDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := ln.Accept(); !isTimeout(err) {
		t.Fatalf("accept past deadline: %v", err)
	}
	pc := e.peerDial(t, f, 10)
	c := accept(t, ln)
	buf := make([]byte, 10)
	for _, d := range []time.Duration{-time.Second, 50 * time.Millisecond} {
		c.SetReadDeadline(time.Now().Add(d))
		start := time.Now()
		if _, err := c.Read(buf); !isTimeout(err) {
			t.Fatalf("read past deadline %v: %v", d, err)
		}
		if el := time.Since(start); el < d || el > 5*time.Second {
			t.Errorf("deadline %v fired after %v", d, el)
		}
	}
	// Moved away, a read works again; a deadline set while blocked
	// wakes the reader.
	c.SetReadDeadline(time.Time{})
	pc.Write([]byte("hi"))
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "hi" {
		t.Fatalf("read after clearing the deadline: %q %v", buf[:n], err)
	}
	go func() { time.Sleep(50 * time.Millisecond); c.SetReadDeadline(time.Now()) }()
	if _, err := c.Read(buf); !isTimeout(err) {
		t.Fatalf("read with deadline set meanwhile: %v", err)
	}
	// Write: the peer does not read, so writes block until the deadline.
	c.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
	big := make([]byte, 64<<10)
	var err error
	for i := 0; i < 10000 && err == nil; i++ {
		_, err = c.Write(big)
	}
	if !isTimeout(err) {
		t.Fatalf("write past deadline: %v", err)
	}
	// UDP.
	uc, err := e.l.ListenPacket("udp4", ":11")
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	uc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, _, err := uc.ReadFrom(buf); !isTimeout(err) {
		t.Fatalf("udp read past deadline: %v", err)
	}
}

// A slow reader makes the writer block: the data in flight stays within
// the send and receive buffers, and all of it arrives.
func TestBackpressure(t *testing.T) {
	e := newEnv(t)
	f := e.fam(t, families[0])
	ln := listen(t, e.l, "tcp4", ":12")
	pc := e.peerDial(t, f, 12)
	c := accept(t, ln)
	const total = 32 << 20
	var mu sync.Mutex
	written := 0
	done := make(chan error, 1)
	go func() {
		chunk := make([]byte, 64<<10)
		for n := 0; n < total; n += len(chunk) {
			if _, err := c.Write(chunk); err != nil {
				done <- err
				return
			}
			mu.Lock()
			written += len(chunk)
			mu.Unlock()
		}
		done <- c.CloseWrite()
	}()
	// Wait for the writer to stall.
	last := -1
	for i := 0; i < 100; i++ {
		time.Sleep(100 * time.Millisecond)
		mu.Lock()
		w := written
		mu.Unlock()
		if w == last {
			break
		}
		last = w
	}
	const bound = 12 << 20 // 4 MiB send buffer at most, the peer's receive window, margin
	if last <= 0 || last > bound {
		t.Fatalf("the writer stalled at %d bytes, want 0 < n <= %d", last, bound)
	}
	select {
	case err := <-done:
		t.Fatalf("the writer finished without a reader: %v", err)
	default:
	}
	n, err := io.Copy(io.Discard, pc)
	if err != nil || n != total {
		t.Fatalf("read %d of %d: %v", n, total, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("writer stalled after %d KiB", last>>10)
}

func isClosed(err error) bool {
	var oe *net.OpError
	return errors.Is(err, net.ErrClosed) && errors.As(err, &oe)
}

func TestCloseUnblocks(t *testing.T) {
	for _, layerWide := range []bool{false, true} {
		t.Run("layer-close="+strconv.FormatBool(layerWide), func(t *testing.T) {
			e := newEnv(t)
			f := e.fam(t, families[0])
			ln := listen(t, e.l, "tcp4", ":13")
			ln2 := listen(t, e.l, "tcp4", ":14")
			pc := e.peerDial(t, f, 13)
			rc := accept(t, ln)
			e.peerDial(t, f, 13) // not reading: wc's writes block
			wc := accept(t, ln)
			uc, err := e.l.ListenPacket("udp4", ":13")
			if err != nil {
				t.Fatal(err)
			}
			ic, err := e.l.ListenPacket("ping4", "")
			if err != nil {
				t.Fatal(err)
			}
			_ = pc
			ops := map[string]func() error{
				"accept": func() error { _, err := ln2.Accept(); return err },
				"read":   func() error { _, err := rc.Read(make([]byte, 10)); return err },
				"write": func() error {
					b := make([]byte, 1<<20)
					for {
						if _, err := wc.Write(b); err != nil {
							return err
						}
					}
				},
				"udp-read":  func() error { _, _, err := uc.ReadFrom(make([]byte, 10)); return err },
				"ping-read": func() error { _, _, err := ic.ReadFrom(make([]byte, 10)); return err },
			}
			errs := make(chan error, len(ops))
			for name, op := range ops {
				go func() {
					err := op()
					if !isClosed(err) {
						err = errors.New(name + ": " + errString(err))
					} else {
						err = nil
					}
					errs <- err
				}()
			}
			time.Sleep(200 * time.Millisecond)
			if layerWide {
				e.l.Close()
			} else {
				for _, c := range []io.Closer{ln2, rc, wc, uc, ic} {
					if err := c.Close(); err != nil {
						t.Error(err)
					}
				}
			}
			for range ops {
				select {
				case err := <-errs:
					if err != nil {
						t.Errorf("after close: %v", err)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("a blocked call was not unblocked by Close")
				}
			}
			// Closed: everything after says so.
			if _, err := ln2.Accept(); !isClosed(err) {
				t.Errorf("accept after close: %v", err)
			}
			if err := ln2.Close(); !isClosed(err) {
				t.Errorf("second close: %v", err)
			}
			if _, err := rc.Write([]byte("x")); !isClosed(err) {
				t.Errorf("write after close: %v", err)
			}
			if layerWide {
				if _, err := e.l.Listen("tcp4", ":15"); !errors.Is(err, net.ErrClosed) {
					t.Errorf("listen on a closed layer: %v", err)
				}
				if n := e.l.Sockets(); n != 0 {
					t.Errorf("%d sockets left", n)
				}
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}

func TestUDP(t *testing.T) {
	e := newEnv(t)
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			f := e.fam(t, f)
			uc, err := e.l.ListenPacket(f.udp, ":7")
			if err != nil {
				t.Fatal(err)
			}
			defer uc.Close()
			local := e.peerAddr(f, f.peer, 4000)
			ga := e.peerAddr(f, f.guest, 7)
			pc, err := gonet.DialUDP(e.p.Stack, &local, &ga, f.proto)
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			uc.SetDeadline(time.Now().Add(10 * time.Second))
			pc.SetDeadline(time.Now().Add(10 * time.Second))

			pc.Write([]byte("hello"))
			buf := make([]byte, 100)
			n, from, err := uc.ReadFrom(buf)
			if err != nil || string(buf[:n]) != "hello" {
				t.Fatalf("ReadFrom: %q %v", buf[:n], err)
			}
			ua := from.(*net.UDPAddr)
			if ua.IP.String() != f.peer || ua.Port != 4000 {
				t.Fatalf("from %v, want %s port 4000", from, f.peer)
			}
			if _, err := uc.WriteTo([]byte("back"), from); err != nil {
				t.Fatal(err)
			}
			if n, err := pc.Read(buf); err != nil || string(buf[:n]) != "back" {
				t.Fatalf("peer read: %q %v", buf[:n], err)
			}
			// Truncation: a 100-byte datagram in 10 bytes; the rest is gone.
			long := bytes.Repeat([]byte("0123456789"), 10)
			pc.Write(long)
			pc.Write([]byte("next"))
			n, _, flags, _, err := uc.(*socket.UDPConn).ReadMsgUDP(buf[:10], nil)
			if err != nil || n != 10 || flags&syscall.MSG_TRUNC == 0 || string(buf[:n]) != "0123456789" {
				t.Fatalf("truncated: %d %q flags %#x %v", n, buf[:n], flags, err)
			}
			if n, _, err := uc.ReadFrom(buf); err != nil || string(buf[:n]) != "next" {
				t.Fatalf("after truncation: %q %v", buf[:n], err)
			}
			// The wrong family.
			other := &net.UDPAddr{IP: net.ParseIP("10.0.2.2"), Port: 1}
			if f.proto == ipv4.ProtocolNumber {
				other.IP = net.ParseIP("fe80::1")
			}
			if _, err := uc.WriteTo([]byte("x"), other); !errors.Is(err, syscall.EAFNOSUPPORT) {
				t.Errorf("WriteTo another family: %v", err)
			}
			// Dialled from the guest.
			l2 := e.peerAddr(f, f.peer, 4001)
			pl, err := gonet.DialUDP(e.p.Stack, &l2, nil, f.proto)
			if err != nil {
				t.Fatal(err)
			}
			defer pl.Close()
			pl.SetDeadline(time.Now().Add(10 * time.Second))
			dc, err := e.l.Dial(context.Background(), f.udp, net.JoinHostPort(f.peer, "4001"))
			if err != nil {
				t.Fatal(err)
			}
			defer dc.Close()
			dc.Write([]byte("dialled"))
			n, src, err := pl.ReadFrom(buf)
			if err != nil || string(buf[:n]) != "dialled" || src.(*net.UDPAddr).Port != dc.LocalAddr().(*net.UDPAddr).Port {
				t.Fatalf("dialled: %q from %v (local %v) %v", buf[:n], src, dc.LocalAddr(), err)
			}
		})
	}
}

func TestICMPEcho(t *testing.T) {
	e := newEnv(t)
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			f := e.fam(t, f)
			ic, err := e.l.ListenPacket(f.ping, "")
			if err != nil {
				t.Fatal(err)
			}
			defer ic.Close()
			ic.SetDeadline(time.Now().Add(10 * time.Second))
			payload := []byte("are you there")
			var req []byte
			replyType := byte(header.ICMPv4EchoReply)
			if f.proto == ipv4.ProtocolNumber {
				h := header.ICMPv4(make([]byte, header.ICMPv4MinimumSize))
				h.SetType(header.ICMPv4Echo)
				h.SetSequence(7)
				req = append(h, payload...)
			} else {
				h := header.ICMPv6(make([]byte, header.ICMPv6EchoMinimumSize))
				h.SetType(header.ICMPv6EchoRequest)
				h.SetSequence(7)
				req = append(h, payload...)
				replyType = byte(header.ICMPv6EchoReply)
			}
			to := &net.IPAddr{IP: net.ParseIP(f.peer)}
			if _, err := ic.WriteTo(req, to); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 200)
			n, from, err := ic.ReadFrom(buf)
			if err != nil {
				t.Fatal(err)
			}
			if from.(*net.IPAddr).IP.String() != f.peer || n != len(req) || buf[0] != replyType ||
				!bytes.Equal(buf[8:n], payload) || buf[6] != 0 || buf[7] != 7 {
				t.Fatalf("reply from %v: % x", from, buf[:n])
			}
		})
	}
}

func TestHTTP(t *testing.T) {
	e := newEnv(t)
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			f := e.fam(t, f)
			ln := listen(t, e.l, f.tcp, ":80")
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, "hello "+r.URL.Path+" from "+r.RemoteAddr)
			})}
			done := make(chan error, 1)
			go func() { done <- srv.Serve(ln) }()
			client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return gonet.DialContextTCP(ctx, e.p.Stack, e.peerAddr(f, f.guest, 80), f.proto)
			}}}
			for i := 0; i < 3; i++ {
				resp, err := client.Get("http://guest/x")
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				want := "hello /x from " + f.peer
				if f.proto == ipv6.ProtocolNumber {
					want = "hello /x from [" + f.peer + "%1]"
				}
				if !bytes.HasPrefix(body, []byte(want)) {
					t.Fatalf("body %q, want %q...", body, want)
				}
			}
			client.CloseIdleConnections()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != http.ErrServerClosed {
				t.Fatal(err)
			}
		})
	}
}

func TestDialOut(t *testing.T) {
	e := newEnv(t)
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			f := e.fam(t, f)
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
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := e.l.Dial(ctx, f.tcp, net.JoinHostPort(f.peer, "8080"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte("round trip"))
			c.(*socket.TCPConn).CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil || string(got) != "round trip" {
				t.Fatalf("%q %v", got, err)
			}
			// Refused.
			_, err = e.l.Dial(ctx, f.tcp, net.JoinHostPort(f.peer, "8081"))
			var oe *net.OpError
			if !errors.Is(err, syscall.ECONNREFUSED) || !errors.As(err, &oe) || oe.Op != "dial" {
				t.Fatalf("dial a closed port: %v", err)
			}
		})
	}
}

func TestErrorsAndOptions(t *testing.T) {
	e := newEnv(t)
	f := e.fam(t, families[0])
	listen(t, e.l, "tcp4", ":20")
	var oe *net.OpError
	if _, err := e.l.Listen("tcp4", ":20"); !errors.Is(err, syscall.EADDRINUSE) || !errors.As(err, &oe) || oe.Op != "listen" {
		t.Errorf("listen twice: %v", err)
	}
	if _, err := e.l.Listen("sctp", ":1"); err == nil {
		t.Error("listen on sctp")
	}
	if _, err := e.l.Listen("tcp4", "[fe80::1]:1"); err == nil {
		t.Error("tcp4 on an IPv6 address")
	}
	ln := listen(t, e.l, "tcp4", ":21")
	pc := e.peerDial(t, f, 21)
	c := accept(t, ln)
	if err := c.SetNoDelay(true); err != nil {
		t.Fatal(err)
	}
	if v, err := c.GetOption(socket.OptNoDelay); err != nil || v != 1 {
		t.Errorf("TCP_NODELAY %d %v", v, err)
	}
	if err := c.SetKeepAlive(true); err != nil {
		t.Fatal(err)
	}
	if v, _ := c.GetOption(socket.OptKeepAlive); v != 1 {
		t.Errorf("SO_KEEPALIVE %d", v)
	}
	pc.Write([]byte("12345"))
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := c.Ioctl(socket.FIONREAD)
		if err != nil {
			t.Fatal(err)
		}
		if n == 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("FIONREAD %d, want 5", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := c.Ioctl(99); !errors.Is(err, syscall.ENOTTY) {
		t.Errorf("unknown ioctl: %v", err)
	}
	if err := c.SetOption(99, 1); !errors.Is(err, syscall.ENOPROTOOPT) {
		t.Errorf("unknown option: %v", err)
	}
}
