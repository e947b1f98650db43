package netstack

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// IP filters (Apple's kpi_ipfilter: ipf_addv4/v6, ipf_inject_input and
// ipf_inject_output, ipf_remove) and where their points are in gVisor.
//
// Apple's input filters see reassembled datagrams and its output filters
// see datagrams before fragmentation. gVisor's own hooks cannot give
// either: its iptables Input hook runs before its reassembly (ipv4.go
// deliverPacketLocally checks CheckInput, then calls fragmentation.Process;
// ipv6.go likewise), and its Output hook runs before fragmentation but on
// gVisor's buffers, with no way to swallow a packet and keep it or to hand
// back a replaced one. So both points are in the link endpoint, next to
// gVisor rather than inside it:
//
//   - Input: the endpoint's protocol input (a burst from the poll loop)
//     parses each IPv4 and IPv6 packet, puts fragments through the
//     endpoint's own reassembler (reasm.go: bounded, RFC 5722 overlap
//     rules, counted drops), runs the family's input filters once over the
//     burst of whole datagrams, and hands what is left to gVisor, which
//     then never sees a fragment from the wire.
//   - Output: gVisor fragments before WritePackets (only datagrams over
//     the MTU: UDP, ICMP, raw; TCP never, its segments fit the MSS).
//     WritePackets copies each packet into an mbuf anyway; there the
//     fragments of a datagram (complete and consecutive, but possibly
//     interleaved with other goroutines' packets) are put back together by
//     a second reassembler keyed by source, destination, id and protocol,
//     the output filters run over the whole datagrams, and a datagram over
//     the MTU is fragmented again here (frag.go) before the interface's
//     pre-output, framer and interface filters.
//
// A cleaner way inside gVisor does not exist in this version: telling
// gVisor the MTU is 64 KiB (so it never fragments) would also raise TCP's
// MSS, and GSO would hand us super-segments the filters must not see.
//
// Both directions of a family share one chain, newest first (hook.LIFO)
// unless Order says otherwise. Inject resumes a chain after a filter:
// everything goes through runFilters, which runs the chain from an index,
// the one place where provenance and a hop limit belong (neither is
// recorded for IP injection yet).
//
// Packets gVisor loops back to itself (HandleLocal) never reach the link
// endpoint and pass no IP filter; Apple's go through lo0 and do.

// ipFilter is an attached IP filter with its callbacks resolved at attach.
type ipFilter struct {
	fam  nke.IPFamily
	in   nke.IPInputFilter
	inB  nke.IPInputBurstFilter
	out  nke.IPOutputFilter
	outB nke.IPOutputBurstFilter
}

func (f *ipFilter) has(out bool) bool {
	if out {
		return f.out != nil || f.outB != nil
	}
	return f.in != nil || f.inB != nil
}

// ipAttachment is an attached IP filter's handle (Apple's ipfilter_t).
type ipAttachment struct {
	*hook.Handle[*ipFilter]
	f *ipFilter
}

// ErrNotAttached reports an inject whose reference is not an attached
// filter of the packet's family.
var ErrNotAttached = errors.New("netstack: the reference is not an attached IP filter of this family")

// ipChains are a stack's IP filters, a chain per family.
type ipChains struct {
	v4, v6 *hook.Chain[*ipFilter]
}

func newIPChains(report func(hook.Fault)) ipChains {
	return ipChains{v4: hook.New[*ipFilter]("inet filters", hook.LIFO, report),
		v6: hook.New[*ipFilter]("inet6 filters", hook.LIFO, report)}
}

func (c *ipChains) chain(v6 bool) *hook.Chain[*ipFilter] {
	if v6 {
		return c.v6
	}
	return c.v4
}

// AttachIPFilter attaches an IP filter (Apple's ipf_addv4/ipf_addv6); it
// runs from the next packet on, before the filters attached earlier
// unless its Order says otherwise.
func (s *Stack) AttachIPFilter(spec nke.IPFilterSpec) (nke.Attachment, error) {
	if err := spec.Check(); err != nil {
		return nil, fmt.Errorf("netstack: %w", err)
	}
	f := &ipFilter{fam: spec.Family}
	f.in, _ = spec.Filter.(nke.IPInputFilter)
	f.inB, _ = spec.Filter.(nke.IPInputBurstFilter)
	f.out, _ = spec.Filter.(nke.IPOutputFilter)
	f.outB, _ = spec.Filter.(nke.IPOutputBurstFilter)
	h, err := s.ep.ipf.chain(spec.Family == nke.IPv6).Attach(hook.Spec[*ipFilter]{Name: spec.Name, Order: spec.Order,
		Filter: f, Detached: spec.Detached})
	if err != nil {
		return nil, err
	}
	return &ipAttachment{Handle: h, f: f}, nil
}

var _ nke.IPHook = (*Stack)(nil)

// IPFilterStatus is one IP filter's place and counters, for status pages.
type IPFilterStatus struct {
	Name   string `json:"name"`
	Family string `json:"family"`
	Input  bool   `json:"input"`
	Output bool   `json:"output"`
	Burst  bool   `json:"burst"`
	hook.Counters
}

