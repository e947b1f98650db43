package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/bundle"
	"github.com/nke-harness/nke/nke/mbuf"
)

// ErrCapability reports an operation the NKE's manifest does not allow
// (an inject without the inject capability).
var ErrCapability = errors.New("loader: the NKE's manifest does not declare the capability")

// Handover is implemented by the nke.Kernel the loader gives an NKE's
// start routine: a small state hand-off for Replace. An NKE that wants
// its state carried to its next version calls SetExport in its start;
// the new version reads HandoverState in its start. (It lives here, not
// in nke, until the KPI takes it; an NKE can also assert the method set
// without importing the loader.)
type Handover interface {
	// HandoverState is the state the previous version exported, when
	// this start is a Replace with handover; nil otherwise.
	HandoverState() []byte
	// SetExport registers export, which a Replace with handover calls
	// on this version just before it starts the next one (the state as
	// of then; packets keep flowing to this version until the swap).
	SetExport(export func() ([]byte, error))
}

// kernel is the nke.Kernel an NKE's start gets: the guest's, with the
// attaches wrapped.
type kernel struct {
	base nke.Kernel
	inst *instance
}

var (
	_ nke.Kernel = (*kernel)(nil)
	_ Handover   = (*kernel)(nil)
)

func (k *kernel) Logf(format string, args ...any) { k.base.Logf(format, args...) }

func (k *kernel) HandoverState() []byte { return k.inst.handoverIn }

func (k *kernel) SetExport(export func() ([]byte, error)) {
	k.inst.mu.Lock()
	defer k.inst.mu.Unlock()
	k.inst.export = export
}

func (k *kernel) Links() []nke.Link {
	base := k.base.Links()
	out := make([]nke.Link, len(base))
	for i, l := range base {
		out[i] = &link{Link: l, inst: k.inst}
	}
	return out
}

func (k *kernel) IP() nke.IPHook {
	h := k.base.IP()
	if h == nil {
		return nil
	}
	return &ipHook{h: h, inst: k.inst}
}

func (k *kernel) Sockets() nke.SocketHook {
	h := k.base.Sockets()
	if h == nil {
		return nil
	}
	return &sockHook{h: h, inst: k.inst}
}

func (k *kernel) Control() nke.ControlHook {
	h := k.base.Control()
	if h == nil {
		return nil
	}
	return &ctlHook{h: h, inst: k.inst}
}

// order is the spec's order unless the manifest sets one.
func (inst *instance) order(o nke.Order) nke.Order {
	h := inst.b.Manifest.Harness
	if h.Priority != 0 || len(h.Before) > 0 || len(h.After) > 0 {
		return h.Order()
	}
	return o
}

// attach wraps an attach: the wrapper goes on the real hook (or, in a
// Replace, into the matching slot of the old version), the NKE gets an
// attachment of its own.
func (inst *instance) attach(key string, filter any, detached func(),
	wrap func(*slot, any) (any, string),
	real func(wrapper any, detached func()) (nke.Attachment, error)) (nke.Attachment, error) {
	im := newImpl(inst, filter, detached)
	s := &slot{key: key}
	wrapper, form := wrap(s, filter)
	s.form = form
	if old := inst.takeSlot(key, form); old != nil {
		a := &attachment{s: old, im: im, done: make(chan struct{})}
		a.staged.Store(true)
		old.bequeath(a)
		inst.addAttachment(a)
		return a, nil
	}
	s.cur.Store(im)
	ra, err := real(wrapper, s.onRealDetached)
	if err != nil {
		return nil, err
	}
	s.real = ra
	a := &attachment{s: s, im: im, done: make(chan struct{})}
	inst.addAttachment(a)
	return a, nil
}

// link is an nke.Link whose attaches and injects the loader wraps.
type link struct {
	nke.Link
	inst *instance
}

