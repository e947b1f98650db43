package loader

import (
	"errors"
	"net/netip"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/bundle"
	"github.com/nke-harness/nke/nke/mbuf"
)

// errModifyRefused is what the socket wrapper returns for data an NKE
// replaced without the modify capability: an error drops it.
var errModifyRefused = errors.New("loader: data replaced without the modify capability")

// sockWrap is the socket filter the loader registers in an NKE's place:
// it implements every optional callback but the data ones, passing (nil,
// the neutral answer) where the NKE's filter has none, and checks the answers against
// the capabilities. It does not pause at unload: the kernel's
// unregistration drains socket calls itself (SockDetach must reach the
// NKE for every socket it attached).
type sockWrap struct {
	inst *instance
	f    any
	sf   nke.SocketFilter
}

// The data callbacks are on the data path: the wrapper has them only if
// the NKE's filter does (the socket layer skips a filter without them),
// in one of four forms.
type (
	sockWrapIn    struct{ *sockWrap }
	sockWrapOut   struct{ *sockWrap }
	sockWrapInOut struct{ *sockWrap }
)

func (w sockWrapIn) SockDataIn(cookie any, so nke.Socket, from netip.AddrPort, data, control **mbuf.Mbuf, flags nke.DataFlags) error {
	return w.dataIn(cookie, so, from, data, control, flags)
}

func (w sockWrapOut) SockDataOut(cookie any, so nke.Socket, to netip.AddrPort, data, control **mbuf.Mbuf, flags nke.DataFlags) error {
	return w.dataOut(cookie, so, to, data, control, flags)
}

func (w sockWrapInOut) SockDataIn(cookie any, so nke.Socket, from netip.AddrPort, data, control **mbuf.Mbuf, flags nke.DataFlags) error {
	return w.dataIn(cookie, so, from, data, control, flags)
}

func (w sockWrapInOut) SockDataOut(cookie any, so nke.Socket, to netip.AddrPort, data, control **mbuf.Mbuf, flags nke.DataFlags) error {
	return w.dataOut(cookie, so, to, data, control, flags)
}

// sockWrapper wraps f for inst in the form f's data callbacks need.
func sockWrapper(inst *instance, f any) any {
	w := &sockWrap{inst: inst, f: f, sf: f.(nke.SocketFilter)}
	_, in := f.(nke.SockDataIn)
	_, out := f.(nke.SockDataOut)
	switch {
	case in && out:
		return sockWrapInOut{w}
	case in:
		return sockWrapIn{w}
	case out:
		return sockWrapOut{w}
	}
	return w
}

var (
	_ nke.SockDataIn     = sockWrapIn{}
	_ nke.SockDataOut    = sockWrapOut{}
	_ nke.SockDataIn     = sockWrapInOut{}
	_ nke.SockDataOut    = sockWrapInOut{}
	_ nke.SocketFilter   = (*sockWrap)(nil)
	_ nke.SockNotifier   = (*sockWrap)(nil)
	_ nke.SockConnectIn  = (*sockWrap)(nil)
	_ nke.SockConnectOut = (*sockWrap)(nil)
	_ nke.SockBinder     = (*sockWrap)(nil)
	_ nke.SockListener   = (*sockWrap)(nil)
	_ nke.SockAcceptor   = (*sockWrap)(nil)
	_ nke.SockOptioner   = (*sockWrap)(nil)
	_ nke.SockIoctler    = (*sockWrap)(nil)
	_ nke.SockNamer      = (*sockWrap)(nil)
)

// data checks a data callback's answer: replaced data without modify is
// dropped, an error (swallow or drop) without drop becomes nil.
func (w *sockWrap) data(err error, orig, now *mbuf.Mbuf) error {
	if !w.inst.can.modify && orig != now {
		w.inst.refusedOp(bundle.CapModify, "replace socket data")
		return errModifyRefused
	}
	if err != nil && !w.inst.can.drop {
		w.inst.refusedOp(bundle.CapDrop, "hold or drop socket data")
		return nil
	}
	return err
}

