// Package netstack attaches an ifnet.Interface to gVisor's TCP/IP stack:
// a link endpoint that copies frames between packet buffers (DMA memory)
// and the stack's own buffers, and the addressing and routes of the guest.
package netstack

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/kernel/ifnet"
	"github.com/nke-harness/nke/kernel/kevent"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Config is the guest's addressing.
type Config struct {
	// Addr is the interface address and subnet, e.g. 10.0.2.15/24.
	Addr netip.Prefix
	// Gateway is the default router; invalid means no default route.
	Gateway netip.Addr
	// Logf, if set, reports IP filters that panicked.
	Logf func(format string, args ...any)
	// Events, if set, receives the IP filters' attaches, detaches and
	// faults and the injections stopped by the hop limit.
	Events *kevent.Bus
}

// NICID is the stack's id for the one interface.
const NICID tcpip.NICID = 1

// Stack is gVisor's stack over one interface.
type Stack struct {
	*stack.Stack
	ep  *endpoint
	cfg Config
}

// New builds a stack with IPv4, IPv6, ARP, TCP, UDP and ICMP on ifp, and
// attaches IPv4, ARP and IPv6 to ifp as protocols (Apple's inet and inet6
// plumbing), named "inet", "arp" and "inet6".
func New(ifp *ifnet.Interface, cfg Config) (*Stack, error) {
	if !cfg.Addr.IsValid() || !cfg.Addr.Addr().Is4() {
		return nil, fmt.Errorf("netstack: address %v is not an IPv4 prefix", cfg.Addr)
	}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
		HandleLocal:        true,
	})
	ep := &endpoint{ifp: ifp, pool: ifp.Pool(), stk: s, events: cfg.Events}
	logf := cfg.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	ep.initIPPath(func(f hook.Fault) { logf("%s\n%s", f, f.Stack) })
	ep.ipf.v4.SetEvents(cfg.Events)
	ep.ipf.v6.SetEvents(cfg.Events)
	mac := ifp.MAC()
	if err := s.CreateNICWithOptions(NICID, ep, stack.NICOptions{Name: ifp.Name()}); err != nil {
		return nil, fmt.Errorf("netstack: create NIC: %s", err)
	}
	addr := tcpip.AddrFrom4(cfg.Addr.Addr().As4())
	if err := s.AddProtocolAddress(NICID, tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: addr, PrefixLen: cfg.Addr.Bits()},
	}, stack.AddressProperties{}); err != nil {
		return nil, fmt.Errorf("netstack: add address %v: %s", cfg.Addr, err)
	}
	if err := s.AddProtocolAddress(NICID, tcpip.ProtocolAddress{
		Protocol:          ipv6.ProtocolNumber,
		AddressWithPrefix: header.LinkLocalAddr(tcpip.LinkAddress(mac[:])).WithPrefix(),
	}, stack.AddressProperties{}); err != nil {
		return nil, fmt.Errorf("netstack: add IPv6 link-local address: %s", err)
	}
	subnet, err := tcpip.NewSubnet(tcpip.AddrFrom4(cfg.Addr.Masked().Addr().As4()),
		tcpip.MaskFromBytes(netipMask(cfg.Addr.Bits())))
	if err != nil {
		return nil, fmt.Errorf("netstack: subnet %v: %v", cfg.Addr, err)
	}
	routes := []tcpip.Route{{Destination: subnet, NIC: NICID}, {Destination: header.IPv6EmptySubnet, NIC: NICID}}
	if cfg.Gateway.IsValid() {
		routes = append(routes, tcpip.Route{Destination: header.IPv4EmptySubnet, Gateway: tcpip.AddrFrom4(cfg.Gateway.As4()), NIC: NICID})
	}
	s.SetRouteTable(routes)
	// Generous TCP buffers: the link is fast and the RTT under TCG is not.
	sack := tcpip.TCPSACKEnabled(true)
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 256 << 10, Max: 4 << 20}
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv)
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 256 << 10, Max: 4 << 20}
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &snd)

	if err := ep.attach(); err != nil {
		s.Destroy()
		return nil, err
	}
	return &Stack{Stack: s, ep: ep, cfg: cfg}, nil
}

