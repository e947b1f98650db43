// Package sockfilter is the socket filter dispatcher (Apple's
// kpi_socketfilter.c): it keeps the registered socket filters, attaches
// them to sockets, and runs them at each of Apple's points. It knows no
// socket implementation: the socket layer makes a Filters for each socket
// with Registry.NewSocket, calls its methods where Apple calls the
// filters (Notify, DataIn, DataOut, ConnectIn, ..., Close), and implements
// Endpoint, through which injected data reaches the socket.
//
// Each socket's filters are a kernel/hook chain with the LIFO policy
// (newest attachment first, the same order in and out, nke.Order
// constraints respected), so snapshots, quiescent detach, counters and
// fault isolation are kernel/hook's. A socket with no filter costs one
// atomic load per call; data calls with filters attached allocate
// nothing.
//
// Callbacks may call into the registry (inject, register, unregister)
// except that SockAttach must not attach filters to the socket it is
// attaching to (the socket's attach lock is held). SockDetach and
// Unregistered run on a goroutine of their own, or, for Unregistered when
// no socket had the filter, inside the Detach that unregisters it.
//
// Semantics decided here:
//
//   - Registration refuses a duplicate handle and a duplicate name
//     (ErrDuplicateHandle, ErrDuplicateName); both stay reserved until
//     the filter's Unregistered has run.
//   - A successful SockAttach is always followed, once, by SockDetach (the
//     last call of the filter for that socket), even when the chain then
//     refuses the attachment for its ordering; a failing (or panicking)
//     SockAttach means no other call for that socket.
//   - Extended filters attach to the sockets that exist at registration
//     and are told what is true of each now (Replay): bound, then one of
//     connecting, connected, disconnecting, disconnected, then
//     can't-receive-more and can't-send-more when not implied.
//   - A filter that panics is detached from that socket (reported with its
//     stack) and the call goes on as if it had returned nil: the data
//     that continues is what *data points to when it panicked (what it
//     was handed, unless it replaced it first). Data it swallowed before
//     and still holds is freed at its detach (marked with the entry's id,
//     mbuf.ReclaimHeld), and counted as Reclaimed.
//   - Data handed to a filter is marked as held by it for the call
//     (m.SetHolder; the next filter's mark replaces it, and the mark is
//     cleared when the data leaves the filters), so data a filter
//     swallows stays marked until it re-injects or frees it, even when it
//     re-injects before returning.
//   - InjectDataIn returns an error only when the data is still the
//     caller's: refused before any filter ran (unknown or closed socket,
//     out-of-band, ErrInjectLoop). Once the filters run it is consumed, as
//     Apple's sock_inject_data_in: a filter refusing it, or the receive
//     buffer (Endpoint.DeliverIn), frees it and nil is returned.
//     InjectDataOut consumes the data always and returns any error.
package sockfilter

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"runtime/debug"
	"slices"
	"sync"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/kernel/kevent"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Errors of registration, attach and inject.
var (
	ErrDuplicateHandle = errors.New("sockfilter: a socket filter with that handle is registered")
	ErrDuplicateName   = errors.New("sockfilter: a socket filter with that name is registered")
	ErrUnknownHandle   = errors.New("sockfilter: no socket filter registered with that handle")
	ErrUnregistering   = errors.New("sockfilter: the socket filter is being unregistered")
	ErrAttached        = errors.New("sockfilter: the socket filter is attached to the socket already")
	ErrNoMatch         = errors.New("sockfilter: the socket filter is not for sockets of that family, type or protocol")
	ErrNoSocket        = errors.New("sockfilter: no such socket (closed, or never made)")
	ErrOOB             = errors.New("sockfilter: out-of-band data cannot be injected")
	ErrRefused         = errors.New("sockfilter: the filter refused to attach")
)

// Endpoint is what the socket layer implements for each socket: its state
// (for the extended registry's replay) and where injected data goes,
// bypassing the filters (they have run already).
type Endpoint interface {
	// State is what is true of the socket now.
	State() State
	// DeliverIn appends data to the receive buffer (from: the sender of
	// a datagram); it consumes data and control, error or not.
	DeliverIn(from netip.AddrPort, data, control *mbuf.Mbuf, flags nke.DataFlags) error
	// SendOut hands data to the transport; it consumes data and control,
	// error or not.
	SendOut(to netip.AddrPort, data, control *mbuf.Mbuf, flags nke.DataFlags) error
}

// Aborter is an Endpoint that can be closed with an error: what happens to
// a socket whose filter detached holding data it had swallowed (it
// panicked, or was unregistered without giving it back), since its
// stream has lost that data.
type Aborter interface {
	Abort(err error)
}

