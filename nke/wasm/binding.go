package wasm

import (
	"sync/atomic"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/nke/wasm/abi"
)

// Layer is a hook layer a module can be bound to.
type Layer uint8

// Layers wasm NKEs support. Protocols and socket filters are not (yet)
// part of ABI 1.
const (
	LayerRaw       Layer = iota + 1 // raw ring hook (nke.RawFilter)
	LayerInterface                  // interface filter, in and out
	LayerIP                         // IP filter of one family, in and out
)

func (l Layer) String() string {
	switch l {
	case LayerRaw:
		return "raw"
	case LayerInterface:
		return "interface"
	case LayerIP:
		return "ip"
	}
	return "layer(?)"
}

// Binding is an instance bound to one layer (and family): the filter value
// a hook calls. Several bindings of one instance share its memory and
// state and are serialised by it.
type Binding struct {
	inst    *Instance
	layer   Layer
	hookIn  int
	hookOut int
	burst   bool
	link    nke.Link
	ip      nke.IPHook
	self    atomic.Pointer[nke.Attachment]
	selfID  atomic.Uint64
	selfFn  func() nke.Attachment
	anyFam  bool // LayerIP with family 0: the hook from the packets
}

// Bind binds the instance to a layer: fam is the IP family for LayerIP
// (ignored otherwise; 0 takes it from each burst's first packet, for a
// value attached to either family), burst selects the burst form of the
// callbacks.
func (i *Instance) Bind(l Layer, fam nke.IPFamily, burst bool) *Binding {
	b := &Binding{inst: i, layer: l, burst: burst}
	switch l {
	case LayerRaw:
		b.hookIn = abi.HookRaw
	case LayerInterface:
		b.hookIn, b.hookOut = abi.HookIfIn, abi.HookIfOut
	case LayerIP:
		b.hookIn, b.hookOut = abi.HookIP4In, abi.HookIP4Out
		b.anyFam = fam == 0
		if fam == nke.IPv6 {
			b.hookIn, b.hookOut = abi.HookIP6In, abi.HookIP6Out
		}
	}
	return b
}

// WithLink sets the interface a raw or interface binding injects into
// (and whose pool injected packets come from). It returns b.
func (b *Binding) WithLink(l nke.Link) *Binding { b.link = l; return b }

// WithIPHook sets the hook an IP binding injects into. It returns b.
func (b *Binding) WithIPHook(h nke.IPHook) *Binding { b.ip = h; return b }

// SetAttachment tells the binding its attachment, once attached: the
// reference of its IP injections, the injector of its interface ones,
// and what abi.FlagMine is computed against.
func (b *Binding) SetAttachment(a nke.Attachment) {
	if a == nil {
		return
	}
	b.self.Store(&a)
	b.selfID.Store(a.ID())
}

// WithSelf gives the binding a function returning its attachment once
// attached, for callers that attach it themselves and cannot call
// SetAttachment before the first packet. It returns b.
func (b *Binding) WithSelf(self func() nke.Attachment) *Binding { b.selfFn = self; return b }

// id returns the attachment's id, asking selfFn the first time.
func (b *Binding) id() uint64 {
	if id := b.selfID.Load(); id != 0 || b.selfFn == nil {
		return id
	}
	if a := b.selfFn(); a != nil {
		b.SetAttachment(a)
		return a.ID()
	}
	return 0
}

// Attachment is the binding's attachment, nil before SetAttachment.
func (b *Binding) Attachment() nke.Attachment {
	if p := b.self.Load(); p != nil {
		return *p
	}
	if b.id() != 0 {
		return *b.self.Load()
	}
	return nil
}

// Instance is the bound instance.
func (b *Binding) Instance() *Instance { return b.inst }

// Filter returns the value to put in the layer's spec: an
// nke.RawFilter, an interface filter (input and output) or an IP filter
// (input and output), in the burst form if the binding was made so.
func (b *Binding) Filter() any {
	switch {
	case b.layer == LayerRaw && b.burst:
		return rawBurst{b}
	case b.layer == LayerRaw:
		return rawOne{b}
	case b.layer == LayerInterface && b.burst:
		return ifBurst{b}
	case b.layer == LayerInterface:
		return ifOne{b}
	case b.burst:
		return ipBurst{b}
	}
	return ipOne{b}
}

func (b *Binding) canInject() bool {
	if b.layer == LayerIP {
		return b.ip != nil
	}
	return b.link != nil
}

func (b *Binding) pool() *mbuf.Pool {
	if b.link != nil {
		return b.link.Pool()
	}
	return nil
}

