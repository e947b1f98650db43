package ifnet

import (
	"errors"
	"fmt"
	"time"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Interface filters (Apple's data-link NKEs, dlil's interface filters) run
// on the poll loop: input filters on each received burst after demux and
// before the protocols, output filters on each burst taken from the output
// queue, right before the driver's ring. One chain holds both directions,
// so a filter sees the same order in and out (Apple: FIFO by default).

// ifFilter is an attached interface filter with its callbacks resolved
// once, at attach.
type ifFilter struct {
	proto uint16
	in    nke.InputFilter
	inB   nke.InputBurstFilter
	out   nke.OutputFilter
	outB  nke.OutputBurstFilter
	ev    nke.EventFilter
	ioctl nke.IoctlFilter
}

func (f *ifFilter) matches(et uint16) bool { return f.proto == 0 || f.proto == et }

// ErrUnknownIoctl reports an ioctl no filter and not the interface handled
// (Apple: EOPNOTSUPP).
var ErrUnknownIoctl = errors.New("ifnet: ioctl not supported")

// AttachFilter attaches an interface filter (Apple's iflt_attach). It
// runs from the next burst on; the returned handle's Detach unlinks it.
func (ifp *Interface) AttachFilter(spec nke.InterfaceFilterSpec) (nke.Attachment, error) {
	if err := spec.Check(); err != nil {
		return nil, fmt.Errorf("ifnet %s: %w", ifp.cfg.Name, err)
	}
	f := &ifFilter{proto: spec.Protocol}
	f.in, _ = spec.Filter.(nke.InputFilter)
	f.inB, _ = spec.Filter.(nke.InputBurstFilter)
	f.out, _ = spec.Filter.(nke.OutputFilter)
	f.outB, _ = spec.Filter.(nke.OutputBurstFilter)
	f.ev, _ = spec.Filter.(nke.EventFilter)
	f.ioctl, _ = spec.Filter.(nke.IoctlFilter)
	h, err := ifp.filters.Attach(hook.Spec[*ifFilter]{Name: spec.Name, Order: spec.Order, Filter: f, Detached: spec.Detached})
	if err != nil {
		return nil, err
	}
	return h, nil
}

// Filters lists the attached filters, in the order they run, with their
// counters.
func (ifp *Interface) Filters() []FilterStatus {
	var out []FilterStatus
	for _, e := range ifp.filters.Entries() {
		out = append(out, FilterStatus{Name: e.Name, Protocol: e.Filter.proto, Counters: e.Stats.Read()})
	}
	return out
}

// FilterStatus is one filter's place and counters, for status pages.
type FilterStatus struct {
	Name     string `json:"name"`
	Protocol uint16 `json:"protocol,omitempty"`
	hook.Counters
}

// filterVec is the poll loop's scratch for running a burst through the
// filters: the packets still going, their EtherTypes and handlers, and a
// copy of each input packet's link header.
type filterVec struct {
	pkts     []*mbuf.Mbuf
	lens     []int // each packet's length as the filters got it
	bytes    int   // their sum over the vector
	ets      []uint16
	keys     []demuxKey // what demux found, for frames no protocol claims
	ps       []*hook.Entry[*ifProto]
	frames   [][]byte
	frameBuf [][ethHdrLen]byte
	sel      []int // indices a protocol-selective filter sees
	selPkts  []*mbuf.Mbuf
	selFrame [][]byte
	verdicts []nke.Verdict
	raw      []nke.RawVerdict
	calls    uint64 // for latency sampling
	// capture is the burst's capturer (nil: nobody captures).
	capture hook.Capturer
}

const ethHdrLen = 14

func newFilterVec(burst int) filterVec {
	v := filterVec{
		pkts: make([]*mbuf.Mbuf, burst), lens: make([]int, burst), ets: make([]uint16, burst), keys: make([]demuxKey, burst), ps: make([]*hook.Entry[*ifProto], burst),
		frames: make([][]byte, burst), frameBuf: make([][ethHdrLen]byte, burst),
		sel: make([]int, burst), selPkts: make([]*mbuf.Mbuf, burst), selFrame: make([][]byte, burst),
		verdicts: make([]nke.Verdict, burst), raw: make([]nke.RawVerdict, burst),
	}
	for i := range v.frames {
		v.frames[i] = v.frameBuf[i][:]
	}
	return v
}

// filterInput runs the input filters over the first n packets of the
// vector, which demux has already matched to a protocol and moved past
// their link headers, and returns how many go on to their protocol
// (compacted to the front, in order). Each filter gets a copy of the link
// header, which the protocol then gets too: a filter may replace the
// packet, and the replacement has no header of its own.
func (ifp *Interface) filterInput(n int) int {
	v := &ifp.fv
	v.bytes = 0
	for i := 0; i < n; i++ {
		copy(v.frameBuf[i][:], v.frames[i])
		v.frames[i] = v.frameBuf[i][:]
		v.bytes += v.lens[i]
	}
	v.capture = ifp.filters.Capturer()
	s := ifp.filters.Acquire()
	for _, e := range s.Entries {
		if f := e.Filter; f.in != nil || f.inB != nil {
			n = ifp.runInput(e, n)
		}
	}
	s.Release()
	v.capture = nil
	return n
}

// captureAll hands pkts to the burst's capturer at one point: before e
// ran (verdicts nil) or after, with each verdict.
func (ifp *Interface) captureAll(e string, chain string, dir hook.Dir, pkts []*mbuf.Mbuf, frames [][]byte, verdicts []nke.Verdict) {
	c := ifp.fv.capture
	p := hook.Point{Hook: chain, Filter: e, Dir: dir, After: verdicts != nil}
	for i, m := range pkts {
		if verdicts != nil {
			p.Verdict = verdicts[i]
		}
		var fr []byte
		if frames != nil {
			fr = frames[i]
		}
		c.Capture(p, fr, m)
	}
}

// keep moves slot i of the vector to slot j (j <= i).
func (ifp *Interface) keep(i, j int) {
	v := &ifp.fv
	if i != j {
		v.pkts[j], v.lens[j], v.ets[j], v.ps[j], v.keys[j] = v.pkts[i], v.lens[i], v.ets[i], v.ps[i], v.keys[i]
		v.frameBuf[j] = v.frameBuf[i]
		v.frames[j] = v.frameBuf[j][:]
	}
}

// runInput runs one filter over the vector's first n packets and returns
// how many go on. A panic detaches the filter (hook.Entry.Fault) and drops
// the packets the faulting call was handling.
func (ifp *Interface) runInput(e *hook.Entry[*ifFilter], n int) int {
	v := &ifp.fv
	f := e.Filter
	// The packets this filter sees: all of them in place, or those of
	// its protocol gathered.
	pkts, frames := v.pkts[:n], v.frames[:n]
	k := n
	if f.proto != 0 {
		k = 0
		for i := 0; i < n; i++ {
			if v.ets[i] == f.proto {
				v.sel[k] = i
				v.selPkts[k], v.selFrame[k] = v.pkts[i], v.frames[i]
				k++
			}
		}
		if k == 0 {
			return n
		}
		pkts, frames = v.selPkts[:k], v.selFrame[:k]
	}
	verdicts := v.verdicts[:k]
	clear(verdicts)  // Continue
	ets := v.ets[:n] // each packet's EtherType; a selective filter's are all its own
	if f.proto != 0 {
		ets = nil
	}
	if v.capture != nil {
		ifp.captureAll(e.Name, ifp.filters.Name(), hook.In, pkts, frames, nil)
	}
	faulted := ifp.callInput(e, pkts, frames, ets, verdicts)
	if f.proto != 0 {
		for i := 0; i < k; i++ {
			v.pkts[v.sel[i]] = pkts[i] // a filter may have replaced it
		}
	}
	bytes := v.bytes
	if f.proto != 0 {
		bytes = 0
		for i := 0; i < k; i++ {
			bytes += v.lens[v.sel[i]]
		}
	}
	stopped := ifp.account(e, len(pkts), bytes, verdicts, faulted)
	if v.capture != nil {
		ifp.captureAll(e.Name, ifp.filters.Name(), hook.In, pkts, frames, verdicts)
	}
	if stopped == 0 {
		return n
	}
	// Compact: swallowed packets are the filter's now; dropped ones are
	// freed here.
	j, s := 0, 0
	for i := 0; i < n; i++ {
		vd := nke.Continue
		if f.proto == 0 {
			vd = verdicts[i]
		} else if s < k && v.sel[s] == i {
			vd = verdicts[s]
			s++
		}
		switch vd {
		case nke.Continue:
			ifp.keep(i, j)
			j++
			continue
		case nke.Drop:
			v.pkts[i].Free()
			ifp.stats.rxFilterDrops.Add(1)
		case nke.Swallow:
			v.pkts[i].SetHolder(e.ID)
			ifp.stats.rxSwallowed.Add(1)
		}
		v.bytes -= v.lens[i]
	}
	return j
}

// callInput calls the filter over pkts, timing one call in SampleEvery. It
// returns the index of the packet being handled when the filter panicked
// (len(pkts) for a burst-form filter: the whole burst), or -1.
func (ifp *Interface) callInput(e *hook.Entry[*ifFilter], pkts []*mbuf.Mbuf, frames [][]byte, ets []uint16, verdicts []nke.Verdict) (faulted int) {
	f := e.Filter
	v := &ifp.fv
	v.calls++
	var start time.Time
	if v.calls%hook.SampleEvery == 0 {
		start = time.Now()
	}
	defer func() {
		if r := recover(); r != nil {
			e.Fault(r)
			if f.inB != nil {
				faulted = len(pkts)
			}
			return
		}
		if !start.IsZero() {
			e.Stats.AddSample(0, uint64(len(pkts)), uint64(time.Since(start)))
		}
	}()
	if f.inB != nil {
		f.inB.FilterInputBurst(ifp, pkts, frames, verdicts)
		return -1
	}
	in := f.in
	if ets == nil {
		for i := range pkts {
			faulted = i
			verdicts[i] = in.FilterInput(ifp, f.proto, &pkts[i], frames[i])
		}
		return -1
	}
	ets = ets[:len(pkts)]
	for i := range pkts {
		faulted = i
		verdicts[i] = in.FilterInput(ifp, ets[i], &pkts[i], frames[i])
	}
	return -1
}

// account fixes up the verdicts of a call over k packets of bytes bytes
// (a fault drops the packet being handled and passes those after it;
// anything not a verdict drops), adds them to the filter's counters and
// returns how many packets stopped.
func (ifp *Interface) account(e *hook.Entry[*ifFilter], k, bytes int, verdicts []nke.Verdict, faulted int) int {
	var b hook.Burst
	b.Packets, b.Bytes = uint64(k), uint64(bytes)
	if faulted >= 0 {
		for i := range verdicts {
			switch {
			case faulted >= k || i == faulted:
				verdicts[i] = nke.Drop
			case i > faulted:
				verdicts[i] = nke.Continue // the filter, gone, never saw it
			}
		}
	}
	stopped := 0
	for i, vd := range verdicts {
		if vd == nke.Continue {
			continue
		}
		if vd > nke.Drop {
			vd = nke.Drop // not a verdict
		}
		verdicts[i] = vd
		stopped++
		b.Verdicts[vd]++
	}
	b.Verdicts[nke.Continue] = b.Packets - uint64(stopped)
	e.Stats.Add(0, &b)
	return stopped
}

// filterOutput runs the output filters over pkts (whole frames, just taken
// from the output queue) and returns how many go on to the driver,
// compacted to the front in order.
func (ifp *Interface) filterOutput(pkts []*mbuf.Mbuf) int {
	n := len(pkts)
	ifp.fv.capture = ifp.filters.Capturer()
	s := ifp.filters.Acquire()
	for _, e := range s.Entries {
		if f := e.Filter; f.out != nil || f.outB != nil {
			n = ifp.runOutput(e, pkts[:n])
		}
	}
	s.Release()
	ifp.fv.capture = nil
	return n
}

func etherType(m *mbuf.Mbuf) uint16 {
	b := m.Bytes()
	if len(b) < ethHdrLen {
		return 0
	}
	return uint16(b[12])<<8 | uint16(b[13])
}

func (ifp *Interface) runOutput(e *hook.Entry[*ifFilter], pkts []*mbuf.Mbuf) int {
	v := &ifp.fv
	f := e.Filter
	sel := pkts
	k := len(pkts)
	if f.proto != 0 {
		k = 0
		for i, m := range pkts {
			if etherType(m) == f.proto {
				v.sel[k] = i
				v.selPkts[k] = m
				k++
			}
		}
		if k == 0 {
			return len(pkts)
		}
		sel = v.selPkts[:k]
	}
	verdicts := v.verdicts[:k]
	clear(verdicts)
	if v.capture != nil {
		ifp.captureAll(e.Name, ifp.filters.Name(), hook.Out, sel, nil, nil)
	}
	faulted := ifp.callOutput(e, sel, verdicts)
	if f.proto != 0 {
		for i := 0; i < k; i++ {
			pkts[v.sel[i]] = sel[i]
		}
	}
	bytes := 0
	for _, m := range sel {
		bytes += m.PktLen()
	}
	stopped := ifp.account(e, len(sel), bytes, verdicts, faulted)
	if v.capture != nil {
		ifp.captureAll(e.Name, ifp.filters.Name(), hook.Out, sel, nil, verdicts)
	}
	if stopped == 0 {
		return len(pkts)
	}
	j, s := 0, 0
	for i, m := range pkts {
		vd := nke.Continue
		if f.proto == 0 {
			vd = verdicts[i]
		} else if s < k && v.sel[s] == i {
			vd = verdicts[s]
			s++
		}
		switch vd {
		case nke.Continue:
			pkts[j] = m
			j++
		case nke.Drop:
			m.Free()
			ifp.stats.txFilterDrops.Add(1)
		case nke.Swallow:
			m.SetHolder(e.ID)
			ifp.stats.txSwallowed.Add(1)
		}
	}
	return j
}

func (ifp *Interface) callOutput(e *hook.Entry[*ifFilter], pkts []*mbuf.Mbuf, verdicts []nke.Verdict) (faulted int) {
	f := e.Filter
	v := &ifp.fv
	v.calls++
	var start time.Time
	if v.calls%hook.SampleEvery == 0 {
		start = time.Now()
	}
	defer func() {
		if r := recover(); r != nil {
			e.Fault(r)
			if f.outB != nil {
				faulted = len(pkts)
			}
			return
		}
		if !start.IsZero() {
			e.Stats.AddSample(0, uint64(len(pkts)), uint64(time.Since(start)))
		}
	}()
	if f.outB != nil {
		f.outB.FilterOutputBurst(ifp, pkts, verdicts)
		return -1
	}
	for i := range pkts {
		faulted = i
		verdicts[i] = f.out.FilterOutput(ifp, etherType(pkts[i]), &pkts[i])
	}
	return -1
}

// event tells the filters, then the protocols, about an interface event.
func (ifp *Interface) event(ev nke.Event) {
	defer ifp.protoEvent(ev)
	if ifp.filters.Empty() {
		return
	}
	s := ifp.filters.Acquire()
	defer s.Release()
	for _, e := range s.Entries {
		if f := e.Filter; f.ev != nil {
			e.Guard(func() { f.ev.FilterEvent(ifp, f.proto, ev) })
		}
	}
}

// Ioctl runs an interface ioctl through the filters with Apple's rules
// (dlil_ioctl): a filter returning nil handled it and the next filters see
// it too; ErrNotMine passes; ErrSwallowed stops it with success; another
// error stops it with that error. The protocol attached for proto sees
// it next, with the same rules. With nobody handling it the call fails
// with ErrUnknownIoctl: the interface itself has no ioctls yet.
func (ifp *Interface) Ioctl(proto uint16, cmd uint32, arg []byte) error {
	handled, stop, err := ifp.filterIoctl(proto, cmd, arg)
	if stop {
		return err
	}
	if ok, err := ifp.protoIoctl(proto, cmd, arg); ok || err != nil {
		return err
	}
	if handled {
		return nil
	}
	return fmt.Errorf("ifnet %s: ioctl %#x: %w", ifp.cfg.Name, cmd, ErrUnknownIoctl)
}

// filterIoctl runs the ioctl through the filters: handled if one took it
// and let it go on, stop (with the call's result) if one ended it.
func (ifp *Interface) filterIoctl(proto uint16, cmd uint32, arg []byte) (handled, stop bool, _ error) {
	s := ifp.filters.Acquire()
	defer s.Release()
	for _, e := range s.Entries {
		f := e.Filter
		if f.ioctl == nil || !f.matches(proto) {
			continue
		}
		var err error
		if e.Guard(func() { err = f.ioctl.FilterIoctl(ifp, proto, cmd, arg) }) {
			err = fmt.Errorf("ifnet %s: filter %s panicked in ioctl %#x", ifp.cfg.Name, e.Name, cmd)
		}
		switch {
		case err == nil:
			handled = true
		case errors.Is(err, nke.ErrNotMine):
		case errors.Is(err, nke.ErrSwallowed):
			return true, true, nil
		default:
			return true, true, err
		}
	}
	return handled, false, nil
}
