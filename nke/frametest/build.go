package frametest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/mdlayher/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Host is one end of a frame: its MAC and IP address (IPv4 or IPv6; the
// constructors pick the IP version from it).
type Host struct {
	MAC net.HardwareAddr
	IP  netip.Addr
}

// DefaultTTL is the TTL (hop limit) the constructors put in IP headers.
const DefaultTTL = 64

// NewEthernet is an Ethernet II frame carrying payload as EtherType et.
func NewEthernet(dst, src net.HardwareAddr, et ethernet.EtherType, payload []byte) Frame {
	return Frame{Dst: dst, Src: src, EtherType: et, Payload: nilIfEmpty(payload)}
}

// NewLLC is an 802.3 frame with an 802.2 header (SAPs and control).
func NewLLC(dst, src net.HardwareAddr, dsap, ssap uint8, control uint16, payload []byte) Frame {
	return Frame{Dst: dst, Src: src, LLC: &LLC{DSAP: dsap, SSAP: ssap, Control: control}, Payload: nilIfEmpty(payload)}
}

// NewSNAP is an 802.3 frame with LLC AA AA 03 and a SNAP header.
func NewSNAP(dst, src net.HardwareAddr, oui [3]byte, pid uint16, payload []byte) Frame {
	return Frame{Dst: dst, Src: src, LLC: &LLC{DSAP: 0xaa, SSAP: 0xaa, Control: 0x03},
		SNAP: &SNAP{OUI: oui, PID: pid}, Payload: nilIfEmpty(payload)}
}

// NewARPRequest is a broadcast ARP request from `from` for target.
func NewARPRequest(from Host, target netip.Addr) Frame {
	return Frame{Dst: Broadcast, Src: from.MAC, EtherType: EtherTypeARP, ARP: &ARP{Op: header.ARPRequest,
		SenderMAC: from.MAC, SenderIP: from.IP, TargetMAC: net.HardwareAddr{0, 0, 0, 0, 0, 0}, TargetIP: target}}
}

// NewARPReply is the ARP reply from `from` to `to`.
func NewARPReply(from, to Host) Frame {
	return Frame{Dst: to.MAC, Src: from.MAC, EtherType: EtherTypeARP, ARP: &ARP{Op: header.ARPReply,
		SenderMAC: from.MAC, SenderIP: from.IP, TargetMAC: to.MAC, TargetIP: to.IP}}
}

// newIP is an IPv4 or IPv6 frame from `from` to `to` for protocol proto.
func newIP(from, to Host, proto uint8, payload []byte) Frame {
	f := Frame{Dst: to.MAC, Src: from.MAC, Payload: nilIfEmpty(payload)}
	if from.IP.Is4() {
		f.EtherType = EtherTypeIPv4
		f.IPv4 = &IPv4{Src: from.IP, Dst: to.IP, TTL: DefaultTTL, Protocol: proto}
	} else {
		f.EtherType = EtherTypeIPv6
		f.IPv6 = &IPv6{Src: from.IP, Dst: to.IP, HopLimit: DefaultTTL, NextHeader: proto}
	}
	return f
}

// NewUDP is a UDP datagram from `from` to `to`.
func NewUDP(from, to Host, sport, dport uint16, payload []byte) Frame {
	f := newIP(from, to, ProtoUDP, payload)
	f.UDP = &UDP{SrcPort: sport, DstPort: dport}
	return f
}

// NewTCP is a TCP segment from `from` to `to` with the header fields of
// seg (ports, numbers, flags, window, options).
func NewTCP(from, to Host, seg TCP, payload []byte) Frame {
	f := newIP(from, to, ProtoTCP, payload)
	seg.Options = nilIfEmpty(seg.Options)
	f.TCP = &seg
	return f
}

// NewEchoRequest is an ICMP (ICMPv6 for IPv6 hosts) echo request.
func NewEchoRequest(from, to Host, ident, seq uint16, payload []byte) Frame {
	return newEcho(from, to, ICMPv4EchoRequest, ICMPv6EchoRequest, ident, seq, payload)
}

// NewEchoReply is an ICMP (ICMPv6 for IPv6 hosts) echo reply.
func NewEchoReply(from, to Host, ident, seq uint16, payload []byte) Frame {
	return newEcho(from, to, ICMPv4EchoReply, ICMPv6EchoReply, ident, seq, payload)
}

func newEcho(from, to Host, t4, t6 uint8, ident, seq uint16, payload []byte) Frame {
	if from.IP.Is4() {
		f := newIP(from, to, ProtoICMPv4, payload)
		f.ICMP = &ICMP{Type: t4, Ident: ident, Seq: seq}
		return f
	}
	f := newIP(from, to, ProtoICMPv6, payload)
	f.ICMP = &ICMP{Type: t6, Ident: ident, Seq: seq}
	return f
}

// Tagged returns f with an 802.1Q tag of VLAN id and priority prio.
func (f Frame) Tagged(id uint16, prio ethernet.Priority) Frame {
	f.VLAN = &ethernet.VLAN{ID: id, Priority: prio}
	return f
}

// Fragments splits f's IP packet into fragments carrying at most size
// bytes of its payload each (size is rounded down to a multiple of 8):
// IPv4 fragments with identification id, or IPv6 packets with a fragment
// header of that id. The transport header is in the first fragment's
// Payload, encoded with its checksum over the whole payload, so that a
// reassembler that works gets f back.
func Fragments(f Frame, size int, id uint32) ([]Frame, error) {
	size &^= 7
	if size <= 0 {
		return nil, fmt.Errorf("frametest: fragment size %d", size)
	}
	var data []byte
	var err error
	switch {
	case f.IPv4 != nil:
		ip := *f.IPv4 // the caller's header stays as it is
		f.IPv4 = &ip
		data, f.IPv4.Protocol, err = f.transportFor(false)
	case f.IPv6 != nil:
		ip := *f.IPv6
		f.IPv6 = &ip
		data, f.IPv6.NextHeader, err = f.transportFor(true)
	default:
		return nil, errors.New("frametest: Fragments needs an IP frame")
	}
	if err != nil {
		return nil, err
	}
	var out []Frame
	for off := 0; off < len(data) || off == 0; off += size {
		end := min(off+size, len(data))
		g := f
		g.UDP, g.TCP, g.ICMP = nil, nil, nil
		g.Payload = nilIfEmpty(append([]byte(nil), data[off:end]...))
		if g.IPv4 != nil {
			ip := *f.IPv4
			ip.ID = uint16(id)
			ip.FragmentOffset = uint16(off)
			ip.Flags &^= header.IPv4FlagMoreFragments | header.IPv4FlagDontFragment
			if end < len(data) {
				ip.Flags |= header.IPv4FlagMoreFragments
			}
			g.IPv4 = &ip
		} else {
			ip := *f.IPv6
			ip.Fragment = &Fragment6{Offset: uint16(off), More: end < len(data), ID: id}
			g.IPv6 = &ip
		}
		out = append(out, g)
		if end == len(data) {
			break
		}
	}
	return out, nil
}

// transportFor is the encoded transport layer and its protocol number.
func (f Frame) transportFor(v6 bool) ([]byte, uint8, error) {
	var src, dst netip.Addr
	proto := uint8(0)
	if v6 {
		src, dst, proto = f.IPv6.Src, f.IPv6.Dst, f.IPv6.NextHeader
	} else {
		src, dst, proto = f.IPv4.Src, f.IPv4.Dst, f.IPv4.Protocol
	}
	b, p, err := f.transport(v6, src, dst)
	if proto == 0 {
		proto = p
	}
	return b, proto, err
}

// CmpOptions compare Frames with go-cmp (netip.Addr by ==).
var CmpOptions = cmp.Options{cmpopts.EquateComparable(netip.Addr{})}

// Diff is cmp.Diff of two frames, "" when they are equal.
func Diff(want, got Frame) string { return cmp.Diff(want, got, CmpOptions) }

// MustParse parses b and fails the test on any error, naming what.
func MustParse(tb testing.TB, what string, b []byte) Frame {
	tb.Helper()
	f, err := Parse(b)
	if err != nil {
		tb.Fatalf("%s: %v (% x)", what, err, b)
	}
	return f
}