// ctl checks a control callback's answer: stopping the operation (an
// error, or ErrSwallowed) needs drop.
func (w *sockWrap) ctl(err error) error {
	if err != nil && !w.inst.can.drop {
		w.inst.refusedOp(bundle.CapDrop, "stop a socket operation")
		return nil
	}
	return err
}

func (w *sockWrap) SockAttach(so nke.Socket) (any, error) { return w.sf.SockAttach(so) }
func (w *sockWrap) SockDetach(cookie any, so nke.Socket)  { w.sf.SockDetach(cookie, so) }

func (w *sockWrap) SockNotify(cookie any, so nke.Socket, ev nke.SocketEvent) {
	if f, ok := w.f.(nke.SockNotifier); ok {
		f.SockNotify(cookie, so, ev)
	}
}

func (w *sockWrap) dataIn(cookie any, so nke.Socket, from netip.AddrPort, data, control **mbuf.Mbuf, flags nke.DataFlags) error {
	f, ok := w.f.(nke.SockDataIn)
	if !ok {
		return nil
	}
	orig := *data
	return w.data(f.SockDataIn(cookie, so, from, data, control, flags), orig, *data)
}

func (w *sockWrap) dataOut(cookie any, so nke.Socket, to netip.AddrPort, data, control **mbuf.Mbuf, flags nke.DataFlags) error {
	f, ok := w.f.(nke.SockDataOut)
	if !ok {
		return nil
	}
	orig := *data
	return w.data(f.SockDataOut(cookie, so, to, data, control, flags), orig, *data)
}

func (w *sockWrap) SockConnectIn(cookie any, so nke.Socket, from netip.AddrPort) error {
	if f, ok := w.f.(nke.SockConnectIn); ok {
		return w.ctl(f.SockConnectIn(cookie, so, from))
	}
	return nil
}

func (w *sockWrap) SockConnectOut(cookie any, so nke.Socket, to netip.AddrPort) error {
	if f, ok := w.f.(nke.SockConnectOut); ok {
		return w.ctl(f.SockConnectOut(cookie, so, to))
	}
	return nil
}

func (w *sockWrap) SockBind(cookie any, so nke.Socket, to netip.AddrPort) error {
	if f, ok := w.f.(nke.SockBinder); ok {
		return w.ctl(f.SockBind(cookie, so, to))
	}
	return nil
}

func (w *sockWrap) SockListen(cookie any, so nke.Socket) error {
	if f, ok := w.f.(nke.SockListener); ok {
		return w.ctl(f.SockListen(cookie, so))
	}
	return nil
}

func (w *sockWrap) SockAccept(cookie any, listener, so nke.Socket, local, remote netip.AddrPort) error {
	if f, ok := w.f.(nke.SockAcceptor); ok {
		return w.ctl(f.SockAccept(cookie, listener, so, local, remote))
	}
	return nil
}

func (w *sockWrap) SockSetOption(cookie any, so nke.Socket, opt *nke.SockOpt) error {
	if f, ok := w.f.(nke.SockOptioner); ok {
		return w.ctl(f.SockSetOption(cookie, so, opt))
	}
	return nil
}

func (w *sockWrap) SockGetOption(cookie any, so nke.Socket, opt *nke.SockOpt) error {
	if f, ok := w.f.(nke.SockOptioner); ok {
		return w.ctl(f.SockGetOption(cookie, so, opt))
	}
	return nil
}

func (w *sockWrap) SockIoctl(cookie any, so nke.Socket, cmd uint32, arg []byte) error {
	if f, ok := w.f.(nke.SockIoctler); ok {
		return w.ctl(f.SockIoctl(cookie, so, cmd, arg))
	}
	return nil
}

func (w *sockWrap) SockGetPeerName(cookie any, so nke.Socket, addr *netip.AddrPort) error {
	if f, ok := w.f.(nke.SockNamer); ok {
		return w.ctl(f.SockGetPeerName(cookie, so, addr))
	}
	return nil
}

func (w *sockWrap) SockGetSockName(cookie any, so nke.Socket, addr *netip.AddrPort) error {
	if f, ok := w.f.(nke.SockNamer); ok {
		return w.ctl(f.SockGetSockName(cookie, so, addr))
	}
	return nil
}