func (l *link) AttachFilter(spec nke.InterfaceFilterSpec) (nke.Attachment, error) {
	if err := spec.Check(); err != nil {
		return nil, err
	}
	key := fmt.Sprintf("interface %s %#04x %s", l.Name(), spec.Protocol, spec.Name)
	return l.inst.attach(key, spec.Filter, spec.Detached, ifWrapper, func(w any, det func()) (nke.Attachment, error) {
		spec.Filter, spec.Detached, spec.Order = w, det, l.inst.order(spec.Order)
		return l.Link.AttachFilter(spec)
	})
}

func (l *link) AttachRawHook(spec nke.RawHookSpec) (nke.Attachment, error) {
	if err := spec.Check(); err != nil {
		return nil, err
	}
	key := fmt.Sprintf("raw %s %s", l.Name(), spec.Name)
	return l.inst.attach(key, spec.Filter, spec.Detached, rawWrapper, func(w any, det func()) (nke.Attachment, error) {
		spec.Filter, spec.Detached, spec.Order = w, det, l.inst.order(spec.Order)
		return l.Link.AttachRawHook(spec)
	})
}

// AttachProto passes through: a protocol owns the frames demux gives it,
// there is no verdict to check. Its attachment is tracked for unload.
func (l *link) AttachProto(spec nke.ProtocolSpec) (nke.ProtocolAttachment, error) {
	a, err := l.Link.AttachProto(spec)
	if err != nil {
		return nil, err
	}
	l.inst.addPlain(a)
	return &protoAttachment{ProtocolAttachment: a, inst: l.inst}, nil
}

type protoAttachment struct {
	nke.ProtocolAttachment
	inst *instance
}

// Output sends the protocol's packet: an injection of the NKE's own.
func (p *protoAttachment) Output(m *mbuf.Mbuf, dest []byte) error {
	if !p.inst.can.inject {
		m.Free()
		return p.inst.refuse(bundle.CapInject, "send a packet from its protocol")
	}
	return p.ProtocolAttachment.Output(m, dest)
}

func (l *link) InjectInput(m *mbuf.Mbuf, from nke.Attachment) error {
	if !l.inst.can.inject {
		m.Free()
		return l.inst.refuse(bundle.CapInject, "inject a frame")
	}
	return l.Link.InjectInput(m, unwrap(from))
}

func (l *link) InjectOutput(m *mbuf.Mbuf, from nke.Attachment) error {
	if !l.inst.can.inject {
		m.Free()
		return l.inst.refuse(bundle.CapInject, "inject a frame")
	}
	return l.Link.InjectOutput(m, unwrap(from))
}

// unwrap gives the kernel its own attachment for one the loader made.
func unwrap(a nke.Attachment) nke.Attachment {
	if la, ok := a.(*attachment); ok {
		return la.s.real
	}
	if pa, ok := a.(*protoAttachment); ok {
		return pa.ProtocolAttachment
	}
	if sa, ok := a.(*plainAttachment); ok {
		return sa.Attachment
	}
	return a
}

type ipHook struct {
	h    nke.IPHook
	inst *instance
}

func (h *ipHook) AttachIPFilter(spec nke.IPFilterSpec) (nke.Attachment, error) {
	if err := spec.Check(); err != nil {
		return nil, err
	}
	key := fmt.Sprintf("ip %v %s", spec.Family, spec.Name)
	return h.inst.attach(key, spec.Filter, spec.Detached, ipWrapper, func(w any, det func()) (nke.Attachment, error) {
		spec.Filter, spec.Detached, spec.Order = w, det, h.inst.order(spec.Order)
		return h.h.AttachIPFilter(spec)
	})
}

func (h *ipHook) InjectIPInput(m *mbuf.Mbuf, ref nke.Attachment) error {
	if !h.inst.can.inject {
		return h.inst.refuse(bundle.CapInject, "inject an IP packet") // m stays the caller's
	}
	return h.h.InjectIPInput(m, unwrap(ref))
}

