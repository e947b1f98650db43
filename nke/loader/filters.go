package loader

import (
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// The wrappers the loader attaches in an NKE's place. Each mirrors the
// forms the NKE's filter has (per packet or burst, per direction), so
// that the kernel calls it the way it would call the filter; a direction
// the filter lacks passes. They check the verdicts against the NKE's
// capabilities (instance.verdict).

const burstScratch = 256

// replaced returns a copy of pkts for checking replacement afterwards,
// or nil when the instance may modify.
func saved(inst *instance, buf *[burstScratch]*mbuf.Mbuf, pkts []*mbuf.Mbuf) []*mbuf.Mbuf {
	if inst.can.modify {
		return nil
	}
	var s []*mbuf.Mbuf
	if len(pkts) <= burstScratch {
		s = buf[:len(pkts)]
	} else {
		s = make([]*mbuf.Mbuf, len(pkts))
	}
	copy(s, pkts)
	return s
}

func checkBurst(inst *instance, orig, pkts []*mbuf.Mbuf, verdicts []nke.Verdict) {
	for i := range verdicts {
		var o *mbuf.Mbuf
		if orig != nil {
			o = orig[i]
		}
		verdicts[i] = inst.verdict(verdicts[i], o, pkts[i])
	}
}

// Interface filters.

type ifCommon struct{ s *slot }

func (w ifCommon) FilterEvent(ifp nke.Interface, proto uint16, ev nke.Event) {
	im := w.s.enter()
	if im == nil {
		return
	}
	defer im.exit()
	if f := im.ifEvent; f != nil {
		f.FilterEvent(ifp, proto, ev)
	}
}

func (w ifCommon) FilterIoctl(ifp nke.Interface, proto uint16, cmd uint32, arg []byte) error {
	im := w.s.enter()
	if im == nil {
		return nke.ErrNotMine
	}
	defer im.exit()
	if f := im.ifIoctl; f != nil {
		return f.FilterIoctl(ifp, proto, cmd, arg)
	}
	return nke.ErrNotMine
}

type ifIn struct{ s *slot }

func (w ifIn) FilterInput(ifp nke.Interface, proto uint16, m **mbuf.Mbuf, frame []byte) nke.Verdict {
	im := w.s.enter()
	if im == nil {
		return nke.Continue
	}
	defer im.exit()
	f := im.ifIn
	ok := f != nil
	if !ok {
		return nke.Continue
	}
	orig := *m
	v := f.FilterInput(ifp, proto, m, frame)
	return im.inst.verdict(v, orig, *m)
}

type ifInBurst struct{ s *slot }

func (w ifInBurst) FilterInputBurst(ifp nke.Interface, pkts []*mbuf.Mbuf, frames [][]byte, verdicts []nke.Verdict) {
	im := w.s.enter()
	if im == nil {
		return
	}
	defer im.exit()
	f := im.ifInB
	ok := f != nil
	if !ok {
		return
	}
	var buf [burstScratch]*mbuf.Mbuf
	orig := saved(im.inst, &buf, pkts)
	f.FilterInputBurst(ifp, pkts, frames, verdicts)
	checkBurst(im.inst, orig, pkts, verdicts)
}

type ifOut struct{ s *slot }

func (w ifOut) FilterOutput(ifp nke.Interface, proto uint16, m **mbuf.Mbuf) nke.Verdict {
	im := w.s.enter()
	if im == nil {
		return nke.Continue
	}
	defer im.exit()
	f := im.ifOut
	ok := f != nil
	if !ok {
		return nke.Continue
	}
	orig := *m
	v := f.FilterOutput(ifp, proto, m)
	return im.inst.verdict(v, orig, *m)
}

type ifOutBurst struct{ s *slot }

func (w ifOutBurst) FilterOutputBurst(ifp nke.Interface, pkts []*mbuf.Mbuf, verdicts []nke.Verdict) {
	im := w.s.enter()
	if im == nil {
		return
	}
	defer im.exit()
	f := im.ifOutB
	ok := f != nil
	if !ok {
		return
	}
	var buf [burstScratch]*mbuf.Mbuf
	orig := saved(im.inst, &buf, pkts)
	f.FilterOutputBurst(ifp, pkts, verdicts)
	checkBurst(im.inst, orig, pkts, verdicts)
}

type (
	ifPP struct {
		ifCommon
		ifIn
		ifOut
	}
	ifPB struct {
		ifCommon
		ifIn
		ifOutBurst
	}
	ifBP struct {
		ifCommon
		ifInBurst
		ifOut
	}
	ifBB struct {
		ifCommon
		ifInBurst
		ifOutBurst
	}
)

// ifWrapper returns the wrapper for an interface filter f and its form.
func ifWrapper(s *slot, f any) (any, string) {
	_, inB := f.(nke.InputBurstFilter)
	_, outB := f.(nke.OutputBurstFilter)
	c := ifCommon{s}
	switch {
	case inB && outB:
		return ifBB{c, ifInBurst{s}, ifOutBurst{s}}, "BB"
	case inB:
		return ifBP{c, ifInBurst{s}, ifOut{s}}, "BP"
	case outB:
		return ifPB{c, ifIn{s}, ifOutBurst{s}}, "PB"
	}
	return ifPP{c, ifIn{s}, ifOut{s}}, "PP"
}

// IP filters.

type ipIn struct{ s *slot }

func (w ipIn) FilterIPInput(m **mbuf.Mbuf, offset int, proto uint8) nke.Verdict {
	im := w.s.enter()
	if im == nil {
		return nke.Continue
	}
	defer im.exit()
	f := im.ipIn
	ok := f != nil
	if !ok {
		return nke.Continue
	}
	orig := *m
	v := f.FilterIPInput(m, offset, proto)
	return im.inst.verdict(v, orig, *m)
}

type ipInBurst struct{ s *slot }

func (w ipInBurst) FilterIPInputBurst(pkts []*mbuf.Mbuf, offsets []int, protos []uint8, verdicts []nke.Verdict) {
	im := w.s.enter()
	if im == nil {
		return
	}
	defer im.exit()
	f := im.ipInB
	ok := f != nil
	if !ok {
		return
	}
	var buf [burstScratch]*mbuf.Mbuf
	orig := saved(im.inst, &buf, pkts)
	f.FilterIPInputBurst(pkts, offsets, protos, verdicts)
	checkBurst(im.inst, orig, pkts, verdicts)
}

type ipOut struct{ s *slot }

func (w ipOut) FilterIPOutput(m **mbuf.Mbuf) nke.Verdict {
	im := w.s.enter()
	if im == nil {
		return nke.Continue
	}
	defer im.exit()
	f := im.ipOut
	ok := f != nil
	if !ok {
		return nke.Continue
	}
	orig := *m
	v := f.FilterIPOutput(m)
	return im.inst.verdict(v, orig, *m)
}

type ipOutBurst struct{ s *slot }

func (w ipOutBurst) FilterIPOutputBurst(pkts []*mbuf.Mbuf, verdicts []nke.Verdict) {
	im := w.s.enter()
	if im == nil {
		return
	}
	defer im.exit()
	f := im.ipOutB
	ok := f != nil
	if !ok {
		return
	}
	var buf [burstScratch]*mbuf.Mbuf
	orig := saved(im.inst, &buf, pkts)
	f.FilterIPOutputBurst(pkts, verdicts)
	checkBurst(im.inst, orig, pkts, verdicts)
}

type (
	ipPP struct {
		ipIn
		ipOut
	}
	ipPB struct {
		ipIn
		ipOutBurst
	}
	ipBP struct {
		ipInBurst
		ipOut
	}
	ipBB struct {
		ipInBurst
		ipOutBurst
	}
)

func ipWrapper(s *slot, f any) (any, string) {
	_, inB := f.(nke.IPInputBurstFilter)
	_, outB := f.(nke.IPOutputBurstFilter)
	switch {
	case inB && outB:
		return ipBB{ipInBurst{s}, ipOutBurst{s}}, "BB"
	case inB:
		return ipBP{ipInBurst{s}, ipOut{s}}, "BP"
	case outB:
		return ipPB{ipIn{s}, ipOutBurst{s}}, "PB"
	}
	return ipPP{ipIn{s}, ipOut{s}}, "PP"
}

// Raw ring hooks.

type rawOne struct{ s *slot }

func (w rawOne) FilterRaw(ifp nke.Interface, frame []byte) nke.RawVerdict {
	im := w.s.enter()
	if im == nil {
		return nke.RawPass
	}
	defer im.exit()
	f := im.raw
	ok := f != nil
	if !ok {
		return nke.RawPass
	}
	return im.inst.rawVerdict(f.FilterRaw(ifp, frame))
}

type rawBurst struct{ s *slot }

func (w rawBurst) FilterRawBurst(ifp nke.Interface, frames [][]byte, verdicts []nke.RawVerdict) {
	im := w.s.enter()
	if im == nil {
		return
	}
	defer im.exit()
	f := im.rawB
	ok := f != nil
	if !ok {
		return
	}
	f.FilterRawBurst(ifp, frames, verdicts)
	for i, v := range verdicts {
		verdicts[i] = im.inst.rawVerdict(v)
	}
}

func rawWrapper(s *slot, f any) (any, string) {
	if _, ok := f.(nke.RawBurstFilter); ok {
		return rawBurst{s}, "B"
	}
	return rawOne{s}, "P"
}
