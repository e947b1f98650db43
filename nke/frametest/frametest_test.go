package frametest_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/mdlayher/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	. "github.com/nke-harness/nke/nke/frametest"
)

var (
	peer   = Host{MAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 2}, IP: netip.MustParseAddr("10.0.2.2")}
	guest  = Host{MAC: net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}, IP: netip.MustParseAddr("10.0.2.15")}
	peer6  = Host{MAC: peer.MAC, IP: netip.MustParseAddr("fe80::2")}
	guest6 = Host{MAC: guest.MAC, IP: netip.MustParseAddr("fe80::5054:ff:fe12:3456")}
)

// examples are frames of every kind the package builds.
func examples() map[string]Frame {
	big := bytes.Repeat([]byte{0xa5}, 1400)
	syn := TCP{SrcPort: 40000, DstPort: 7, Seq: 0x10000000, Flags: header.TCPFlagSyn, Window: 65535, Options: []byte{2, 4, 5, 0xb4}}
	m := map[string]Frame{
		"ethernet II":     NewEthernet(guest.MAC, peer.MAC, 0x88b5, []byte("a local experimental EtherType, long enough not to be padded")),
		"ethernet padded": NewEthernet(guest.MAC, peer.MAC, 0x88b5, bytes.Repeat([]byte{1}, 46)),
		"llc":             NewLLC(guest.MAC, peer.MAC, 0x42, 0x42, 0x03, []byte("spanning tree, more or less")),
		"llc I-format":    NewLLC(guest.MAC, peer.MAC, 0xf0, 0xf0, 0x1200, []byte("netbios")),
		"snap":            NewSNAP(guest.MAC, peer.MAC, [3]byte{0, 0, 0x0c}, 0x2000, []byte("cisco discovery")),
		"snap ipv4":       snapIP(NewUDP(peer, guest, 4000, 7, []byte("rfc 1042"))),
		"arp request":     NewARPRequest(peer, guest.IP),
		"arp reply":       NewARPReply(guest, peer),
		"arp tagged":      NewARPRequest(peer, guest.IP).Tagged(100, ethernet.PriorityVoice),
		"udp4":            NewUDP(peer, guest, 40000, 7, []byte("hello over udp")),
		"udp4 big":        NewUDP(peer, guest, 40001, 7, big),
		"udp4 empty":      NewUDP(peer, guest, 40002, 7, nil),
		"udp6":            NewUDP(peer6, guest6, 40000, 7, []byte("hello over udp6")),
		"tcp4 syn":        NewTCP(peer, guest, syn, nil),
		"tcp4 data":       NewTCP(peer, guest, TCP{SrcPort: 40000, DstPort: 7, Seq: 1, Ack: 2, Flags: header.TCPFlagAck | header.TCPFlagPsh, Window: 512}, []byte("data")),
		"tcp6":            NewTCP(peer6, guest6, syn, nil),
		"icmp4 echo":      NewEchoRequest(peer, guest, 0x4e4b, 1, []byte("ping payload")),
		"icmp4 reply":     NewEchoReply(guest, peer, 0x4e4b, 1, []byte("ping payload")),
		"icmp6 echo":      NewEchoRequest(peer6, guest6, 7, 9, []byte("ping6")),
		"icmp6 reply":     NewEchoReply(guest6, peer6, 7, 9, nil),
		"udp4 tagged":     NewUDP(peer, guest, 1, 2, []byte("x")).Tagged(4094, 0),
		"qinq": func() Frame {
			f := NewUDP(peer, guest, 1, 2, []byte("q in q"))
			f.ServiceVLAN, f.VLAN = &ethernet.VLAN{ID: 10}, &ethernet.VLAN{ID: 20, DropEligible: true}
			return f
		}(),
		"ipv4 options": func() Frame {
			f := NewUDP(peer, guest, 1, 2, []byte("with a router alert"))
			f.IPv4.Options = []byte{0x94, 4, 0, 0}
			f.IPv4.TOS, f.IPv4.ID, f.IPv4.Flags = 0x10, 77, header.IPv4FlagDontFragment
			return f
		}(),
		"ipv6 flow": func() Frame {
			f := NewUDP(peer6, guest6, 1, 2, []byte("labelled"))
			f.IPv6.TrafficClass, f.IPv6.FlowLabel = 0x20, 0xabcde
			return f
		}(),
		"udp4 no checksum": func() Frame {
			f := NewUDP(peer, guest, 1, 2, []byte("no checksum"))
			f.UDP.NoChecksum = true
			return f
		}(),
		"ipv4 other protocol": func() Frame {
			f := NewUDP(peer, guest, 1, 2, nil)
			f.UDP, f.IPv4.Protocol, f.Payload = nil, 47, []byte("gre, undecoded")
			return f
		}(),
		"trailer": func() Frame {
			f := NewUDP(peer, guest, 1, 2, []byte("x"))
			f.Trailer = bytes.Repeat([]byte{0xee}, 30)
			return f
		}(),
	}
	for name, size := range map[string]int{"udp4 big": 512, "udp6": 16, "icmp6 echo": 8} {
		fs, err := Fragments(m[name], size, 0x1234)
		if err != nil {
			panic(err)
		}
		for i, f := range fs {
			m[fmt.Sprint(name, " fragment ", i)] = f
		}
	}
	return m
}

