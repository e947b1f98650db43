package sockfilter

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Filters is one socket's filters: the socket layer calls its methods at
// Apple's points. Every method may be called concurrently with the others
// and with attaches, detaches and unregistering; a filter detached from
// the socket (by Close, its unregistering, or a fault) gets no call after
// its SockDetach.
type Filters struct {
	reg   *Registry
	so    nke.Socket
	ep    Endpoint
	chain *hook.Chain[*sockAtt]
	calls atomic.Uint32 // data calls, for sampling

	attachMu sync.Mutex // serialises attaches with each other and Close
	// +checklocks:attachMu
	closed bool
}

// Socket is the socket the filters are on.
func (fs *Filters) Socket() nke.Socket { return fs.so }

// Empty reports whether no filter is attached (one atomic load).
func (fs *Filters) Empty() bool { return fs.chain.Empty() }

// Names lists the attached filters in the order they run.
func (fs *Filters) Names() []string { return fs.chain.Names() }

// Gone is the filters detached from the socket lately, with their
// counters and faults (kernel/hook's history).
func (fs *Filters) Gone() []hook.Gone { return fs.chain.Gone() }

// attach attaches f: SockAttach, then the chain. It returns nil, nil when
// the socket has the filter already through a concurrent path (global and
// extended racing), and an error when refused.
func (fs *Filters) attach(f *filter) (*sockAtt, error) {
	// An unregister that happened meanwhile may finish here, outside the
	// socket's lock.
	defer f.maybeFinish()
	fs.attachMu.Lock()
	defer fs.attachMu.Unlock()
	if fs.closed {
		return nil, fmt.Errorf("attach %s to socket %d: %w", f.spec.Name, fs.so.ID(), ErrNoSocket)
	}
	for _, n := range fs.chain.Names() {
		if n == f.spec.Name {
			return nil, fmt.Errorf("attach %s to socket %d: %w", f.spec.Name, fs.so.ID(), ErrAttached)
		}
	}
	f.mu.Lock()
	if f.unregistering {
		f.mu.Unlock()
		return nil, fmt.Errorf("attach %s: %w", f.spec.Name, ErrUnregistering)
	}
	f.attaching++
	f.mu.Unlock()
	sa := &sockAtt{f: f, fs: fs, ready: make(chan struct{})}
	var err error
	if fs.reg.guard(f, "attach", func() { sa.cookie, err = f.sf.SockAttach(fs.so) }) {
		err = errors.New("SockAttach panicked")
	}
	if err != nil {
		f.mu.Lock()
		f.attaching--
		f.mu.Unlock()
		return nil, fmt.Errorf("attach %s to socket %d: %w: %w", f.spec.Name, fs.so.ID(), ErrRefused, err)
	}
	h, err := fs.chain.Attach(hook.Spec[*sockAtt]{Name: f.spec.Name, Order: f.spec.Order, Filter: sa, Detached: sa.detached})
	if err != nil {
		// Attached as far as the filter knows: its detach follows.
		fs.reg.guard(f, "detach", func() { f.sf.SockDetach(sa.cookie, fs.so) })
		f.mu.Lock()
		f.attaching--
		f.mu.Unlock()
		return nil, err
	}
	sa.h = h
	close(sa.ready)
	f.mu.Lock()
	f.attaching--
	f.live[sa] = struct{}{}
	unreg := f.unregistering
	f.mu.Unlock()
	if unreg { // unregistered meanwhile: it saw the list without this one
		h.Detach()
	}
	return sa, nil
}

