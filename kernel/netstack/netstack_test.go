package netstack_test

import (
	"bytes"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/nke-harness/nke/kernel/kerneltest"
	"github.com/nke-harness/nke/nke/frametest"
)

// newStack is the stack over a real driver and interface (the rig), whose
// loop the test drives: frames come in through the device model's rx
// ring, replies go out through the driver. The peer's MAC is a static
// neighbour, so replies need no ARP.
func newStack(tb testing.TB, opts ...kerneltest.Option) *kerneltest.Rig {
	return kerneltest.New(tb, append(opts, kerneltest.StaticPeer())...)
}

// ping is an ICMP echo request from the peer to the guest.
func ping(r *kerneltest.Rig, seq uint16, payload []byte) frametest.Frame {
	return frametest.NewEchoRequest(r.Peer, r.Guest, 7, seq, payload)
}

func linkEndpoint(r *kerneltest.Rig) stack.LinkEndpoint {
	return r.Stack.GetLinkEndpointByName(r.Ifp.Name())
}

func TestPingThroughEndpoint(t *testing.T) {
	r := newStack(t)
	payload := bytes.Repeat([]byte{0x5a}, 32)
	r.Send(ping(r, 1, payload))
	reply := r.Expect("echo reply", 5*time.Second, func(f frametest.Frame) bool { return f.ICMP != nil })
	if got := r.Stack.LinkStats().RxDelivered; got != 1 {
		t.Fatalf("delivered %d", got)
	}
	if reply.ICMP.Type != frametest.ICMPv4EchoReply || reply.ICMP.Seq != 1 || !bytes.Equal(reply.Payload, payload) ||
		reply.IPv4.Dst != r.Peer.IP || reply.Dst.String() != r.Peer.MAC.String() {
		t.Fatalf("echo reply %+v", reply)
	}
	// (A frame too short for an Ethernet header never gets past the
	// interface; the endpoint's own check is endpoint_test.go's.)
}

// BenchmarkPing is the stack's share of the data path plus the driver's:
// an ICMP echo request written into the rx ring by the device model,
// received and demultiplexed, copied into gVisor's buffers and answered,
// the reply copied into a packet buffer and sent through the driver to
// the device model. gVisor allocates inside its stack (packet buffers,
// views, from pools); allocs/op shows how much. The driver and interface
// layer add nothing (see their benchmarks).
func BenchmarkPing(b *testing.B) {
	r := newStack(b, kerneltest.TxBuffer(1))
	frames := make([][]byte, 256)
	for i := range frames {
		frames[i] = ping(r, uint16(i), bytes.Repeat([]byte{0x5a}, 32)).Bytes()
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if err := r.Inject(frames[i%len(frames)]); err != nil {
			b.Fatal(err)
		}
		r.Poll()
		r.Poll()
		r.Sent() // the reply, dropped
	}
}

// With a device MTU of 9000 the stack uses it: a 9000-byte echo request
// gets a 9000-byte reply in one frame, not fragments.
func TestJumboFramesUnfragmented(t *testing.T) {
	r := newStack(t, kerneltest.MTU(9000))
	if mtu := linkEndpoint(r).MTU(); mtu != 9000 {
		t.Fatalf("endpoint MTU %d, want the device's 9000", mtu)
	}
	r.Send(ping(r, 1, make([]byte, 9000-20-8)))
	var sent []int
	for _, f := range r.Sent() {
		sent = append(sent, len(f))
	}
	if len(sent) != 1 || sent[0] != 9014 {
		t.Fatalf("frames sent %v, want one echo reply of 9014 bytes", sent)
	}
}

// After Shutdown nothing the stack does reaches the interface's buffers
// (which live in DMA memory that is unmapped next).
func TestShutdownDetaches(t *testing.T) {
	r := newStack(t)
	pool := r.Ifp.Pool()
	free := pool.Avail()
	ep := linkEndpoint(r)
	r.ShutdownStack()
	r.Send(ping(r, 1, nil))
	r.PollIdle()
	if got := r.Stack.LinkStats().RxDelivered; got != 0 {
		t.Fatalf("a frame was delivered to a shut-down stack")
	}
	var pkts stack.PacketBufferList
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(make([]byte, 60))})
	pkts.PushBack(pkt)
	if n, err := ep.WritePackets(pkts); n != 0 || err == nil {
		t.Fatalf("WritePackets after Shutdown = %d, %v", n, err)
	}
	pkt.DecRef()
	if pool.Avail() != free || r.Ifp.Stats().TxPackets != 0 || len(r.Sent()) != 0 {
		t.Fatalf("after Shutdown: %d of %d buffers free, %d packets output", pool.Avail(), free, r.Ifp.Stats().TxPackets)
	}
}