// CaptureIP sets the capturer of the IP filter chains (nil stops): each
// packet before and after each filter, with its verdict, data at the IP
// header (hook.Point.L3).
func (s *Stack) CaptureIP(c hook.Capturer) {
	s.ep.ipf.v4.SetCapturer(c)
	s.ep.ipf.v6.SetCapturer(c)
}

// IPGone lists the IP filters detached lately, with their last counters
// and the fault that detached them, if one did.
func (s *Stack) IPGone() []hook.Gone { return append(s.ep.ipf.v4.Gone(), s.ep.ipf.v6.Gone()...) }

// IPFilters lists the attached IP filters, IPv4's then IPv6's, each in
// the order they run, with their counters.
func (s *Stack) IPFilters() []IPFilterStatus {
	var out []IPFilterStatus
	for _, c := range []*hook.Chain[*ipFilter]{s.ep.ipf.v4, s.ep.ipf.v6} {
		for _, e := range c.Entries() {
			f := e.Filter
			out = append(out, IPFilterStatus{Name: e.Name, Family: f.fam.String(), Input: f.has(false), Output: f.has(true),
				Burst: f.inB != nil || f.outB != nil, Counters: e.Stats.Read()})
		}
	}
	return out
}

// ipVec is a burst of IP packets on their way through the filters: the
// packets still going, what the filters are told about each, and what
// goes with each afterwards. One belongs to the poll loop per family for
// input; senders and injectors take one from a pool.
type ipVec struct {
	pkts     []*mbuf.Mbuf
	orig     []*mbuf.Mbuf // the packets as the next filter gets them
	bytes    int          // the sum of lens over the vector
	offs     []int
	protos   []uint8
	lens     []int
	verdicts []nke.Verdict
	links    [][ethHdrLen]byte // input: each packet's frame header
	dsts     [][6]byte         // output: each packet's next hop
	ids      []uint32          // output: an IPv6 datagram's fragment id, 0 if none
	calls    uint64            // for latency sampling
	capture  hook.Capturer     // this run's, nil when nobody captures
	chain    string            // the chain's name, for capture points
}

func newIPVec(n int) *ipVec {
	return &ipVec{pkts: make([]*mbuf.Mbuf, n), orig: make([]*mbuf.Mbuf, n), offs: make([]int, n),
		protos: make([]uint8, n), lens: make([]int, n), verdicts: make([]nke.Verdict, n),
		links: make([][ethHdrLen]byte, n), dsts: make([][6]byte, n), ids: make([]uint32, n)}
}

// keep moves slot i to slot j (j <= i).
func (v *ipVec) keep(i, j int) {
	if i != j {
		v.pkts[j], v.offs[j], v.protos[j], v.lens[j] = v.pkts[i], v.offs[i], v.protos[i], v.lens[i]
		v.orig[j] = v.orig[i]
		v.links[j], v.dsts[j], v.ids[j] = v.links[i], v.dsts[i], v.ids[i]
	}
}

// ipCounters are the endpoint's counts of what the IP filters stopped.
type ipCounters struct {
	dropped, swallowed, malformed atomic.Uint64
}

// gone marks a slot whose packet a filter replaced with nothing valid.
const gone = nke.Verdict(255)

// runFilters runs the filters of snapshot s from index from on, in one
// direction, over the first n packets of v, and returns how many go on
// (compacted to the front, in order). Each filter is called once for the
// burst (burst form) or once per packet; dropped packets are freed,
// swallowed ones are the filter's. It is the one way packets pass IP
// filters: the data path starts at 0, inject after its reference.
func (e *endpoint) runFilters(s *hook.Snapshot[*ipFilter], from int, v *ipVec, n int, out bool, lane int) int {
	// What each filter gets, to see what it replaced, and the vector's
	// bytes: set once per burst, kept up to date by runFilter.
	copy(v.orig[:n], v.pkts[:n])
	v.bytes = 0
	for _, l := range v.lens[:n] {
		v.bytes += l
	}
	if len(s.Entries) > 0 {
		c := e.ipf.chain(s.Entries[0].Filter.fam == nke.IPv6)
		if v.capture = c.Capturer(); v.capture != nil {
			v.chain = c.Name()
		}
	}
	defer func() { v.capture = nil }()
	for i := from; i < len(s.Entries) && n > 0; i++ {
		if en := s.Entries[i]; en.Filter.has(out) {
			n = e.runFilter(en, v, n, out, lane)
		}
	}
	return n
}