// detached is the chain's Detached callback for sa: every call into the
// filter on this socket has returned. SockDetach, then what it still
// holds is freed, then the filter's countdown.
func (sa *sockAtt) detached() {
	<-sa.ready
	f, e := sa.f, sa.h.Entry()
	f.reg.guard(f, "detach", func() { f.sf.SockDetach(sa.cookie, sa.fs.so) })
	// Reclaimed here rather than by kernel/hook, to count it for the
	// filter's status; kernel/hook's own pass then finds nothing.
	n := mbuf.ReclaimHeld(e.ID)
	c := e.Stats.Read()
	c.Reclaimed += uint64(n)
	if n > 0 {
		if f.reg.report != nil {
			f.reg.report(hook.Fault{Hook: sa.fs.chain.Name(), Filter: f.spec.Name,
				Value: fmt.Sprintf("detached holding %d swallowed packets it never re-injected or freed: freed them, socket aborted", n)})
		}
		// The stream lost what the filter kept: the socket cannot go
		// on as if nothing happened (Apple: closed with an error).
		if a, ok := sa.fs.ep.(Aborter); ok {
			a.Abort(fmt.Errorf("%w: %s held %d packets", ErrLostData, f.spec.Name, n))
		}
	}
	f.mu.Lock()
	delete(f.live, sa)
	addCounters(&f.gone, c)
	if c.NsPerPacket > 0 && c.Packets > 0 { // keep a weighted mean
		tot := f.gone.Packets
		f.gone.NsPerPacket = (f.gone.NsPerPacket*float64(tot-c.Packets) + c.NsPerPacket*float64(c.Packets)) / float64(tot)
	}
	f.mu.Unlock()
	f.maybeFinish()
}

// replay tells a filter attached to an existing socket its state.
func (fs *Filters) replay(sa *sockAtt, st State) {
	if sa.f.notify == nil {
		return
	}
	s := fs.chain.Acquire()
	defer s.Release()
	e := sa.h.Entry()
	if s.Index(e) < 0 {
		return
	}
	for _, ev := range Replay(st) {
		if !e.Attached() || e.Guard(func() { sa.f.notify.SockNotify(sa.cookie, fs.so, ev) }) {
			return
		}
	}
}

// Close detaches every filter of the socket (each one's SockDetach runs
// once its calls in flight have returned) and forgets the socket: no
// attach and no inject reaches it any more. It does not wait.
func (fs *Filters) Close() {
	fs.attachMu.Lock()
	fs.closed = true
	fs.attachMu.Unlock()
	r := fs.reg
	r.mu.Lock()
	if r.sockets[fs.so.ID()] == fs {
		delete(r.sockets, fs.so.ID())
	}
	r.mu.Unlock()
	for _, e := range fs.chain.Entries() {
		fs.chain.HandleOf(e).Detach()
	}
}

// Notify tells every filter of an event (sf_notify).
func (fs *Filters) Notify(ev nke.SocketEvent) {
	if fs.chain.Empty() {
		return
	}
	s := fs.chain.Acquire()
	defer s.Release()
	for _, e := range s.Entries {
		if sa := e.Filter; sa.f.notify != nil && e.Attached() {
			e.Guard(func() { sa.f.notify.SockNotify(sa.cookie, fs.so, ev) })
		}
	}
}

// DataIn runs every filter's data in (sf_data_in) before data is
// appended to the receive buffer. Filters may replace *data and
// *control. swallowed: a filter owns the data now, the caller forgets it.
// A non-nil error: a filter refused it, the caller frees *data and
// *control and drops them. Otherwise the caller appends *data (a filter
// that set it to nil took it: nothing to append) and *control. A filter
// that panics is detached and counts as having passed *data as it was
// then.
func (fs *Filters) DataIn(from netip.AddrPort, data, control **mbuf.Mbuf, flags nke.DataFlags) (swallowed bool, err error) {
	if fs.chain.Empty() {
		return false, nil
	}
	return fs.runData(false, from, data, control, flags)
}

// DataOut runs every filter's data out (sf_data_out) before data goes to
// the transport, with DataIn's rules.
func (fs *Filters) DataOut(to netip.AddrPort, data, control **mbuf.Mbuf, flags nke.DataFlags) (swallowed bool, err error) {
	if fs.chain.Empty() {
		return false, nil
	}
	return fs.runData(true, to, data, control, flags)
}