func (h *ipHook) InjectIPOutput(m *mbuf.Mbuf, ref nke.Attachment) error {
	if !h.inst.can.inject {
		m.Free() // consumed, error or not
		return h.inst.refuse(bundle.CapInject, "inject an IP packet")
	}
	return h.h.InjectIPOutput(m, unwrap(ref))
}

// sockHook registers socket filters wrapped (sockWrap: capabilities
// checked, no pause, no swap) with the manifest's order; injects are
// checked.
type sockHook struct {
	h    nke.SocketHook
	inst *instance
}

func (h *sockHook) RegisterSocketFilter(spec nke.SocketFilterSpec) (nke.Attachment, error) {
	if err := spec.Check(); err != nil {
		return nil, err
	}
	spec.Order = h.inst.order(spec.Order)
	spec.Filter = sockWrapper(h.inst, spec.Filter)
	a, err := h.h.RegisterSocketFilter(spec)
	if err != nil {
		return nil, err
	}
	h.inst.addPlain(a)
	return &plainAttachment{Attachment: a}, nil
}

func (h *sockHook) AttachSocketFilter(so nke.Socket, handle uint32) error {
	return h.h.AttachSocketFilter(so, handle)
}

func (h *sockHook) InjectDataIn(so nke.Socket, from netip.AddrPort, data, control *mbuf.Mbuf, flags nke.DataFlags, by nke.Attachment) error {
	if !h.inst.can.inject {
		return h.inst.refuse(bundle.CapInject, "inject socket data") // still the caller's
	}
	return h.h.InjectDataIn(so, from, data, control, flags, unwrap(by))
}

func (h *sockHook) InjectDataOut(so nke.Socket, to netip.AddrPort, data, control *mbuf.Mbuf, flags nke.DataFlags, by nke.Attachment) error {
	if !h.inst.can.inject {
		data.Free() // consumed, error or not
		control.Free()
		return h.inst.refuse(bundle.CapInject, "inject socket data")
	}
	return h.h.InjectDataOut(so, to, data, control, flags, unwrap(by))
}

// plainAttachment is an attachment the loader passes through; it keeps
// the kernel's ID, so InjectedByMe works.
type plainAttachment struct{ nke.Attachment }

// ctlHook registers the NKE's control endpoints through a proxy whose
// callbacks go to the version that is current: a Replace hands the
// endpoint to the new version, and the old version's clients are
// disconnected (they reconnect to the new one).
type ctlHook struct {
	h    nke.ControlHook
	inst *instance
}

func (h *ctlHook) RegisterControl(spec nke.ControlSpec) (nke.Control, error) {
	if err := spec.Check(); err != nil {
		return nil, err
	}
	if p := h.inst.takeControl(spec.Name); p != nil {
		c := &control{p: p, spec: spec, inst: h.inst}
		c.staged.Store(true)
		h.inst.addControl(c)
		return c, nil
	}
	p := &ctlProxy{units: map[uint32]*control{}}
	c := &control{p: p, spec: spec, inst: h.inst}
	p.mu.Lock()
	p.cur = c
	p.mu.Unlock()
	real, err := h.h.RegisterControl(nke.ControlSpec{
		Name: spec.Name, SendSize: spec.SendSize, RecvSize: spec.RecvSize,
		Connect:    p.connect,
		Disconnect: p.disconnect,
		Send:       p.send,
		SetOpt:     p.setOpt,
		GetOpt:     p.getOpt,
		Rcvd:       p.rcvd,
	})
	if err != nil {
		return nil, err
	}
	p.real = real
	h.inst.addControl(c)
	return c, nil
}

// ctlProxy is the endpoint registered with the kernel.
type ctlProxy struct {
	real nke.Control

	mu sync.Mutex
	// +checklocks:mu
	cur *control
	// +checklocks:mu
	units map[uint32]*control
}

