package netstack

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/kernel/kevent"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// The IP path of the endpoint: input bursts through reassembly and the IP
// input filters into gVisor; gVisor's output through reassembly of its
// fragments, the IP output filters and fragmentation to the interface;
// and inject. See ipfilter.go for why the points are here.

// vecLen is how many packets a vector carries through the filters at
// once; longer runs go in several.
const vecLen = 64

// ipPath is the endpoint's IP filter state.
type ipPath struct {
	ipf    ipChains
	ipc    ipCounters
	rxReas *reassembler // fragments from the wire
	txReas *reassembler // gVisor's fragments
	// inVec is the poll loop's, per family (0 IPv4, 1 IPv6).
	inVec [2]*ipVec
	// outScratch for senders and injectors.
	outPool sync.Pool

	fragmented, fragments, fragDrops, fragDF atomic.Uint64
	unresolved                               atomic.Uint64
}

// outScratch is one WritePackets call's vectors (per family) and its
// fragments.
type outScratch struct {
	v     [2]*ipVec
	n     [2]int
	frags []*mbuf.Mbuf
}

func (e *endpoint) initIPPath(report func(hook.Fault)) {
	e.ipf = newIPChains(report)
	e.rxReas = newReassembler(e.pool, true, ReasmConfig{})
	e.txReas = newReassembler(e.pool, false, ReasmConfig{})
	e.inVec = [2]*ipVec{newIPVec(vecLen), newIPVec(vecLen)}
	e.outPool.New = func() any {
		return &outScratch{v: [2]*ipVec{newIPVec(vecLen), newIPVec(vecLen)}, frags: make([]*mbuf.Mbuf, 0, 64)}
	}
}

func fam(v6 bool) int {
	if v6 {
		return 1
	}
	return 0
}

// IPStats count the endpoint's IP path: reassembly of received fragments,
// of gVisor's fragments on output, fragmentation, and what the IP filters
// stopped (the filters' own counters are in IPFilters).
type IPStats struct {
	RxReassembly ReasmStats `json:"rx_reassembly"`
	TxReassembly ReasmStats `json:"tx_reassembly"`
	// Datagrams fragmented on output, the fragments made, and datagrams
	// that could not be (DF set, or the pool ran out).
	Fragmented     uint64 `json:"fragmented"`
	Fragments      uint64 `json:"fragments"`
	FragDontFrag   uint64 `json:"frag_dont_fragment"`
	FragDrops      uint64 `json:"frag_drops"`
	FilterDropped  uint64 `json:"filter_dropped"`
	FilterSwallow  uint64 `json:"filter_swallowed"`
	Malformed      uint64 `json:"malformed"`
	InjectNoRoutes uint64 `json:"inject_unresolved"`
}

// IPStats returns the IP path's counters.
func (s *Stack) IPStats() IPStats {
	e := s.ep
	return IPStats{RxReassembly: e.rxReas.stats(), TxReassembly: e.txReas.stats(),
		Fragmented: e.fragmented.Load(), Fragments: e.fragments.Load(), FragDontFrag: e.fragDF.Load(),
		FragDrops: e.fragDrops.Load(), FilterDropped: e.ipc.dropped.Load(), FilterSwallow: e.ipc.swallowed.Load(),
		Malformed: e.ipc.malformed.Load(), InjectNoRoutes: e.unresolved.Load()}
}

// ipInput is the inet and inet6 protocols' input: a run of received
// packets of one family (data at the IP header, frames their Ethernet
// headers) from the poll loop. Fragments go through the reassembler; the
// whole datagrams through the family's input filters, once per run; what
// is left into gVisor.
//
// Precondition: called by the interface's one poller.
func (e *endpoint) ipInput(v6 bool, pkts []*mbuf.Mbuf, frames [][]byte) {
	e.rxReas.expire()
	chain := e.ipf.chain(v6)
	v := e.inVec[fam(v6)]
	var scratch [maxParseHead]byte
	n := 0
	for i, m := range pkts {
		in, ok := parseIP(head(m, &scratch), m.PktLen(), v6)
		if !ok || len(frames[i]) != ethHdrLen {
			m.Free()
			e.rxMalformed.Add(1)
			continue
		}
		if m.PktLen() > in.totalLen { // Ethernet padding
			m = trimChain(m, 0, in.totalLen)
		}
		copy(v.links[n][:], frames[i])
		if in.frag {
			if m = e.rxReas.add(m, &in, &v.links[n]); m == nil {
				continue
			}
			if in, ok = parseIP(head(m, &scratch), m.PktLen(), v6); !ok {
				m.Free()
				e.ipc.malformed.Add(1)
				continue
			}
		}
		v.pkts[n], v.offs[n], v.protos[n], v.lens[n] = m, in.transOff, in.proto, in.totalLen
		n++
		if n == vecLen {
			e.inputVec(chain, v, n)
			n = 0
		}
	}
	if n > 0 {
		e.inputVec(chain, v, n)
	}
}