func netipMask(bits int) []byte {
	m := make([]byte, 4)
	for i := 0; i < bits; i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

// Shutdown detaches the stack from the interface and stops it: from then
// on nothing the stack does (a late timer, a retransmission) reaches the
// interface or its DMA memory, and received frames are dropped. Call it
// before stopping the interface and unmapping DMA memory.
func (s *Stack) Shutdown() {
	s.ep.detach()
	// The IP filters get their Detached calls: nothing runs them now.
	s.ep.ipf.v4.DetachAll()
	s.ep.ipf.v6.DetachAll()
	s.Stack.Destroy()
	s.ep.rxReas.flush()
	s.ep.txReas.flush()
}

// Config returns the addressing the stack was built with.
func (s *Stack) Config() Config { return s.cfg }

// LinkStats counts what the endpoint copied and dropped.
type LinkStats struct {
	RxDelivered uint64 `json:"rx_delivered"`
	RxMalformed uint64 `json:"rx_malformed"`
	TxNoBufs    uint64 `json:"tx_no_bufs"`
	TxTooBig    uint64 `json:"tx_too_big"`
}

// LinkStats returns the endpoint's counters.
func (s *Stack) LinkStats() LinkStats {
	e := s.ep
	return LinkStats{e.rxDelivered.Load(), e.rxMalformed.Load(), e.txNoBufs.Load(), e.txTooBig.Load()}
}

// TCPStats are the stack's TCP counters that explain a connection problem.
type TCPStats struct {
	ActiveOpens        uint64 `json:"active_opens"`
	PassiveOpens       uint64 `json:"passive_opens"`
	CurrentEstablished uint64 `json:"current_established"`
	EstablishedResets  uint64 `json:"established_resets"`
	FailedAttempts     uint64 `json:"failed_connection_attempts"`
	ListenSynDrops     uint64 `json:"listen_overflow_syn_drop"`
	ResetsSent         uint64 `json:"resets_sent"`
	ResetsReceived     uint64 `json:"resets_received"`
	Retransmits        uint64 `json:"retransmits"`
	Timeouts           uint64 `json:"timeouts"`
	ChecksumErrors     uint64 `json:"checksum_errors"`
	InvalidSegments    uint64 `json:"invalid_segments_received"`
}

// TCPStats returns the stack's TCP counters.
func (s *Stack) TCPStats() TCPStats {
	t := s.Stats().TCP
	return TCPStats{
		ActiveOpens: t.ActiveConnectionOpenings.Value(), PassiveOpens: t.PassiveConnectionOpenings.Value(),
		CurrentEstablished: t.CurrentEstablished.Value(), EstablishedResets: t.EstablishedResets.Value(),
		FailedAttempts: t.FailedConnectionAttempts.Value(), ListenSynDrops: t.ListenOverflowSynDrop.Value(),
		ResetsSent: t.ResetsSent.Value(), ResetsReceived: t.ResetsReceived.Value(),
		Retransmits: t.Retransmits.Value(), Timeouts: t.Timeouts.Value(),
		ChecksumErrors: t.ChecksumErrors.Value(), InvalidSegments: t.InvalidSegmentsReceived.Value(),
	}
}

// endpoint is the stack.LinkEndpoint over an ifnet.Interface. Its MAC
// and MTU are the interface's, which follow the device across resets.
type endpoint struct {
	ifp    *ifnet.Interface
	pool   *mbuf.Pool
	events *kevent.Bus   // nil: none
	mtu    atomic.Uint32 // set by the stack (SetMTU); 0: the interface's
	// linkAddr caches LinkAddress for the interface's current MAC.
	linkAddr atomic.Pointer[linkAddr]

	mu sync.RWMutex
	// +checklocks:mu
	dispatcher stack.NetworkDispatcher
	// +checklocks:mu
	onClose func()
	// +checklocks:mu
	detached bool // Shutdown: no more packets either way

	// inet, arp and inet6 are the stack's protocol attachments, set
	// before any packet flows and never changed.
	inet, arp, inet6 nke.ProtocolAttachment

	// live is the dispatcher while the endpoint is attached and not
	// shut down, for the receive and inject paths, which take no lock.
	live atomic.Pointer[dispatcherRef]

	rxDelivered, rxMalformed, txNoBufs, txTooBig atomic.Uint64

	// stk is the stack, for inject's routes.
	stk *stack.Stack
	ipPath
}

var _ stack.LinkEndpoint = (*endpoint)(nil)

type dispatcherRef struct{ d stack.NetworkDispatcher }

// attach plumbs the stack into the interface: one protocol per network
// protocol, each claiming its EtherType. All or none stay attached.
func (e *endpoint) attach() error {
	var done []nke.ProtocolAttachment
	for _, p := range []struct {
		name string
		et   uint16
		dst  *nke.ProtocolAttachment
	}{{"inet", ifnet.EtherTypeIPv4, &e.inet}, {"arp", ifnet.EtherTypeARP, &e.arp}, {"inet6", ifnet.EtherTypeIPv6, &e.inet6}} {
		a, err := e.ifp.AttachProto(nke.ProtocolSpec{Name: p.name, Demux: []nke.DemuxDesc{nke.EtherType(p.et)},
			Protocol: &proto{ep: e, etherType: p.et}})
		if err != nil {
			for _, a := range done {
				a.Detach()
			}
			return fmt.Errorf("netstack: %w", err)
		}
		done = append(done, a)
		*p.dst = a
	}
	return nil
}

// proto is one of the stack's protocols on the interface.
type proto struct {
	ep        *endpoint
	etherType uint16
}

var (
	_ nke.ProtocolInputBurst       = (*proto)(nil)
	_ nke.ProtocolPreOutput        = (*proto)(nil)
	_ nke.ProtocolResolveMulticast = (*proto)(nil)
	_ nke.ProtocolSendARP          = (*proto)(nil)
)

// ProtoInputBurst hands a run of received packets to the stack: IPv4 and
// IPv6 through reassembly and the IP input filters (ipInput), ARP
// directly.
func (p *proto) ProtoInputBurst(_ nke.Interface, pkts []*mbuf.Mbuf, frames [][]byte) {
	switch p.etherType {
	case ifnet.EtherTypeIPv4:
		p.ep.ipInput(false, pkts, frames)
		return
	case ifnet.EtherTypeIPv6:
		p.ep.ipInput(true, pkts, frames)
		return
	}
	for i, m := range pkts {
		p.ep.deliver(m, frames[i])
	}
}

// ProtoPreOutput: gVisor resolves neighbours itself (ARP, NDP), so dest
// is already the next hop's link address; the frame type is the
// protocol's.
func (p *proto) ProtoPreOutput(_ nke.Interface, _ **mbuf.Mbuf, dest []byte) (uint16, [6]byte, error) {
	var mac [6]byte
	if len(dest) != len(mac) {
		return 0, mac, fmt.Errorf("netstack: %d-byte link destination, want 6", len(dest))
	}
	copy(mac[:], dest)
	return p.etherType, mac, nil
}

// ProtoResolveMulticast maps an IPv4 group to 01:00:5e plus its low 23
// bits (RFC 1112) and an IPv6 one to 33:33 plus its low 32 (RFC 2464).
func (p *proto) ProtoResolveMulticast(_ nke.Interface, addr []byte) ([6]byte, error) {
	var mac [6]byte
	switch {
	case p.etherType == ifnet.EtherTypeIPv4 && len(addr) == 4 && addr[0]&0xf0 == 0xe0:
		mac = [6]byte{0x01, 0x00, 0x5e, addr[1] & 0x7f, addr[2], addr[3]}
	case p.etherType == ifnet.EtherTypeIPv6 && len(addr) == 16 && addr[0] == 0xff:
		mac = [6]byte{0x33, 0x33, addr[12], addr[13], addr[14], addr[15]}
	default:
		return mac, fmt.Errorf("netstack: %x is not a multicast address of %#04x", addr, p.etherType)
	}
	return mac, nil
}

// ProtoSendARP builds an Ethernet ARP packet for IPv4 and sends it
// through the arp protocol (a zero targetHW in a request broadcasts).
func (p *proto) ProtoSendARP(_ nke.Interface, op uint16, senderHW [6]byte, senderIP []byte, targetHW [6]byte, targetIP []byte) error {
	e := p.ep
	if p.etherType != ifnet.EtherTypeIPv4 || len(senderIP) != 4 || len(targetIP) != 4 || (op != 1 && op != 2) {
		return fmt.Errorf("netstack: send ARP op %d from %x to %x: want a request or reply between IPv4 addresses", op, senderIP, targetIP)
	}
	m := e.pool.AllocPacket(header.ARPSize)
	if m == nil {
		return fmt.Errorf("netstack: send ARP: %w", ifnet.ErrNoBufs)
	}
	h := header.ARP(m.Bytes())
	h.SetIPv4OverEthernet()
	h.SetOp(header.ARPOp(op))
	copy(h.HardwareAddressSender(), senderHW[:])
	copy(h.ProtocolAddressSender(), senderIP)
	copy(h.HardwareAddressTarget(), targetHW[:])
	copy(h.ProtocolAddressTarget(), targetIP)
	dst := targetHW
	if op == 1 && dst == ([6]byte{}) {
		dst = [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	}
	return e.arp.Output(m, dst[:])
}

// deliver copies a received packet (data at the network header, frame
// its Ethernet header) into the stack's pooled buffers and frees the
// packet buffer, so DMA memory goes back to the rx ring at once.
func (e *endpoint) deliver(m *mbuf.Mbuf, frame []byte) {
	// No lock here: deliver also runs inside WritePackets (an IP output
	// filter injecting input), which holds the read lock, and a second
	// RLock would deadlock with Shutdown waiting for the write lock.
	dr := e.live.Load()
	if dr == nil {
		m.Free()
		return
	}
	d := dr.d
	if len(frame) != header.EthernetMinimumSize {
		m.Free()
		e.rxMalformed.Add(1)
		return
	}
	var buf buffer.Buffer
	buf.Append(buffer.NewViewWithData(frame))
	for b := m; b != nil; b = b.Next() {
		if b.Len() > 0 {
			buf.Append(buffer.NewViewWithData(b.Bytes()))
		}
	}
	flags := m.Flags
	m.Free()
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buf})
	defer pkt.DecRef()
	hdr, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	if !ok {
		e.rxMalformed.Add(1)
		return
	}
	eth := header.Ethernet(hdr)
	switch {
	case flags&mbuf.FlagBroadcast != 0:
		pkt.PktType = tcpip.PacketBroadcast
	case flags&mbuf.FlagMulticast != 0:
		pkt.PktType = tcpip.PacketMulticast
	case eth.DestinationAddress() == e.LinkAddress():
		pkt.PktType = tcpip.PacketHost
	default:
		pkt.PktType = tcpip.PacketOtherHost
	}
	e.rxDelivered.Add(1)
	d.DeliverNetworkPacket(eth.Type(), pkt)
}

