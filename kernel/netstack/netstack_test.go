package netstack

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/nke-harness/nke/kernel/ifnet"
	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/virtio/devmodel"
	"github.com/nke-harness/nke/virtio/virtionet"
)

var (
	guestMAC = []byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	peerMAC  = []byte{0x02, 0, 0, 0, 0, 2}
)

// newStack is the stack over a real driver and interface whose loop the
// test drives with PollOnce: frames go to the endpoint directly, replies to
// a device model that counts them.
func newStack(tb testing.TB) (*Stack, *ifnet.Interface, *devmodel.Net) {
	return newStackOn(tb, devmodel.Options{Tx: func([]byte) {}})
}

func newStackOn(tb testing.TB, opts devmodel.Options) (*Stack, *ifnet.Interface, *devmodel.Net) {
	tb.Helper()
	heap := dma.NewHeap(32 << 20)
	dev := devmodel.New(heap, opts)
	drv, err := virtionet.Open(dev, heap, virtionet.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	ifp, err := ifnet.New(drv, ifnet.Config{})
	if err != nil {
		tb.Fatal(err)
	}
	s, err := New(ifp, Config{Addr: netip.MustParsePrefix("10.0.2.15/24"), Gateway: netip.MustParseAddr("10.0.2.2")})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Close)
	// The peer's MAC is known, so replies need no ARP.
	s.AddStaticNeighbor(NICID, header.IPv4ProtocolNumber, tcpip.AddrFrom4([4]byte{10, 0, 2, 2}), tcpip.LinkAddress(peerMAC))
	return s, ifp, dev
}

// pingFrame is an ICMP echo request from 10.0.2.2 to the guest.
func pingFrame(m *mbuf.Mbuf, seq uint16) {
	b, _ := m.Append(14 + 20 + 8 + 32)
	echoRequest(b, seq)
}

// echoRequest writes an ICMP echo request filling b.
func echoRequest(b []byte, seq uint16) {
	copy(b, guestMAC)
	copy(b[6:], peerMAC)
	binary.BigEndian.PutUint16(b[12:], uint16(header.IPv4ProtocolNumber))
	ip := header.IPv4(b[14:])
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b) - 14), TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber),
		SrcAddr: tcpip.AddrFrom4([4]byte{10, 0, 2, 2}), DstAddr: tcpip.AddrFrom4([4]byte{10, 0, 2, 15})})
	ip.SetChecksum(^ip.CalculateChecksum())
	ic := header.ICMPv4(b[34:])
	ic.SetType(header.ICMPv4Echo)
	ic.SetIdent(7)
	ic.SetSequence(seq)
	ic.SetChecksum(0)
	ic.SetChecksum(^checksum.Checksum(ic, 0))
}

// deliverFrame hands a whole frame to the stack as ifnet's demux does:
// data at the network header, the Ethernet header beside it.
func deliverFrame(s *Stack, m *mbuf.Mbuf) {
	var frame [header.EthernetMinimumSize]byte
	copy(frame[:], m.Bytes())
	m.Adj(header.EthernetMinimumSize)
	s.ep.deliver(m, frame[:])
}

func TestPingThroughEndpoint(t *testing.T) {
	s, ifp, dev := newStack(t)
	m := ifp.Pool().Get()
	pingFrame(m, 1)
	deliverFrame(s, m)
	if got := s.LinkStats().RxDelivered; got != 1 {
		t.Fatalf("delivered %d", got)
	}
	ifp.PollOnce()
	if dev.Stats().TxFrames != 1 {
		t.Fatalf("no echo reply sent: %+v", ifp.Stats())
	}
	// A link header too short for Ethernet is refused, not delivered.
	short := ifp.Pool().Get()
	short.Append(10)
	s.ep.deliver(short, make([]byte, 10))
	if s.LinkStats().RxMalformed != 1 {
		t.Fatal("short frame not counted as malformed")
	}
}

// BenchmarkPing is the stack's share of the data path plus transmit: an
// ICMP echo request copied into gVisor's buffers and answered, the reply
// copied into a packet buffer and sent through the driver to the device
// model. gVisor allocates inside its stack (packet buffers, views, from
// pools); allocs/op shows how much. The driver and interface layer add
// nothing (see their benchmarks).
func BenchmarkPing(b *testing.B) {
	s, ifp, _ := newStack(b)
	pool := ifp.Pool()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		m := pool.Get()
		pingFrame(m, uint16(i))
		deliverFrame(s, m)
		ifp.PollOnce()
	}
}

// With a device MTU of 9000 the stack uses it: a 9000-byte echo request
// gets a 9000-byte reply in one frame, not fragments.
func TestJumboFramesUnfragmented(t *testing.T) {
	var sent []int
	s, ifp, _ := newStackOn(t, devmodel.Options{Features: devmodel.QEMUFeatures | 1<<virtionet.FMTU, MTU: 9000,
		Tx: func(f []byte) { sent = append(sent, len(f)) }})
	if s.ep.MTU() != 9000 {
		t.Fatalf("endpoint MTU %d, want the device's 9000", s.ep.MTU())
	}
	req := make([]byte, 9014)
	echoRequest(req, 1)
	m := ifp.Pool().AllocPacket(len(req))
	m.CopyBack(0, req)
	deliverFrame(s, m)
	ifp.PollOnce()
	if len(sent) != 1 || sent[0] != 9014 {
		t.Fatalf("frames sent %v, want one echo reply of 9014 bytes", sent)
	}
}

// After Shutdown nothing the stack does reaches the interface's buffers
// (which live in DMA memory that is unmapped next).
func TestShutdownDetaches(t *testing.T) {
	s, ifp, _ := newStack(t)
	pool := ifp.Pool()
	free := pool.Avail()
	s.Shutdown()
	m := pool.Get()
	pingFrame(m, 1)
	deliverFrame(s, m)
	if got := s.LinkStats().RxDelivered; got != 0 {
		t.Fatalf("a frame was delivered to a shut-down stack")
	}
	var pkts stack.PacketBufferList
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(make([]byte, 60))})
	pkts.PushBack(pkt)
	if n, err := s.ep.WritePackets(pkts); n != 0 || err == nil {
		t.Fatalf("WritePackets after Shutdown = %d, %v", n, err)
	}
	pkt.DecRef()
	if pool.Avail() != free || ifp.Stats().TxPackets != 0 {
		t.Fatalf("after Shutdown: %d of %d buffers free, %d packets output", pool.Avail(), free, ifp.Stats().TxPackets)
	}
}