// inputVec runs the input filters over v's first n packets and delivers
// what is left to gVisor.
func (e *endpoint) inputVec(chain *hook.Chain[*ipFilter], v *ipVec, n int) {
	if !chain.Empty() {
		s := chain.Acquire()
		n = e.runFilters(s, 0, v, n, false, 0)
		s.Release()
	}
	for i := 0; i < n; i++ {
		e.deliver(v.pkts[i], v.links[i][:])
		v.pkts[i] = nil
	}
}

// writeIP sends one IP packet gVisor wrote (data at the IP header, dst its
// next hop): straight to the interface when no filter is attached and no
// datagram is being put together, else through sc's vector.
func (e *endpoint) writeIP(sc **outScratch, v6 bool, m *mbuf.Mbuf, dst tcpip.LinkAddress) error {
	if e.ipf.chain(v6).Empty() && !e.txReas.pending() {
		return e.proto(v6).Output(m, []byte(dst))
	}
	if *sc == nil {
		*sc = e.outPool.Get().(*outScratch)
	}
	o := *sc
	var scratch [maxParseHead]byte
	in, ok := parseIP(head(m, &scratch), m.PktLen(), v6)
	if !ok {
		m.Free()
		e.ipc.malformed.Add(1)
		return nil
	}
	var id uint32
	if in.frag {
		id = in.id
		if m = e.txReas.add(m, &in, nil); m == nil {
			return nil // held until the datagram is whole
		}
		if in, ok = parseIP(head(m, &scratch), m.PktLen(), v6); !ok {
			m.Free()
			e.ipc.malformed.Add(1)
			return nil
		}
	}
	f := fam(v6)
	v, k := o.v[f], o.n[f]
	v.pkts[k], v.offs[k], v.protos[k], v.lens[k], v.ids[k] = m, in.transOff, in.proto, in.totalLen, id
	copy(v.dsts[k][:], dst)
	o.n[f]++
	if o.n[f] == vecLen {
		e.flushOut(o, v6)
	}
	return nil
}

// endWrite sends what a WritePackets call collected in sc.
func (e *endpoint) endWrite(sc **outScratch) {
	if o := *sc; o != nil {
		e.flushOut(o, false)
		e.flushOut(o, true)
		e.outPool.Put(o)
	}
}

// flushOut runs the output filters over sc's vector of the family and
// sends what is left.
func (e *endpoint) flushOut(o *outScratch, v6 bool) {
	f := fam(v6)
	v, n := o.v[f], o.n[f]
	o.n[f] = 0
	if n == 0 {
		return
	}
	s := e.ipf.chain(v6).Acquire()
	n = e.runFilters(s, 0, v, n, true, hook.SharedLane)
	s.Release()
	for i := 0; i < n; i++ {
		e.sendIP(v6, v.pkts[i], v.dsts[i][:], v.ids[i], &o.frags)
		v.pkts[i] = nil
	}
}

func (e *endpoint) proto(v6 bool) nke.ProtocolAttachment {
	if v6 {
		return e.inet6
	}
	return e.inet
}

// sendIP hands a filtered datagram to the interface through the family's
// protocol (pre-output, framer, interface filters), fragmenting it to the
// MTU first when it is larger. id is an IPv6 fragment id to keep (0: a
// fresh one). frags is scratch.
func (e *endpoint) sendIP(v6 bool, m *mbuf.Mbuf, dst []byte, id uint32, frags *[]*mbuf.Mbuf) {
	a := e.proto(v6)
	mtu := int(e.MTU())
	if m.PktLen() <= mtu {
		a.Output(m, dst)
		return
	}
	var scratch [maxParseHead]byte
	in, ok := parseIP(head(m, &scratch), m.PktLen(), v6)
	if !ok {
		m.Free()
		e.ipc.malformed.Add(1)
		return
	}
	fr, why := fragment((*frags)[:0], e.pool, m, &in, mtu, nil, id)
	m.Free()
	switch why {
	case fragOK:
	case fragDontFrag:
		e.fragDF.Add(1)
		return
	default:
		e.fragDrops.Add(1)
		return
	}
	e.fragmented.Add(1)
	e.fragments.Add(uint64(len(fr)))
	for i, f := range fr {
		a.Output(f, dst)
		fr[i] = nil
	}
	*frags = fr[:0]
}