func (fs *Filters) runData(out bool, addr netip.AddrPort, data, control **mbuf.Mbuf, flags nke.DataFlags) (bool, error) {
	s := fs.chain.Acquire()
	defer s.Release()
	lane := 0
	if out {
		lane = 1
	}
	// One call in SampleEvery times each of its filters.
	sample := fs.calls.Add(1)%hook.SampleEvery == 0
	var b hook.Burst
	b.Packets = 1
	var cur *mbuf.Mbuf
	for _, e := range s.Entries {
		sa := e.Filter
		if (out && sa.f.out == nil) || (!out && sa.f.in == nil) || !e.Attached() || *data == nil {
			continue
		}
		if *data != cur { // replaced (or the first)
			cur = *data
			b.Bytes = uint64(cur.PktLen())
		}
		// Marked as the filter's for the call: what it swallows stays
		// marked until it gives it back, even when it re-injects it
		// before returning. The next filter's mark replaces it.
		cur.SetHolder(e.ID)
		if control != nil && *control != nil {
			(*control).SetHolder(e.ID)
		}
		err, faulted := fs.callData(e, sample, lane, out, addr, data, control, flags)
		if faulted {
			err = nil // goes on as if it had passed the data
		}
		b.Verdicts[nke.Swallow], b.Verdicts[nke.Drop] = 0, 0
		switch {
		case err == nil:
			e.Stats.Add(lane, &b)
		case err == nke.ErrSwallowed || errors.Is(err, nke.ErrSwallowed):
			b.Verdicts[nke.Swallow] = 1
			e.Stats.Add(lane, &b)
			return true, nil
		default:
			b.Verdicts[nke.Drop] = 1
			e.Stats.Add(lane, &b)
			clearHolders(data, control)
			return false, err
		}
	}
	clearHolders(data, control)
	return false, nil
}

func clearHolders(data, control **mbuf.Mbuf) {
	if *data != nil {
		(*data).ClearHolder()
	}
	if control != nil && *control != nil {
		(*control).ClearHolder()
	}
}

// callData calls one filter's data in or out, timed if sample; a panic
// is a fault (the entry is detached).
func (fs *Filters) callData(e *hook.Entry[*sockAtt], sample bool, lane int, out bool, addr netip.AddrPort, data, control **mbuf.Mbuf, flags nke.DataFlags) (err error, faulted bool) {
	var start time.Time
	if sample {
		start = time.Now()
	}
	defer func() {
		if r := recover(); r != nil {
			e.Fault(r)
			err, faulted = nil, true
		}
	}()
	sa := e.Filter
	if out {
		err = sa.f.out.SockDataOut(sa.cookie, fs.so, addr, data, control, flags)
	} else {
		err = sa.f.in.SockDataIn(sa.cookie, fs.so, addr, data, control, flags)
	}
	if sample {
		e.Stats.AddSample(lane, 1, uint64(time.Since(start)))
	}
	return err, false
}

// control runs call for every filter in order with the control rule: nil
// or nke.ErrNotMine goes on to the next, nke.ErrSwallowed stops with done
// (the operation succeeds without being done), another error stops and
// is returned. A panic detaches the filter and counts as nil.
func (fs *Filters) control(call func(sa *sockAtt) (bool, error)) (done bool, err error) {
	if fs.chain.Empty() {
		return false, nil
	}
	s := fs.chain.Acquire()
	defer s.Release()
	for _, e := range s.Entries {
		if !e.Attached() {
			continue
		}
		sa := e.Filter
		var has bool
		var cerr error
		if e.Guard(func() { has, cerr = call(sa) }) || !has {
			continue
		}
		switch {
		case cerr == nil || errors.Is(cerr, nke.ErrNotMine):
		case errors.Is(cerr, nke.ErrSwallowed):
			return true, nil
		default:
			return false, cerr
		}
	}
	return false, nil
}

