package socket

import (
	"fmt"
	"net/netip"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"

	"github.com/nke-harness/nke/nke/cmsg"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Control messages (ancillary data) on datagram sockets.
//
// On receive, the options OptRecvPktInfo, OptRecvTOS and OptRecvTTL make
// gVisor report the datagram's destination and interface, TOS or traffic
// class, and TTL or hop limit; the layer encodes them (nke/cmsg, Linux's
// layout) and passes them to the filters' data in as control, then to
// ReadMsgUDP's oob. On send, WriteMsgUDP's oob goes to the filters' data
// out as control, and what they pass is applied to the datagram: IP_TTL
// or IPV6_HOPLIMIT, and IPV6_PKTINFO (source address and interface).
// gVisor's write takes nothing else (no IPv4 source override, no TOS per
// datagram), so other messages are refused with EINVAL rather than
// ignored. Streams carry no control messages: what a filter attaches to
// a stream's data is freed.

// ctlRoom is the room the control messages of one datagram take at most.
var ctlRoom = cmsg.Space(20) + 2*cmsg.Space(4)

// recvControl encodes the control messages the endpoint returned into
// the reader's buffer; nil if there are none.
//
// +checklocks:s.readMu
func (s *sock) recvControl(rc *tcpip.ReceivableControlMessages) []byte {
	var c cmsg.Control
	if s.v6 {
		if rc.HasIPv6PacketInfo {
			c.HasPacketInfo, c.Addr, c.IfIndex = true, addrOf(rc.IPv6PacketInfo.Addr), int32(rc.IPv6PacketInfo.NIC)
		}
		c.HasTOS, c.TOS = rc.HasTClass, uint8(rc.TClass)
		c.HasTTL, c.TTL = rc.HasHopLimit, rc.HopLimit
	} else {
		if rc.HasIPPacketInfo {
			c.HasPacketInfo, c.Addr, c.IfIndex = true, addrOf(rc.PacketInfo.DestinationAddr), int32(rc.PacketInfo.NIC)
		}
		c.HasTOS, c.TOS = rc.HasTOS, rc.TOS
		c.HasTTL, c.TTL = rc.HasTTL, rc.TTL
	}
	if !c.HasPacketInfo && !c.HasTOS && !c.HasTTL {
		return nil
	}
	if s.ctlBuf == nil {
		s.ctlBuf = make([]byte, 0, ctlRoom)
	}
	return c.Append(s.ctlBuf[:0], s.v6)
}

func addrOf(a tcpip.Address) netip.Addr {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return ip
}

// sendControl turns the control messages of a send into what gVisor's
// write takes. A message it cannot apply is an error wrapping EINVAL.
func sendControl(oob []byte, v6 bool) (tcpip.SendableControlMessages, error) {
	var out tcpip.SendableControlMessages
	if len(oob) == 0 {
		return out, nil
	}
	var c cmsg.Control
	if err := c.Parse(oob, v6); err != nil {
		return out, fmt.Errorf("%w: %w", syscall.EINVAL, err)
	}
	switch {
	case c.HasTOS:
		return out, fmt.Errorf("%w: %w: a TOS or traffic class per datagram (gVisor's write has none; set it on the socket)", syscall.EINVAL, cmsg.ErrUnsupported)
	case c.HasPacketInfo && !v6:
		return out, fmt.Errorf("%w: %w: IP_PKTINFO on send (gVisor's IPv4 write has no source override)", syscall.EINVAL, cmsg.ErrUnsupported)
	}
	if c.HasTTL {
		if v6 {
			out.HasHopLimit, out.HopLimit = true, c.TTL
		} else {
			out.HasTTL, out.TTL = true, c.TTL
		}
	}
	if c.HasPacketInfo {
		out.HasIPv6PacketInfo = true
		out.IPv6PacketInfo = tcpip.IPv6PacketInfo{NIC: tcpip.NICID(c.IfIndex)}
		if c.Addr.IsValid() && !c.Addr.IsUnspecified() {
			out.IPv6PacketInfo.Addr = tcpip.AddrFrom16(c.Addr.As16())
		}
	}
	return out, nil
}

// controlOf reads a control chain (nil: none) into dst's room and
// parses it for sending.
func (s *sock) controlOf(m *mbuf.Mbuf, dst []byte) (tcpip.SendableControlMessages, error) {
	if m == nil {
		return tcpip.SendableControlMessages{}, nil
	}
	n := m.PktLen()
	if cap(dst) < n {
		dst = make([]byte, n)
	}
	dst = dst[:n]
	_ = m.CopyData(0, dst)
	return sendControl(dst, s.v6)
}