// Errors of inject.
var (
	ErrInjectMalformed = errors.New("netstack: inject: not a whole IP datagram")
	ErrInjectClosed    = errors.New("netstack: inject: the stack is shut down")
)

// InjectIPInput hands m (data at the IP header, a whole datagram) to the
// stack as if received (Apple's ipf_inject_input): the input filters
// after ref (all with nil), then gVisor. The packet's provenance records
// the injection (nke.StampInjection with ref's id, 0 for nil); past
// nke.MaxInjections it fails with nke.ErrInjectLoop. On error m is still
// the caller's; on success it is consumed (delivered, dropped or
// swallowed by a filter).
func (s *Stack) InjectIPInput(m *mbuf.Mbuf, ref nke.Attachment) error {
	return s.ep.injectInput(m, ref, true)
}

// stampRef records an injection of m by ref (nil: none); one past the
// hop limit is published as an event.
func (e *endpoint) stampRef(m *mbuf.Mbuf, ref nke.Attachment, v6 bool) error {
	var id uint64
	var name string
	if ref != nil {
		id, name = ref.ID(), ref.Name()
	}
	_, err := nke.StampInjection(m, id)
	if errors.Is(err, nke.ErrInjectLoop) {
		e.events.Publish(kevent.Event{Kind: kevent.InjectLoop, NKE: name, Hook: e.ipf.chain(v6).Name(),
			Interface: e.ifp.Name(), ID: id, Detail: err.Error()})
	}
	return err
}

// injectInput runs m through the input filters after ref and into gVisor.
// stamp says whether this is an injection to record in m's provenance
// (an injected datagram for the guest itself, looped back by
// injectOutput, was stamped there already).
func (e *endpoint) injectInput(m *mbuf.Mbuf, ref nke.Attachment, stamp bool) error {
	v6, in, err := parseWhole(m)
	if err != nil {
		return err
	}
	// No lock (see deliver): an IP output filter may inject from inside
	// WritePackets.
	if e.live.Load() == nil {
		return ErrInjectClosed
	}
	s := e.ipf.chain(v6).Acquire()
	defer s.Release()
	at, err := position(s, ref)
	if err != nil {
		return fmt.Errorf("netstack: inject input: %w", err)
	}
	if stamp {
		if err := e.stampRef(m, ref, v6); err != nil {
			return fmt.Errorf("netstack: inject input: %w", err)
		}
	}
	o := e.outPool.Get().(*outScratch)
	defer e.outPool.Put(o)
	v := o.v[fam(v6)]
	v.pkts[0], v.offs[0], v.protos[0], v.lens[0] = m, in.transOff, in.proto, m.PktLen()
	v.links[0] = e.syntheticLink(v6)
	if e.runFilters(s, at+1, v, 1, false, hook.SharedLane) == 1 {
		e.deliver(v.pkts[0], v.links[0][:])
	}
	v.pkts[0] = nil
	return nil
}

// syntheticLink is the frame header an injected packet is delivered with:
// to the interface, from nobody.
func (e *endpoint) syntheticLink(v6 bool) [ethHdrLen]byte {
	var l [ethHdrLen]byte
	mac := e.ifp.MAC()
	copy(l[:6], mac[:])
	et := header.IPv4ProtocolNumber
	if v6 {
		et = header.IPv6ProtocolNumber
	}
	l[12], l[13] = byte(et>>8), byte(et)
	return l
}

func parseWhole(m *mbuf.Mbuf) (bool, ipInfo, error) {
	if m == nil || m.PktLen() < 1 {
		return false, ipInfo{}, ErrInjectMalformed
	}
	var scratch [maxParseHead]byte
	b := head(m, &scratch)
	v6 := b[0]>>4 == 6
	in, ok := parseIP(b, m.PktLen(), v6)
	if !ok || in.frag {
		return v6, in, ErrInjectMalformed
	}
	return v6, in, nil
}