// run calls the module for a burst of packets: their bytes (up to the
// snap length) copied into its buffer, one nke_filter call per
// abi.MaxBurst packets or per buffer's worth. aux and proto are the
// descriptor fields (nil: from ether, or 0). A fault panics with the
// *Fault, after the lock is released, for the hook to handle.
func (b *Binding) run(hook int, pkts []*mbuf.Mbuf, offsets []int, protos []uint8, ether uint16, frames [][]byte, frame1 []byte, verdicts []nke.Verdict) {
	if b.anyFam && len(pkts) > 0 {
		if d := pkts[0].Bytes(); len(d) > 0 && d[0]>>4 == 6 {
			hook += abi.HookIP6In - abi.HookIP4In
		}
	}
	i := b.inst
	var inj [maxPending]*mbuf.Mbuf
	var injW [maxPending]uint8
	i.mu.Lock()
	if f := i.fault.Load(); f != nil {
		i.mu.Unlock()
		panic(f)
	}
	self := b.id()
	dataEnd := int(i.bufSize)
	for k := 0; k < len(pkts); {
		mem := i.memory()
		if uint64(i.buf)+uint64(i.bufSize) > uint64(len(mem)) {
			f := i.faultWith(FaultBadResult, hook, 0, errBufferGone)
			i.mu.Unlock()
			panic(f)
		}
		buf := mem[i.buf : i.buf+i.bufSize]
		n, data := 0, abi.DataOffset
		for j := k; j < len(pkts) && n < abi.MaxBurst; j++ {
			m := pkts[j]
			pl := m.PktLen()
			cl := pl
			if i.snap > 0 && cl > i.snap {
				cl = i.snap
			}
			cl = min(cl, dataEnd-abi.DataOffset)
			if data+cl > dataEnd {
				break // the next call takes it
			}
			m.CopyOut(buf[data : data+cl])
			d := buf[n*abi.DescSize : (n+1)*abi.DescSize]
			var flags uint8
			if m.Tags() == 0 {
				// No tag, no provenance: skip the lookup.
			} else if p, ok := nke.InjectedBy(m); ok {
				flags |= abi.FlagInjected
				if self != 0 && p.Injector == self {
					flags |= abi.FlagMine
				}
			}
			if cl < pl {
				flags |= abi.FlagTruncated
			}
			aux, proto := ether, uint8(0)
			switch {
			case offsets != nil:
				aux, proto = uint16(offsets[j]), protos[j]
			case frames != nil:
				aux = etherTypeOf(frames[j])
			}
			putDesc(d, uint32(data), uint32(cl), uint32(pl), aux, proto, flags)
			i.cur.pk[n], i.cur.off[n], i.cur.cl[n] = m, uint32(data), uint32(cl)
			n++
			data += cl
		}
		if err := b.call(hook, n, true); err != nil {
			i.mu.Unlock()
			panic(err)
		}
		mem = i.memory()
		buf = mem[i.buf : i.buf+i.bufSize]
		for j := 0; j < n; j++ {
			d := buf[j*abi.DescSize:]
			v, vf := d[abi.DescVerdict], d[abi.DescVFlags]
			if v > abi.VerdictSwallow {
				f := i.faultWith(FaultBadResult, hook, 0, badVerdict(j, v))
				i.cur.reset()
				i.mu.Unlock()
				panic(f)
			}
			verdicts[k+j] = abiVerdicts[v]
			i.verdicts[abiVerdicts[v]].Add(1)
			if vf&abi.VFlagModified != 0 {
				off, cl := i.cur.off[j], i.cur.cl[j]
				i.cur.pk[j].CopyBack(0, buf[off:off+cl])
			}
		}
		i.packets.Add(uint64(n))
		k += n
	}
	ninj := i.cur.ninj
	copy(inj[:], i.cur.inj[:ninj])
	copy(injW[:], i.cur.injW[:ninj])
	i.cur.ninj = 0 // taken: reset must not free them
	i.cur.reset()
	i.mu.Unlock()
	for j, v := range verdicts[:len(pkts)] {
		if v != nke.Swallow {
			continue
		}
		fr := frame1
		if frames != nil {
			fr = frames[j]
		}
		b.swallowed(hook, pkts[j], fr)
	}
	b.inject(hook, inj[:ninj], injW[:ninj])
}