// WritePackets copies each packet into packet buffers (a chain when it is
// larger than one) and sends it through its protocol's attachment, whose
// framer adds the Ethernet header (so AddHeader adds none). Running out of
// buffers is backpressure for the stack. After Shutdown nothing is
// written.
func (e *endpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	pool := e.pool
	// The read lock is held while writing, so that Shutdown, which takes
	// the write lock, waits for writers already inside.
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.detached {
		return 0, &tcpip.ErrClosedForSend{}
	}
	// IP packets that pass filters collect in sc (taken on first use) and
	// go out, filtered, when the list is done.
	var sc *outScratch
	defer e.endWrite(&sc)
	n := 0
	for _, pkt := range pkts.AsSlice() {
		size := pkt.Size()
		if size > int(e.MTU()) {
			e.txTooBig.Add(1)
			if n == 0 {
				return 0, &tcpip.ErrMessageTooLong{}
			}
			break
		}
		m := pool.AllocPacket(size)
		if m == nil {
			e.txNoBufs.Add(1)
			if n == 0 {
				return 0, &tcpip.ErrNoBufferSpace{}
			}
			break
		}
		off := 0
		for _, s := range pkt.AsSlices() {
			off += m.CopyBack(off, s)
		}
		dst := pkt.EgressRoute.RemoteLinkAddress
		var err error
		switch pkt.NetworkProtocolNumber {
		case ipv4.ProtocolNumber:
			err = e.writeIP(&sc, false, m, dst)
		case arp.ProtocolNumber:
			err = e.arp.Output(m, []byte(dst))
		default:
			err = e.writeIP(&sc, true, m, dst)
		}
		if err != nil {
			if n == 0 {
				return 0, &tcpip.ErrNoBufferSpace{}
			}
			break
		}
		n++
	}
	return n, nil
}

