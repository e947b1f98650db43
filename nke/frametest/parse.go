package frametest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"

	"github.com/mdlayher/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// minPayload is the Ethernet payload Marshal pads to.
const minPayload = 46

// Parse decodes a frame: Ethernet (tags, 802.3 LLC and SNAP), then ARP,
// IPv4 or IPv6, then UDP, TCP or ICMP. What it does not decode stays in
// Payload. A structural error (ErrTruncated, ErrLength, ErrMalformed)
// returns the layers decoded before it; a bad checksum (ErrChecksum)
// returns the whole frame. The Frame shares no memory with b.
func Parse(b []byte) (Frame, error) {
	var ef ethernet.Frame
	if err := ef.UnmarshalBinary(b); err != nil {
		switch {
		case errors.Is(err, io.ErrUnexpectedEOF):
			return Frame{}, fmt.Errorf("%w: Ethernet header in %d bytes", ErrTruncated, len(b))
		case errors.Is(err, ethernet.ErrInvalidVLAN):
			return Frame{}, fmt.Errorf("%w: VLAN tag", ErrMalformed)
		}
		return Frame{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	f := Frame{Dst: ef.Destination, Src: ef.Source, ServiceVLAN: ef.ServiceVLAN, VLAN: ef.VLAN}
	p := ef.Payload
	var cerr error
	var used int
	switch et := ef.EtherType; {
	case et <= 1500:
		if int(et) > len(p) {
			return f, fmt.Errorf("%w: 802.3 length %d, %d bytes follow", ErrLength, et, len(p))
		}
		n, err := f.parseLLC(p[:et])
		if err != nil && !errors.Is(err, ErrChecksum) {
			return f, err
		}
		cerr, used = err, n
	case et < 0x600:
		return f, fmt.Errorf("%w: EtherType %#04x", ErrMalformed, uint16(et))
	default:
		f.EtherType = et
		n, err := f.parseL3(et, p)
		if err != nil && !errors.Is(err, ErrChecksum) {
			return f, err
		}
		cerr, used = err, n
	}
	if t := p[used:]; len(t) > 0 && !(len(p) == minPayload && allZero(t)) {
		f.Trailer = t
	}
	return f, cerr
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// nilIfEmpty keeps empty byte fields nil, so that frames compare equal.
func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// parseLLC decodes the 802.2 header (and SNAP) in body, the bytes the
// 802.3 length covers, and reports how many it used (all of them, unless
// the network layer under SNAP is shorter).
func (f *Frame) parseLLC(body []byte) (int, error) {
	if len(body) < 3 {
		return 0, fmt.Errorf("%w: LLC header in %d bytes", ErrTruncated, len(body))
	}
	llc := &LLC{DSAP: body[0], SSAP: body[1], Control: uint16(body[2])}
	n := 3
	if body[2]&3 != 3 {
		if len(body) < 4 {
			return 0, fmt.Errorf("%w: two-byte LLC control in %d bytes", ErrTruncated, len(body))
		}
		llc.Control |= uint16(body[3]) << 8
		n = 4
	}
	f.LLC = llc
	if llc.DSAP != 0xaa || llc.SSAP != 0xaa || llc.Control != 0x03 {
		f.Payload = nilIfEmpty(body[n:])
		return len(body), nil
	}
	if len(body) < n+5 {
		return 0, fmt.Errorf("%w: SNAP header in %d bytes", ErrTruncated, len(body)-n)
	}
	s := &SNAP{OUI: [3]byte(body[n : n+3]), PID: binary.BigEndian.Uint16(body[n+3:])}
	f.SNAP = s
	n += 5
	if s.OUI != [3]byte{} {
		f.Payload = nilIfEmpty(body[n:])
		return len(body), nil
	}
	switch et := ethernet.EtherType(s.PID); et {
	case EtherTypeARP, EtherTypeIPv4, EtherTypeIPv6:
		m, err := f.parseL3(et, body[n:])
		if err != nil && !errors.Is(err, ErrChecksum) {
			return 0, err
		}
		if m != len(body)-n {
			return 0, fmt.Errorf("%w: 802.3 length covers %d bytes past the packet", ErrLength, len(body)-n-m)
		}
		return len(body), err
	}
	f.Payload = nilIfEmpty(body[n:])
	return len(body), nil
}

// parseL3 decodes the network layer of type et in p and reports the
// length of its packet.
func (f *Frame) parseL3(et ethernet.EtherType, p []byte) (int, error) {
	switch et {
	case EtherTypeARP:
		if len(p) < header.ARPSize {
			return 0, fmt.Errorf("%w: ARP packet in %d bytes", ErrTruncated, len(p))
		}
		a := header.ARP(p)
		if !a.IsValid() {
			break // not IPv4 over Ethernet: left in Payload
		}
		f.ARP = &ARP{Op: a.Op(),
			SenderMAC: net.HardwareAddr(a.HardwareAddressSender()), TargetMAC: net.HardwareAddr(a.HardwareAddressTarget()),
			SenderIP: netip.AddrFrom4([4]byte(a.ProtocolAddressSender())), TargetIP: netip.AddrFrom4([4]byte(a.ProtocolAddressTarget()))}
		return header.ARPSize, nil
	case EtherTypeIPv4:
		return f.parseIPv4(p)
	case EtherTypeIPv6:
		return f.parseIPv6(p)
	}
	f.Payload = nilIfEmpty(p)
	return len(p), nil
}

func (f *Frame) parseIPv4(p []byte) (int, error) {
	if len(p) < header.IPv4MinimumSize {
		return 0, fmt.Errorf("%w: IPv4 header in %d bytes", ErrTruncated, len(p))
	}
	h := header.IPv4(p)
	if v := p[0] >> 4; v != 4 {
		return 0, fmt.Errorf("%w: IP version %d in an IPv4 frame", ErrMalformed, v)
	}
	hl := int(h.HeaderLength())
	if hl < header.IPv4MinimumSize {
		return 0, fmt.Errorf("%w: IPv4 header length %d", ErrMalformed, hl)
	}
	if hl > len(p) {
		return 0, fmt.Errorf("%w: IPv4 header of %d in %d bytes", ErrTruncated, hl, len(p))
	}
	tl := int(h.TotalLength())
	if tl < hl || tl > len(p) {
		return 0, fmt.Errorf("%w: IPv4 total length %d, header %d, %d bytes", ErrLength, tl, hl, len(p))
	}
	tos, _ := h.TOS()
	ip := &IPv4{Src: netip.AddrFrom4(h.SourceAddress().As4()), Dst: netip.AddrFrom4(h.DestinationAddress().As4()),
		TOS: tos, ID: h.ID(), Flags: h.Flags(), FragmentOffset: h.FragmentOffset(), TTL: h.TTL(), Protocol: h.Protocol(),
		Options: nilIfEmpty(p[header.IPv4MinimumSize:hl])}
	f.IPv4 = ip
	var cerr error
	if checksum.Checksum(p[:hl], 0) != 0xffff {
		cerr = fmt.Errorf("%w: IPv4 header", ErrChecksum)
	}
	body := p[hl:tl]
	if ip.IsFragment() {
		f.Payload = nilIfEmpty(body)
		return tl, cerr
	}
	if err := f.parseTransport(false, ip.Protocol, ip.Src, ip.Dst, body); err != nil && (cerr == nil || !errors.Is(err, ErrChecksum)) {
		return tl, err
	}
	return tl, cerr
}

func (f *Frame) parseIPv6(p []byte) (int, error) {
	if len(p) < header.IPv6MinimumSize {
		return 0, fmt.Errorf("%w: IPv6 header in %d bytes", ErrTruncated, len(p))
	}
	h := header.IPv6(p)
	if v := p[0] >> 4; v != 6 {
		return 0, fmt.Errorf("%w: IP version %d in an IPv6 frame", ErrMalformed, v)
	}
	n := header.IPv6MinimumSize + int(h.PayloadLength())
	if n > len(p) {
		return 0, fmt.Errorf("%w: IPv6 payload length %d, %d bytes", ErrLength, h.PayloadLength(), len(p)-header.IPv6MinimumSize)
	}
	tc, fl := h.TOS()
	ip := &IPv6{Src: netip.AddrFrom16(h.SourceAddress().As16()), Dst: netip.AddrFrom16(h.DestinationAddress().As16()),
		TrafficClass: tc, FlowLabel: fl, HopLimit: h.HopLimit(), NextHeader: h.NextHeader()}
	f.IPv6 = ip
	body := p[header.IPv6MinimumSize:n]
	if ip.NextHeader == ProtoFragment {
		if len(body) < 8 {
			return 0, fmt.Errorf("%w: IPv6 fragment header in %d bytes", ErrTruncated, len(body))
		}
		off := binary.BigEndian.Uint16(body[2:])
		if body[1] != 0 || off&6 != 0 {
			return 0, fmt.Errorf("%w: reserved bits of the IPv6 fragment header", ErrMalformed)
		}
		ip.NextHeader = body[0]
		ip.Fragment = &Fragment6{Offset: off &^ 7, More: off&1 != 0, ID: binary.BigEndian.Uint32(body[4:])}
		f.Payload = nilIfEmpty(body[8:])
		return n, nil
	}
	return n, f.parseTransport(true, ip.NextHeader, ip.Src, ip.Dst, body)
}

// parseTransport decodes UDP, TCP or ICMP in p, the whole IP payload.
func (f *Frame) parseTransport(v6 bool, proto uint8, src, dst netip.Addr, p []byte) error {
	sum := func(proto tcpip.TransportProtocolNumber) uint16 {
		return checksum.Checksum(p, header.PseudoHeaderChecksum(proto, addr(src), addr(dst), uint16(len(p))))
	}
	var cerr error
	switch {
	case proto == ProtoUDP:
		if len(p) < header.UDPMinimumSize {
			return fmt.Errorf("%w: UDP header in %d bytes", ErrTruncated, len(p))
		}
		u := header.UDP(p)
		if int(u.Length()) != len(p) {
			return fmt.Errorf("%w: UDP length %d in an IP payload of %d", ErrLength, u.Length(), len(p))
		}
		f.UDP = &UDP{SrcPort: u.SourcePort(), DstPort: u.DestinationPort()}
		switch {
		case u.Checksum() == 0 && !v6:
			f.UDP.NoChecksum = true
		case u.Checksum() == 0, sum(header.UDPProtocolNumber) != 0xffff:
			cerr = fmt.Errorf("%w: UDP", ErrChecksum)
		}
		f.Payload = nilIfEmpty(p[header.UDPMinimumSize:])
	case proto == ProtoTCP:
		if len(p) < header.TCPMinimumSize {
			return fmt.Errorf("%w: TCP header in %d bytes", ErrTruncated, len(p))
		}
		t := header.TCP(p)
		off := int(t.DataOffset())
		if off < header.TCPMinimumSize {
			return fmt.Errorf("%w: TCP data offset %d", ErrMalformed, off)
		}
		if off > len(p) {
			return fmt.Errorf("%w: TCP header of %d in %d bytes", ErrTruncated, off, len(p))
		}
		f.TCP = &TCP{SrcPort: t.SourcePort(), DstPort: t.DestinationPort(), Seq: t.SequenceNumber(), Ack: t.AckNumber(),
			Flags: t.Flags(), Reserved: p[12] & 0x0f, Window: t.WindowSize(), Urgent: t.UrgentPointer(),
			Options: nilIfEmpty(p[header.TCPMinimumSize:off])}
		if sum(header.TCPProtocolNumber) != 0xffff {
			cerr = fmt.Errorf("%w: TCP", ErrChecksum)
		}
		f.Payload = nilIfEmpty(p[off:])
	case proto == ProtoICMPv4 && !v6, proto == ProtoICMPv6 && v6:
		if len(p) < 8 {
			return fmt.Errorf("%w: ICMP header in %d bytes", ErrTruncated, len(p))
		}
		f.ICMP = &ICMP{Type: p[0], Code: p[1], Ident: binary.BigEndian.Uint16(p[4:]), Seq: binary.BigEndian.Uint16(p[6:])}
		ok := checksum.Checksum(p, 0) == 0xffff
		if v6 {
			ok = sum(header.ICMPv6ProtocolNumber) == 0xffff
		}
		if !ok {
			cerr = fmt.Errorf("%w: ICMP", ErrChecksum)
		}
		f.Payload = nilIfEmpty(p[8:])
	default:
		f.Payload = nilIfEmpty(p)
	}
	return cerr
}
