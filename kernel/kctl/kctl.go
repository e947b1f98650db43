// Package kctl is the guest's kernel control (Apple's kern_control): the
// registry where NKEs register named control endpoints (nke.ControlHook,
// one per NKE, so every endpoint knows its owner), and the client side
// that the control channel uses on behalf of `nkectl ctl`: Connect by
// name, Send, Recv, SetOpt, GetOpt, Close.
//
// Each client has a unit number unique on its endpoint, its own receive
// queue (a byte ring of the endpoint's RecvSize, messages kept whole) and
// its own callback lock: the NKE's callbacks for one unit never overlap,
// and Disconnect is a unit's last call. A callback that panics is
// contained: its client is disconnected with ErrFault, the fault is
// logged and published, the other clients go on.
//
// The loader uses Clients to refuse an unload while clients are
// connected, DisconnectOwner for a forced one, and RemoveOwner to take
// away what a stopped NKE left registered.
package kctl

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sort"
	"sync"

	"github.com/nke-harness/nke/kernel/kevent"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Errors a client sees.
var (
	// ErrNoEndpoint: nothing is registered under that name (ENOENT).
	ErrNoEndpoint = errors.New("kctl: no control endpoint of that name (is its NKE loaded?)")
	// ErrRefused: the NKE's Connect refused the client, or its NKE is
	// being unloaded.
	ErrRefused = errors.New("kctl: connection refused")
	// ErrClosed: the client was closed by its own Close.
	ErrClosed = errors.New("kctl: client closed")
	// ErrDisconnected: the kernel side disconnected the client (its NKE
	// was unloaded or the endpoint removed).
	ErrDisconnected = errors.New("kctl: disconnected by the kernel")
	// ErrFault: a callback of the NKE panicked; the client was
	// disconnected.
	ErrFault = errors.New("kctl: the NKE's control callback panicked")
	// ErrWouldBlock: TryRecv found the queue empty.
	ErrWouldBlock = errors.New("kctl: no message queued")
	// ErrTruncated: the message was longer than the buffer; the rest of
	// it was discarded (MSG_TRUNC).
	ErrTruncated = errors.New("kctl: message truncated to the buffer")
)

// OpError is an error of one client operation.
type OpError struct {
	Op       string // "connect", "send", "recv", "setopt", "getopt", "enqueue", "deregister"
	Endpoint string
	Unit     uint32 // 0 before a unit was assigned
	Err      error
}

func (e *OpError) Error() string {
	if e.Unit == 0 {
		return fmt.Sprintf("kctl: %s %s: %v", e.Op, e.Endpoint, e.Err)
	}
	return fmt.Sprintf("kctl: %s %s unit %d: %v", e.Op, e.Endpoint, e.Unit, e.Err)
}

func (e *OpError) Unwrap() error { return e.Err }

// hdrLen is what each queued message costs beside its data: its length.
const hdrLen = 4

// Config sets up a registry.
type Config struct {
	// Events, if set, receives connects, disconnects and faults.
	Events *kevent.Bus
	// Logf, if set, receives faults with their stack.
	Logf func(format string, args ...any)
}

// Registry holds the guest's control endpoints.
type Registry struct {
	cfg Config

	mu sync.Mutex
	// +checklocks:mu
	eps map[string]*endpoint
	// +checklocks:mu
	refusing map[string]bool // owners being unloaded
}

// New returns an empty registry.
func New(cfg Config) *Registry {
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	return &Registry{cfg: cfg, eps: map[string]*endpoint{}, refusing: map[string]bool{}}
}

// Hook is the nke.ControlHook of the NKE whose bundle id is owner: what
// its nke.Kernel's Control returns.
func (r *Registry) Hook(owner string) nke.ControlHook { return ownerHook{r: r, owner: owner} }

type ownerHook struct {
	r     *Registry
	owner string
}

func (h ownerHook) RegisterControl(spec nke.ControlSpec) (nke.Control, error) {
	return h.r.register(h.owner, spec)
}