// runRaw is run for the raw hook: frames are bytes in rx buffers.
func (b *Binding) runRaw(frames [][]byte, verdicts []nke.RawVerdict) {
	i := b.inst
	var inj [maxPending]*mbuf.Mbuf
	var injW [maxPending]uint8
	i.mu.Lock()
	if f := i.fault.Load(); f != nil {
		i.mu.Unlock()
		panic(f)
	}
	dataEnd := int(i.bufSize)
	for k := 0; k < len(frames); {
		mem := i.memory()
		if uint64(i.buf)+uint64(i.bufSize) > uint64(len(mem)) {
			f := i.faultWith(FaultBadResult, abi.HookRaw, 0, errBufferGone)
			i.mu.Unlock()
			panic(f)
		}
		buf := mem[i.buf : i.buf+i.bufSize]
		n, data := 0, abi.DataOffset
		for j := k; j < len(frames) && n < abi.MaxBurst; j++ {
			fr := frames[j]
			cl := len(fr)
			if i.snap > 0 && cl > i.snap {
				cl = i.snap
			}
			cl = min(cl, dataEnd-abi.DataOffset)
			if data+cl > dataEnd {
				break
			}
			copy(buf[data:data+cl], fr)
			var flags uint8
			if cl < len(fr) {
				flags = abi.FlagTruncated
			}
			putDesc(buf[n*abi.DescSize:], uint32(data), uint32(cl), uint32(len(fr)), etherTypeOf(fr), 0, flags)
			i.cur.off[n], i.cur.cl[n] = uint32(data), uint32(cl)
			n++
			data += cl
		}
		if err := b.call(abi.HookRaw, n, false); err != nil {
			i.mu.Unlock()
			panic(err)
		}
		mem = i.memory()
		buf = mem[i.buf : i.buf+i.bufSize]
		for j := 0; j < n; j++ {
			d := buf[j*abi.DescSize:]
			v, vf := d[abi.DescVerdict], d[abi.DescVFlags]
			if v > abi.VerdictSwallow {
				f := i.faultWith(FaultBadResult, abi.HookRaw, 0, badVerdict(j, v))
				i.cur.reset()
				i.mu.Unlock()
				panic(f)
			}
			verdicts[k+j] = rawVerdicts[v]
			i.verdicts[abiVerdicts[v]].Add(1)
			if vf&abi.VFlagModified != 0 {
				off, cl := i.cur.off[j], i.cur.cl[j]
				copy(frames[k+j], buf[off:off+cl])
			}
		}
		i.packets.Add(uint64(n))
		k += n
	}
	ninj := i.cur.ninj
	copy(inj[:], i.cur.inj[:ninj])
	copy(injW[:], i.cur.injW[:ninj])
	i.cur.ninj = 0 // taken: reset must not free them
	i.cur.reset()
	i.mu.Unlock()
	b.inject(abi.HookRaw, inj[:ninj], injW[:ninj])
}

// The ABI's verdict codes (abi.Verdict*) as the KPI's.
var (
	abiVerdicts = [3]nke.Verdict{nke.Continue, nke.Drop, nke.Swallow}
	rawVerdicts = [3]nke.RawVerdict{nke.RawPass, nke.RawDrop, nke.RawTransmit}
)

// call makes one nke_filter call for n descriptors.
//
// +checklocks:b.inst.mu
func (b *Binding) call(hook, n int, withPkts bool) error {
	i := b.inst
	i.cur.hook, i.cur.b, i.cur.n, i.cur.hasPkts = hook, b, n, withPkts
	i.stack[0], i.stack[1] = uint64(hook), uint64(n)
	r, err := i.call(i.fnFilter, hook, 2)
	i.calls.Add(1)
	if err != nil {
		i.cur.reset()
		return err
	}
	if rc := int32(r); rc != 0 {
		i.cur.reset()
		return i.faultWith(FaultBadResult, hook, 0, filterResult(rc))
	}
	i.cur.n = 0
	return nil
}

// swallowed hands a swallowed packet to Host.Swallowed, or frees it.
func (b *Binding) swallowed(hook int, m *mbuf.Mbuf, frame []byte) {
	if h := b.inst.host.Swallowed; h != nil {
		h(Swallowed{Hook: hook, M: m, Frame: frame, Binding: b, Self: b.Attachment()})
		return
	}
	m.Free()
}