// ConnectIn runs sf_connect_in on a listening socket for an incoming
// connection from: any error (nke.ErrSwallowed included) rejects the
// peer.
func (fs *Filters) ConnectIn(from netip.AddrPort) error {
	done, err := fs.control(func(sa *sockAtt) (bool, error) {
		if sa.f.connIn == nil {
			return false, nil
		}
		return true, sa.f.connIn.SockConnectIn(sa.cookie, fs.so, from)
	})
	if done {
		return nke.ErrSwallowed
	}
	return err
}

// ConnectOut runs sf_connect_out before a connect to to. done: a filter
// swallowed it, report success without connecting. A non-nil error is
// returned from the connect.
func (fs *Filters) ConnectOut(to netip.AddrPort) (done bool, err error) {
	return fs.control(func(sa *sockAtt) (bool, error) {
		if sa.f.connOut == nil {
			return false, nil
		}
		return true, sa.f.connOut.SockConnectOut(sa.cookie, fs.so, to)
	})
}

// Bind runs sf_bind before a bind to to, with ConnectOut's results.
func (fs *Filters) Bind(to netip.AddrPort) (done bool, err error) {
	return fs.control(func(sa *sockAtt) (bool, error) {
		if sa.f.bind == nil {
			return false, nil
		}
		return true, sa.f.bind.SockBind(sa.cookie, fs.so, to)
	})
}

// Listen runs sf_listen before a listen, with ConnectOut's results.
func (fs *Filters) Listen() (done bool, err error) {
	return fs.control(func(sa *sockAtt) (bool, error) {
		if sa.f.listen == nil {
			return false, nil
		}
		return true, sa.f.listen.SockListen(sa.cookie, fs.so)
	})
}

// AcceptResult says what the socket layer does with an accepted socket.
type AcceptResult uint8

const (
	// AcceptOK: hand the socket to the application.
	AcceptOK AcceptResult = iota
	// AcceptDisconnect: a filter swallowed the accept; disconnect the
	// socket and hand it over disconnected (Apple: EJUSTRETURN, accept
	// itself succeeds).
	AcceptDisconnect
	// AcceptClose: a filter refused it; close the socket and return the
	// error from accept.
	AcceptClose
)

func (a AcceptResult) String() string {
	switch a {
	case AcceptOK:
		return "ok"
	case AcceptDisconnect:
		return "disconnect"
	case AcceptClose:
		return "close"
	}
	return fmt.Sprintf("accept(%d)", uint8(a))
}

// Accept runs sf_accept on the accepted socket's filters (these Filters
// are the new socket's), listener being the listening socket.
func (fs *Filters) Accept(listener nke.Socket, local, remote netip.AddrPort) (AcceptResult, error) {
	done, err := fs.control(func(sa *sockAtt) (bool, error) {
		if sa.f.accept == nil {
			return false, nil
		}
		return true, sa.f.accept.SockAccept(sa.cookie, listener, fs.so, local, remote)
	})
	switch {
	case err != nil:
		return AcceptClose, err
	case done:
		return AcceptDisconnect, nil
	}
	return AcceptOK, nil
}

// SetOption runs sf_setoption, with ConnectOut's results.
func (fs *Filters) SetOption(opt *nke.SockOpt) (done bool, err error) {
	return fs.control(func(sa *sockAtt) (bool, error) {
		if sa.f.opt == nil {
			return false, nil
		}
		return true, sa.f.opt.SockSetOption(sa.cookie, fs.so, opt)
	})
}

// GetOption runs sf_getoption: done means opt.Value, as a filter set it,
// is the answer, without the socket's own.
func (fs *Filters) GetOption(opt *nke.SockOpt) (done bool, err error) {
	return fs.control(func(sa *sockAtt) (bool, error) {
		if sa.f.opt == nil {
			return false, nil
		}
		return true, sa.f.opt.SockGetOption(sa.cookie, fs.so, opt)
	})
}