func (r *Registry) register(owner string, spec nke.ControlSpec) (*endpoint, error) {
	if err := spec.Check(); err != nil {
		return nil, err
	}
	ep := &endpoint{r: r, owner: owner, spec: spec, sendSize: spec.SendSize, recvSize: spec.RecvSize,
		clients: map[uint32]*Client{}}
	if ep.sendSize == 0 {
		ep.sendSize = nke.DefaultControlSendSize
	}
	if ep.recvSize == 0 {
		ep.recvSize = nke.DefaultControlRecvSize
	}
	if ep.recvSize <= hdrLen {
		return nil, fmt.Errorf("nke: control endpoint %s: RecvSize %d: want more than %d", spec.Name, ep.recvSize, hdrLen)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.eps[spec.Name]; ok {
		return nil, fmt.Errorf("control endpoint %s (registered by %s): %w", spec.Name, old.owner, nke.ErrControlExists)
	}
	r.eps[spec.Name] = ep
	return ep, nil
}

// Connect connects a client to the endpoint called name, on a fresh unit
// (Apple's connect with unit 0). The NKE's Connect may refuse it.
func (r *Registry) Connect(name string) (*Client, error) {
	r.mu.Lock()
	ep := r.eps[name]
	refusing := ep != nil && r.refusing[ep.owner]
	r.mu.Unlock()
	if ep == nil {
		return nil, &OpError{Op: "connect", Endpoint: name, Err: ErrNoEndpoint}
	}
	if refusing {
		return nil, &OpError{Op: "connect", Endpoint: name, Err: fmt.Errorf("%w: %s is being unloaded", ErrRefused, ep.owner)}
	}
	c, err := ep.newClient()
	if err != nil {
		return nil, &OpError{Op: "connect", Endpoint: name, Err: err}
	}
	c.callMu.Lock()
	defer c.callMu.Unlock()
	var cookie any
	var cerr error
	if v, panicked := c.guard("connect", func() { cookie, cerr = ep.spec.Connect(c.unit) }); panicked {
		c.fail(fmt.Errorf("%w: connect: %v", ErrFault, v))
		return nil, &OpError{Op: "connect", Endpoint: name, Unit: c.unit, Err: fmt.Errorf("%w: %v", ErrFault, v)}
	}
	if cerr != nil {
		c.fail(fmt.Errorf("%w: %v", ErrRefused, cerr))
		return nil, &OpError{Op: "connect", Endpoint: name, Unit: c.unit, Err: fmt.Errorf("%w: %w", ErrRefused, cerr)}
	}
	c.cookie, c.state = cookie, stateConnected
	r.cfg.Events.Publish(kevent.Event{Kind: kevent.ControlConnect, NKE: ep.owner, Hook: ep.hookName(), ID: uint64(c.unit)})
	return c, nil
}

// ClientInfo names one connected client.
type ClientInfo struct {
	Endpoint string `json:"endpoint"`
	Owner    string `json:"owner"`
	Unit     uint32 `json:"unit"`
}

func (c ClientInfo) String() string { return fmt.Sprintf("%s unit %d", c.Endpoint, c.Unit) }

// Clients lists the clients connected to owner's endpoints (every
// owner's if owner is ""), by endpoint then unit: an unloader refuses
// while it is not empty, naming them.
func (r *Registry) Clients(owner string) []ClientInfo {
	var out []ClientInfo
	for _, ep := range r.endpoints(owner) {
		for _, u := range ep.Units() {
			out = append(out, ClientInfo{Endpoint: ep.spec.Name, Owner: ep.owner, Unit: u})
		}
	}
	return out
}

// EndpointInfo describes a registered endpoint.
type EndpointInfo struct {
	Name     string   `json:"name"`
	Owner    string   `json:"owner"`
	SendSize int      `json:"send_size"`
	RecvSize int      `json:"recv_size"`
	Units    []uint32 `json:"units,omitempty"`
}

// Endpoints lists owner's endpoints (all if owner is ""), by name.
func (r *Registry) Endpoints(owner string) []EndpointInfo {
	var out []EndpointInfo
	for _, ep := range r.endpoints(owner) {
		out = append(out, EndpointInfo{Name: ep.spec.Name, Owner: ep.owner, SendSize: ep.sendSize,
			RecvSize: ep.recvSize, Units: ep.Units()})
	}
	return out
}

func (r *Registry) endpoints(owner string) []*endpoint {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*endpoint
	for _, ep := range r.eps {
		if owner == "" || ep.owner == owner {
			out = append(out, ep)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].spec.Name < out[j].spec.Name })
	return out
}