func snapIP(f Frame) Frame {
	f.EtherType = 0
	f.LLC, f.SNAP = &LLC{DSAP: 0xaa, SSAP: 0xaa, Control: 0x03}, &SNAP{PID: uint16(EtherTypeIPv4)}
	return f
}

func TestRoundTrip(t *testing.T) {
	for name, f := range examples() {
		b, err := f.Marshal()
		if err != nil {
			t.Errorf("%s: Marshal: %v", name, err)
			continue
		}
		got, err := Parse(b)
		if err != nil {
			t.Errorf("%s: Parse: %v", name, err)
			continue
		}
		if d := Diff(f, got); d != "" {
			t.Errorf("%s: Parse(Marshal(f)) differs (-want +got):\n%s", name, d)
		}
		if again := got.Bytes(); !bytes.Equal(again, b) {
			t.Errorf("%s: re-encoding differs:\n% x\n% x", name, b, again)
		}
		if len(b) < 60 {
			t.Errorf("%s: %d bytes, not padded to 60", name, len(b))
		}
	}
}

// The encodings are what gVisor's own checks accept, independently of
// Parse.
func TestChecksumsAsGVisorSeesThem(t *testing.T) {
	for name, f := range examples() {
		if f.VLAN != nil || f.LLC != nil || f.SNAP != nil {
			continue
		}
		b := f.Bytes()
		switch {
		case f.IPv4 != nil:
			ip := header.IPv4(b[14:])
			if !ip.IsValid(len(b)-14) || !ip.IsChecksumValid() {
				t.Errorf("%s: gVisor rejects the IPv4 header", name)
			}
			src, dst := ip.SourceAddress(), ip.DestinationAddress()
			switch {
			case f.TCP != nil:
				tc := header.TCP(ip.Payload())
				if !tc.IsChecksumValid(src, dst, checksumOf(tc.Payload()), uint16(len(tc.Payload()))) {
					t.Errorf("%s: gVisor rejects the TCP checksum", name)
				}
			case f.UDP != nil && !f.UDP.NoChecksum:
				u := header.UDP(ip.Payload())
				if !u.IsChecksumValid(src, dst, checksumOf(u.Payload())) {
					t.Errorf("%s: gVisor rejects the UDP checksum", name)
				}
			}
		case f.IPv6 != nil && f.UDP != nil:
			ip := header.IPv6(b[14:])
			u := header.UDP(ip.Payload())
			if !ip.IsValid(len(b)-14) || !u.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksumOf(u.Payload())) {
				t.Errorf("%s: gVisor rejects the IPv6/UDP packet", name)
			}
		}
	}
}

func checksumOf(b []byte) uint16 {
	x := uint32(0)
	for i := 0; i+1 < len(b); i += 2 {
		x += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		x += uint32(b[len(b)-1]) << 8
	}
	for x > 0xffff {
		x = x>>16 + x&0xffff
	}
	return uint16(x)
}

// Fragments carry the transport encoding in order, with offsets and MF
// (or the fragment header) right; reassembled, they are the datagram.
func TestFragments(t *testing.T) {
	for _, orig := range []Frame{NewUDP(peer, guest, 5, 7, bytes.Repeat([]byte("0123456789"), 30)),
		NewEchoRequest(peer6, guest6, 1, 2, bytes.Repeat([]byte{7}, 100))} {
		fs, err := Fragments(orig, 50, 0xabcdef01) // 48 bytes each
		if err != nil {
			t.Fatal(err)
		}
		if len(fs) < 3 {
			t.Fatalf("%d fragments", len(fs))
		}
		var data []byte
		for i, f := range fs {
			got := MustParse(t, "fragment", f.Bytes())
			var off int
			var more bool
			if ip := got.IPv4; ip != nil {
				off, more = int(ip.FragmentOffset), ip.More()
				if ip.ID != 0xef01 || ip.Protocol != ProtoUDP {
					t.Errorf("fragment %d: id %#x, protocol %d", i, ip.ID, ip.Protocol)
				}
			} else {
				fr := got.IPv6.Fragment
				off, more = int(fr.Offset), fr.More
				if fr.ID != 0xabcdef01 || got.IPv6.NextHeader != ProtoICMPv6 {
					t.Errorf("fragment %d: id %#x, next header %d", i, fr.ID, got.IPv6.NextHeader)
				}
			}
			if off != len(data) || more != (i < len(fs)-1) || got.UDP != nil || got.ICMP != nil {
				t.Errorf("fragment %d: offset %d (want %d), more %v, transport decoded", i, off, len(data), more)
			}
			data = append(data, got.Payload...)
		}
		// Reassembled: the unfragmented packet's IP payload.
		whole := orig.Bytes()
		var l4 []byte
		if orig.IPv4 != nil {
			l4 = header.IPv4(whole[14:]).Payload()
		} else {
			l4 = header.IPv6(whole[14:]).Payload()
		}
		if !bytes.Equal(data, l4) {
			t.Errorf("reassembled payload differs from the datagram")
		}
		if orig.IPv4 != nil && orig.IPv4.IsFragment() {
			t.Errorf("Fragments changed the caller's header")
		}
	}
}

