package socket

import (
	"context"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/nke-harness/nke/kernel/kerneltest"
)

// eventLog records the seams sockets pass, named by the test.
type eventLog struct {
	mu    sync.Mutex
	next  string
	names map[*sock]string
	log   []string
}

func (e *eventLog) trace(s *sock, what string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if what == "attach" {
		e.names[s] = e.next
	}
	e.log = append(e.log, e.names[s]+" "+what)
}

// take returns the log so far, less the name lookups (error messages
// make them), and empties it.
func (e *eventLog) take(keepNames bool) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, l := range e.log {
		if keepNames || !strings.HasSuffix(l, "getsockname") && !strings.HasSuffix(l, "getpeername") {
			out = append(out, l)
		}
	}
	e.log = nil
	return out
}

func (e *eventLog) name(n string) {
	e.mu.Lock()
	e.next = n
	e.mu.Unlock()
}

// TestEventOrder is the order in which a socket passes the seams where
// Apple's KPI calls socket filters: attach, bind and bound, listen;
// connect in, the accepted socket's attach and connected, accept; connect
// out, connecting, connected; data in and out; shutdown (flush-read,
// can't-receive-more / can't-send-more); closing, disconnecting,
// disconnected, detach. It becomes the socket filters' acceptance test.
func TestEventOrder(t *testing.T) {
	r := kerneltest.New(t, kerneltest.WithStack())
	p := r.NewPeer()
	ev := &eventLog{names: map[*sock]string{}}
	l := New(r.Stack)
	l.trace = ev.trace
	t.Cleanup(func() { l.Close() })
	expect := func(step string, keepNames bool, want ...string) {
		t.Helper()
		if got := ev.take(keepNames); !slices.Equal(got, want) {
			t.Errorf("%s:\n got %q\nwant %q", step, got, want)
		}
	}

	ev.name("L")
	ln, err := l.Listen("tcp4", ":30")
	if err != nil {
		t.Fatal(err)
	}
	expect("listen", false, "L attach", "L bind", "L notify:bound", "L listen")

	guest := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4([4]byte{10, 0, 2, 15}), Port: 30}
	pc, err := gonet.DialTCP(p.Stack, guest, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ev.name("A")
	a, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	expect("accept", false, "L connect_in", "A attach", "A notify:connected", "L accept")

	pc.Write([]byte("x"))
	buf := make([]byte, 10)
	if _, err := a.Read(buf); err != nil {
		t.Fatal(err)
	}
	a.Write([]byte("y"))
	expect("data", false, "A data_in", "A data_out")

	a.CloseWrite()
	expect("close write", false, "A notify:shutdown", "A notify:cantsendmore")
	io.ReadAll(pc) // all read: the peer's close is a FIN, not a reset
	pc.Close()
	if _, err := a.Read(buf); err != io.EOF {
		t.Fatalf("read after the peer's close: %v", err)
	}
	expect("peer closed", false, "A notify:cantrecvmore")
	a.Close()
	expect("close", false, "A notify:closing", "A notify:disconnecting", "A notify:disconnected", "A detach")

	// Outgoing.
	pl, err := gonet.ListenTCP(p.Stack, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4([4]byte{10, 0, 2, 2}), Port: 8080}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	ev.name("D")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := l.Dial(ctx, "tcp4", "10.0.2.2:8080")
	if err != nil {
		t.Fatal(err)
	}
	d := c.(*TCPConn)
	expect("dial", false, "D attach", "D connect_out", "D notify:connecting", "D notify:connected")
	d.SetNoDelay(true)
	d.GetOption(OptNoDelay)
	d.Ioctl(FIONREAD)
	d.LocalAddr()
	d.RemoteAddr()
	expect("control", true, "D setoption", "D getoption", "D ioctl", "D getsockname", "D getpeername")
	d.CloseRead()
	expect("close read", false, "D notify:shutdown", "D notify:flush-read", "D notify:cantrecvmore")
	d.Close()
	expect("close", false, "D notify:closing", "D notify:disconnecting", "D notify:disconnected", "D detach")

	// Datagrams.
	ev.name("U")
	u, err := l.ListenPacket("udp4", ":31")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.WriteTo([]byte("z"), &net.UDPAddr{IP: net.IPv4(10, 0, 2, 15), Port: 31}); err != nil {
		t.Fatal(err)
	}
	u.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := u.ReadFrom(buf); err != nil {
		t.Fatal(err)
	}
	u.Close()
	expect("udp", false, "U attach", "U bind", "U notify:bound", "U data_out", "U data_in", "U notify:closing", "U detach")

	ln.Close()
	expect("close listener", false, "L notify:closing", "L detach")
}