// SetRefusing makes owner's endpoints refuse new clients (on) or take
// them again (off): a forced unload sets it before DisconnectOwner so
// nobody connects between that and the NKE's Deregister, and clears it
// if the NKE's stop fails and it stays loaded.
func (r *Registry) SetRefusing(owner string, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if on {
		r.refusing[owner] = true
	} else {
		delete(r.refusing, owner)
	}
}

// DisconnectOwner disconnects every client of owner's endpoints (a
// forced unload): each gets the NKE's Disconnect, once any callback it
// is in has returned, and its reads then fail with ErrDisconnected
// (wrapping reason, if not nil). It returns how many it disconnected.
func (r *Registry) DisconnectOwner(owner string, reason error) int {
	err := ErrDisconnected
	if reason != nil {
		err = fmt.Errorf("%w: %w", ErrDisconnected, reason)
	}
	n := 0
	for _, ep := range r.endpoints(owner) {
		for _, c := range ep.snapshot() {
			if c.disconnect(err) {
				n++
			}
		}
	}
	return n
}

// RemoveOwner removes owner's endpoints and disconnects their clients:
// for an NKE that stopped without deregistering them. Removed first, so
// nobody connects meanwhile. It returns the names removed.
func (r *Registry) RemoveOwner(owner string) []string {
	reason := fmt.Errorf("%w: endpoint removed: its NKE stopped", ErrDisconnected)
	var names []string
	for _, ep := range r.endpoints(owner) {
		if ep.remove(true) != nil {
			continue // deregistered meanwhile
		}
		names = append(names, ep.spec.Name)
		for _, c := range ep.snapshot() {
			c.disconnect(reason)
		}
	}
	return names
}

// endpoint is a registered ControlSpec, an nke.Control.
type endpoint struct {
	r        *Registry
	owner    string
	spec     nke.ControlSpec
	sendSize int
	recvSize int

	mu sync.Mutex
	// +checklocks:mu
	clients map[uint32]*Client // connected and connecting
	// +checklocks:mu
	lastUnit uint32
	// +checklocks:mu
	gone bool
}

var _ nke.Control = (*endpoint)(nil)

func (ep *endpoint) Name() string     { return ep.spec.Name }
func (ep *endpoint) hookName() string { return "control " + ep.spec.Name }

func (ep *endpoint) newClient() (*Client, error) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.gone {
		return nil, ErrNoEndpoint
	}
	// Units grow and are not reused while the endpoint lives (they
	// would wrap after 4 billion connects; skip any still in use).
	for {
		ep.lastUnit++
		if _, used := ep.clients[ep.lastUnit]; ep.lastUnit != 0 && !used {
			break
		}
	}
	c := &Client{ep: ep, unit: ep.lastUnit, ring: make([]byte, ep.recvSize),
		wake: make(chan struct{}, 1), dead: make(chan struct{})}
	ep.clients[c.unit] = c
	return c, nil
}

func (ep *endpoint) client(unit uint32) *Client {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return ep.clients[unit]
}

func (ep *endpoint) snapshot() []*Client {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	out := make([]*Client, 0, len(ep.clients))
	for _, c := range ep.clients {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b *Client) int { return cmp.Compare(a.unit, b.unit) })
	return out
}

func (ep *endpoint) drop(c *Client) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.clients[c.unit] == c {
		delete(ep.clients, c.unit)
	}
}

// Units implements nke.Control.
func (ep *endpoint) Units() []uint32 {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	out := make([]uint32, 0, len(ep.clients))
	for u := range ep.clients {
		out = append(out, u)
	}
	slices.Sort(out)
	return out
}

// Enqueue implements nke.Control.
func (ep *endpoint) Enqueue(unit uint32, data []byte) error {
	c := ep.client(unit)
	if c == nil {
		return nke.ErrNoUnit
	}
	return c.put(data, nil)
}

// EnqueueMbuf implements nke.Control.
func (ep *endpoint) EnqueueMbuf(unit uint32, m *mbuf.Mbuf) error {
	c := ep.client(unit)
	if c == nil {
		return nke.ErrNoUnit
	}
	if err := c.put(nil, m); err != nil {
		return err
	}
	m.Free()
	return nil
}