// inject carries out the injections the module queued during the call.
func (b *Binding) inject(hook int, ms []*mbuf.Mbuf, where []uint8) {
	i := b.inst
	for k, m := range ms {
		var err error
		self := b.Attachment()
		switch {
		case b.layer == LayerIP && where[k] == abi.InjectInput:
			if err = b.ip.InjectIPInput(m, self); err != nil {
				m.Free() // still ours on error
			}
		case b.layer == LayerIP:
			err = b.ip.InjectIPOutput(m, self)
		case where[k] == abi.InjectInput:
			err = b.link.InjectInput(m, self)
		default:
			err = b.link.InjectOutput(m, self)
		}
		if err != nil {
			i.injectErrs.Add(1)
		} else {
			i.injected.Add(1)
		}
	}
}

func putDesc(d []byte, off, cl, pl uint32, aux uint16, proto, flags uint8) {
	_ = d[abi.DescSize-1]
	le.PutUint32(d[abi.DescOff:], off)
	le.PutUint32(d[abi.DescCapLen:], cl)
	le.PutUint32(d[abi.DescPktLen:], pl)
	le.PutUint16(d[abi.DescAux:], aux)
	d[abi.DescProto], d[abi.DescFlags] = proto, flags
	d[abi.DescVerdict], d[abi.DescVFlags] = 0, 0
	le.PutUint32(d[20:], 0)
	d[18], d[19] = 0, 0
}

// etherTypeOf reads the EtherType at the end of an Ethernet header.
func etherTypeOf(frame []byte) uint16 {
	if len(frame) < 14 {
		return 0
	}
	return uint16(frame[12])<<8 | uint16(frame[13])
}

// The filter values.

type ifOne struct{ b *Binding }

func (x ifOne) FilterInput(_ nke.Interface, proto uint16, m **mbuf.Mbuf, frame []byte) nke.Verdict {
	var v [1]nke.Verdict
	pk := [1]*mbuf.Mbuf{*m}
	x.b.run(abi.HookIfIn, pk[:], nil, nil, proto, nil, frame, v[:])
	return v[0]
}

func (x ifOne) FilterOutput(_ nke.Interface, proto uint16, m **mbuf.Mbuf) nke.Verdict {
	var v [1]nke.Verdict
	pk := [1]*mbuf.Mbuf{*m}
	x.b.run(abi.HookIfOut, pk[:], nil, nil, proto, nil, nil, v[:])
	return v[0]
}

type ifBurst struct{ b *Binding }

func (x ifBurst) FilterInputBurst(_ nke.Interface, pkts []*mbuf.Mbuf, frames [][]byte, verdicts []nke.Verdict) {
	x.b.run(abi.HookIfIn, pkts, nil, nil, 0, frames, nil, verdicts)
}

func (x ifBurst) FilterOutputBurst(_ nke.Interface, pkts []*mbuf.Mbuf, verdicts []nke.Verdict) {
	x.b.run(abi.HookIfOut, pkts, nil, nil, 0, nil, nil, verdicts)
}

type ipOne struct{ b *Binding }

func (x ipOne) FilterIPInput(m **mbuf.Mbuf, offset int, proto uint8) nke.Verdict {
	var v [1]nke.Verdict
	pk := [1]*mbuf.Mbuf{*m}
	off := [1]int{offset}
	pr := [1]uint8{proto}
	x.b.run(x.b.hookIn, pk[:], off[:], pr[:], 0, nil, nil, v[:])
	return v[0]
}

func (x ipOne) FilterIPOutput(m **mbuf.Mbuf) nke.Verdict {
	var v [1]nke.Verdict
	pk := [1]*mbuf.Mbuf{*m}
	x.b.run(x.b.hookOut, pk[:], nil, nil, 0, nil, nil, v[:])
	return v[0]
}

type ipBurst struct{ b *Binding }

func (x ipBurst) FilterIPInputBurst(pkts []*mbuf.Mbuf, offsets []int, protos []uint8, verdicts []nke.Verdict) {
	x.b.run(x.b.hookIn, pkts, offsets, protos, 0, nil, nil, verdicts)
}

func (x ipBurst) FilterIPOutputBurst(pkts []*mbuf.Mbuf, verdicts []nke.Verdict) {
	x.b.run(x.b.hookOut, pkts, nil, nil, 0, nil, nil, verdicts)
}

type rawOne struct{ b *Binding }

func (x rawOne) FilterRaw(_ nke.Interface, frame []byte) nke.RawVerdict {
	var v [1]nke.RawVerdict
	fr := [1][]byte{frame}
	x.b.runRaw(fr[:], v[:])
	return v[0]
}

type rawBurst struct{ b *Binding }

func (x rawBurst) FilterRawBurst(_ nke.Interface, frames [][]byte, verdicts []nke.RawVerdict) {
	x.b.runRaw(frames, verdicts)
}
