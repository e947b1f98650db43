package conformance

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/kernel/kerneltest"
	"github.com/nke-harness/nke/kernel/netstack"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/frametest"
	"github.com/nke-harness/nke/nke/mbuf"
)

// A layer is one hook point and direction the suite drives.
type layer struct {
	name string // "raw", "interface/in", "ip4/out", ...
	kind kind
	out  bool
	v6   bool
}

type kind uint8

const (
	rawKind kind = iota
	ifKind
	ipKind
)

var layers = []layer{
	{name: "raw", kind: rawKind},
	{name: "interface/in", kind: ifKind},
	{name: "interface/out", kind: ifKind, out: true},
	{name: "ip4/in", kind: ipKind},
	{name: "ip4/out", kind: ipKind, out: true},
	{name: "ip6/in", kind: ipKind, v6: true},
	{name: "ip6/out", kind: ipKind, out: true, v6: true},
}

// policy is the layer's default order.
func (l layer) lifo() bool { return l.kind == ipKind }

// dir is the direction of the layer's calls.
func (l layer) dir() Dir {
	switch {
	case l.kind == rawKind:
		return Raw
	case l.out:
		return Out
	}
	return In
}

// Ports and the EtherType of the suite's traffic.
const (
	etherType  = 0x88b5 // IEEE local experimental
	guestPort  = 7777
	peerPort   = 5555
	payloadLen = 48
)

// payload is the marked packet body: Magic, the marker, then a pattern
// derived from the marker, so a changed byte shows.
func payload(marker byte) []byte {
	b := append([]byte(nil), Magic...)
	b = append(b, marker)
	for i := len(b); i < payloadLen; i++ {
		b = append(b, marker^byte(i*7))
	}
	return b
}

// delivery is a packet that reached the end of the layer's path.
type delivery struct {
	marker byte
	prov   nke.Provenance // interface input only
	err    string         // what was wrong with its contents
}

// env is one test's rig, driving one layer.
type env struct {
	t    *testing.T
	l    layer
	name string // layer, form and rule, for messages
	impl Impl
	r    *kerneltest.Rig
	log  *Log
	// faults are the rig's log lines reporting a faulting filter.
	faultMu sync.Mutex
	faults  []string

	mu   sync.Mutex
	got  []delivery
	sock *gonet.UDPConn

	guest, peer frametest.Host // the layer's addresses
	started     bool
	detached    map[string]int
	detMu       sync.Mutex
}

func newEnv(t *testing.T, impl Impl, l layer, name string) *env {
	t.Helper()
	e := &env{t: t, l: l, name: name, impl: impl, log: &Log{}, detached: map[string]int{}}
	opts := []kerneltest.Option{kerneltest.Logf(e.logf)}
	if l.kind == ipKind {
		opts = append(opts, kerneltest.StaticPeer())
	}
	e.r = kerneltest.New(t, opts...)
	e.guest, e.peer = e.r.Guest, e.r.Peer
	switch l.kind {
	case rawKind, ifKind:
		if _, err := e.r.Ifp.AttachProto(nke.ProtocolSpec{Name: "conformance.proto",
			Demux: []nke.DemuxDesc{nke.EtherType(etherType)}, Protocol: proto{e}}); err != nil {
			t.Fatalf("%s: attach the protocol: %v", l.name, err)
		}
	case ipKind:
		e.ipSetup()
	}
	return e
}

func (e *env) logf(format string, args ...any) {
	e.faultMu.Lock()
	e.faults = append(e.faults, fmt.Sprintf(format, args...))
	e.faultMu.Unlock()
}

func (e *env) faultReports(name string) int {
	e.faultMu.Lock()
	defer e.faultMu.Unlock()
	n := 0
	for _, f := range e.faults {
		if bytes.Contains([]byte(f), []byte("filter "+name+" panicked")) {
			n++
		}
	}
	return n
}

func linkLocal(mac []byte) netip.Addr {
	a := header.LinkLocalAddr(tcpip.LinkAddress(mac))
	return netip.AddrFrom16(a.As16())
}