// EnqueueSpace implements nke.Control.
func (ep *endpoint) EnqueueSpace(unit uint32) (int, error) {
	c := ep.client(unit)
	if c == nil {
		return 0, nke.ErrNoUnit
	}
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.qerr != nil {
		return 0, nke.ErrNoUnit
	}
	return max(0, len(c.ring)-c.used-hdrLen), nil
}

// Deregister implements nke.Control: EBUSY while clients are connected.
func (ep *endpoint) Deregister() error { return ep.remove(false) }

func (ep *endpoint) remove(force bool) error {
	r := ep.r
	r.mu.Lock()
	defer r.mu.Unlock()
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.gone {
		return &OpError{Op: "deregister", Endpoint: ep.spec.Name, Err: nke.ErrDeregistered}
	}
	if n := len(ep.clients); n > 0 && !force {
		units := make([]uint32, 0, n)
		for u := range ep.clients {
			units = append(units, u)
		}
		slices.Sort(units)
		return &OpError{Op: "deregister", Endpoint: ep.spec.Name, Err: fmt.Errorf("%w: units %v", nke.ErrBusy, units)}
	}
	ep.gone = true
	if r.eps[ep.spec.Name] == ep {
		delete(r.eps, ep.spec.Name)
	}
	return nil
}

type clientState uint8

const (
	stateConnecting clientState = iota
	stateConnected
	stateClosed
)

// Client is one connection to an endpoint (a PF_SYSTEM control socket).
// Its methods may be called from several goroutines.
type Client struct {
	ep   *endpoint
	unit uint32

	// callMu serialises the NKE's callbacks for this unit.
	callMu sync.Mutex
	// +checklocks:callMu
	state clientState
	// +checklocks:callMu
	cookie any

	qmu sync.Mutex
	// +checklocks:qmu
	ring []byte
	// +checklocks:qmu
	head int // where the oldest message starts
	// +checklocks:qmu
	used int // bytes queued, headers included
	// +checklocks:qmu
	qerr error // set once disconnected: what reads return when empty

	wake chan struct{} // a message was queued (capacity 1)
	dead chan struct{} // closed on disconnect
}

// Unit is the client's unit number.
func (c *Client) Unit() uint32 { return c.unit }

// Endpoint is the name the client connected to.
func (c *Client) Endpoint() string { return c.ep.spec.Name }

// MaxMsg is the largest message the client can receive.
func (c *Client) MaxMsg() int { return c.ep.recvSize - hdrLen }

// MaxSend is the largest message the client can send.
func (c *Client) MaxSend() int { return c.ep.sendSize }

func (c *Client) opErr(op string, err error) error {
	return &OpError{Op: op, Endpoint: c.ep.spec.Name, Unit: c.unit, Err: err}
}

// Send hands data to the NKE's Send callback as one message and returns
// its error. Without a Send callback the message is refused.
func (c *Client) Send(data []byte) error {
	if len(data) > c.ep.sendSize {
		return c.opErr("send", fmt.Errorf("%w: %d bytes, at most %d", nke.ErrMsgSize, len(data), c.ep.sendSize))
	}
	return c.call("send", func(cookie any) error {
		if c.ep.spec.Send == nil {
			return errors.New("the endpoint takes no messages")
		}
		return c.ep.spec.Send(c.unit, cookie, data)
	})
}

// SetOpt hands option opt with data to the NKE's SetOpt callback.
func (c *Client) SetOpt(opt int, data []byte) error {
	if len(data) > c.ep.sendSize {
		return c.opErr("setopt", fmt.Errorf("%w: %d bytes, at most %d", nke.ErrMsgSize, len(data), c.ep.sendSize))
	}
	return c.call("setopt", func(cookie any) error {
		if c.ep.spec.SetOpt == nil {
			return nke.ErrNoOption
		}
		return c.ep.spec.SetOpt(c.unit, cookie, opt, data)
	})
}

