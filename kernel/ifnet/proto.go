package ifnet

import (
	"errors"
	"fmt"
	"time"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Protocols (Apple's protocol attachments, ifnet_attach_protocol): demux
// hands each received frame to the protocol whose descriptor matches it,
// after the interface filters; a protocol sends through its attachment's
// Output, which runs its pre-output and the framer before the interface
// filters and the driver. A frame nobody claims is dropped and counted by
// what it was (Unclaimed).

// ifProto is an attached protocol with its callbacks resolved at attach.
type ifProto struct {
	keys    []demuxKey
	in      nke.ProtocolInput
	inB     nke.ProtocolInputBurst
	pre     nke.ProtocolPreOutput
	ev      nke.ProtocolEvent
	ioctl   nke.ProtocolIoctl
	arp     nke.ProtocolSendARP
	resolve nke.ProtocolResolveMulticast
}

func (p *ifProto) claims(k demuxKey) bool {
	for _, x := range p.keys {
		if x == k {
			return true
		}
	}
	return false
}

// Errors of protocol attachment and output.
var (
	ErrProtoAttached = errors.New("ifnet: a protocol is already attached for that demux descriptor")
	ErrDetached      = errors.New("ifnet: the protocol is detached")
	ErrNoHeadroom    = errors.New("ifnet: no headroom for the link header")
	ErrNoProtocol    = errors.New("ifnet: no protocol attached for that EtherType does that")
)

// AttachProto attaches a protocol (Apple's ifnet_attach_protocol): frames
// matching its demux descriptors go to its input from the next burst on.
// It fails, attaching nothing, on a bad spec or a descriptor another
// protocol of the interface claims.
func (ifp *Interface) AttachProto(spec nke.ProtocolSpec) (nke.ProtocolAttachment, error) {
	if err := spec.Check(); err != nil {
		return nil, fmt.Errorf("ifnet %s: %w", ifp.cfg.Name, err)
	}
	p := &ifProto{}
	for _, d := range spec.Demux {
		p.keys = append(p.keys, keyOf(d))
	}
	p.in, _ = spec.Protocol.(nke.ProtocolInput)
	p.inB, _ = spec.Protocol.(nke.ProtocolInputBurst)
	p.pre, _ = spec.Protocol.(nke.ProtocolPreOutput)
	p.ev, _ = spec.Protocol.(nke.ProtocolEvent)
	p.ioctl, _ = spec.Protocol.(nke.ProtocolIoctl)
	p.arp, _ = spec.Protocol.(nke.ProtocolSendARP)
	p.resolve, _ = spec.Protocol.(nke.ProtocolResolveMulticast)

	ifp.protoMu.Lock()
	defer ifp.protoMu.Unlock()
	for _, e := range ifp.protos.Entries() {
		for i, k := range p.keys {
			if e.Filter.claims(k) {
				return nil, fmt.Errorf("ifnet %s: attach protocol %s: %w: %v is %s's", ifp.cfg.Name, spec.Name, ErrProtoAttached, spec.Demux[i], e.Name)
			}
		}
	}
	h, err := ifp.protos.Attach(hook.Spec[*ifProto]{Name: spec.Name, Filter: p, Detached: spec.Detached})
	if err != nil {
		return nil, err
	}
	return &protoAttachment{Handle: h, ifp: ifp}, nil
}

// protoAttachment is an attached protocol's handle.
type protoAttachment struct {
	*hook.Handle[*ifProto]
	ifp *Interface
}

var _ nke.ProtocolAttachment = (*protoAttachment)(nil)

// Output sends m, data at the protocol's header, to dest: pre-output,
// framer, then Interface.Output (the output queue, the interface filters
// on the poll loop, the driver). m is consumed whatever happens.
func (a *protoAttachment) Output(m *mbuf.Mbuf, dest []byte) (err error) {
	ifp := a.ifp
	e := a.Entry()
	s := ifp.protos.Acquire()
	defer s.Release()
	if !e.Attached() {
		m.Free()
		return fmt.Errorf("ifnet %s: output of %s: %w", ifp.cfg.Name, e.Name, ErrDetached)
	}
	var ft uint16
	var dst [6]byte
	func() {
		defer func() {
			if r := recover(); r != nil {
				e.Fault(r)
				err = fmt.Errorf("ifnet %s: protocol %s panicked in pre-output: %v", ifp.cfg.Name, e.Name, r)
			}
		}()
		ft, dst, err = e.Filter.pre.ProtoPreOutput(ifp, &m, dest)
	}()
	if err != nil {
		if m != nil {
			m.Free()
		}
		ifp.stats.txPreOutputErrors.Add(1)
		return err
	}
	if m == nil {
		return fmt.Errorf("ifnet %s: protocol %s's pre-output took the packet away", ifp.cfg.Name, e.Name)
	}
	return ifp.frameOutput(m, dst, ft)
}

// frameOutput is the Ethernet framer (Apple's ifnet framer callback)
// followed by Output.
func (ifp *Interface) frameOutput(m *mbuf.Mbuf, dst [6]byte, etherType uint16) error {
	hdr, ok := m.Prepend(ethHdrLen)
	if !ok {
		m.Free()
		ifp.stats.txQueueDrops.Add(1)
		return fmt.Errorf("ifnet %s: %w (%d bytes free)", ifp.cfg.Name, ErrNoHeadroom, m.Headroom())
	}
	mac := ifp.mac.Load()
	copy(hdr[0:6], dst[:])
	copy(hdr[6:12], mac[:])
	hdr[12], hdr[13] = byte(etherType>>8), byte(etherType)
	return ifp.Output(m)
}

// lookupProto is demux's table lookup, on the burst's snapshot.
func lookupProto(s *hook.Snapshot[*ifProto], k demuxKey) *hook.Entry[*ifProto] {
	for _, e := range s.Entries {
		for _, x := range e.Filter.keys {
			if x == k {
				return e
			}
		}
	}
	return nil
}

// deliver hands a run of frames demux gave the same protocol to it: in
// one call for a burst-form protocol, one by one otherwise. The frames
// are the protocol's from then on. A protocol that panics is detached
// and reported; the frames of the faulting call are lost to it (counted
// as faults), those after it in the run go nowhere and are freed.
func (ifp *Interface) deliver(e *hook.Entry[*ifProto], pkts []*mbuf.Mbuf, frames [][]byte, lens []int) {
	p := e.Filter
	v := &ifp.fv
	if v.capture = ifp.protos.Capturer(); v.capture != nil {
		ifp.captureAll(e.Name, ifp.protos.Name(), hook.In, pkts, frames, nil)
		v.capture = nil
	}
	var b hook.Burst
	b.Packets = uint64(len(pkts))
	for _, n := range lens {
		b.Bytes += uint64(n)
	}
	b.Verdicts[nke.Continue] = b.Packets
	e.Stats.Add(0, &b)
	v.calls++
	var start time.Time
	if v.calls%hook.SampleEvery == 0 {
		start = time.Now()
	}
	done := 0
	defer func() {
		if r := recover(); r != nil {
			e.Fault(r)
			// The call that panicked owned its packet(s); the rest
			// were never handed over.
			if p.inB == nil {
				mbuf.FreeBatch(pkts[done+1:])
			}
			return
		}
		if !start.IsZero() {
			e.Stats.AddSample(0, uint64(len(pkts)), uint64(time.Since(start)))
		}
	}()
	if p.inB != nil {
		p.inB.ProtoInputBurst(ifp, pkts, frames)
		return
	}
	for i, m := range pkts {
		done = i
		p.in.ProtoInput(ifp, m, frames[i])
	}
}

// Protocols lists the attached protocols with their counters (packets
// and bytes delivered, faults).
func (ifp *Interface) Protocols() []ProtoStatus {
	var out []ProtoStatus
	for _, e := range ifp.protos.Entries() {
		st := ProtoStatus{Name: e.Name, Counters: e.Stats.Read()}
		for _, k := range e.Filter.keys {
			st.Demux = append(st.Demux, k.String())
		}
		out = append(out, st)
	}
	return out
}

// ProtoStatus is one attached protocol, for status pages.
type ProtoStatus struct {
	Name  string   `json:"name"`
	Demux []string `json:"demux"`
	hook.Counters
}

// Capture sets the capturer of the interface's hooks: the raw hooks, the
// interface filters (before and after each, in and out) and the protocols
// (each frame as it is handed over). nil stops capturing.
func (ifp *Interface) Capture(c hook.Capturer) {
	ifp.raw.SetCapturer(c)
	ifp.filters.SetCapturer(c)
	ifp.protos.SetCapturer(c)
}

// Unclaimed counts the frames no protocol claimed, by their EtherType,
// SAP or SNAP header (the first few of each seen; the rest as "other").
func (ifp *Interface) Unclaimed() []Unclaimed { return ifp.unclaimed.read() }

// protoByType finds the protocol attached for an Ethernet II type.
func (ifp *Interface) protoByType(s *hook.Snapshot[*ifProto], etherType uint16) *hook.Entry[*ifProto] {
	return lookupProto(s, demuxKey(nke.DemuxEtherType)<<56|demuxKey(etherType))
}

// ResolveMulticast maps a multicast address of the protocol attached for
// etherType to a link-layer address (Apple's ifnet_resolve_multicast,
// through the protocol's resolve_multi).
func (ifp *Interface) ResolveMulticast(etherType uint16, addr []byte) (mac [6]byte, err error) {
	s := ifp.protos.Acquire()
	defer s.Release()
	e := ifp.protoByType(s, etherType)
	if e == nil || e.Filter.resolve == nil {
		return mac, fmt.Errorf("ifnet %s: resolve multicast %x for %#04x: %w", ifp.cfg.Name, addr, etherType, ErrNoProtocol)
	}
	if e.Guard(func() { mac, err = e.Filter.resolve.ProtoResolveMulticast(ifp, addr) }) {
		err = fmt.Errorf("ifnet %s: protocol %s panicked resolving %x", ifp.cfg.Name, e.Name, addr)
	}
	return mac, err
}

// SendARP has the protocol attached for etherType send an ARP packet
// (Apple's ifnet_send_arp through the protocol's send_arp).
func (ifp *Interface) SendARP(etherType, op uint16, senderHW [6]byte, senderIP []byte, targetHW [6]byte, targetIP []byte) (err error) {
	s := ifp.protos.Acquire()
	defer s.Release()
	e := ifp.protoByType(s, etherType)
	if e == nil || e.Filter.arp == nil {
		return fmt.Errorf("ifnet %s: send ARP for %#04x: %w", ifp.cfg.Name, etherType, ErrNoProtocol)
	}
	if e.Guard(func() { err = e.Filter.arp.ProtoSendARP(ifp, op, senderHW, senderIP, targetHW, targetIP) }) {
		err = fmt.Errorf("ifnet %s: protocol %s panicked sending ARP", ifp.cfg.Name, e.Name)
	}
	return err
}

// protoEvent tells the protocols about an interface event.
func (ifp *Interface) protoEvent(ev nke.Event) {
	if ifp.protos.Empty() {
		return
	}
	s := ifp.protos.Acquire()
	defer s.Release()
	for _, e := range s.Entries {
		if p := e.Filter; p.ev != nil {
			e.Guard(func() { p.ev.ProtoEvent(ifp, ev) })
		}
	}
}

// protoIoctl offers an ioctl the filters left to the protocol attached
// for etherType; handled reports whether it took it.
func (ifp *Interface) protoIoctl(etherType uint16, cmd uint32, arg []byte) (handled bool, err error) {
	s := ifp.protos.Acquire()
	defer s.Release()
	e := ifp.protoByType(s, etherType)
	if e == nil || e.Filter.ioctl == nil {
		return false, nil
	}
	if e.Guard(func() { err = e.Filter.ioctl.ProtoIoctl(ifp, cmd, arg) }) {
		err = fmt.Errorf("ifnet %s: protocol %s panicked in ioctl %#x", ifp.cfg.Name, e.Name, cmd)
	}
	switch {
	case err == nil, errors.Is(err, nke.ErrSwallowed):
		return true, nil
	case errors.Is(err, nke.ErrNotMine):
		return false, nil
	}
	return true, err
}

// detachProtos detaches every protocol and waits for their Detached.
func (ifp *Interface) detachProtos() { ifp.protos.DetachAll() }

var _ nke.Link = (*Interface)(nil)

// Gone lists what was detached from the interface lately (raw hooks,
// interface filters, protocols), each with its last counters and the
// fault that detached it, if one did.
func (ifp *Interface) Gone() []hook.Gone {
	return append(append(ifp.raw.Gone(), ifp.filters.Gone()...), ifp.protos.Gone()...)
}