func (e *env) ipSetup() {
	t, r := e.t, e.r
	proto := header.IPv4ProtocolNumber
	if e.l.v6 {
		proto = header.IPv6ProtocolNumber
		e.guest = frametest.Host{MAC: r.Guest.MAC, IP: linkLocal(r.Guest.MAC)}
		e.peer = frametest.Host{MAC: r.Peer.MAC, IP: linkLocal(r.Peer.MAC)}
		if err := r.Stack.AddStaticNeighbor(netstack.NICID, proto, tcpip.AddrFrom16(e.peer.IP.As16()),
			tcpip.LinkAddress(e.peer.MAC)); err != nil {
			t.Fatalf("%s: static neighbour: %v", e.name, err)
		}
	}
	addr := func(a netip.Addr, port uint16) *tcpip.FullAddress {
		return &tcpip.FullAddress{NIC: netstack.NICID, Addr: tcpip.AddrFromSlice(a.AsSlice()), Port: port}
	}
	var err error
	if e.l.out {
		e.sock, err = gonet.DialUDP(r.Stack.Stack, nil, addr(e.peer.IP, peerPort), proto)
	} else {
		e.sock, err = gonet.DialUDP(r.Stack.Stack, &tcpip.FullAddress{NIC: netstack.NICID, Port: guestPort}, nil, proto)
	}
	if err != nil {
		t.Fatalf("%s: UDP socket: %v", e.name, err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		e.sock.Close()
		<-done
	})
	if e.l.out {
		close(done)
		return
	}
	go func() { // the guest's socket: what the stack delivered
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, _, err := e.sock.ReadFrom(buf)
			if err != nil {
				return
			}
			e.deliver(buf[:n], nke.Provenance{})
		}
	}()
}

// deliver records a packet body that reached the end of the path.
func (e *env) deliver(body []byte, p nke.Provenance) {
	d := delivery{prov: p}
	m, ok := MarkerOf(body)
	if !ok {
		return
	}
	d.marker = m
	if !bytes.Equal(body, payload(m)) {
		d.err = fmt.Sprintf("packet %d changed on the way: % x, want % x", m, body, payload(m))
	}
	e.mu.Lock()
	e.got = append(e.got, d)
	e.mu.Unlock()
}

// proto is the interface-layer tests' protocol: the end of the input path.
type proto struct{ e *env }

func (p proto) ProtoInput(_ nke.Interface, m *mbuf.Mbuf, frame []byte) {
	e := p.e
	want := e.frame(0)[:14]
	prov, _ := nke.InjectedBy(m)
	b := bytesOf(m)
	m.Free()
	if !bytes.Equal(frame, want) {
		if mk, ok := MarkerOf(b); ok {
			e.mu.Lock()
			e.got = append(e.got, delivery{marker: mk, err: fmt.Sprintf("frame header % x, want % x", frame, want)})
			e.mu.Unlock()
			return
		}
	}
	e.deliver(b, prov)
}

func (proto) ProtoPreOutput(nke.Interface, **mbuf.Mbuf, []byte) (uint16, [6]byte, error) {
	return etherType, [6]byte(kerneltest.PeerMAC), nil
}

// frame is the interface layer's frame of a marker: to the guest (input)
// or from it (output).
func (e *env) frame(marker byte) []byte {
	dst, src := e.r.Guest.MAC, e.r.Peer.MAC
	if e.l.out {
		dst, src = src, dst
	}
	return frametest.NewEthernet(dst, src, etherType, payload(marker)).Bytes()
}

// ipFrame is the IP layer's frame of a marker from the peer to the guest.
func (e *env) ipFrame(marker byte) frametest.Frame {
	return frametest.NewUDP(e.peer, e.guest, peerPort, guestPort, payload(marker))
}

// attach attaches a filter the impl built from b on the layer.
func (e *env) attach(name string, b Behaviour, o nke.Order) (nke.Attachment, error) {
	var self nke.Attachment
	var selfMu sync.Mutex
	b.Self = func() nke.Attachment {
		selfMu.Lock()
		defer selfMu.Unlock()
		return self
	}
	if b.Record == nil {
		b.Record = e.log
	}
	det := func() {
		e.detMu.Lock()
		e.detached[name]++
		e.detMu.Unlock()
		e.log.Add(Call{Filter: name, Dir: Detached})
	}
	var a nke.Attachment
	var err error
	switch e.l.kind {
	case rawKind:
		a, err = e.r.Ifp.AttachRawHook(nke.RawHookSpec{Name: name, Order: o, Filter: e.impl.RawHook(name, b), Detached: det})
	case ifKind:
		a, err = e.r.Ifp.AttachFilter(nke.InterfaceFilterSpec{Name: name, Order: o, Filter: e.impl.InterfaceFilter(name, b), Detached: det})
	case ipKind:
		fam := nke.IPv4
		if e.l.v6 {
			fam = nke.IPv6
		}
		a, err = e.r.Stack.AttachIPFilter(nke.IPFilterSpec{Name: name, Family: fam, Order: o, Filter: e.impl.IPFilter(name, b), Detached: det})
	}
	if err == nil {
		selfMu.Lock()
		self = a
		selfMu.Unlock()
	}
	return a, err
}