// GetOpt reads option opt. With size 0 it first asks the NKE how long
// the value is (GetOpt with a nil buffer), as getsockopt callers do.
func (c *Client) GetOpt(opt int, size int) ([]byte, error) {
	if size < 0 || size > c.ep.recvSize {
		return nil, c.opErr("getopt", fmt.Errorf("%w: size %d, at most %d", nke.ErrMsgSize, size, c.ep.recvSize))
	}
	var out []byte
	err := c.call("getopt", func(cookie any) error {
		get := c.ep.spec.GetOpt
		if get == nil {
			return nke.ErrNoOption
		}
		if size == 0 {
			n, err := get(c.unit, cookie, opt, nil)
			if err != nil {
				return err
			}
			if n < 0 || n > c.ep.recvSize {
				return fmt.Errorf("the NKE asked for %d bytes for option %d, at most %d", n, opt, c.ep.recvSize)
			}
			size = n
		}
		buf := make([]byte, size)
		n, err := get(c.unit, cookie, opt, buf)
		if err != nil {
			return err
		}
		if n < 0 || n > len(buf) {
			return fmt.Errorf("the NKE returned length %d for a %d-byte buffer", n, len(buf))
		}
		out = buf[:n]
		return nil
	})
	return out, err
}

// call runs one of the NKE's callbacks for this unit, serialised with the
// others, a panic contained.
func (c *Client) call(op string, fn func(cookie any) error) error {
	c.callMu.Lock()
	defer c.callMu.Unlock()
	if c.state != stateConnected {
		return c.opErr(op, c.reason())
	}
	var err error
	cookie := c.cookie
	if v, panicked := c.guard(op, func() { err = fn(cookie) }); panicked {
		ferr := fmt.Errorf("%w: %s: %v", ErrFault, op, v)
		c.fail(ferr)
		return c.opErr(op, ferr)
	}
	if err != nil {
		return c.opErr(op, err)
	}
	return nil
}

// reason is why the client cannot be used.
func (c *Client) reason() error {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.qerr != nil {
		return c.qerr
	}
	return ErrClosed
}

// guard runs fn and recovers a panic in it: logged with the stack and
// published as a fault of the owning NKE.
func (c *Client) guard(op string, fn func()) (v any, panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			v, panicked = r, true
			ep := c.ep
			ep.r.cfg.Logf("kctl: %s: NKE %s: %s callback for unit %d panicked: %v (client disconnected)\n%s",
				ep.spec.Name, ep.owner, op, c.unit, r, debug.Stack())
			ep.r.cfg.Events.Publish(kevent.Event{Kind: kevent.Fault, NKE: ep.owner, Hook: ep.hookName(),
				ID: uint64(c.unit), Detail: fmt.Sprintf("%s callback panicked: %v", op, r)})
		}
	}()
	fn()
	return nil, false
}

// disconnect tears the client down with reason unless it is already;
// it reports whether it did.
func (c *Client) disconnect(reason error) bool {
	c.callMu.Lock()
	defer c.callMu.Unlock()
	if c.state == stateClosed {
		return false
	}
	c.fail(reason)
	return true
}

// fail tears the client down: the NKE's Disconnect if it had connected
// (a panic there is contained too), out of the endpoint, readers woken.
//
// +checklocks:c.callMu
func (c *Client) fail(reason error) {
	was := c.state
	c.state = stateClosed
	if was == stateConnected && c.ep.spec.Disconnect != nil {
		cookie := c.cookie
		c.guard("disconnect", func() { c.ep.spec.Disconnect(c.unit, cookie) })
	}
	c.cookie = nil
	c.ep.drop(c)
	c.qmu.Lock()
	if c.qerr == nil {
		c.qerr = reason
		close(c.dead)
	}
	if errors.Is(reason, ErrClosed) {
		c.head, c.used = 0, 0 // Close discards what is queued
	}
	c.qmu.Unlock()
	if was == stateConnected {
		detail := ""
		if !errors.Is(reason, ErrClosed) {
			detail = reason.Error()
		}
		c.ep.r.cfg.Events.Publish(kevent.Event{Kind: kevent.ControlDisconnect, NKE: c.ep.owner,
			Hook: c.ep.hookName(), ID: uint64(c.unit), Detail: detail})
	}
}

// Close disconnects the client; the NKE's Disconnect runs once any
// callback in progress for it has returned. Messages still queued are
// discarded. Closing twice is not an error.
func (c *Client) Close() error {
	c.disconnect(ErrClosed)
	return nil
}