// ErrLostData is the error of a socket aborted because a filter detached
// holding its data.
var ErrLostData = errors.New("sockfilter: a socket filter detached holding data it had swallowed")

// State is a socket's state, as Apple's so_state bits.
type State uint16

const (
	StateBound State = 1 << iota
	StateListening
	StateConnecting
	StateConnected
	StateDisconnecting
	StateDisconnected
	StateCantRecvMore
	StateCantSendMore
)

// Replay is the notify events an extended filter attached to an existing
// socket in state st is given, in order: bound if it is; then the first
// of connecting, connected, disconnecting, disconnected that holds
// (Apple's order in sflt_register); then can't-receive-more and
// can't-send-more when they hold and disconnecting or disconnected did
// not already say so.
func Replay(st State) []nke.SocketEvent {
	var evs []nke.SocketEvent
	if st&StateBound != 0 {
		evs = append(evs, nke.SockEventBound)
	}
	closed := false
	switch {
	case st&StateConnecting != 0:
		evs = append(evs, nke.SockEventConnecting)
	case st&StateConnected != 0:
		evs = append(evs, nke.SockEventConnected)
	case st&StateDisconnecting != 0:
		evs, closed = append(evs, nke.SockEventDisconnecting), true
	case st&StateDisconnected != 0:
		evs, closed = append(evs, nke.SockEventDisconnected), true
	}
	if !closed {
		if st&StateCantRecvMore != 0 {
			evs = append(evs, nke.SockEventCantRecvMore)
		}
		if st&StateCantSendMore != 0 {
			evs = append(evs, nke.SockEventCantSendMore)
		}
	}
	return evs
}

// Registry is the guest's socket filters (one per guest): it implements
// nke.SocketHook.
type Registry struct {
	report func(hook.Fault)
	// regs gives each registration an attachment id unique among the
	// guest's attachments (nke.Attachment.ID, the provenance injector).
	regs *hook.Chain[*filter]

	mu sync.Mutex
	// +checklocks:mu
	byHandle map[uint32]*filter
	// +checklocks:mu
	byName map[string]*filter
	// +checklocks:mu
	globals []*filter // registered global filters not unregistering, oldest first
	// +checklocks:mu
	sockets map[uint64]*Filters
}

var _ nke.SocketHook = (*Registry)(nil)

// New returns an empty registry; report, if not nil, receives every
// fault of a filter (a panic, or swallowed data it never gave back).
func New(report func(hook.Fault)) *Registry {
	return &Registry{report: report, regs: hook.New[*filter]("socket filters", hook.LIFO, nil),
		byHandle: map[uint32]*filter{}, byName: map[string]*filter{}, sockets: map[uint64]*Filters{}}
}

// SetEvents makes the registry publish its registrations and
// unregistrations (the filters' attaches to each socket are not events:
// there is one per socket).
func (r *Registry) SetEvents(b *kevent.Bus) { r.regs.SetEvents(b) }

// filter is a registered socket filter.
type filter struct {
	reg  *Registry
	spec nke.SocketFilterSpec
	id   uint64 // the registration's attachment id
	rh   *hook.Handle[*filter]

	sf      nke.SocketFilter
	notify  nke.SockNotifier
	in      nke.SockDataIn
	out     nke.SockDataOut
	connIn  nke.SockConnectIn
	connOut nke.SockConnectOut
	bind    nke.SockBinder
	listen  nke.SockListener
	accept  nke.SockAcceptor
	opt     nke.SockOptioner
	ioctl   nke.SockIoctler
	name    nke.SockNamer

	mu sync.Mutex
	// +checklocks:mu
	unregistering bool
	// +checklocks:mu
	finished bool
	// +checklocks:mu
	attaching int // attaches between the check and the entry's recording
	// +checklocks:mu
	live map[*sockAtt]struct{} // attached entries whose SockDetach has not returned
	// +checklocks:mu
	gone hook.Counters // the counters of its entries gone
	done chan struct{}
}

// sockAtt is one filter on one socket: the chain's element.
type sockAtt struct {
	f      *filter
	fs     *Filters
	cookie any
	h      *hook.Handle[*sockAtt]
	ready  chan struct{} // closed once h is set
}

// registration is the attachment RegisterSocketFilter returns.
type registration struct{ f *filter }

func (r registration) Name() string          { return r.f.spec.Name }
func (r registration) ID() uint64            { return r.f.id }
func (r registration) Detach()               { r.f.unregister() }
func (r registration) Done() <-chan struct{} { return r.f.done }

