package vmtests

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// framePeer is a host on the guest's wire that speaks raw Ethernet over a
// QEMU `-netdev dgram` unix socket (one datagram = one frame, no virtio
// header). It answers ARP for its own address so the guest can reach it, and
// hands every other frame to the test.
type framePeer struct {
	t      *testing.T
	conn   *net.UnixConn
	qemu   *net.UnixAddr
	mac    net.HardwareAddr
	ip     [4]byte
	frames chan []byte
	done   chan struct{}
	mu     sync.Mutex
	// +checklocks:mu
	arpAsked int // ARP requests for us the guest sent
}

var (
	peerMAC  = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x02}
	guestMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	peerIP   = [4]byte{10, 0, 2, 2}
	guestIP  = [4]byte{10, 0, 2, 15}
)

// newFramePeer binds the peer's socket in dir and returns it with the QEMU
// netdev argument that connects the guest NIC to it.
func newFramePeer(t *testing.T, dir string) (*framePeer, string) {
	t.Helper()
	local := filepath.Join(dir, "peer.sock")
	remote := filepath.Join(dir, "qemu.sock")
	os.Remove(local)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: local, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	p := &framePeer{t: t, conn: conn, qemu: &net.UnixAddr{Name: remote, Net: "unixgram"},
		mac: peerMAC, ip: peerIP, frames: make(chan []byte, 4096), done: make(chan struct{})}
	go p.readLoop()
	t.Cleanup(func() { conn.Close(); <-p.done })
	netdev := fmt.Sprintf("dgram,id=n0,local.type=unix,local.path=%s,remote.type=unix,remote.path=%s", remote, local)
	return p, netdev
}

func (p *framePeer) readLoop() {
	defer close(p.done)
	buf := make([]byte, 65536)
	for {
		n, err := p.conn.Read(buf)
		if err != nil {
			return
		}
		f := append([]byte(nil), buf[:n]...)
		if p.answerARP(f) {
			continue
		}
		select {
		case p.frames <- f:
		default: // the test is not reading: drop, as a wire would
		}
	}
}

func (p *framePeer) send(frame []byte) {
	p.t.Helper()
	if _, err := p.conn.WriteToUnix(frame, p.qemu); err != nil {
		p.t.Fatalf("peer send: %v", err)
	}
}

// answerARP replies to the guest's ARP requests for the peer's address.
func (p *framePeer) answerARP(f []byte) bool {
	if len(f) < 14+header.ARPSize || binary.BigEndian.Uint16(f[12:]) != uint16(ethernet.EtherTypeARP) {
		return false
	}
	a := header.ARP(f[14:])
	if a.Op() != header.ARPRequest || [4]byte(a.ProtocolAddressTarget()) != p.ip {
		return false
	}
	p.mu.Lock()
	p.arpAsked++
	p.mu.Unlock()
	reply := make([]byte, header.ARPSize)
	r := header.ARP(reply)
	r.SetIPv4OverEthernet()
	r.SetOp(header.ARPReply)
	copy(r.HardwareAddressSender(), p.mac)
	copy(r.ProtocolAddressSender(), p.ip[:])
	copy(r.HardwareAddressTarget(), a.HardwareAddressSender())
	copy(r.ProtocolAddressTarget(), a.ProtocolAddressSender())
	p.send(ethFrame(net.HardwareAddr(a.HardwareAddressSender()), p.mac, ethernet.EtherTypeARP, reply))
	return true
}

// expect returns the next frame match accepts, skipping others (the guest
// also sends IPv6 neighbour discovery and the like).
func (p *framePeer) expect(what string, timeout time.Duration, match func(f []byte) bool) []byte {
	p.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case f := <-p.frames:
			if match(f) {
				return f
			}
		case <-deadline:
			p.t.Fatalf("peer: no %s within %v", what, timeout)
			return nil
		}
	}
}

func ethFrame(dst, src net.HardwareAddr, et ethernet.EtherType, payload []byte) []byte {
	f := ethernet.Frame{Destination: dst, Source: src, EtherType: et, Payload: payload}
	b, err := f.MarshalBinary()
	if err != nil {
		panic(err)
	}
	return b
}

// ipv4Packet builds an IPv4 packet with a valid header checksum.
func ipv4Packet(proto uint8, src, dst [4]byte, id uint16, payload []byte) []byte {
	b := make([]byte, header.IPv4MinimumSize+len(payload))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)), ID: id, TTL: 64, Protocol: proto,
		SrcAddr: tcpip.AddrFrom4(src), DstAddr: tcpip.AddrFrom4(dst),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(b[header.IPv4MinimumSize:], payload)
	return b
}

func transportChecksum(proto tcpip.TransportProtocolNumber, src, dst [4]byte, seg []byte) uint16 {
	x := header.PseudoHeaderChecksum(proto, tcpip.AddrFrom4(src), tcpip.AddrFrom4(dst), uint16(len(seg)))
	return ^checksum.Checksum(seg, x)
}

func udpSegment(src, dst [4]byte, sport, dport uint16, payload []byte) []byte {
	b := make([]byte, header.UDPMinimumSize+len(payload))
	u := header.UDP(b)
	u.Encode(&header.UDPFields{SrcPort: sport, DstPort: dport, Length: uint16(len(b))})
	copy(b[header.UDPMinimumSize:], payload)
	u.SetChecksum(transportChecksum(header.UDPProtocolNumber, src, dst, b))
	return b
}

func tcpSegment(src, dst [4]byte, f header.TCPFields, opts, payload []byte) []byte {
	hl := header.TCPMinimumSize + len(opts)
	b := make([]byte, hl+len(payload))
	t := header.TCP(b)
	f.DataOffset = uint8(hl)
	t.Encode(&f)
	copy(b[header.TCPMinimumSize:], opts)
	copy(b[hl:], payload)
	t.SetChecksum(0)
	t.SetChecksum(transportChecksum(header.TCPProtocolNumber, src, dst, b))
	return b
}

func icmpEcho(typ header.ICMPv4Type, id, seq uint16, payload []byte) []byte {
	b := make([]byte, header.ICMPv4MinimumSize+len(payload))
	ic := header.ICMPv4(b)
	ic.SetType(typ)
	ic.SetIdent(id)
	ic.SetSequence(seq)
	copy(ic.Payload(), payload)
	ic.SetChecksum(^checksum.Checksum(b, 0))
	return b
}

// parsedIPv4 is a received IPv4 packet, decoded and checked.
type parsedIPv4 struct {
	EthDst, EthSrc string
	Src, Dst       [4]byte
	Proto          uint8
	TTLPositive    bool
	HeaderOK       bool // version, length, checksum
	Payload        []byte
}

func parseIPv4(f []byte) (parsedIPv4, error) {
	var p parsedIPv4
	var fr ethernet.Frame
	if err := fr.UnmarshalBinary(f); err != nil {
		return p, err
	}
	if fr.EtherType != ethernet.EtherTypeIPv4 {
		return p, errors.New("not IPv4")
	}
	ip := header.IPv4(fr.Payload)
	if !ip.IsValid(len(fr.Payload)) {
		return p, errors.New("invalid IPv4 header")
	}
	p.EthDst, p.EthSrc = fr.Destination.String(), fr.Source.String()
	p.Src, p.Dst = ip.SourceAddress().As4(), ip.DestinationAddress().As4()
	p.Proto = ip.Protocol()
	p.TTLPositive = ip.TTL() > 0
	p.HeaderOK = ip.IsChecksumValid()
	p.Payload = ip.Payload()
	return p, nil
}

func checksumOf(b []byte) uint16 { return checksum.Checksum(b, 0) }