// put queues one message: data, or m's bytes.
func (c *Client) put(data []byte, m *mbuf.Mbuf) error {
	n := len(data)
	if m != nil {
		n = m.PktLen()
	}
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.qerr != nil {
		return nke.ErrNoUnit
	}
	if n+hdrLen > len(c.ring) {
		return fmt.Errorf("%w: %d bytes, at most %d", nke.ErrMsgSize, n, len(c.ring)-hdrLen)
	}
	if c.used+n+hdrLen > len(c.ring) {
		return nke.ErrNoBufs
	}
	var hdr [hdrLen]byte
	hdr[0], hdr[1], hdr[2], hdr[3] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	tail := (c.head + c.used) % len(c.ring)
	tail = c.write(tail, hdr[:])
	if m == nil {
		c.write(tail, data)
	} else {
		for b := m; b != nil; b = b.Next() {
			tail = c.write(tail, b.Bytes())
		}
	}
	c.used += n + hdrLen
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return nil
}

// write copies p into the ring at off, wrapping, and returns the offset
// after it.
//
// +checklocks:c.qmu
func (c *Client) write(off int, p []byte) int {
	k := copy(c.ring[off:], p)
	copy(c.ring, p[k:])
	return (off + len(p)) % len(c.ring)
}

// read copies n bytes from the ring at off into p (p may be shorter: the
// rest is skipped) and returns the offset after the n bytes.
//
// +checklocks:c.qmu
func (c *Client) read(off, n int, p []byte) int {
	p = p[:min(len(p), n)]
	k := copy(p, c.ring[off:])
	copy(p[k:], c.ring)
	return (off + n) % len(c.ring)
}

// take pops the oldest message into buf, if there is one.
func (c *Client) take(buf []byte) (n int, ok bool, err error) {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.used == 0 {
		if c.qerr != nil {
			return 0, false, c.qerr
		}
		return 0, false, nil
	}
	var hdr [hdrLen]byte
	off := c.read(c.head, hdrLen, hdr[:])
	size := int(hdr[0])<<24 | int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3])
	c.head = c.read(off, size, buf)
	c.used -= size + hdrLen
	if c.used == 0 {
		c.head = 0
	}
	if size > len(buf) {
		return len(buf), true, fmt.Errorf("%w: %d bytes into %d", ErrTruncated, size, len(buf))
	}
	return size, true, nil
}

// TryRecv pops the oldest queued message into buf without waiting:
// ErrWouldBlock if none is queued. A message longer than buf is cut to
// it (ErrTruncated, with n = len(buf)). Once the client is disconnected
// and its queue is empty, it returns why.
func (c *Client) TryRecv(buf []byte) (int, error) {
	n, ok, err := c.take(buf)
	if ok {
		c.rcvd()
	}
	switch {
	case ok && err != nil:
		return n, c.opErr("recv", err)
	case ok:
		return n, nil
	case err != nil:
		return 0, c.opErr("recv", err)
	}
	return 0, c.opErr("recv", ErrWouldBlock)
}

// Recv is TryRecv that waits for a message, the client's disconnection,
// or ctx's end (deadline or cancel).
func (c *Client) Recv(ctx context.Context, buf []byte) (int, error) {
	for {
		n, ok, err := c.take(buf)
		if ok {
			c.rcvd()
			if err != nil {
				return n, c.opErr("recv", err)
			}
			return n, nil
		}
		if err != nil {
			return 0, c.opErr("recv", err)
		}
		select {
		case <-c.wake:
		case <-c.dead:
		case <-ctx.Done():
			return 0, c.opErr("recv", ctx.Err())
		}
	}
}

// RecvMsg is Recv into a buffer of its own, the message's size.
func (c *Client) RecvMsg(ctx context.Context) ([]byte, error) {
	buf := make([]byte, c.MaxMsg())
	n, err := c.Recv(ctx, buf)
	if err != nil {
		return nil, err
	}
	return buf[:n:n], nil
}

// rcvd tells the NKE room was made (ctl_rcvd), if it asked.
func (c *Client) rcvd() {
	if c.ep.spec.Rcvd == nil {
		return
	}
	// An error here is the client's state (closed meanwhile): the read
	// itself succeeded.
	_ = c.call("rcvd", func(cookie any) error {
		c.ep.spec.Rcvd(c.unit, cookie)
		return nil
	})
}