// RegisterSocketFilter registers a filter (sflt_register). A global one
// attaches to every matching socket made from now on; an extended one
// also to those that exist now, each told its state (Replay). Detaching
// the attachment unregisters it.
func (r *Registry) RegisterSocketFilter(spec nke.SocketFilterSpec) (nke.Attachment, error) {
	if err := spec.Check(); err != nil {
		return nil, err
	}
	f := &filter{reg: r, spec: spec, live: map[*sockAtt]struct{}{}, done: make(chan struct{})}
	f.sf = spec.Filter.(nke.SocketFilter)
	f.notify, _ = spec.Filter.(nke.SockNotifier)
	f.in, _ = spec.Filter.(nke.SockDataIn)
	f.out, _ = spec.Filter.(nke.SockDataOut)
	f.connIn, _ = spec.Filter.(nke.SockConnectIn)
	f.connOut, _ = spec.Filter.(nke.SockConnectOut)
	f.bind, _ = spec.Filter.(nke.SockBinder)
	f.listen, _ = spec.Filter.(nke.SockListener)
	f.accept, _ = spec.Filter.(nke.SockAcceptor)
	f.opt, _ = spec.Filter.(nke.SockOptioner)
	f.ioctl, _ = spec.Filter.(nke.SockIoctler)
	f.name, _ = spec.Filter.(nke.SockNamer)

	r.mu.Lock()
	if _, ok := r.byHandle[spec.Handle]; ok {
		r.mu.Unlock()
		return nil, fmt.Errorf("register %s: handle %#x: %w", spec.Name, spec.Handle, ErrDuplicateHandle)
	}
	if _, ok := r.byName[spec.Name]; ok {
		r.mu.Unlock()
		return nil, fmt.Errorf("register %s: %w", spec.Name, ErrDuplicateName)
	}
	rh, err := r.regs.Attach(hook.Spec[*filter]{Name: spec.Name, Filter: f})
	if err != nil {
		r.mu.Unlock()
		return nil, fmt.Errorf("register %s: %w", spec.Name, err)
	}
	f.rh, f.id = rh, rh.ID()
	r.byHandle[spec.Handle] = f
	r.byName[spec.Name] = f
	if spec.Global {
		r.globals = append(r.globals, f)
	}
	var existing []*Filters
	if spec.Extended {
		for _, fs := range r.sockets {
			if spec.Matches(fs.so.Family(), fs.so.Type(), fs.so.Protocol()) {
				existing = append(existing, fs)
			}
		}
	}
	r.mu.Unlock()

	for _, fs := range existing {
		sa, err := fs.attach(f)
		if err != nil || sa == nil {
			continue
		}
		fs.replay(sa, fs.ep.State())
	}
	return registration{f}, nil
}

// AttachSocketFilter attaches the registered filter with handle to so
// (sflt_attach, the SO_NKE option). It is refused for an unknown handle,
// a filter being unregistered, one already attached to so, one not for
// sockets like so, and when the filter's SockAttach refuses.
func (r *Registry) AttachSocketFilter(so nke.Socket, handle uint32) error {
	r.mu.Lock()
	f := r.byHandle[handle]
	fs := r.sockets[so.ID()]
	r.mu.Unlock()
	if f == nil {
		return fmt.Errorf("attach %#x: %w", handle, ErrUnknownHandle)
	}
	if fs == nil {
		return fmt.Errorf("attach %s to socket %d: %w", f.spec.Name, so.ID(), ErrNoSocket)
	}
	if !f.spec.Matches(so.Family(), so.Type(), so.Protocol()) {
		return fmt.Errorf("attach %s to socket %d: %w", f.spec.Name, so.ID(), ErrNoMatch)
	}
	_, err := fs.attach(f)
	return err
}

// NewSocket makes the filters of a new socket and attaches the matching
// global filters, newest registered first in the chain (a filter whose
// SockAttach fails is not attached and gets no SockDetach). The socket
// layer calls it once per socket, and Close when the socket goes.
func (r *Registry) NewSocket(so nke.Socket, ep Endpoint) *Filters {
	fs := &Filters{reg: r, so: so, ep: ep,
		chain: hook.New[*sockAtt](fmt.Sprintf("socket %d", so.ID()), hook.LIFO, r.report)}
	r.mu.Lock()
	r.sockets[so.ID()] = fs
	var globals []*filter
	for _, f := range r.globals {
		if f.spec.Matches(so.Family(), so.Type(), so.Protocol()) {
			globals = append(globals, f)
		}
	}
	r.mu.Unlock()
	// Oldest first, so the newest runs first; one that must run after
	// a filter attached later is tried again once the others are on.
	for len(globals) > 0 {
		var retry []*filter
		for _, f := range globals {
			if _, err := fs.attach(f); errors.Is(err, hook.ErrOrder) {
				retry = append(retry, f)
			}
		}
		if len(retry) == len(globals) {
			break
		}
		globals = retry
	}
	return fs
}

