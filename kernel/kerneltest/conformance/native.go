package conformance

import (
	"fmt"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Native is the Go backend: filters are Go values calling the KPI
// directly. It is the reference the suite is written against.
var Native Impl = native{}

type native struct{}

func (native) Name() string { return "native" }

func (native) InterfaceFilter(name string, b Behaviour) any {
	f := &goFilter{name: name, b: b}
	if b.Burst {
		return ifBurst{f}
	}
	return ifOne{f}
}

func (native) IPFilter(name string, b Behaviour) any {
	f := &goFilter{name: name, b: b}
	if b.Burst {
		return ipBurst{f}
	}
	return ipOne{f}
}

func (native) RawHook(name string, b Behaviour) any {
	f := &goFilter{name: name, b: b}
	if b.Burst {
		return rawBurst{f}
	}
	return rawOne{f}
}

// goFilter carries out a Behaviour.
type goFilter struct {
	name string
	b    Behaviour
}

// decide is the Behaviour for one packet: its bytes, and the packet (nil
// at the raw layer). It reports the call and whether the packet was
// marked.
func (f *goFilter) decide(dir Dir, b []byte, m *mbuf.Mbuf) (nke.Verdict, Call, bool) {
	marker, ok := MarkerOf(b)
	if !ok {
		return nke.Continue, Call{}, false
	}
	c := Call{Filter: f.name, Dir: dir, Marker: marker}
	if m != nil {
		_, c.Injected = nke.InjectedBy(m)
		if f.b.Self != nil {
			c.Mine = nke.InjectedByMe(m, f.b.Self())
		}
		if v, ok := MarkerTag(m); ok && v == marker {
			c.Tagged = true
		}
	}
	if f.b.Record != nil {
		f.b.Record.Add(c)
	}
	if f.b.OnCall != nil {
		f.b.OnCall(c)
	}
	if f.b.PanicOn != 0 && marker == f.b.PanicOn {
		panic(fmt.Sprintf("conformance: filter %s panics on marker %d, as told", f.name, marker))
	}
	if m != nil {
		if f.b.PutTag {
			if err := PutMarkerTag(m, marker); err != nil {
				panic(err)
			}
		}
		if c.Mine && f.b.PassMine || c.Injected && f.b.PassInjected {
			return nke.Continue, c, true
		}
	}
	return f.b.Verdicts[marker], c, true
}

// keep hands a swallowed packet to Keep, or frees it.
func (f *goFilter) keep(c Call, m *mbuf.Mbuf, frame []byte) {
	if f.b.Keep == nil {
		m.Free()
		return
	}
	k := Kept{Call: c, M: m}
	if frame != nil {
		k.Frame = append([]byte(nil), frame...)
	}
	f.b.Keep(k)
}

func bytesOf(m *mbuf.Mbuf) []byte {
	b := make([]byte, m.PktLen())
	m.CopyOut(b)
	return b
}

// one decides for one packet and keeps it if swallowed.
func (f *goFilter) one(dir Dir, m *mbuf.Mbuf, frame []byte) nke.Verdict {
	v, c, _ := f.decide(dir, bytesOf(m), m)
	if v == nke.Swallow {
		f.keep(c, m, frame)
	}
	return v
}

// burst decides for each packet, then keeps the swallowed ones.
func (f *goFilter) burst(dir Dir, pkts []*mbuf.Mbuf, frames [][]byte, verdicts []nke.Verdict) {
	calls := make([]Call, len(pkts))
	for i, m := range pkts {
		verdicts[i], calls[i], _ = f.decide(dir, bytesOf(m), m)
	}
	for i, v := range verdicts {
		if v == nke.Swallow {
			var fr []byte
			if frames != nil {
				fr = frames[i]
			}
			f.keep(calls[i], pkts[i], fr)
		}
	}
}

type ifOne struct{ f *goFilter }

func (x ifOne) FilterInput(_ nke.Interface, _ uint16, m **mbuf.Mbuf, frame []byte) nke.Verdict {
	return x.f.one(In, *m, frame)
}

func (x ifOne) FilterOutput(_ nke.Interface, _ uint16, m **mbuf.Mbuf) nke.Verdict {
	return x.f.one(Out, *m, nil)
}

type ifBurst struct{ f *goFilter }

func (x ifBurst) FilterInputBurst(_ nke.Interface, pkts []*mbuf.Mbuf, frames [][]byte, verdicts []nke.Verdict) {
	x.f.burst(In, pkts, frames, verdicts)
}

func (x ifBurst) FilterOutputBurst(_ nke.Interface, pkts []*mbuf.Mbuf, verdicts []nke.Verdict) {
	x.f.burst(Out, pkts, nil, verdicts)
}

type ipOne struct{ f *goFilter }

func (x ipOne) FilterIPInput(m **mbuf.Mbuf, _ int, _ uint8) nke.Verdict { return x.f.one(In, *m, nil) }
func (x ipOne) FilterIPOutput(m **mbuf.Mbuf) nke.Verdict                { return x.f.one(Out, *m, nil) }

type ipBurst struct{ f *goFilter }

func (x ipBurst) FilterIPInputBurst(pkts []*mbuf.Mbuf, _ []int, _ []uint8, verdicts []nke.Verdict) {
	x.f.burst(In, pkts, nil, verdicts)
}

func (x ipBurst) FilterIPOutputBurst(pkts []*mbuf.Mbuf, verdicts []nke.Verdict) {
	x.f.burst(Out, pkts, nil, verdicts)
}

// rawVerdict maps a Behaviour's verdict to the raw layer's.
func rawVerdict(v nke.Verdict) nke.RawVerdict {
	switch v {
	case nke.Continue:
		return nke.RawPass
	case nke.Swallow:
		return nke.RawTransmit
	}
	return nke.RawDrop
}

type rawOne struct{ f *goFilter }

func (x rawOne) FilterRaw(_ nke.Interface, frame []byte) nke.RawVerdict {
	v, _, _ := x.f.decide(Raw, frame, nil)
	return rawVerdict(v)
}

type rawBurst struct{ f *goFilter }

func (x rawBurst) FilterRawBurst(_ nke.Interface, frames [][]byte, verdicts []nke.RawVerdict) {
	for i, fr := range frames {
		v, _, _ := x.f.decide(Raw, fr, nil)
		verdicts[i] = rawVerdict(v)
	}
}
