package vmtests

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/nke-harness/nke/nke/frametest"
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

// The peer and guest as frametest sees them.
var (
	peerHost  = frametest.Host{MAC: peerMAC, IP: netip.AddrFrom4(peerIP)}
	guestHost = frametest.Host{MAC: guestMAC, IP: netip.AddrFrom4(guestIP)}
)

// checkSent fills what the guest chooses itself (IP id, TTL and flags,
// TCP window and options) into want from got, once they are sane, and
// compares the rest field by field. A bad checksum is reported apart
// (frametest.Parse said so; got is complete nonetheless).
func checkSent(t *testing.T, what string, want, got frametest.Frame, err error) {
	t.Helper()
	if err != nil {
		t.Errorf("%s: %v", what, err)
	}
	if got.IPv4 != nil && want.IPv4 != nil {
		if got.IPv4.TTL == 0 {
			t.Errorf("%s: TTL 0", what)
		}
		want.IPv4.ID, want.IPv4.TTL, want.IPv4.Flags = got.IPv4.ID, got.IPv4.TTL, got.IPv4.Flags
	}
	if got.TCP != nil && want.TCP != nil {
		if got.TCP.Window == 0 {
			t.Errorf("%s: window closed", what)
		}
		want.TCP.Window, want.TCP.Options = got.TCP.Window, got.TCP.Options
	}
	if diff := frametest.Diff(want, got); diff != "" {
		t.Errorf("%s (-want +got):\n%s", what, diff)
	}
}

func peerARP(t *testing.T, p *framePeer) {
	p.send(frametest.NewARPRequest(peerHost, guestHost.IP).Bytes())
	f, err := p.expect("ARP reply", 30*time.Second, func(f frametest.Frame) bool {
		return f.ARP != nil && f.ARP.Op == header.ARPReply
	})
	checkSent(t, "ARP reply", frametest.NewARPReply(guestHost, peerHost), f, err)
}

func peerICMP(t *testing.T, p *framePeer) {
	payload := []byte("nke harness ping payload 0123456789")
	for seq := uint16(1); seq <= 3; seq++ {
		req := frametest.NewEchoRequest(peerHost, guestHost, 0x4e4b, seq, payload)
		req.IPv4.ID = 100 + seq
		p.send(req.Bytes())
		f, err := p.expect("ICMP echo reply", 30*time.Second, func(f frametest.Frame) bool { return f.ICMP != nil })
		checkSent(t, fmt.Sprintf("ICMP echo reply %d", seq), frametest.NewEchoReply(guestHost, peerHost, 0x4e4b, seq, payload), f, err)
	}
}

func peerUDP(t *testing.T, p *framePeer) {
	for i, payload := range [][]byte{[]byte("hello over udp"), bytes.Repeat([]byte{0xa5}, 1400)} {
		sport := uint16(40000 + i)
		req := frametest.NewUDP(peerHost, guestHost, sport, 7, payload)
		req.IPv4.ID = 200
		p.send(req.Bytes())
		f, err := p.expect("UDP echo", 30*time.Second, func(f frametest.Frame) bool { return f.UDP != nil && f.UDP.DstPort == sport })
		checkSent(t, fmt.Sprintf("UDP echo %d", i), frametest.NewUDP(guestHost, peerHost, 7, sport, payload), f, err)
	}
}

func (p *framePeer) expectTCP(t *testing.T, what string, sport uint16, match func(*frametest.TCP, []byte) bool) (frametest.Frame, error) {
	t.Helper()
	return p.expect(what, 30*time.Second, func(f frametest.Frame) bool {
		return f.TCP != nil && f.TCP.DstPort == sport && match(f.TCP, f.Payload)
	})
}

func peerTCP(t *testing.T, p *framePeer) {
	const sport = 40100
	iss := uint32(0x1000_0000)
	send := func(seq, ack uint32, flags header.TCPFlags, opts, payload []byte) {
		f := frametest.NewTCP(peerHost, guestHost, frametest.TCP{SrcPort: sport, DstPort: 7, Seq: seq, Ack: ack,
			Flags: flags, Window: 65535, Options: opts}, payload)
		f.IPv4.ID = 300
		p.send(f.Bytes())
	}
	reply := func(seq, ack uint32, flags header.TCPFlags, payload []byte) frametest.Frame {
		return frametest.NewTCP(guestHost, peerHost, frametest.TCP{SrcPort: 7, DstPort: sport, Seq: seq, Ack: ack, Flags: flags}, payload)
	}

	// Handshake, with an MSS option.
	send(iss, 0, header.TCPFlagSyn, []byte{2, 4, 0x05, 0xb4}, nil)
	synack, err := p.expectTCP(t, "SYN-ACK", sport, func(s *frametest.TCP, _ []byte) bool { return s.Flags == header.TCPFlagSyn|header.TCPFlagAck })
	checkSent(t, "SYN-ACK", reply(synack.TCP.Seq, iss+1, header.TCPFlagSyn|header.TCPFlagAck, nil), synack, err)
	if t.Failed() {
		t.FailNow()
	}
	guestSeq := synack.TCP.Seq + 1
	send(iss+1, guestSeq, header.TCPFlagAck, nil, nil)

	// Data: the echo service returns it.
	msg := []byte("hello, nke: a tcp exchange")
	send(iss+1, guestSeq, header.TCPFlagAck|header.TCPFlagPsh, nil, msg)
	echo, err := p.expectTCP(t, "echoed data", sport, func(_ *frametest.TCP, payload []byte) bool { return len(payload) > 0 })
	if echo.TCP.Flags&header.TCPFlagAck == 0 {
		t.Errorf("echoed segment without ACK: flags %v", echo.TCP.Flags)
	}
	checkSent(t, "echoed segment", reply(guestSeq, iss+1+uint32(len(msg)), echo.TCP.Flags, msg), echo, err)
	if t.Failed() {
		t.FailNow()
	}
	guestSeq += uint32(len(msg))
	send(iss+1+uint32(len(msg)), guestSeq, header.TCPFlagAck, nil, nil)

	// Close: our FIN; the echo service sees EOF and closes too.
	send(iss+1+uint32(len(msg)), guestSeq, header.TCPFlagAck|header.TCPFlagFin, nil, nil)
	fin, err := p.expectTCP(t, "guest FIN", sport, func(s *frametest.TCP, _ []byte) bool { return s.Flags&header.TCPFlagFin != 0 })
	checkSent(t, "guest FIN", reply(guestSeq, iss+2+uint32(len(msg)), header.TCPFlagAck|header.TCPFlagFin, nil), fin, err)
	send(iss+2+uint32(len(msg)), guestSeq+1, header.TCPFlagAck, nil, nil)
}