func (e *endpoint) MTU() uint32 {
	if m := e.mtu.Load(); m != 0 {
		return m
	}
	return uint32(e.ifp.MTU())
}
func (e *endpoint) SetMTU(mtu uint32)       { e.mtu.Store(mtu) }
func (e *endpoint) MaxHeaderLength() uint16 { return header.EthernetMinimumSize }

// LinkAddress is the interface's MAC as gVisor's string type; the
// conversion allocates, so it is cached until the MAC changes.
func (e *endpoint) LinkAddress() tcpip.LinkAddress {
	mac := e.ifp.MAC()
	if c := e.linkAddr.Load(); c != nil && c.mac == mac {
		return c.addr
	}
	c := &linkAddr{mac: mac, addr: tcpip.LinkAddress(mac[:])}
	e.linkAddr.Store(c)
	return c.addr
}

type linkAddr struct {
	mac  [6]byte
	addr tcpip.LinkAddress
}

func (e *endpoint) SetLinkAddress(tcpip.LinkAddress) {}

// detach stops the endpoint for good; writers already inside finish first.
func (e *endpoint) detach() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.detached = true
	e.live.Store(nil)
}
func (e *endpoint) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityResolutionRequired
}
func (e *endpoint) Wait()                                   {}
func (e *endpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareEther }

func (e *endpoint) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.dispatcher = d
	if !e.detached && d != nil {
		e.live.Store(&dispatcherRef{d})
	}
}

func (e *endpoint) IsAttached() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.dispatcher != nil
}

// AddHeader adds nothing: the interface's framer writes the Ethernet
// header after the protocol's pre-output, as dlil does.
func (e *endpoint) AddHeader(*stack.PacketBuffer) {}

func (e *endpoint) ParseHeader(pkt *stack.PacketBuffer) bool {
	_, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	return ok
}

func (e *endpoint) Close() {
	e.mu.Lock()
	f := e.onClose
	e.mu.Unlock()
	if f != nil {
		f()
	}
}

func (e *endpoint) SetOnCloseAction(f func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.onClose = f
}