func TestParseErrors(t *testing.T) {
	udp := NewUDP(peer, guest, 1, 2, []byte("0123456789abcdefghijklmnopqrstuvwxyz")).Bytes()
	tcp6 := NewTCP(peer6, guest6, TCP{SrcPort: 1, DstPort: 2}, []byte("data")).Bytes()
	mod := func(b []byte, f func(b []byte) []byte) []byte { return f(append([]byte(nil), b...)) }
	for _, c := range []struct {
		name  string
		frame []byte
		want  error
	}{
		{"runt", udp[:10], ErrTruncated},
		{"no IPv4 header", udp[:14+12], ErrTruncated},
		{"IP version", mod(udp, func(b []byte) []byte { b[14] = 0x65; return b }), ErrMalformed},
		{"IHL below 5", mod(udp, func(b []byte) []byte { b[14] = 0x44; return b }), ErrMalformed},
		{"total length beyond", mod(udp, func(b []byte) []byte { binary.BigEndian.PutUint16(b[16:], 200); return b }), ErrLength},
		{"IPv4 checksum", mod(udp, func(b []byte) []byte { b[14+8]--; return b }), ErrChecksum},
		{"UDP checksum", mod(udp, func(b []byte) []byte { b[len(b)-1]++; return b }), ErrChecksum},
		{"UDP length", mod(udp, func(b []byte) []byte { binary.BigEndian.PutUint16(b[14+20+4:], 9); return b }), ErrLength},
		{"TCP data offset", mod(tcp6, func(b []byte) []byte { b[14+40+12] = 0x40; return b }), ErrMalformed},
		{"TCP checksum", mod(tcp6, func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), ErrChecksum},
		{"IPv6 payload length", mod(tcp6, func(b []byte) []byte { binary.BigEndian.PutUint16(b[18:], 999); return b }), ErrLength},
		{"VLAN id fff", mod(NewARPRequest(peer, guest.IP).Tagged(1, 0).Bytes(), func(b []byte) []byte { b[14], b[15] = 0x0f, 0xff; return b }), ErrMalformed},
		{"802.3 length beyond", mod(NewLLC(guest.MAC, peer.MAC, 1, 1, 3, []byte("x")).Bytes(), func(b []byte) []byte { b[12], b[13] = 0x05, 0xdc; return b }), ErrLength},
		{"EtherType 0x05ff", mod(udp, func(b []byte) []byte { b[12], b[13] = 0x05, 0xff; return b }), ErrMalformed},
		{"short ARP", NewEthernet(Broadcast, peer.MAC, EtherTypeARP, make([]byte, 20)).Bytes()[:34], ErrTruncated},
	} {
		f, err := Parse(c.frame)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: Parse error %v, want %v", c.name, err, c.want)
		}
		if c.want == ErrChecksum && (f.IPv4 == nil && f.IPv6 == nil || f.UDP == nil && f.TCP == nil) {
			t.Errorf("%s: a bad checksum returned a partial frame: %+v", c.name, f)
		}
	}
}

// Frames the package does not decode deeper stay whole in Payload, and
// known-good bytes from elsewhere decode as expected.
func TestParseForeignBytes(t *testing.T) {
	// An ARP reply for IPv4 as gVisor writes it (42 bytes, unpadded).
	b := make([]byte, 14+header.ARPSize)
	copy(b, peer.MAC)
	copy(b[6:], guest.MAC)
	binary.BigEndian.PutUint16(b[12:], uint16(EtherTypeARP))
	a := header.ARP(b[14:])
	a.SetIPv4OverEthernet()
	a.SetOp(header.ARPReply)
	copy(a.HardwareAddressSender(), guest.MAC)
	copy(a.ProtocolAddressSender(), guest.IP.AsSlice())
	copy(a.HardwareAddressTarget(), peer.MAC)
	copy(a.ProtocolAddressTarget(), peer.IP.AsSlice())
	got := MustParse(t, "gVisor ARP reply", b)
	if d := Diff(NewARPReply(guest, peer), got); d != "" {
		t.Errorf("ARP reply (-want +got):\n%s", d)
	}

	// gVisor's ICMPv6 checksum agrees with ours.
	f := NewEchoRequest(peer6, guest6, 3, 4, []byte("abc"))
	fb := f.Bytes()
	ic := header.ICMPv6(header.IPv6(fb[14:]).Payload())
	want := header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: ic,
		Src: tcpip.AddrFrom16(peer6.IP.As16()), Dst: tcpip.AddrFrom16(guest6.IP.As16())})
	if ic.Checksum() != want {
		t.Errorf("ICMPv6 checksum %#04x, gVisor says %#04x", ic.Checksum(), want)
	}
}
