package socket

import (
	"net"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// dgram is what UDP and ICMP echo sockets share.
type dgram struct{ s *sock }

// UDPConn is a UDP socket: a net.PacketConn, and a net.Conn once
// connected (Dial).
type UDPConn struct{ dgram }

// ICMPConn is an ICMP echo socket (Linux's ping socket, SOCK_DGRAM with
// IPPROTO_ICMP or IPPROTO_ICMPV6): WriteTo sends an echo request (the
// whole ICMP message; the stack sets the identifier to the socket's and
// the checksum), ReadFrom returns the echo replies to it, headers
// included. Addresses are *net.IPAddr.
type ICMPConn struct{ dgram }

var (
	_ net.PacketConn = (*UDPConn)(nil)
	_ net.Conn       = (*UDPConn)(nil)
	_ net.PacketConn = (*ICMPConn)(nil)
)

func (l *Layer) dgramSock(k kind, v6 bool) (*sock, error) {
	tp := udp.ProtocolNumber
	if k == kindICMP {
		tp = icmp.ProtocolNumber4
		if v6 {
			tp = icmp.ProtocolNumber6
		}
	}
	wq := new(waiter.Queue)
	ep, terr := l.s.NewEndpoint(tp, proto(v6), wq)
	if terr != nil {
		return nil, tcpipErr(terr)
	}
	s, err := l.newSock(k, v6, ep, wq)
	if err == nil && v6 && k == kindUDP {
		s.ep.SocketOptions().SetV6Only(true)
	}
	return s, err
}

// ListenPacket opens a datagram socket bound to address: network "udp",
// "udp4" or "udp6" with "host:port" (a *UDPConn), or "ping4"/"ip4:icmp",
// "ping6"/"ip6:ipv6-icmp" with a bare host, possibly empty (an
// *ICMPConn).
func (l *Layer) ListenPacket(network, address string) (net.PacketConn, error) {
	k, v6, fa, err := resolve(network, address)
	if err == nil && k == kindTCP {
		err = net.UnknownNetworkError(network)
	}
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	s, err := l.dgramSock(k, v6)
	if err == nil {
		if terr, ferr := s.bind(fa); terr != nil || ferr != nil {
			s.close()
			err = errOf(terr, ferr)
		}
	}
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: udpAddr(fa), Err: err}
	}
	if k == kindICMP {
		return &ICMPConn{dgram{s}}, nil
	}
	return &UDPConn{dgram{s}}, nil
}

func (l *Layer) dialUDP(v6 bool, raddr tcpip.FullAddress) (*UDPConn, error) {
	s, err := l.dgramSock(kindUDP, v6)
	if err == nil {
		if terr, ferr := s.connectOut(raddr); terr != nil || ferr != nil {
			s.close()
			err = errOf(terr, ferr)
		}
	}
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: netName("udp", v6), Addr: udpAddr(raddr), Err: err}
	}
	s.notify(EvConnected)
	return &UDPConn{dgram{s}}, nil
}

func (d dgram) net() string {
	if d.s.kind == kindICMP {
		if d.s.v6 {
			return "ip6:ipv6-icmp"
		}
		return "ip4:icmp"
	}
	return netName("udp", d.s.v6)
}

func (d dgram) addr(a tcpip.FullAddress) net.Addr {
	if d.s.kind == kindICMP {
		return ipAddr(a)
	}
	return udpAddr(a)
}

func (d dgram) opErr(op string, addr net.Addr, err error) error {
	return &net.OpError{Op: op, Net: d.net(), Source: d.LocalAddr(), Addr: addr, Err: err}
}

// readMsg reads one datagram: its length in p (a longer one is
// truncated to p, and truncated is set), its sender, and its control
// messages into oob (oobn bytes; ctrunc if they did not fit).
func (d dgram) readMsg(p, oob []byte) (n, oobn int, truncated, ctrunc bool, from tcpip.FullAddress, err error) {
	s := d.s
	s.readMu.Lock()
	res, data, err := s.recv(p, tcpip.ReadOptions{NeedRemoteAddr: true})
	if err == nil && len(s.rctl) > 0 {
		oobn = copy(oob, s.rctl)
		ctrunc = oobn < len(s.rctl)
	}
	s.readMu.Unlock()
	if err != nil {
		return 0, 0, false, false, from, d.opErr("read", nil, err)
	}
	return len(data), oobn, res.Total > res.Count, ctrunc, res.RemoteAddr, nil
}

// ReadFrom reads one datagram into p, truncated to p if longer (as the
// standard library's), and returns its sender.
func (d dgram) ReadFrom(p []byte) (int, net.Addr, error) {
	n, _, _, _, from, err := d.readMsg(p, nil)
	if err != nil {
		return 0, nil, err
	}
	return n, d.addr(from), nil
}

// Read reads one datagram (of a connected socket).
func (d dgram) Read(p []byte) (int, error) {
	n, _, _, _, _, err := d.readMsg(p, nil)
	return n, err
}

