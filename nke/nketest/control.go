package nketest

import (
	"errors"
	"fmt"
	"sync"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Controls is a fake nke.ControlHook for NKE unit tests: endpoints
// register, a test connects clients and talks to them synchronously.
// It keeps kern_ctl's rules that an NKE can observe (unique units,
// per-client receive queues bounded in bytes with ErrNoBufs, EBUSY
// deregister, callbacks of one unit serialised); the guest's real one is
// kernel/kctl. Each queued message costs its length plus 4 bytes, as
// there.
type Controls struct {
	mu  sync.Mutex
	eps map[string]*fakeControl
}

var _ nke.ControlHook = (*Controls)(nil)

// RegisterControl implements nke.ControlHook.
func (h *Controls) RegisterControl(spec nke.ControlSpec) (nke.Control, error) {
	if err := spec.Check(); err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.eps == nil {
		h.eps = map[string]*fakeControl{}
	}
	if _, ok := h.eps[spec.Name]; ok {
		return nil, nke.ErrControlExists
	}
	if spec.RecvSize == 0 {
		spec.RecvSize = nke.DefaultControlRecvSize
	}
	c := &fakeControl{h: h, spec: spec, clients: map[uint32]*ControlClient{}}
	h.eps[spec.Name] = c
	return c, nil
}

// Registered reports whether an endpoint of that name is registered.
func (h *Controls) Registered(name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.eps[name]
	return ok
}

// Connect connects a client to the endpoint called name.
func (h *Controls) Connect(name string) (*ControlClient, error) {
	h.mu.Lock()
	ep := h.eps[name]
	h.mu.Unlock()
	if ep == nil {
		return nil, fmt.Errorf("nketest: no control endpoint %q", name)
	}
	ep.mu.Lock()
	ep.last++
	c := &ControlClient{ep: ep, Unit: ep.last}
	ep.clients[c.Unit] = c
	ep.mu.Unlock()
	c.call.Lock()
	defer c.call.Unlock()
	cookie, err := ep.spec.Connect(c.Unit)
	if err != nil {
		ep.drop(c.Unit)
		return nil, err
	}
	c.cookie, c.connected = cookie, true
	return c, nil
}

type fakeControl struct {
	h    *Controls
	spec nke.ControlSpec

	mu sync.Mutex
	// +checklocks:mu
	clients map[uint32]*ControlClient
	// +checklocks:mu
	last uint32
}

func (c *fakeControl) Name() string { return c.spec.Name }

func (c *fakeControl) client(unit uint32) *ControlClient {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.clients[unit]
}

func (c *fakeControl) drop(unit uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.clients, unit)
}

func (c *fakeControl) Enqueue(unit uint32, data []byte) error {
	cl := c.client(unit)
	if cl == nil {
		return nke.ErrNoUnit
	}
	cl.qmu.Lock()
	defer cl.qmu.Unlock()
	if len(data)+4 > c.spec.RecvSize {
		return nke.ErrMsgSize
	}
	if cl.queued+len(data)+4 > c.spec.RecvSize {
		return nke.ErrNoBufs
	}
	cl.queued += len(data) + 4
	cl.q = append(cl.q, append([]byte(nil), data...))
	return nil
}

func (c *fakeControl) EnqueueMbuf(unit uint32, m *mbuf.Mbuf) error {
	b := make([]byte, m.PktLen())
	if err := m.CopyData(0, b); err != nil {
		return err
	}
	if err := c.Enqueue(unit, b); err != nil {
		return err
	}
	m.Free()
	return nil
}

func (c *fakeControl) EnqueueSpace(unit uint32) (int, error) {
	cl := c.client(unit)
	if cl == nil {
		return 0, nke.ErrNoUnit
	}
	cl.qmu.Lock()
	defer cl.qmu.Unlock()
	return max(0, c.spec.RecvSize-cl.queued-4), nil
}

func (c *fakeControl) Units() []uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []uint32
	for u := uint32(1); u <= c.last; u++ {
		if _, ok := c.clients[u]; ok {
			out = append(out, u)
		}
	}
	return out
}

func (c *fakeControl) Deregister() error {
	c.mu.Lock()
	n := len(c.clients)
	c.mu.Unlock()
	if n > 0 {
		return nke.ErrBusy
	}
	c.h.mu.Lock()
	defer c.h.mu.Unlock()
	if c.h.eps[c.spec.Name] != c {
		return nke.ErrDeregistered
	}
	delete(c.h.eps, c.spec.Name)
	return nil
}

// ErrClientClosed is what a closed fake client's calls return.
var ErrClientClosed = errors.New("nketest: control client closed")

// ControlClient is a connected fake client.
type ControlClient struct {
	ep   *fakeControl
	Unit uint32

	call sync.Mutex
	// +checklocks:call
	cookie any
	// +checklocks:call
	connected bool

	qmu sync.Mutex
	// +checklocks:qmu
	q [][]byte
	// +checklocks:qmu
	queued int
}

// Send hands data to the NKE's Send callback.
func (c *ControlClient) Send(data string) error {
	c.call.Lock()
	defer c.call.Unlock()
	if !c.connected {
		return ErrClientClosed
	}
	if c.ep.spec.Send == nil {
		return errors.New("nketest: the endpoint takes no messages")
	}
	return c.ep.spec.Send(c.Unit, c.cookie, []byte(data))
}

// SetOpt hands an option to the NKE's SetOpt callback.
func (c *ControlClient) SetOpt(opt int, data []byte) error {
	c.call.Lock()
	defer c.call.Unlock()
	if !c.connected {
		return ErrClientClosed
	}
	if c.ep.spec.SetOpt == nil {
		return nke.ErrNoOption
	}
	return c.ep.spec.SetOpt(c.Unit, c.cookie, opt, data)
}

// GetOpt reads an option of at most size bytes.
func (c *ControlClient) GetOpt(opt, size int) ([]byte, error) {
	c.call.Lock()
	defer c.call.Unlock()
	if !c.connected {
		return nil, ErrClientClosed
	}
	if c.ep.spec.GetOpt == nil {
		return nil, nke.ErrNoOption
	}
	buf := make([]byte, size)
	n, err := c.ep.spec.GetOpt(c.Unit, c.cookie, opt, buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// Recv takes every queued message, oldest first, then tells the NKE
// room was made (Rcvd) if it asked and anything was read.
func (c *ControlClient) Recv() []string {
	c.qmu.Lock()
	var out []string
	for _, m := range c.q {
		out = append(out, string(m))
	}
	c.q, c.queued = nil, 0
	c.qmu.Unlock()
	c.call.Lock()
	defer c.call.Unlock()
	if len(out) > 0 && c.connected && c.ep.spec.Rcvd != nil {
		c.ep.spec.Rcvd(c.Unit, c.cookie)
	}
	return out
}

// Close disconnects the client (the NKE's Disconnect).
func (c *ControlClient) Close() {
	c.call.Lock()
	defer c.call.Unlock()
	if !c.connected {
		return
	}
	c.connected = false
	if c.ep.spec.Disconnect != nil {
		c.ep.spec.Disconnect(c.Unit, c.cookie)
	}
	c.ep.drop(c.Unit)
}