// mustAttach attaches or fails the test.
func (e *env) mustAttach(name string, b Behaviour, o nke.Order) nke.Attachment {
	e.t.Helper()
	a, err := e.attach(name, b, o)
	if err != nil {
		e.t.Fatalf("%s: attach %s: %v", e.name, name, err)
	}
	return a
}

// start runs the poll loop.
func (e *env) start() {
	e.started = true
	e.r.Start()
}

// send puts packets with the markers on the layer's path, as one burst
// where the layer has bursts (the interface's, before Start).
func (e *env) send(markers ...byte) {
	e.t.Helper()
	for _, m := range markers {
		switch {
		case e.l.kind != ipKind && !e.l.out:
			if err := e.r.Inject(e.frame(m)); err != nil {
				e.t.Fatalf("%s: inject frame %d: %v", e.name, m, err)
			}
		case e.l.kind == ifKind:
			f := e.frame(m)
			pk := e.r.Ifp.Pool().AllocPacket(len(f))
			for pk == nil { // the pool is out while the loop sends
				time.Sleep(100 * time.Microsecond)
				pk = e.r.Ifp.Pool().AllocPacket(len(f))
			}
			pk.CopyBack(0, f)
			if err := e.r.Ifp.Output(pk); err != nil {
				e.t.Fatalf("%s: output frame %d: %v", e.name, m, err)
			}
		case e.l.out:
			if _, err := e.sock.Write(payload(m)); err != nil {
				e.t.Fatalf("%s: send datagram %d: %v", e.name, m, err)
			}
		default:
			e.r.Send(e.ipFrame(m))
		}
	}
}

// pump moves traffic along once: a poll (before Start), and the frames
// the guest sent, for the output layers.
func (e *env) pump() {
	if !e.l.out {
		if e.started {
			time.Sleep(200 * time.Microsecond)
		} else if !e.r.Poll() {
			time.Sleep(50 * time.Microsecond)
		}
		return
	}
	b, ok := e.r.Recv(time.Millisecond)
	if !ok {
		return
	}
	if e.l.kind == ifKind {
		if m, ok := MarkerOf(b); ok {
			d := delivery{marker: m}
			if !bytes.Equal(b, e.frame(m)) {
				d.err = fmt.Sprintf("frame %d changed on the way: % x, want % x", m, b, e.frame(m))
			}
			e.mu.Lock()
			e.got = append(e.got, d)
			e.mu.Unlock()
		}
		return
	}
	f, err := frametest.Parse(b)
	if err != nil || f.UDP == nil || f.UDP.DstPort != peerPort {
		return
	}
	if ip := f.IPv4; ip != nil && (ip.Dst != e.peer.IP || e.l.v6) || f.IPv6 != nil && (f.IPv6.Dst != e.peer.IP || !e.l.v6) {
		return
	}
	e.deliver(f.Payload, nke.Provenance{})
}

// collect waits until at least n packets have reached the end of the
// path (or 10 s), then a little longer for any more, and returns what
// arrived since the last collect. Contents that differ fail the test.
func (e *env) collect(n int) []delivery {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	count := func() int {
		e.mu.Lock()
		defer e.mu.Unlock()
		return len(e.got)
	}
	for count() < n && time.Now().Before(deadline) {
		e.pump()
	}
	for quiet := time.Now().Add(20 * time.Millisecond); time.Now().Before(quiet); {
		e.pump()
	}
	e.mu.Lock()
	got := e.got
	e.got = nil
	e.mu.Unlock()
	for _, d := range got {
		if d.err != "" {
			e.t.Errorf("%s: %s", e.name, d.err)
		}
	}
	return got
}

// markers are the deliveries' markers, in order.
func markers(ds []delivery) []byte {
	out := make([]byte, len(ds))
	for i, d := range ds {
		out[i] = d.marker
	}
	return out
}

