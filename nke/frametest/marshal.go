package frametest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Bytes is Marshal for frames known to be well formed: it panics on error.
func (f Frame) Bytes() []byte {
	b, err := f.Marshal()
	if err != nil {
		panic(err)
	}
	return b
}

// Marshal encodes the frame with every length and checksum computed and
// the Ethernet payload zero-padded to 46 bytes.
func (f Frame) Marshal() ([]byte, error) {
	for _, a := range [][]byte{f.Dst, f.Src} {
		if len(a) != 0 && len(a) != 6 {
			return nil, fmt.Errorf("frametest: MAC address of %d bytes", len(a))
		}
	}
	l2, et, err := f.l2Payload()
	if err != nil {
		return nil, err
	}
	ef := ethernet.Frame{Destination: f.Dst, Source: f.Src, ServiceVLAN: f.ServiceVLAN, VLAN: f.VLAN, EtherType: et, Payload: l2}
	b, err := ef.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("frametest: %w", err)
	}
	return b, nil
}

// l2Payload is the Ethernet payload and the type/length field.
func (f Frame) l2Payload() ([]byte, ethernet.EtherType, error) {
	l3, et, err := f.l3()
	if err != nil {
		return nil, 0, err
	}
	if f.LLC == nil && f.SNAP == nil {
		if et < 0x600 && (f.ARP != nil || f.IPv4 != nil || f.IPv6 != nil) {
			return nil, 0, fmt.Errorf("frametest: EtherType %#04x is an 802.3 length", et)
		}
		return append(l3, f.Trailer...), et, nil
	}
	if f.EtherType != 0 {
		return nil, 0, errors.New("frametest: an 802.3 frame (LLC or SNAP) has no EtherType")
	}
	llc := f.LLC
	if llc == nil {
		llc = &LLC{DSAP: 0xaa, SSAP: 0xaa, Control: 0x03}
	}
	body := []byte{llc.DSAP, llc.SSAP, byte(llc.Control)}
	if llc.Control&3 != 3 {
		body = append(body, byte(llc.Control>>8))
	} else if llc.Control > 0xff {
		return nil, 0, fmt.Errorf("frametest: LLC control %#x: a U-format control is one byte", llc.Control)
	}
	if f.SNAP != nil {
		if llc.DSAP != 0xaa || llc.SSAP != 0xaa || llc.Control != 0x03 {
			return nil, 0, errors.New("frametest: SNAP needs LLC AA AA 03")
		}
		pid := f.SNAP.PID
		if pid == 0 && f.SNAP.OUI == [3]byte{} {
			pid = uint16(et)
		}
		body = append(body, f.SNAP.OUI[0], f.SNAP.OUI[1], f.SNAP.OUI[2], byte(pid>>8), byte(pid))
	} else if f.ARP != nil || f.IPv4 != nil || f.IPv6 != nil {
		return nil, 0, errors.New("frametest: a network layer under plain LLC (use SNAP)")
	}
	body = append(body, l3...)
	if len(body) > 1500 {
		return nil, 0, fmt.Errorf("frametest: 802.3 payload of %d bytes (at most 1500)", len(body))
	}
	return append(body, f.Trailer...), ethernet.EtherType(len(body)), nil
}

// l3 is the network layer packet and its EtherType.
func (f Frame) l3() ([]byte, ethernet.EtherType, error) {
	n := 0
	for _, set := range []bool{f.ARP != nil, f.IPv4 != nil, f.IPv6 != nil} {
		if set {
			n++
		}
	}
	if n > 1 {
		return nil, 0, errors.New("frametest: more than one network layer")
	}
	et := f.EtherType
	def := func(d ethernet.EtherType) {
		if et == 0 {
			et = d
		}
	}
	switch {
	case f.ARP != nil:
		def(EtherTypeARP)
		b, err := f.ARP.marshal()
		return b, et, err
	case f.IPv4 != nil:
		def(EtherTypeIPv4)
		b, err := f.ipv4()
		return b, et, err
	case f.IPv6 != nil:
		def(EtherTypeIPv6)
		b, err := f.ipv6()
		return b, et, err
	}
	if f.UDP != nil || f.TCP != nil || f.ICMP != nil {
		return nil, 0, errors.New("frametest: a transport header without IP")
	}
	return append([]byte(nil), f.Payload...), et, nil
}

