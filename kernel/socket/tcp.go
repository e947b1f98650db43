package socket

import (
	"context"
	"io"
	"net"
	"os"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/nke-harness/nke/kernel/sockfilter"
)

// listenBacklog is the accept queue's length, gonet's.
const listenBacklog = 4096

// TCPConn is a TCP stream socket: a net.Conn with half-close.
type TCPConn struct{ s *sock }

// TCPListener is a listening TCP socket: a net.Listener.
type TCPListener struct{ s *sock }

var (
	_ net.Conn     = (*TCPConn)(nil)
	_ net.Listener = (*TCPListener)(nil)
)

func (l *Layer) tcpSock(v6 bool) (*sock, error) {
	wq := new(waiter.Queue)
	ep, err := l.s.NewEndpoint(tcp.ProtocolNumber, proto(v6), wq)
	if err != nil {
		return nil, tcpipErr(err)
	}
	return l.newSock(kindTCP, v6, ep, wq)
}

// Listen listens on address ("host:port", host optional) of network
// "tcp", "tcp4" or "tcp6"; an empty host is the wildcard of the family
// ("tcp" alone: IPv4).
func (l *Layer) Listen(network, address string) (*TCPListener, error) {
	k, v6, fa, err := resolve(network, address)
	if err == nil && k != kindTCP {
		err = net.UnknownNetworkError(network)
	}
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	s, err := l.tcpSock(v6)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: tcpAddr(fa), Err: err}
	}
	if v6 {
		s.ep.SocketOptions().SetV6Only(true)
	}
	if terr, ferr := s.bind(fa); terr != nil || ferr != nil {
		s.close()
		return nil, &net.OpError{Op: "listen", Net: network, Addr: tcpAddr(fa), Err: errOf(terr, ferr)}
	}
	if terr, ferr := s.listen(listenBacklog); terr != nil || ferr != nil {
		s.close()
		return nil, &net.OpError{Op: "listen", Net: network, Addr: tcpAddr(fa), Err: errOf(terr, ferr)}
	}
	return &TCPListener{s}, nil
}

// Accept waits for the next connection; after Close it returns
// net.ErrClosed.
func (ln *TCPListener) Accept() (net.Conn, error) {
	c, err := ln.AcceptTCP()
	if err != nil {
		return nil, err
	}
	return c, nil
}

// AcceptTCP is Accept returning the connection's type.
func (ln *TCPListener) AcceptTCP() (*TCPConn, error) {
	s := ln.s
	s.readMu.Lock()
	defer s.readMu.Unlock()
	dl := s.rd.wait()
	for {
		select {
		case <-s.closed:
			return nil, ln.opErr(net.ErrClosed)
		case <-dl:
			return nil, ln.opErr(os.ErrDeadlineExceeded)
		default:
		}
		var peer tcpip.FullAddress
		ep, wq, terr := s.ep.Accept(&peer)
		switch terr.(type) {
		case nil:
		case *tcpip.ErrWouldBlock:
			select {
			case <-s.rdWake:
			case <-dl:
				return nil, ln.opErr(os.ErrDeadlineExceeded)
			case <-s.closed:
				return nil, ln.opErr(net.ErrClosed)
			}
			continue
		default:
			if s.isClosed() {
				return nil, ln.opErr(net.ErrClosed)
			}
			return nil, ln.opErr(tcpipErr(terr))
		}
		if err := s.connectIn(peer); err != nil {
			ep.Abort()
			continue
		}
		cs, err := s.l.newSock(kindTCP, s.v6, ep, wq)
		if err != nil {
			return nil, ln.opErr(err)
		}
		s.inherit(cs)
		cs.notify(EvConnected)
		switch res, err := s.accept(cs); res {
		case sockfilter.AcceptDisconnect: // swallowed: disconnected, wait for the next
			cs.close()
			continue
		case sockfilter.AcceptClose:
			cs.close()
			return nil, ln.opErr(err)
		}
		return &TCPConn{cs}, nil
	}
}

func (ln *TCPListener) opErr(err error) error {
	return &net.OpError{Op: "accept", Net: netName("tcp", ln.s.v6), Addr: ln.Addr(), Err: err}
}

// Close stops listening; a blocked Accept returns net.ErrClosed.
func (ln *TCPListener) Close() error {
	if ln.s.isClosed() {
		return &net.OpError{Op: "close", Net: netName("tcp", ln.s.v6), Addr: ln.Addr(), Err: net.ErrClosed}
	}
	ln.s.close()
	return nil
}

// Addr is the listener's address.
func (ln *TCPListener) Addr() net.Addr {
	a, err := ln.s.sockName()
	if err != nil {
		return &net.TCPAddr{}
	}
	return tcpAddr(a)
}

// SetDeadline bounds Accept.
func (ln *TCPListener) SetDeadline(t time.Time) error { ln.s.rd.set(t); return nil }

// SetOption sets a socket option of the listener (accepted sockets
// inherit the stack's defaults).
func (ln *TCPListener) SetOption(o Option, v int) error { return ln.s.setOption(o, v) }

// GetOption reads a socket option of the listener.
func (ln *TCPListener) GetOption(o Option) (int, error) { return ln.s.getOption(o) }

// errOf is the error of a seam: the transport's, else a filter's.
func errOf(terr tcpip.Error, ferr error) error {
	if terr != nil {
		return tcpipErr(terr)
	}
	return ferr
}

func netName(base string, v6 bool) string {
	if v6 {
		return base + "6"
	}
	return base + "4"
}