func (e *endpoint) runFilter(en *hook.Entry[*ipFilter], v *ipVec, n int, out bool, lane int) int {
	verdicts := v.verdicts[:n]
	clear(verdicts) // Continue
	if v.capture != nil {
		v.captureAll(en.Name, out, n, false)
	}
	faulted := e.callFilter(en, v, n, out, lane)
	// One pass: fix up and count the verdicts (a fault drops the packet
	// being handled, or the burst, and passes those after it; anything
	// not a verdict drops), and parse again a replaced packet for the
	// filters after this one.
	var b hook.Burst
	b.Packets, b.Bytes = uint64(n), uint64(v.bytes)
	stopped, counted := 0, 0
	pkts, orig := v.pkts[:n], v.orig[:n]
	if faulted >= 0 {
		for i := range verdicts {
			switch {
			case faulted >= n || i == faulted:
				verdicts[i] = nke.Drop
			case i > faulted:
				verdicts[i] = nke.Continue // the filter, gone, never saw it
			}
		}
	}
	for i := range verdicts {
		vd := verdicts[i]
		if vd == nke.Continue && pkts[i] == orig[i] {
			continue // the common case: passed as it was
		}
		if vd != nke.Continue {
			if vd > nke.Drop {
				vd = nke.Drop
			}
			verdicts[i] = vd
			stopped++
			counted++
			b.Verdicts[vd]++
			continue
		}
		m := pkts[i]
		orig[i] = m
		v.bytes -= v.lens[i]
		if m == nil || !v.reparse(i, en.Filter.fam == nke.IPv6) {
			verdicts[i] = gone // nothing valid to pass on
			e.ipc.malformed.Add(1)
			if m != nil {
				m.Free()
			}
			stopped++
			continue
		}
		v.bytes += v.lens[i]
	}
	b.Verdicts[nke.Continue] = b.Packets - uint64(counted)
	en.Stats.Add(lane, &b)
	if v.capture != nil {
		v.captureAll(en.Name, out, n, true)
	}
	if stopped == 0 {
		return n
	}
	j := 0
	for i := 0; i < n; i++ {
		switch verdicts[i] {
		case nke.Continue:
			v.keep(i, j)
			j++
			continue
		case nke.Drop:
			v.pkts[i].Free()
			e.ipc.dropped.Add(1)
			v.bytes -= v.lens[i]
		case nke.Swallow:
			v.pkts[i].SetHolder(en.ID)
			e.ipc.swallowed.Add(1)
			v.bytes -= v.lens[i]
		}
		// gone: freed, counted and its bytes taken off above.
		v.pkts[i] = nil // gone: already freed and counted
	}
	for i := j; i < n; i++ {
		v.pkts[i] = nil
	}
	return j
}

// captureAll shows the vector to the capturer before a filter ran or
// after, with its verdicts (a packet it replaced with nothing valid is
// gone and not shown).
func (v *ipVec) captureAll(filter string, out bool, n int, after bool) {
	p := hook.Point{Hook: v.chain, Filter: filter, L3: true, After: after}
	if out {
		p.Dir = hook.Out
	}
	for i := 0; i < n; i++ {
		m := v.pkts[i]
		if after {
			if v.verdicts[i] == gone {
				continue // freed already
			}
			p.Verdict = v.verdicts[i]
		}
		if m != nil {
			v.capture.Capture(p, nil, m)
		}
	}
}

// reparse updates slot i after a filter replaced its packet.
func (v *ipVec) reparse(i int, v6 bool) bool {
	var scratch [maxParseHead]byte
	m := v.pkts[i]
	in, ok := parseIP(head(m, &scratch), m.PktLen(), v6)
	if !ok || in.frag {
		return false
	}
	v.offs[i], v.protos[i], v.lens[i] = in.transOff, in.proto, m.PktLen()
	return true
}

// callFilter calls the filter over the vector, timing one call in
// SampleEvery. It returns the index of the packet being handled when the
// filter panicked (n for a burst-form filter: the whole burst), or -1.
func (e *endpoint) callFilter(en *hook.Entry[*ipFilter], v *ipVec, n int, out bool, lane int) (faulted int) {
	f := en.Filter
	v.calls++
	var start time.Time
	if v.calls%hook.SampleEvery == 0 {
		start = time.Now()
	}
	burst := (out && f.outB != nil) || (!out && f.inB != nil)
	defer func() {
		if r := recover(); r != nil {
			en.Fault(r)
			if burst {
				faulted = n
			}
			return
		}
		if !start.IsZero() {
			en.Stats.AddSample(lane, uint64(n), uint64(time.Since(start)))
		}
	}()
	pkts, verdicts := v.pkts[:n], v.verdicts[:n]
	switch {
	case out && burst:
		f.outB.FilterIPOutputBurst(pkts, verdicts)
	case out:
		for i := range pkts {
			faulted = i
			verdicts[i] = f.out.FilterIPOutput(&pkts[i])
		}
	case burst:
		f.inB.FilterIPInputBurst(pkts, v.offs[:n], v.protos[:n], verdicts)
	default:
		for i := range pkts {
			faulted = i
			verdicts[i] = f.in.FilterIPInput(&pkts[i], v.offs[i], v.protos[i])
		}
	}
	return -1
}

// position is ref's index in s, for inject: -1 with no ref, an error when
// ref is not attached to this chain.
func position(s *hook.Snapshot[*ipFilter], ref nke.Attachment) (int, error) {
	if ref == nil {
		return -1, nil
	}
	a, ok := ref.(*ipAttachment)
	if !ok {
		return 0, fmt.Errorf("%w: %T", ErrNotAttached, ref)
	}
	for i, en := range s.Entries {
		if en.Filter == a.f {
			return i, nil
		}
	}
	return 0, fmt.Errorf("%w: %s", ErrNotAttached, a.Name())
}