func (a *ARP) marshal() ([]byte, error) {
	if !a.SenderIP.Is4() || !a.TargetIP.Is4() {
		return nil, errors.New("frametest: ARP needs IPv4 addresses")
	}
	for _, m := range [][]byte{a.SenderMAC, a.TargetMAC} {
		if len(m) != 0 && len(m) != 6 {
			return nil, fmt.Errorf("frametest: ARP MAC address of %d bytes", len(m))
		}
	}
	b := make([]byte, header.ARPSize)
	p := header.ARP(b)
	p.SetIPv4OverEthernet()
	p.SetOp(a.Op)
	copy(p.HardwareAddressSender(), a.SenderMAC)
	copy(p.HardwareAddressTarget(), a.TargetMAC)
	s, t := a.SenderIP.As4(), a.TargetIP.As4()
	copy(p.ProtocolAddressSender(), s[:])
	copy(p.ProtocolAddressTarget(), t[:])
	return b, nil
}

func addr(a netip.Addr) tcpip.Address { return tcpip.AddrFromSlice(a.AsSlice()) }

// transport encodes the transport layer (or the raw Payload) with its
// checksum over the pseudo-header of src and dst, and says its protocol.
func (f Frame) transport(v6 bool, src, dst netip.Addr) ([]byte, uint8, error) {
	n := 0
	for _, set := range []bool{f.UDP != nil, f.TCP != nil, f.ICMP != nil} {
		if set {
			n++
		}
	}
	if n > 1 {
		return nil, 0, errors.New("frametest: more than one transport header")
	}
	pseudo := func(proto tcpip.TransportProtocolNumber, l int) uint16 {
		return header.PseudoHeaderChecksum(proto, addr(src), addr(dst), uint16(l))
	}
	switch {
	case f.UDP != nil:
		b := make([]byte, header.UDPMinimumSize+len(f.Payload))
		if len(b) > 0xffff {
			return nil, 0, fmt.Errorf("frametest: UDP datagram of %d bytes", len(b))
		}
		u := header.UDP(b)
		u.Encode(&header.UDPFields{SrcPort: f.UDP.SrcPort, DstPort: f.UDP.DstPort, Length: uint16(len(b))})
		copy(b[header.UDPMinimumSize:], f.Payload)
		if !f.UDP.NoChecksum {
			c := ^checksum.Checksum(b, pseudo(header.UDPProtocolNumber, len(b)))
			if c == 0 {
				c = 0xffff // 0 means none (RFC 768)
			}
			u.SetChecksum(c)
		}
		return b, ProtoUDP, nil
	case f.TCP != nil:
		t := f.TCP
		if len(t.Options)%4 != 0 || len(t.Options) > 40 {
			return nil, 0, fmt.Errorf("frametest: TCP options of %d bytes (a multiple of 4, at most 40)", len(t.Options))
		}
		hl := header.TCPMinimumSize + len(t.Options)
		b := make([]byte, hl+len(f.Payload))
		h := header.TCP(b)
		h.Encode(&header.TCPFields{SrcPort: t.SrcPort, DstPort: t.DstPort, SeqNum: t.Seq, AckNum: t.Ack,
			DataOffset: uint8(hl), Flags: t.Flags, WindowSize: t.Window, UrgentPointer: t.Urgent})
		b[12] |= t.Reserved & 0x0f
		copy(b[header.TCPMinimumSize:], t.Options)
		copy(b[hl:], f.Payload)
		h.SetChecksum(^checksum.Checksum(b, pseudo(header.TCPProtocolNumber, len(b))))
		return b, ProtoTCP, nil
	case f.ICMP != nil:
		b := make([]byte, 8+len(f.Payload))
		b[0], b[1] = f.ICMP.Type, f.ICMP.Code
		binary.BigEndian.PutUint16(b[4:], f.ICMP.Ident)
		binary.BigEndian.PutUint16(b[6:], f.ICMP.Seq)
		copy(b[8:], f.Payload)
		var c uint16
		if v6 {
			c = ^checksum.Checksum(b, pseudo(header.ICMPv6ProtocolNumber, len(b)))
			binary.BigEndian.PutUint16(b[2:], c)
			return b, ProtoICMPv6, nil
		}
		c = ^checksum.Checksum(b, 0)
		binary.BigEndian.PutUint16(b[2:], c)
		return b, ProtoICMPv4, nil
	}
	return append([]byte(nil), f.Payload...), 0, nil
}

