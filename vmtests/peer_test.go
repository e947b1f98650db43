package vmtests

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/nke-harness/nke/nke/frametest"
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
func (p *framePeer) answerARP(b []byte) bool {
	f, err := frametest.Parse(b)
	if err != nil || f.ARP == nil || f.ARP.Op != header.ARPRequest || f.ARP.TargetIP != netip.AddrFrom4(p.ip) {
		return false
	}
	p.mu.Lock()
	p.arpAsked++
	p.mu.Unlock()
	me := frametest.Host{MAC: p.mac, IP: netip.AddrFrom4(p.ip)}
	p.send(frametest.NewARPReply(me, frametest.Host{MAC: f.ARP.SenderMAC, IP: f.ARP.SenderIP}).Bytes())
	return true
}

// expect returns the next frame match accepts, skipping others (the guest
// also sends IPv6 neighbour discovery and the like) and frames that do not
// parse. A frame with a bad checksum is matched too: the error says so.
func (p *framePeer) expect(what string, timeout time.Duration, match func(f frametest.Frame) bool) (frametest.Frame, error) {
	p.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case b := <-p.frames:
			f, err := frametest.Parse(b)
			if (err == nil || errors.Is(err, frametest.ErrChecksum)) && match(f) {
				return f, err
			}
		case <-deadline:
			p.t.Fatalf("peer: no %s within %v", what, timeout)
			return frametest.Frame{}, nil
		}
	}
}
