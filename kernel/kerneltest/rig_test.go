package kerneltest_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/nke-harness/nke/kernel/kerneltest"
	"github.com/nke-harness/nke/kernel/netstack"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/frametest"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/virtio/virtqueue"
)

// The guest answers ARP and ping through the whole path, on either ring
// layout, and the teardown finds every buffer back.
func TestARPAndPing(t *testing.T) {
	for _, c := range []struct {
		name string
		opts []kerneltest.Option
		want virtqueue.Layout
	}{
		{"split", nil, virtqueue.Split},
		{"packed", []kerneltest.Option{kerneltest.Packed(), kerneltest.QueueSize(64)}, virtqueue.Packed},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := kerneltest.New(t, append(c.opts, kerneltest.WithStack())...)
			if r.Drv.Layout() != c.want {
				t.Fatalf("driver on %v rings, want %v", r.Drv.Layout(), c.want)
			}
			r.Send(frametest.NewARPRequest(r.Peer, r.Guest.IP))
			got := r.Expect("ARP reply", 5*time.Second, func(f frametest.Frame) bool { return f.ARP != nil })
			if d := frametest.Diff(frametest.NewARPReply(r.Guest, r.Peer), got); d != "" {
				t.Errorf("ARP reply (-want +got):\n%s", d)
			}
			payload := []byte("kerneltest ping")
			r.Send(frametest.NewEchoRequest(r.Peer, r.Guest, 9, 1, payload))
			reply := r.Expect("echo reply", 5*time.Second, func(f frametest.Frame) bool { return f.ICMP != nil })
			want := frametest.NewEchoReply(r.Guest, r.Peer, 9, 1, payload)
			want.IPv4.ID, want.IPv4.TTL = reply.IPv4.ID, reply.IPv4.TTL
			if d := frametest.Diff(want, reply); d != "" {
				t.Errorf("echo reply (-want +got):\n%s", d)
			}
		})
	}
}

// countProto is a protocol calling itself for each frame.
type countProto func(m *mbuf.Mbuf, frame []byte)

func (p countProto) ProtoInput(_ nke.Interface, m *mbuf.Mbuf, frame []byte) { p(m, frame) }
func (p countProto) ProtoPreOutput(nke.Interface, **mbuf.Mbuf, []byte) (uint16, [6]byte, error) {
	return 0x88b5, [6]byte{}, nil
}

// Without a stack the rig is the interface and driver: what the test
// injects, a protocol handler sees; what it outputs, Recv returns.
func TestInterfaceOnly(t *testing.T) {
	r := kerneltest.New(t, kerneltest.MTU(9000), kerneltest.QueueSize(128))
	if r.Stack != nil || r.Ifp.MTU() != 9000 {
		t.Fatalf("stack %v, MTU %d", r.Stack, r.Ifp.MTU())
	}
	var seen []int
	if _, err := r.Ifp.AttachProto(nke.ProtocolSpec{Name: "echo", Demux: []nke.DemuxDesc{nke.EtherType(0x88b5)},
		Protocol: countProto(func(m *mbuf.Mbuf, frame []byte) { seen = append(seen, len(frame)+m.PktLen()); m.Free() })}); err != nil {
		t.Fatal(err)
	}
	big := frametest.NewEthernet(r.Guest.MAC, r.Peer.MAC, 0x88b5, bytes.Repeat([]byte{7}, 8000)).Bytes()
	if err := r.Inject(big); err != nil {
		t.Fatal(err)
	}
	r.PollIdle()
	if len(seen) != 1 || seen[0] != len(big) {
		t.Fatalf("handler saw %v, want one frame of %d", seen, len(big))
	}
	m := r.Ifp.Pool().AllocPacket(len(big))
	m.CopyBack(0, big)
	if err := r.Ifp.Output(m); err != nil {
		t.Fatal(err)
	}
	got, ok := r.Recv(time.Second)
	if !ok || !bytes.Equal(got, big) {
		t.Fatalf("transmitted %d bytes (%v), want the %d-byte frame", len(got), ok, len(big))
	}
	if _, ok := r.Recv(10 * time.Millisecond); ok {
		t.Fatal("a second frame")
	}
}

// CheckPools names the pool a buffer is missing from.
func TestCheckPoolsNamesThePool(t *testing.T) {
	r := kerneltest.New(t)
	r.Drv.Recover()
	if err := kerneltest.CheckPools(r.Drv); err != nil {
		t.Fatalf("fresh rig: %v", err)
	}
	m := r.Drv.Pool().Get()
	err := kerneltest.CheckPools(r.Drv)
	if err == nil || !strings.Contains(err.Error(), r.Drv.Pool().Name()) || !strings.Contains(err.Error(), "1 leaked") {
		t.Fatalf("CheckPools with a buffer held: %v", err)
	}
	m.Free()
}

// A peer stack talks TCP to a listener on the guest's stack.
func TestPeerTCP(t *testing.T) {
	r := kerneltest.New(t, kerneltest.WithStack())
	p := r.NewPeer()
	ln, err := listenTCP(r, 7)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		io.Copy(c, c)
		c.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := p.Dial(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	msg := bytes.Repeat([]byte("echo "), 1000)
	go c.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo: %v", err)
	}
}

func listenTCP(r *kerneltest.Rig, port uint16) (net.Listener, error) {
	return gonet.ListenTCP(r.Stack.Stack, tcpip.FullAddress{NIC: netstack.NICID, Port: port}, ipv4.ProtocolNumber)
}