func (f Frame) ipv4() ([]byte, error) {
	ip := f.IPv4
	if !ip.Src.Is4() || !ip.Dst.Is4() {
		return nil, fmt.Errorf("frametest: IPv4 addresses %v, %v", ip.Src, ip.Dst)
	}
	if len(ip.Options)%4 != 0 || len(ip.Options) > 40 {
		return nil, fmt.Errorf("frametest: IPv4 options of %d bytes (a multiple of 4, at most 40)", len(ip.Options))
	}
	if ip.FragmentOffset%8 != 0 || ip.Flags > 7 {
		return nil, fmt.Errorf("frametest: IPv4 fragment offset %d, flags %#x", ip.FragmentOffset, ip.Flags)
	}
	l4, proto, err := f.transport(false, ip.Src, ip.Dst)
	if err != nil {
		return nil, err
	}
	if ip.Protocol != 0 {
		proto = ip.Protocol
	}
	hl := header.IPv4MinimumSize + len(ip.Options)
	b := make([]byte, hl+len(l4))
	if len(b) > 0xffff {
		return nil, fmt.Errorf("frametest: IPv4 packet of %d bytes", len(b))
	}
	h := header.IPv4(b)
	h.Encode(&header.IPv4Fields{TOS: ip.TOS, TotalLength: uint16(len(b)), ID: ip.ID, Flags: ip.Flags,
		FragmentOffset: ip.FragmentOffset, TTL: ip.TTL, Protocol: proto, SrcAddr: addr(ip.Src), DstAddr: addr(ip.Dst)})
	h.SetHeaderLength(uint8(hl))
	copy(b[header.IPv4MinimumSize:], ip.Options)
	h.SetChecksum(^h.CalculateChecksum())
	copy(b[hl:], l4)
	return b, nil
}

func (f Frame) ipv6() ([]byte, error) {
	ip := f.IPv6
	if !ip.Src.Is6() || !ip.Dst.Is6() {
		return nil, fmt.Errorf("frametest: IPv6 addresses %v, %v", ip.Src, ip.Dst)
	}
	if ip.FlowLabel > 0xfffff {
		return nil, fmt.Errorf("frametest: flow label %#x", ip.FlowLabel)
	}
	l4, proto, err := f.transport(true, ip.Src, ip.Dst)
	if err != nil {
		return nil, err
	}
	if ip.NextHeader != 0 {
		proto = ip.NextHeader
	}
	nh := proto
	if fr := ip.Fragment; fr != nil {
		if fr.Offset%8 != 0 {
			return nil, fmt.Errorf("frametest: IPv6 fragment offset %d", fr.Offset)
		}
		fh := make([]byte, 8, 8+len(l4))
		fh[0] = proto
		off := fr.Offset
		if fr.More {
			off |= 1
		}
		binary.BigEndian.PutUint16(fh[2:], off)
		binary.BigEndian.PutUint32(fh[4:], fr.ID)
		l4 = append(fh, l4...)
		nh = ProtoFragment
	}
	if len(l4) > 0xffff {
		return nil, fmt.Errorf("frametest: IPv6 payload of %d bytes", len(l4))
	}
	b := make([]byte, header.IPv6MinimumSize+len(l4))
	header.IPv6(b).Encode(&header.IPv6Fields{TrafficClass: ip.TrafficClass, FlowLabel: ip.FlowLabel,
		PayloadLength: uint16(len(l4)), TransportProtocol: tcpip.TransportProtocolNumber(nh), HopLimit: ip.HopLimit,
		SrcAddr: addr(ip.Src), DstAddr: addr(ip.Dst)})
	copy(b[header.IPv6MinimumSize:], l4)
	return b, nil
}
