package socket_test

import (
	"context"
	"net"
	"testing"

	"golang.org/x/net/nettest"

	"github.com/nke-harness/nke/kernel/kerneltest"
	"github.com/nke-harness/nke/kernel/socket"
)

// TestNetConn runs x/net's net.Conn conformance suite (deadlines,
// concurrent use, close unblocking, partial reads) on a TCP connection
// both of whose ends are the socket layer's, IPv4 and IPv6 (over the
// guest stack's loopback).
func TestNetConn(t *testing.T) {
	r := kerneltest.New(t, kerneltest.WithStack())
	l := socket.New(r.Stack)
	t.Cleanup(func() { l.Close() })
	for _, c := range []struct{ name, network, host string }{{"ipv4", "tcp4", "10.0.2.15"}, {"ipv6", "tcp6", ""}} {
		t.Run(c.name, func(t *testing.T) {
			host := c.host
			if host == "" {
				r.WaitIPv6(10e9)
				a, err := r.Stack.GetMainNICAddress(1, 0x86dd)
				if err != nil {
					t.Fatal(err)
				}
				host = a.Address.String()
			}
			ln, err := l.Listen(c.network, net.JoinHostPort(host, "0"))
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			port := ln.Addr().(*net.TCPAddr).Port
			nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
				acc := make(chan net.Conn, 1)
				go func() {
					c, err := ln.Accept()
					if err != nil {
						t.Error(err)
					}
					acc <- c
				}()
				c1, err = l.Dial(context.Background(), c.network, net.JoinHostPort(host, itoa(uint16(port))))
				if err != nil {
					return nil, nil, nil, err
				}
				c2 = <-acc
				if c2 == nil {
					c1.Close()
					return nil, nil, nil, net.ErrClosed
				}
				return c1, c2, func() { c1.Close(); c2.Close() }, nil
			})
		})
	}
}
