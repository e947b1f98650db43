package vmtests

import (
	"bytes"
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/nke-harness/nke/tools/hostvm"
)

// TestFramePeer puts a host program on the guest's wire (QEMU -netdev dgram)
// and checks the guest's answers to raw frames field by field: ARP, ICMP
// echo, UDP echo and a whole TCP exchange with the echo service.
func TestFramePeer(t *testing.T) {
	requireVM(t)
	dir := shortTempDir(t)
	p, _ := newFramePeer(t, dir)
	nic := hostvm.NIC{Backend: hostvm.NetDgram, SocketPath: filepath.Join(dir, "qemu.sock"), PeerPath: filepath.Join(dir, "peer.sock"), MAC: guestMAC.String()}
	args, err := nic.Args(0)
	if err != nil {
		t.Fatal(err)
	}
	startGuest(t, "frame-peer", args)

	t.Run("ARP", func(t *testing.T) { peerARP(t, p) })
	t.Run("ICMP", func(t *testing.T) { peerICMP(t, p) })
	t.Run("UDP", func(t *testing.T) { peerUDP(t, p) })
	t.Run("TCP", func(t *testing.T) { peerTCP(t, p) })
}

// shortTempDir is a temporary directory whose path leaves room for unix
// socket names (108 bytes with the name): t.TempDir sits under $TMPDIR,
// which CI systems often put deep in a workspace.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if len(dir) <= 80 {
		return dir
	}
	dir, err := os.MkdirTemp("/tmp", "nke-")
	if err != nil {
		t.Fatalf("no short temporary directory for unix sockets (%v); $TMPDIR is too deep", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

type arpFields struct {
	EthDst, EthSrc string
	HType, PType   uint16
	HLen, PLen     uint8
	Op             header.ARPOp
	SHA, THA       string
	SPA, TPA       [4]byte
}

func peerARP(t *testing.T, p *framePeer) {
	req := make([]byte, header.ARPSize)
	a := header.ARP(req)
	a.SetIPv4OverEthernet()
	a.SetOp(header.ARPRequest)
	copy(a.HardwareAddressSender(), p.mac)
	copy(a.ProtocolAddressSender(), p.ip[:])
	copy(a.ProtocolAddressTarget(), guestIP[:])
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	p.send(ethFrame(bcast, p.mac, ethernet.EtherTypeARP, req))
	f := p.expect("ARP reply", 30*time.Second, func(f []byte) bool {
		return len(f) >= 14+header.ARPSize && binary.BigEndian.Uint16(f[12:]) == uint16(ethernet.EtherTypeARP) &&
			header.ARP(f[14:]).Op() == header.ARPReply
	})
	r := header.ARP(f[14:])
	got := arpFields{
		EthDst: net.HardwareAddr(f[0:6]).String(), EthSrc: net.HardwareAddr(f[6:12]).String(),
		HType: binary.BigEndian.Uint16(r[0:]), PType: binary.BigEndian.Uint16(r[2:]), HLen: r[4], PLen: r[5],
		Op: r.Op(), SHA: net.HardwareAddr(r.HardwareAddressSender()).String(), THA: net.HardwareAddr(r.HardwareAddressTarget()).String(),
		SPA: [4]byte(r.ProtocolAddressSender()), TPA: [4]byte(r.ProtocolAddressTarget()),
	}
	want := arpFields{
		EthDst: p.mac.String(), EthSrc: guestMAC.String(), HType: 1, PType: 0x0800, HLen: 6, PLen: 4,
		Op: header.ARPReply, SHA: guestMAC.String(), THA: p.mac.String(), SPA: guestIP, TPA: p.ip,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ARP reply (-want +got):\n%s", diff)
	}
}

type icmpFields struct {
	IP         parsedIPv4
	Type       header.ICMPv4Type
	Code       header.ICMPv4Code
	ChecksumOK bool
	ID, Seq    uint16
	Payload    []byte
}

func peerICMP(t *testing.T, p *framePeer) {
	payload := []byte("nke harness ping payload 0123456789")
	for seq := uint16(1); seq <= 3; seq++ {
		p.send(ethFrame(guestMAC, p.mac, ethernet.EtherTypeIPv4,
			ipv4Packet(uint8(header.ICMPv4ProtocolNumber), p.ip, guestIP, 100+seq, icmpEcho(header.ICMPv4Echo, 0x4e4b, seq, payload))))
		f := p.expect("ICMP echo reply", 30*time.Second, func(f []byte) bool {
			ip, err := parseIPv4(f)
			return err == nil && ip.Proto == uint8(header.ICMPv4ProtocolNumber)
		})
		ip, _ := parseIPv4(f)
		ic := header.ICMPv4(ip.Payload)
		got := icmpFields{IP: ip, Type: ic.Type(), Code: ic.Code(), ChecksumOK: ^checksumOf(ip.Payload) == 0,
			ID: ic.Ident(), Seq: ic.Sequence(), Payload: ic.Payload()}
		got.IP.Payload = nil
		want := icmpFields{
			IP:   parsedIPv4{EthDst: p.mac.String(), EthSrc: guestMAC.String(), Src: guestIP, Dst: p.ip, Proto: 1, TTLPositive: true, HeaderOK: true},
			Type: header.ICMPv4EchoReply, Code: 0, ChecksumOK: true, ID: 0x4e4b, Seq: seq, Payload: payload,
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("ICMP echo reply %d (-want +got):\n%s", seq, diff)
		}
	}
}

type udpFields struct {
	IP           parsedIPv4
	SPort, DPort uint16
	Length       uint16
	ChecksumOK   bool
	Payload      []byte
}

func peerUDP(t *testing.T, p *framePeer) {
	for i, payload := range [][]byte{[]byte("hello over udp"), bytes.Repeat([]byte{0xa5}, 1400)} {
		sport := uint16(40000 + i)
		p.send(ethFrame(guestMAC, p.mac, ethernet.EtherTypeIPv4,
			ipv4Packet(uint8(header.UDPProtocolNumber), p.ip, guestIP, 200, udpSegment(p.ip, guestIP, sport, 7, payload))))
		f := p.expect("UDP echo", 30*time.Second, func(f []byte) bool {
			ip, err := parseIPv4(f)
			return err == nil && ip.Proto == uint8(header.UDPProtocolNumber) && header.UDP(ip.Payload).DestinationPort() == sport
		})
		ip, _ := parseIPv4(f)
		u := header.UDP(ip.Payload)
		got := udpFields{IP: ip, SPort: u.SourcePort(), DPort: u.DestinationPort(), Length: u.Length(),
			ChecksumOK: u.Checksum() != 0 && transportChecksum(header.UDPProtocolNumber, ip.Src, ip.Dst, ip.Payload) == 0,
			Payload:    u.Payload()}
		got.IP.Payload = nil
		want := udpFields{
			IP:    parsedIPv4{EthDst: p.mac.String(), EthSrc: guestMAC.String(), Src: guestIP, Dst: p.ip, Proto: 17, TTLPositive: true, HeaderOK: true},
			SPort: 7, DPort: sport, Length: uint16(8 + len(payload)), ChecksumOK: true, Payload: payload,
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("UDP echo %d (-want +got):\n%s", i, diff)
		}
	}
}

type tcpSeg struct {
	IP           parsedIPv4
	SPort, DPort uint16
	Seq, Ack     uint32
	Flags        header.TCPFlags
	WindowOpen   bool
	ChecksumOK   bool
	Payload      []byte
}

func (p *framePeer) expectTCP(t *testing.T, what string, sport uint16, match func(tcpSeg) bool) tcpSeg {
	t.Helper()
	f := p.expect(what, 30*time.Second, func(f []byte) bool {
		ip, err := parseIPv4(f)
		if err != nil || ip.Proto != uint8(header.TCPProtocolNumber) || header.TCP(ip.Payload).DestinationPort() != sport {
			return false
		}
		return match(decodeTCP(ip))
	})
	ip, _ := parseIPv4(f)
	return decodeTCP(ip)
}

func decodeTCP(ip parsedIPv4) tcpSeg {
	tc := header.TCP(ip.Payload)
	s := tcpSeg{IP: ip, SPort: tc.SourcePort(), DPort: tc.DestinationPort(), Seq: tc.SequenceNumber(), Ack: tc.AckNumber(),
		Flags: tc.Flags(), WindowOpen: tc.WindowSize() > 0,
		ChecksumOK: transportChecksum(header.TCPProtocolNumber, ip.Src, ip.Dst, ip.Payload) == 0}
	if len(tc.Payload()) > 0 {
		s.Payload = append([]byte(nil), tc.Payload()...)
	}
	s.IP.Payload = nil
	return s
}

func peerTCP(t *testing.T, p *framePeer) {
	const sport = 40100
	iss := uint32(0x1000_0000)
	send := func(seq, ack uint32, flags header.TCPFlags, opts, payload []byte) {
		p.send(ethFrame(guestMAC, p.mac, ethernet.EtherTypeIPv4,
			ipv4Packet(uint8(header.TCPProtocolNumber), p.ip, guestIP, 300,
				tcpSegment(p.ip, guestIP, header.TCPFields{SrcPort: sport, DstPort: 7, SeqNum: seq, AckNum: ack,
					Flags: flags, WindowSize: 65535}, opts, payload))))
	}
	ipWant := parsedIPv4{EthDst: p.mac.String(), EthSrc: guestMAC.String(), Src: guestIP, Dst: p.ip, Proto: 6, TTLPositive: true, HeaderOK: true}

	// Handshake, with an MSS option.
	send(iss, 0, header.TCPFlagSyn, []byte{2, 4, 0x05, 0xb4}, nil)
	synack := p.expectTCP(t, "SYN-ACK", sport, func(s tcpSeg) bool { return s.Flags == header.TCPFlagSyn|header.TCPFlagAck })
	if diff := cmp.Diff(tcpSeg{IP: ipWant, SPort: 7, DPort: sport, Seq: synack.Seq, Ack: iss + 1,
		Flags: header.TCPFlagSyn | header.TCPFlagAck, WindowOpen: true, ChecksumOK: true}, synack); diff != "" {
		t.Fatalf("SYN-ACK (-want +got):\n%s", diff)
	}
	guestSeq := synack.Seq + 1
	send(iss+1, guestSeq, header.TCPFlagAck, nil, nil)

	// Data: the echo service returns it.
	msg := []byte("hello, nke: a tcp exchange")
	send(iss+1, guestSeq, header.TCPFlagAck|header.TCPFlagPsh, nil, msg)
	echo := p.expectTCP(t, "echoed data", sport, func(s tcpSeg) bool { return len(s.Payload) > 0 })
	if diff := cmp.Diff(tcpSeg{IP: ipWant, SPort: 7, DPort: sport, Seq: guestSeq, Ack: iss + 1 + uint32(len(msg)),
		Flags: echo.Flags, WindowOpen: true, ChecksumOK: true, Payload: msg}, echo); diff != "" || echo.Flags&header.TCPFlagAck == 0 {
		t.Fatalf("echoed segment (-want +got):\n%s (flags %v)", diff, echo.Flags)
	}
	guestSeq += uint32(len(msg))
	send(iss+1+uint32(len(msg)), guestSeq, header.TCPFlagAck, nil, nil)

	// Close: our FIN; the echo service sees EOF and closes too.
	send(iss+1+uint32(len(msg)), guestSeq, header.TCPFlagAck|header.TCPFlagFin, nil, nil)
	fin := p.expectTCP(t, "guest FIN", sport, func(s tcpSeg) bool { return s.Flags&header.TCPFlagFin != 0 })
	if diff := cmp.Diff(tcpSeg{IP: ipWant, SPort: 7, DPort: sport, Seq: guestSeq, Ack: iss + 2 + uint32(len(msg)),
		Flags: header.TCPFlagAck | header.TCPFlagFin, WindowOpen: true, ChecksumOK: true}, fin); diff != "" {
		t.Fatalf("guest FIN (-want +got):\n%s", diff)
	}
	send(iss+2+uint32(len(msg)), guestSeq+1, header.TCPFlagAck, nil, nil)
}