func (p *ctlProxy) connect(unit uint32) (any, error) {
	p.mu.Lock()
	c := p.cur
	gone := c == nil || c.gone.Load()
	p.mu.Unlock()
	if gone {
		return nil, nke.ErrDeregistered
	}
	cookie, err := c.spec.Connect(unit)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.units[unit] = c
	p.mu.Unlock()
	return cookie, nil
}

func (p *ctlProxy) of(unit uint32) *control {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.units[unit]
}

func (p *ctlProxy) disconnect(unit uint32, cookie any) {
	c := p.of(unit)
	p.mu.Lock()
	delete(p.units, unit)
	p.mu.Unlock()
	if c != nil && c.spec.Disconnect != nil {
		c.spec.Disconnect(unit, cookie)
	}
}

func (p *ctlProxy) send(unit uint32, cookie any, data []byte) error {
	c := p.of(unit)
	if c == nil || c.spec.Send == nil {
		return nke.ErrNoOption
	}
	return c.spec.Send(unit, cookie, data)
}

func (p *ctlProxy) setOpt(unit uint32, cookie any, opt int, data []byte) error {
	c := p.of(unit)
	if c == nil || c.spec.SetOpt == nil {
		return nke.ErrNoOption
	}
	return c.spec.SetOpt(unit, cookie, opt, data)
}

func (p *ctlProxy) getOpt(unit uint32, cookie any, opt int, buf []byte) (int, error) {
	c := p.of(unit)
	if c == nil || c.spec.GetOpt == nil {
		return 0, nke.ErrNoOption
	}
	return c.spec.GetOpt(unit, cookie, opt, buf)
}

func (p *ctlProxy) rcvd(unit uint32, cookie any) {
	if c := p.of(unit); c != nil && c.spec.Rcvd != nil {
		c.spec.Rcvd(unit, cookie)
	}
}

// control is an NKE version's view of an endpoint.
type control struct {
	p    *ctlProxy
	spec nke.ControlSpec
	inst *instance
	// staged: made in a Replace, not current before commit.
	staged atomic.Bool
	// gone: this version deregistered it.
	gone atomic.Bool
}

var _ nke.Control = (*control)(nil)

func (c *control) Name() string { return c.spec.Name }

func (c *control) Enqueue(unit uint32, data []byte) error {
	return c.p.real.Enqueue(unit, data)
}

func (c *control) EnqueueMbuf(unit uint32, m *mbuf.Mbuf) error {
	return c.p.real.EnqueueMbuf(unit, m)
}

func (c *control) EnqueueSpace(unit uint32) (int, error) { return c.p.real.EnqueueSpace(unit) }

// Units are this version's clients.
func (c *control) Units() []uint32 {
	var out []uint32
	for _, u := range c.p.real.Units() {
		if c.p.of(u) == c {
			out = append(out, u)
		}
	}
	return out
}

// Deregister removes the endpoint if this version holds it, else only
// this version's hold on it (ErrBusy while its clients are connected).
func (c *control) Deregister() error {
	c.p.mu.Lock()
	if c.gone.Load() {
		c.p.mu.Unlock()
		return nke.ErrDeregistered
	}
	if c.p.cur != c {
		for _, o := range c.p.units {
			if o == c {
				c.p.mu.Unlock()
				return nke.ErrBusy
			}
		}
		c.gone.Store(true)
		c.p.mu.Unlock()
		return nil
	}
	c.p.mu.Unlock()
	if err := c.p.real.Deregister(); err != nil {
		return err
	}
	c.gone.Store(true)
	return nil
}

// commit makes a staged control current (Replace).
func (c *control) commit() {
	c.p.mu.Lock()
	defer c.p.mu.Unlock()
	c.staged.Store(false)
	if !c.gone.Load() {
		c.p.cur = c
	}
}

// isGone reports whether the version deregistered it.
func (c *control) isGone() bool { return c.gone.Load() }