// Socket returns the filters of the live socket with id, or nil.
func (r *Registry) Socket(id uint64) *Filters {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sockets[id]
}

// FilterStatus is a registered filter, for a status page.
type FilterStatus struct {
	Name          string `json:"name"`
	Handle        uint32 `json:"handle"`
	Global        bool   `json:"global"`
	Unregistering bool   `json:"unregistering,omitempty"`
	// Sockets is how many sockets it is attached to now.
	Sockets int `json:"sockets"`
	// Counters sum its entries on every socket, gone ones included.
	hook.Counters
}

// Filters returns the registered filters (those unregistering too), by
// handle.
func (r *Registry) Filters() []FilterStatus {
	r.mu.Lock()
	fl := make([]*filter, 0, len(r.byHandle))
	for _, f := range r.byHandle {
		fl = append(fl, f)
	}
	r.mu.Unlock()
	out := make([]FilterStatus, 0, len(fl))
	for _, f := range fl {
		f.mu.Lock()
		st := FilterStatus{Name: f.spec.Name, Handle: f.spec.Handle, Global: f.spec.Global,
			Unregistering: f.unregistering, Sockets: len(f.live), Counters: f.gone}
		var ns float64
		var sampled uint64
		addNs(&ns, &sampled, f.gone)
		for sa := range f.live {
			c := sa.h.Entry().Stats.Read()
			addCounters(&st.Counters, c)
			addNs(&ns, &sampled, c)
		}
		f.mu.Unlock()
		if sampled > 0 {
			st.NsPerPacket = ns / float64(sampled)
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b FilterStatus) int { return cmp.Compare(a.Handle, b.Handle) })
	return out
}

func addCounters(dst *hook.Counters, c hook.Counters) {
	dst.Packets += c.Packets
	dst.Bytes += c.Bytes
	dst.Continue += c.Continue
	dst.Swallow += c.Swallow
	dst.Drop += c.Drop
	dst.Faults += c.Faults
	dst.Reclaimed += c.Reclaimed
}

// addNs weights an entry's sampled cost by its packets (the samples'
// own count is kernel/hook's; packets is close enough for a status page).
func addNs(ns *float64, n *uint64, c hook.Counters) {
	if c.NsPerPacket > 0 && c.Packets > 0 {
		*ns += c.NsPerPacket * float64(c.Packets)
		*n += c.Packets
	}
}

// unregister stops new attaches and detaches the filter from every
// socket; the last socket's detach runs Unregistered.
func (f *filter) unregister() {
	f.mu.Lock()
	if f.unregistering {
		f.mu.Unlock()
		return
	}
	f.unregistering = true
	atts := make([]*sockAtt, 0, len(f.live))
	for sa := range f.live {
		atts = append(atts, sa)
	}
	f.mu.Unlock()
	r := f.reg
	r.mu.Lock()
	for i, g := range r.globals {
		if g == f {
			r.globals = append(r.globals[:i:i], r.globals[i+1:]...)
			break
		}
	}
	r.mu.Unlock()
	for _, sa := range atts {
		sa.h.Detach()
	}
	f.maybeFinish()
}

// maybeFinish runs Unregistered once the filter is unregistering and no
// socket has it any more: the filter's very last call.
func (f *filter) maybeFinish() {
	f.mu.Lock()
	if !f.unregistering || f.finished || f.attaching > 0 || len(f.live) > 0 {
		f.mu.Unlock()
		return
	}
	f.finished = true
	f.mu.Unlock()
	if f.spec.Unregistered != nil {
		f.reg.guard(f, "unregistered", f.spec.Unregistered)
	}
	r := f.reg
	r.mu.Lock()
	delete(r.byHandle, f.spec.Handle)
	delete(r.byName, f.spec.Name)
	r.mu.Unlock()
	f.rh.Detach()
	close(f.done)
}

// guard runs a callback of f that is not on a socket's chain (attach,
// detach, unregistered), reporting a panic.
func (r *Registry) guard(f *filter, what string, call func()) (panicked bool) {
	defer func() {
		if v := recover(); v != nil {
			panicked = true
			if r.report != nil {
				r.report(hook.Fault{Hook: "socket filters " + what, Filter: f.spec.Name, Value: v, Stack: string(debug.Stack())})
			}
		}
	}()
	call()
	return false
}
