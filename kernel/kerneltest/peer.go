package kerneltest

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/nke-harness/nke/kernel/netstack"
	"github.com/nke-harness/nke/virtio/devmodel"
)

// PeerStack is a second gVisor stack on the far side of the device
// model, at the rig's Peer address: the whole guest path (driver,
// interface, stack, services) is exercised in one process.
type PeerStack struct {
	*stack.Stack
	r *Rig
}

// NewPeer puts a gVisor stack on the wire (IPv4 and ARP, IPv6 on its
// link-local address without duplicate address detection, TCP and UDP) and
// starts the rig's poll loop if it is not running. From then on the frames
// the guest sends go to the peer, not to Recv. It is torn down at
// t.Cleanup, before the rig.
func (r *Rig) NewPeer() *PeerStack {
	r.T.Helper()
	ch := channel.New(1024, 1500, tcpip.LinkAddress(r.Peer.MAC))
	s := stack.New(stack.Options{
		NetworkProtocols: []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol,
			ipv6.NewProtocolWithOptions(ipv6.Options{DADConfigs: stack.DADConfigurations{DupAddrDetectTransmits: 0}})},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	if err := s.CreateNIC(1, ethernet.New(ch)); err != nil {
		r.T.Fatalf("kerneltest: peer NIC: %v", err)
	}
	ip := tcpip.AddrFrom4(r.Peer.IP.As4())
	s.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: ip, PrefixLen: 24}}, stack.AddressProperties{})
	s.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv6.ProtocolNumber,
		AddressWithPrefix: header.LinkLocalAddr(tcpip.LinkAddress(r.Peer.MAC)).WithPrefix()}, stack.AddressProperties{})
	s.SetRouteTable([]tcpip.Route{{Destination: tcpip.AddressWithPrefix{Address: ip, PrefixLen: 24}.Subnet(), NIC: 1},
		{Destination: header.IPv6EmptySubnet, NIC: 1}})

	ctx, cancel := context.WithCancel(context.Background())
	toPeer := make(chan []byte, 1024)
	sink := func(f []byte) {
		select {
		case toPeer <- f:
		default:
			r.overflow.Add(1) // a full wire drops
		}
	}
	r.sink.Store(&sink)
	done := make(chan struct{}, 2)
	go func() { // peer -> guest
		defer func() { done <- struct{}{} }()
		for {
			pkt := ch.ReadContext(ctx)
			if pkt == nil {
				return
			}
			var b bytes.Buffer
			for _, s := range pkt.AsSlices() {
				b.Write(s)
			}
			pkt.DecRef()
			for r.Dev.Deliver(b.Bytes()) == devmodel.ErrBacklog && ctx.Err() == nil {
				time.Sleep(100 * time.Microsecond)
			}
		}
	}()
	go func() { // guest -> peer
		defer func() { done <- struct{}{} }()
		for {
			select {
			case f := <-toPeer:
				pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(f)})
				ch.InjectInbound(0, pkt)
				pkt.DecRef()
			case <-ctx.Done():
				return
			}
		}
	}()
	if !r.started.Load() {
		r.Start()
	}
	r.T.Cleanup(func() {
		r.sink.Store(nil)
		cancel()
		<-done
		<-done
		s.Close()
		s.Wait()
	})
	return &PeerStack{Stack: s, r: r}
}

// guest is the guest's address at port.
func (p *PeerStack) guest(port uint16) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(p.r.Guest.IP.As4()), Port: port}
}

// Dial opens a TCP connection to the guest's port.
func (p *PeerStack) Dial(ctx context.Context, port uint16) (net.Conn, error) {
	return gonet.DialContextTCP(ctx, p.Stack, p.guest(port), ipv4.ProtocolNumber)
}

// DialUDP opens a UDP socket connected to the guest's port.
func (p *PeerStack) DialUDP(port uint16) (*gonet.UDPConn, error) {
	a := p.guest(port)
	c, err := gonet.DialUDP(p.Stack, nil, &a, ipv4.ProtocolNumber)
	if err != nil {
		return nil, errors.New("kerneltest: peer UDP: " + err.Error())
	}
	return c, nil
}

// GuestIP6 is the guest's link-local IPv6 address (from its MAC).
func (p *PeerStack) GuestIP6() netip.Addr {
	return netip.AddrFrom16(header.LinkLocalAddr(tcpip.LinkAddress(p.r.Guest.MAC)).As16())
}

// PeerIP6 is the peer's link-local IPv6 address.
func (p *PeerStack) PeerIP6() netip.Addr {
	return netip.AddrFrom16(header.LinkLocalAddr(tcpip.LinkAddress(p.r.Peer.MAC)).As16())
}

func (p *PeerStack) guest6(port uint16) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom16(p.GuestIP6().As16()), Port: port}
}

// Dial6 opens a TCP connection to the guest's port over IPv6. The
// guest's link-local address is usable once its duplicate address
// detection is over: see WaitIPv6.
func (p *PeerStack) Dial6(ctx context.Context, port uint16) (net.Conn, error) {
	return gonet.DialContextTCP(ctx, p.Stack, p.guest6(port), ipv6.ProtocolNumber)
}

// DialUDP6 opens a UDP socket over IPv6 connected to the guest's port.
func (p *PeerStack) DialUDP6(port uint16) (*gonet.UDPConn, error) {
	a := p.guest6(port)
	c, err := gonet.DialUDP(p.Stack, nil, &a, ipv6.ProtocolNumber)
	if err != nil {
		return nil, errors.New("kerneltest: peer UDP6: " + err.Error())
	}
	return c, nil
}

// WaitIPv6 waits until the guest's link-local address has passed
// duplicate address detection (about a second after the stack is
// built), failing the test after timeout.
func (r *Rig) WaitIPv6(timeout time.Duration) {
	r.T.Helper()
	want := header.LinkLocalAddr(tcpip.LinkAddress(r.Guest.MAC))
	for deadline := time.Now().Add(timeout); ; {
		if a, err := r.Stack.GetMainNICAddress(netstack.NICID, ipv6.ProtocolNumber); err == nil && a.Address == want {
			return
		}
		if time.Now().After(deadline) {
			r.T.Fatalf("kerneltest: the guest's IPv6 address %v is not assigned after %v", want, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