// Dial connects to address ("host:port") over network "tcp", "tcp4",
// "tcp6", "udp", "udp4" or "udp6"; ctx bounds the TCP handshake.
func (l *Layer) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	k, v6, fa, err := resolve(network, address)
	if err == nil && fa.Addr.Len() == 0 {
		err = &net.AddrError{Err: "no host to dial", Addr: address}
	}
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	switch k {
	case kindTCP:
		return l.dialTCP(ctx, v6, fa)
	case kindUDP:
		return l.dialUDP(v6, fa)
	}
	return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
}

func (l *Layer) dialTCP(ctx context.Context, v6 bool, raddr tcpip.FullAddress) (*TCPConn, error) {
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: netName("tcp", v6), Addr: tcpAddr(raddr), Err: err}
	}
	if err := ctx.Err(); err != nil {
		return nil, opErr(err)
	}
	s, err := l.tcpSock(v6)
	if err != nil {
		return nil, opErr(err)
	}
	terr, ferr := s.connectOut(raddr)
	if ferr != nil {
		s.close()
		return nil, opErr(ferr)
	}
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		s.notify(EvConnecting)
		terr = nil
		for terr == nil && s.ep.Readiness(waiter.WritableEvents|waiter.EventErr|waiter.EventHUp) == 0 {
			select {
			case <-s.wrWake:
			case <-ctx.Done():
				s.close()
				return nil, opErr(ctx.Err())
			case <-s.closed:
				return nil, opErr(net.ErrClosed)
			}
		}
		terr = s.ep.LastError()
	}
	if terr != nil {
		s.close()
		return nil, opErr(tcpipErr(terr))
	}
	s.notify(EvConnected)
	return &TCPConn{s}, nil
}

// Read reads received bytes; io.EOF once the peer has closed its side.
func (c *TCPConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s := c.s
	s.readMu.Lock()
	_, data, err := s.recv(p, tcpip.ReadOptions{})
	s.readMu.Unlock()
	if err != nil {
		if err == io.EOF {
			return 0, err
		}
		return 0, c.opErr("read", err)
	}
	s.ep.ModerateRecvBuf(len(data))
	return len(data), nil
}

// Write sends all of p, blocking while the send buffer is full.
func (c *TCPConn) Write(p []byte) (int, error) {
	s := c.s
	s.writeMu.Lock()
	n, err := s.send(p, nil)
	s.writeMu.Unlock()
	if err != nil {
		return n, c.opErr("write", err)
	}
	return n, nil
}

// Close closes the connection; blocked reads and writes return
// net.ErrClosed.
func (c *TCPConn) Close() error {
	if c.s.isClosed() {
		return c.opErr("close", net.ErrClosed)
	}
	c.s.close()
	return nil
}

// CloseRead shuts the receiving side down.
func (c *TCPConn) CloseRead() error { return c.shut(tcpip.ShutdownRead) }

// CloseWrite shuts the sending side down (the peer reads EOF).
func (c *TCPConn) CloseWrite() error { return c.shut(tcpip.ShutdownWrite) }

func (c *TCPConn) shut(f tcpip.ShutdownFlags) error {
	if c.s.isClosed() {
		return c.opErr("close", net.ErrClosed)
	}
	if err := c.s.shutdown(f); err != nil {
		return c.opErr("close", tcpipErr(err))
	}
	return nil
}

// LocalAddr is the connection's own address.
func (c *TCPConn) LocalAddr() net.Addr {
	a, err := c.s.sockName()
	if err != nil {
		return &net.TCPAddr{}
	}
	return tcpAddr(a)
}

// RemoteAddr is the peer's address.
func (c *TCPConn) RemoteAddr() net.Addr {
	a, err := c.s.peerName()
	if err != nil {
		return &net.TCPAddr{}
	}
	return tcpAddr(a)
}

// SetDeadline sets the read and write deadlines.
func (c *TCPConn) SetDeadline(t time.Time) error { c.s.rd.set(t); c.s.wr.set(t); return nil }

// SetReadDeadline bounds reads: past it they fail with an error for
// which errors.Is(err, os.ErrDeadlineExceeded) and Timeout() hold.
func (c *TCPConn) SetReadDeadline(t time.Time) error { c.s.rd.set(t); return nil }

// SetWriteDeadline bounds writes.
func (c *TCPConn) SetWriteDeadline(t time.Time) error { c.s.wr.set(t); return nil }

// SetOption sets a socket option.
func (c *TCPConn) SetOption(o Option, v int) error {
	if err := c.s.setOption(o, v); err != nil {
		return c.opErr("set", err)
	}
	return nil
}

// GetOption reads a socket option.
func (c *TCPConn) GetOption(o Option) (int, error) { return c.s.getOption(o) }

// SetNoDelay is TCP_NODELAY, as net.TCPConn's.
func (c *TCPConn) SetNoDelay(on bool) error { return c.SetOption(OptNoDelay, b2i(on)) }

// SetKeepAlive is SO_KEEPALIVE, as net.TCPConn's.
func (c *TCPConn) SetKeepAlive(on bool) error { return c.SetOption(OptKeepAlive, b2i(on)) }

// SetReadBuffer is SO_RCVBUF.
func (c *TCPConn) SetReadBuffer(n int) error { return c.SetOption(OptRcvBuf, n) }

// SetWriteBuffer is SO_SNDBUF.
func (c *TCPConn) SetWriteBuffer(n int) error { return c.SetOption(OptSndBuf, n) }

// Ioctl runs a socket ioctl (FIONREAD, FIONWRITE).
func (c *TCPConn) Ioctl(r Ioctl) (int, error) { return c.s.ioctl(r) }

func (c *TCPConn) opErr(op string, err error) error {
	return &net.OpError{Op: op, Net: netName("tcp", c.s.v6), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