// expect collects and checks the markers delivered, in order.
func (e *env) expect(rule string, want ...byte) []delivery {
	e.t.Helper()
	got := e.collect(len(want))
	if !slices.Equal(markers(got), want) {
		e.t.Errorf("%s: %s: delivered %v, want %v (calls %v)", e.name, rule, markers(got), want, e.log)
	}
	return got
}

// wire returns the markers of the frames the guest sent (the raw layer's
// transmit verdict), polling first.
func (e *env) wire() []byte {
	var out []byte
	for _, b := range e.r.Sent() {
		if m, ok := MarkerOf(b); ok {
			if !bytes.Equal(b, e.frame(m)) {
				e.t.Errorf("%s: frame %d sent back changed: % x", e.name, m, b)
			}
			out = append(out, m)
		}
	}
	return out
}

// reinject hands a kept packet back to the layer with ref (Apple's
// re-injection): the interface's InjectInput or InjectOutput (a whole
// frame), the stack's InjectIPInput or InjectIPOutput. It follows each
// function's ownership rule: after an error of InjectIPInput the packet
// is freed here.
func (e *env) reinject(k Kept, ref nke.Attachment) error {
	switch {
	case e.l.kind == ifKind && e.l.out:
		return e.r.Ifp.InjectOutput(k.M, ref)
	case e.l.kind == ifKind:
		hdr, ok := k.M.Prepend(len(k.Frame))
		if !ok {
			k.M.Free()
			return fmt.Errorf("no headroom for the frame header")
		}
		copy(hdr, k.Frame)
		return e.r.Ifp.InjectInput(k.M, ref)
	case e.l.out:
		return e.r.Stack.InjectIPOutput(k.M, ref)
	}
	err := e.r.Stack.InjectIPInput(k.M, ref)
	if err != nil {
		k.M.Free()
	}
	return err
}

// counters are the filter's hook counters.
func (e *env) counters(name string) hook.Counters {
	e.t.Helper()
	var fs []ifStatus
	switch e.l.kind {
	case rawKind:
		for _, s := range e.r.Ifp.RawHooks() {
			fs = append(fs, ifStatus{s.Name, s.Counters})
		}
	case ifKind:
		for _, s := range e.r.Ifp.Filters() {
			fs = append(fs, ifStatus{s.Name, s.Counters})
		}
	case ipKind:
		fam := nke.IPv4.String()
		if e.l.v6 {
			fam = nke.IPv6.String()
		}
		for _, s := range e.r.Stack.IPFilters() {
			if s.Family == fam {
				fs = append(fs, ifStatus{s.Name, s.Counters})
			}
		}
	}
	for _, s := range fs {
		if s.name == name {
			return s.c
		}
	}
	e.t.Fatalf("%s: no counters for filter %s (attached: %v)", e.name, name, fs)
	return hook.Counters{}
}

type ifStatus struct {
	name string
	c    hook.Counters
}

// stops are the layer's own counts of packets filters dropped and
// swallowed (the raw layer: dropped and sent back).
func (e *env) stops() (dropped, swallowed uint64) {
	switch s := e.r.Ifp.Stats(); {
	case e.l.kind == rawKind:
		return s.RxRawDrops, s.RxBounced
	case e.l.kind == ifKind && e.l.out:
		return s.TxFilterDrops, s.TxSwallowed
	case e.l.kind == ifKind:
		return s.RxFilterDrops, s.RxSwallowed
	}
	s := e.r.Stack.IPStats()
	return s.FilterDropped, s.FilterSwallow
}

// detachedCount is how often name's Detached ran.
func (e *env) detachedCount(name string) int {
	e.detMu.Lock()
	defer e.detMu.Unlock()
	return e.detached[name]
}

// checkDetached waits for a's Done and checks its Detached ran once and
// was its last call.
func (e *env) checkDetached(rule string, a nke.Attachment) {
	e.t.Helper()
	select {
	case <-a.Done():
	case <-time.After(10 * time.Second):
		e.t.Fatalf("%s: %s: %s detached, but Done is not closed after 10 s", e.name, rule, a.Name())
	}
	if n := e.detachedCount(a.Name()); n != 1 {
		e.t.Errorf("%s: %s: Detached of %s ran %d times, want once", e.name, rule, a.Name(), n)
	}
	calls := e.log.Of(a.Name())
	if len(calls) == 0 || calls[len(calls)-1].Dir != Detached {
		e.t.Errorf("%s: %s: Detached is not the last call of %s: %v", e.name, rule, a.Name(), calls)
	}
}
