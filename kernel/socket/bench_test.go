package socket_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/nke-harness/nke/kernel/kerneltest"
	"github.com/nke-harness/nke/kernel/socket"
	"github.com/nke-harness/nke/kernel/sockfilter"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// api is the socket API under test: the socket layer, or gVisor's gonet
// adapters straight on the stack.
type api struct {
	name   string
	listen func(b *testing.B, r *kerneltest.Rig, port uint16) net.Listener
	dial   func(r *kerneltest.Rig, port uint16) (net.Conn, error)
}

var guestAddr = tcpip.AddrFrom4([4]byte{10, 0, 2, 15})

// filtered is the socket layer with a registry and n trivial global
// socket filters (notify, data in and out: each passes).
func filtered(n int) api {
	return api{fmt.Sprintf("socket+%dfilters", n),
		func(b *testing.B, r *kerneltest.Rig, port uint16) net.Listener {
			reg := sockfilter.New(nil)
			for i := 0; i < n; i++ {
				if _, err := reg.RegisterSocketFilter(nke.SocketFilterSpec{Name: fmt.Sprintf("com.bench.f%d", i),
					Handle: uint32(i + 1), Type: nke.SockStream, Global: true, Filter: trivial{}}); err != nil {
					b.Fatal(err)
				}
			}
			l := socket.New(r.Stack, socket.WithFilters(reg))
			b.Cleanup(func() { l.Close() })
			ln, err := l.Listen("tcp4", ":"+itoa(port))
			if err != nil {
				b.Fatal(err)
			}
			dialer = l
			return ln
		},
		func(r *kerneltest.Rig, port uint16) (net.Conn, error) {
			return dialer.Dial(context.Background(), "tcp4", "10.0.2.15:"+itoa(port))
		}}
}

type trivial struct{}

func (trivial) SockAttach(nke.Socket) (any, error)          { return nil, nil }
func (trivial) SockDetach(any, nke.Socket)                  {}
func (trivial) SockNotify(any, nke.Socket, nke.SocketEvent) {}
func (trivial) SockDataIn(any, nke.Socket, netip.AddrPort, **mbuf.Mbuf, **mbuf.Mbuf, nke.DataFlags) error {
	return nil
}
func (trivial) SockDataOut(any, nke.Socket, netip.AddrPort, **mbuf.Mbuf, **mbuf.Mbuf, nke.DataFlags) error {
	return nil
}

var apis = []api{
	filtered(0), filtered(1), filtered(4),
	{"socket",
		func(b *testing.B, r *kerneltest.Rig, port uint16) net.Listener {
			l := socket.New(r.Stack)
			b.Cleanup(func() { l.Close() })
			ln, err := l.Listen("tcp4", ":"+itoa(port))
			if err != nil {
				b.Fatal(err)
			}
			dialer = l
			return ln
		},
		func(r *kerneltest.Rig, port uint16) (net.Conn, error) {
			return dialer.Dial(context.Background(), "tcp4", "10.0.2.15:"+itoa(port))
		}},
	{"gonet",
		func(b *testing.B, r *kerneltest.Rig, port uint16) net.Listener {
			ln, err := gonet.ListenTCP(r.Stack.Stack, tcpip.FullAddress{NIC: 1, Port: port}, ipv4.ProtocolNumber)
			if err != nil {
				b.Fatal(err)
			}
			return ln
		},
		func(r *kerneltest.Rig, port uint16) (net.Conn, error) {
			return gonet.DialTCP(r.Stack.Stack, tcpip.FullAddress{NIC: 1, Addr: guestAddr, Port: port}, ipv4.ProtocolNumber)
		}},
}

// dialer is the layer of the socket benchmark running (benchmarks run
// one at a time).
var dialer *socket.Layer

func itoa(p uint16) string { return string(appendUint(nil, uint64(p))) }

func appendUint(b []byte, v uint64) []byte {
	if v >= 10 {
		b = appendUint(b, v/10)
	}
	return append(b, byte('0'+v%10))
}

// echoServer accepts on ln and echoes each connection until ln closes.
func echoServer(b *testing.B, ln net.Listener) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				buf := make([]byte, 64<<10)
				io.CopyBuffer(c, c, buf)
				c.Close()
			}()
		}
	}()
	b.Cleanup(func() { ln.Close(); <-done })
}

// The benchmarks run both ends on the guest's stack (HandleLocal
// loopback: no device model or driver), both through the API under
// test, so the difference is the socket layer's alone.

// BenchmarkTCPEcho is a 64 KiB write and its 64 KiB echo per op.
func BenchmarkTCPEcho(b *testing.B) {
	for _, a := range apis {
		b.Run(a.name, func(b *testing.B) {
			r := kerneltest.New(b, kerneltest.WithStack())
			echoServer(b, a.listen(b, r, 7))
			c, err := a.dial(r, 7)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			out := make([]byte, 64<<10)
			in := make([]byte, 64<<10)
			b.SetBytes(int64(len(out)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := c.Write(out); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkTCPConnect is a connection per op: connect, a 32-byte echo,
// close (both ends).
func BenchmarkTCPConnect(b *testing.B) {
	for _, a := range apis {
		b.Run(a.name, func(b *testing.B) {
			r := kerneltest.New(b, kerneltest.WithStack())
			echoServer(b, a.listen(b, r, 7))
			msg := make([]byte, 32)
			in := make([]byte, 32)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c, err := a.dial(r, 7)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, in); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "conns/s")
		})
	}
}
