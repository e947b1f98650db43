package ifnet

import (
	"time"

	"fmt"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// The raw ring hook runs first on each received burst, before demux or
// any parsing, over the frame bytes in the rx buffers (XDP's place). With
// no hook attached it costs one atomic load per burst.

type rawFilter struct {
	one   nke.RawFilter
	burst nke.RawBurstFilter
}

// AttachRawHook attaches a raw ring hook; the handle's Detach unlinks it.
func (ifp *Interface) AttachRawHook(spec nke.RawHookSpec) (nke.Attachment, error) {
	if err := spec.Check(); err != nil {
		return nil, fmt.Errorf("ifnet %s: %w", ifp.cfg.Name, err)
	}
	f := &rawFilter{}
	f.one, _ = spec.Filter.(nke.RawFilter)
	f.burst, _ = spec.Filter.(nke.RawBurstFilter)
	h, err := ifp.raw.Attach(hook.Spec[*rawFilter]{Name: spec.Name, Order: spec.Order, Filter: f, Detached: spec.Detached})
	if err != nil {
		return nil, err
	}
	return h, nil
}

// RawHooks lists the attached raw hooks with their counters.
func (ifp *Interface) RawHooks() []FilterStatus {
	var out []FilterStatus
	for _, e := range ifp.raw.Entries() {
		out = append(out, FilterStatus{Name: e.Name, Counters: e.Stats.Read()})
	}
	return out
}

// rawInput runs the raw hooks over pkts and returns how many go on to
// demux (compacted to the front, in order). Frames a hook sends back are
// queued for the driver at the head of the next transmit burst.
func (ifp *Interface) rawInput(pkts []*mbuf.Mbuf) int {
	v := &ifp.fv
	n := len(pkts)
	for i, m := range pkts {
		v.selFrame[i] = m.Bytes()
	}
	s := ifp.raw.Acquire()
	defer s.Release()
	c := ifp.raw.Capturer()
	for _, e := range s.Entries {
		verdicts := v.raw[:n]
		clear(verdicts)
		if c != nil {
			ifp.captureRaw(c, e.Name, pkts[:n], nil)
		}
		ifp.callRaw(e, v.selFrame[:n], verdicts)
		if c != nil {
			ifp.captureRaw(c, e.Name, pkts[:n], verdicts)
		}
		var b hook.Burst
		b.Packets = uint64(n)
		j := 0
		for i := 0; i < n; i++ {
			b.Bytes += uint64(len(v.selFrame[i]))
			switch verdicts[i] {
			case nke.RawPass:
				pkts[j], v.selFrame[j] = pkts[i], v.selFrame[i]
				j++
				continue
			case nke.RawTransmit:
				if len(ifp.bounce) < cap(ifp.bounce) {
					b.Verdicts[nke.Swallow]++ // taken off the receive path
					ifp.bounce = append(ifp.bounce, pkts[i])
					ifp.stats.rxBounced.Add(1)
					continue
				}
				// No room this burst: dropped, as XDP_TX drops on a
				// full ring.
				b.Verdicts[nke.Drop]++
			default:
				b.Verdicts[nke.Drop]++
			}
			pkts[i].Free()
			ifp.stats.rxRawDrops.Add(1)
		}
		b.Verdicts[nke.Continue] = uint64(j)
		e.Stats.Add(0, &b)
		n = j
		if n == 0 {
			break
		}
	}
	return n
}

// callRaw calls one raw hook over frames; a panic detaches it and drops
// what it was handling, as at every hook: the burst for the burst form,
// the frame for the per-packet form (the frames before it keep their
// verdicts, those after it pass, the hook never saw them).
func (ifp *Interface) callRaw(e *hook.Entry[*rawFilter], frames [][]byte, verdicts []nke.RawVerdict) {
	faulted := len(frames) // the burst form: all of them
	v := &ifp.fv
	v.calls++
	var start time.Time
	if v.calls%hook.SampleEvery == 0 {
		start = time.Now()
	}
	defer func() {
		if r := recover(); r != nil {
			e.Fault(r)
			for i := range verdicts {
				switch {
				case faulted == len(frames) || i == faulted:
					verdicts[i] = nke.RawDrop
				case i > faulted:
					verdicts[i] = nke.RawPass
				}
			}
			return
		}
		if !start.IsZero() {
			e.Stats.AddSample(0, uint64(len(frames)), uint64(time.Since(start)))
		}
	}()
	if f := e.Filter; f.burst != nil {
		f.burst.FilterRawBurst(ifp, frames, verdicts)
	} else {
		for i, fr := range frames {
			faulted = i
			verdicts[i] = f.one.FilterRaw(ifp, fr)
		}
	}
	for i, vd := range verdicts {
		if vd > nke.RawTransmit {
			verdicts[i] = nke.RawDrop // not a verdict
		}
	}
}

// captureRaw shows a raw hook's frames to c, before it ran (verdicts nil)
// or after (transmit is reported as a swallow).
func (ifp *Interface) captureRaw(c hook.Capturer, name string, pkts []*mbuf.Mbuf, verdicts []nke.RawVerdict) {
	p := hook.Point{Hook: ifp.raw.Name(), Filter: name, After: verdicts != nil}
	for i, m := range pkts {
		if verdicts != nil {
			switch verdicts[i] {
			case nke.RawPass:
				p.Verdict = nke.Continue
			case nke.RawTransmit:
				p.Verdict = nke.Swallow
			default:
				p.Verdict = nke.Drop
			}
		}
		c.Capture(p, nil, m)
	}
}