// ReadMsgUDP is net.UDPConn's: flags has syscall.MSG_TRUNC when the
// datagram did not fit in b. oob gets the control messages the socket's
// options ask for (OptRecvPktInfo, OptRecvTOS, OptRecvTTL), as the
// filters passed them, in Linux's layout (package nke/cmsg);
// syscall.MSG_CTRUNC when they did not fit.
func (c *UDPConn) ReadMsgUDP(b, oob []byte) (n, oobn, flags int, addr *net.UDPAddr, err error) {
	n, oobn, trunc, ctrunc, from, err := c.readMsg(b, oob)
	if err != nil {
		return 0, 0, 0, nil, err
	}
	if trunc {
		flags |= syscall.MSG_TRUNC
	}
	if ctrunc {
		flags |= syscall.MSG_CTRUNC
	}
	return n, oobn, flags, udpAddr(from), nil
}

// WriteMsgUDP is net.UDPConn's: b as one datagram to addr (nil: the
// connected peer) with the control messages in oob, which the filters'
// data out see as control. The layer applies IP_TTL, IPV6_HOPLIMIT and
// IPV6_PKTINFO; any other message is refused (EINVAL) and nothing is
// sent.
func (c *UDPConn) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error) {
	s := c.s
	var to *tcpip.FullAddress
	var na net.Addr = c.RemoteAddr()
	if addr != nil {
		na = addr
		fa, v6, err := fromNetAddr(addr)
		if err == nil && v6 != s.v6 {
			err = syscall.EAFNOSUPPORT
		}
		if err != nil {
			return 0, 0, c.opErr("write", addr, err)
		}
		to = &fa
	}
	cm, err := sendControl(oob, s.v6)
	if err != nil {
		return 0, 0, c.opErr("write", na, err)
	}
	s.writeMu.Lock()
	s.woob, s.wcm = oob, cm
	n, err = s.send(b, to)
	s.woob, s.wcm = nil, tcpip.SendableControlMessages{}
	s.writeMu.Unlock()
	if err != nil {
		return n, 0, c.opErr("write", na, err)
	}
	return n, len(oob), nil
}

// WriteTo sends p as one datagram to addr (*net.UDPAddr, or *net.IPAddr
// for ICMP).
func (d dgram) WriteTo(p []byte, addr net.Addr) (int, error) {
	to, v6, err := fromNetAddr(addr)
	if err == nil && v6 != d.s.v6 {
		err = syscall.EAFNOSUPPORT
	}
	if err != nil {
		return 0, d.opErr("write", addr, err)
	}
	s := d.s
	s.writeMu.Lock()
	n, err := s.send(p, &to)
	s.writeMu.Unlock()
	if err != nil {
		return n, d.opErr("write", addr, err)
	}
	return n, nil
}

// Write sends p as one datagram to the connected peer.
func (d dgram) Write(p []byte) (int, error) {
	s := d.s
	s.writeMu.Lock()
	n, err := s.send(p, nil)
	s.writeMu.Unlock()
	if err != nil {
		return n, d.opErr("write", d.RemoteAddr(), err)
	}
	return n, nil
}

// Close closes the socket; blocked calls return net.ErrClosed.
func (d dgram) Close() error {
	if d.s.isClosed() {
		return d.opErr("close", nil, net.ErrClosed)
	}
	d.s.close()
	return nil
}

// LocalAddr is the socket's address (for ICMP the port is the echo
// identifier and is not shown).
func (d dgram) LocalAddr() net.Addr {
	a, err := d.s.sockName()
	if err != nil {
		return d.addr(tcpip.FullAddress{})
	}
	return d.addr(a)
}

// RemoteAddr is the connected peer, or nil.
func (d dgram) RemoteAddr() net.Addr {
	a, err := d.s.peerName()
	if err != nil {
		return nil
	}
	return d.addr(a)
}

// SetDeadline sets the read and write deadlines.
func (d dgram) SetDeadline(t time.Time) error { d.s.rd.set(t); d.s.wr.set(t); return nil }

// SetReadDeadline bounds reads (os.ErrDeadlineExceeded past it).
func (d dgram) SetReadDeadline(t time.Time) error { d.s.rd.set(t); return nil }

// SetWriteDeadline bounds writes.
func (d dgram) SetWriteDeadline(t time.Time) error { d.s.wr.set(t); return nil }

// SetOption sets a socket option.
func (d dgram) SetOption(o Option, v int) error { return d.s.setOption(o, v) }

// GetOption reads a socket option.
func (d dgram) GetOption(o Option) (int, error) { return d.s.getOption(o) }

// Ioctl runs a socket ioctl (FIONREAD: the size of the next datagram's
// queue, FIONWRITE).
func (d dgram) Ioctl(r Ioctl) (int, error) { return d.s.ioctl(r) }