// Ioctl runs sf_ioctl, with ConnectOut's results.
func (fs *Filters) Ioctl(cmd uint32, arg []byte) (done bool, err error) {
	return fs.control(func(sa *sockAtt) (bool, error) {
		if sa.f.ioctl == nil {
			return false, nil
		}
		return true, sa.f.ioctl.SockIoctl(sa.cookie, fs.so, cmd, arg)
	})
}

// GetPeerName runs sf_getpeername on the address the socket would report
// (*addr, which a filter may change): done means report *addr as it is
// without asking the socket.
func (fs *Filters) GetPeerName(addr *netip.AddrPort) (done bool, err error) {
	return fs.control(func(sa *sockAtt) (bool, error) {
		if sa.f.name == nil {
			return false, nil
		}
		return true, sa.f.name.SockGetPeerName(sa.cookie, fs.so, addr)
	})
}

// GetSockName runs sf_getsockname, as GetPeerName.
func (fs *Filters) GetSockName(addr *netip.AddrPort) (done bool, err error) {
	return fs.control(func(sa *sockAtt) (bool, error) {
		if sa.f.name == nil {
			return false, nil
		}
		return true, sa.f.name.SockGetSockName(sa.cookie, fs.so, addr)
	})
}

// InjectDataIn hands data to so as if received (sock_inject_data_in):
// every filter's data in runs again from the first, then
// Endpoint.DeliverIn. by is the injecting filter's attachment (or nil),
// recorded in the data's provenance. It returns an error, the data still
// the caller's, only when it refuses the data before any filter runs: an
// unknown or closed socket, out-of-band data, nke.ErrInjectLoop. Once
// accepted the data is consumed: a filter refusing it, or DeliverIn
// failing, frees it.
func (r *Registry) InjectDataIn(so nke.Socket, from netip.AddrPort, data, control *mbuf.Mbuf, flags nke.DataFlags, by nke.Attachment) error {
	fs, err := r.injectCheck(so, data, flags, by)
	if err != nil {
		return err
	}
	swallowed, err := fs.DataIn(from, &data, &control, flags)
	if swallowed {
		return nil
	}
	if err != nil {
		freeData(data, control)
		return nil
	}
	if data == nil {
		freeData(nil, control)
		return nil
	}
	fs.ep.DeliverIn(from, data, control, flags)
	return nil
}

// InjectDataOut sends data on so (sock_inject_data_out): every filter's
// data out runs again from the first, then Endpoint.SendOut. The data is
// consumed, error or not: out-of-band data, an unknown socket and
// nke.ErrInjectLoop are refused, a filter's refusal and SendOut's error
// are returned.
func (r *Registry) InjectDataOut(so nke.Socket, to netip.AddrPort, data, control *mbuf.Mbuf, flags nke.DataFlags, by nke.Attachment) error {
	fs, err := r.injectCheck(so, data, flags, by)
	if err != nil {
		freeData(data, control)
		return err
	}
	swallowed, err := fs.DataOut(to, &data, &control, flags)
	if swallowed {
		return nil
	}
	if err != nil || data == nil {
		freeData(data, control)
		return err
	}
	return fs.ep.SendOut(to, data, control, flags)
}

func (r *Registry) injectCheck(so nke.Socket, data *mbuf.Mbuf, flags nke.DataFlags, by nke.Attachment) (*Filters, error) {
	if data == nil {
		return nil, errors.New("sockfilter: inject: no data")
	}
	if flags&nke.DataOOB != 0 {
		return nil, fmt.Errorf("inject on socket %d: %w", so.ID(), ErrOOB)
	}
	fs := r.Socket(so.ID())
	if fs == nil {
		return nil, fmt.Errorf("inject on socket %d: %w", so.ID(), ErrNoSocket)
	}
	var id uint64
	if by != nil {
		id = by.ID()
	}
	if _, err := nke.StampInjection(data, id); err != nil {
		return nil, err
	}
	return fs, nil
}

func freeData(data, control *mbuf.Mbuf) {
	if data != nil {
		data.Free()
	}
	if control != nil {
		control.Free()
	}
}