// InjectIPOutput sends m (data at the IP header) as if the stack had sent
// it (Apple's ipf_inject_output): the output filters after ref (all with
// nil; provenance and hop limit as for InjectIPInput), then a route and
// the next hop's link address from gVisor (which may resolve it with ARP
// or NDP first; the packet waits), fragmentation to the MTU, and the
// interface. A datagram for the guest's own address
// is looped back through the input filters instead. m is consumed, error
// or not.
func (s *Stack) InjectIPOutput(m *mbuf.Mbuf, ref nke.Attachment) error {
	return s.ep.injectOutput(m, ref)
}

func (e *endpoint) injectOutput(m *mbuf.Mbuf, ref nke.Attachment) error {
	v6, in, err := parseWhole(m)
	if err != nil {
		if m != nil {
			m.Free()
		}
		return err
	}
	s := e.ipf.chain(v6).Acquire()
	at, err := position(s, ref)
	if err == nil {
		err = e.stampRef(m, ref, v6)
	}
	if err != nil {
		s.Release()
		m.Free()
		return fmt.Errorf("netstack: inject output: %w", err)
	}
	o := e.outPool.Get().(*outScratch)
	v := o.v[fam(v6)]
	v.pkts[0], v.offs[0], v.protos[0], v.lens[0] = m, in.transOff, in.proto, m.PktLen()
	n := e.runFilters(s, at+1, v, 1, true, hook.SharedLane)
	s.Release()
	m, v.pkts[0] = v.pkts[0], nil
	e.outPool.Put(o)
	if n == 0 {
		return nil
	}
	return e.route(v6, m)
}

// route finds the next hop of datagram m and sends it there.
func (e *endpoint) route(v6 bool, m *mbuf.Mbuf) error {
	var scratch [maxParseHead]byte
	in, ok := parseIP(head(m, &scratch), m.PktLen(), v6)
	if !ok || e.stk == nil {
		m.Free()
		return ErrInjectMalformed
	}
	dst, proto := tcpip.AddrFrom4Slice(in.dst[:4]), header.IPv4ProtocolNumber
	if v6 {
		dst, proto = tcpip.AddrFrom16(in.dst), header.IPv6ProtocolNumber
	}
	r, terr := e.stk.FindRoute(NICID, tcpip.Address{}, dst, proto, false)
	if terr != nil {
		m.Free()
		e.unresolved.Add(1)
		return fmt.Errorf("netstack: inject output to %v: %s", dst, terr)
	}
	defer r.Release()
	if r.Loop()&stack.PacketOut == 0 {
		// For the guest itself: back in through all the input filters,
		// as through Apple's lo0.
		if err := e.injectInput(m, nil, false); err != nil {
			m.Free()
			return err
		}
		return nil
	}
	var done atomic.Bool
	terr = r.ResolvedFields(func(res stack.ResolvedFieldsResult) {
		done.Store(true)
		if res.Err != nil {
			m.Free()
			e.unresolved.Add(1)
			return
		}
		var mac [6]byte
		copy(mac[:], res.RouteInfo.RemoteLinkAddress)
		e.sendInjected(v6, m, mac)
	})
	switch terr.(type) {
	case nil, *tcpip.ErrWouldBlock:
		return nil
	}
	if !done.Load() {
		m.Free()
	}
	e.unresolved.Add(1)
	return fmt.Errorf("netstack: inject output to %v: %s", dst, terr)
}

// sendInjected sends an injected datagram once its next hop is known.
// It takes the read lock with TryRLock: it may run inside WritePackets (a
// filter's inject, resolved at once), which holds the read lock, and a
// second RLock with Shutdown waiting would deadlock. Failing means
// Shutdown is under way: the packet is dropped.
//
// +checklocksignore: TryRLock.
func (e *endpoint) sendInjected(v6 bool, m *mbuf.Mbuf, mac [6]byte) {
	if !e.mu.TryRLock() {
		m.Free()
		return
	}
	defer e.mu.RUnlock()
	if e.detached {
		m.Free()
		return
	}
	var frags []*mbuf.Mbuf
	e.sendIP(v6, m, mac[:], 0, &frags)
}
