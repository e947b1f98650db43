package nketest

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Kernel is a fake nke.Kernel for starting a Module in a unit test: the
// hooks a test sets (nil ones are reported as absent, as a guest without
// that layer would), and a log it can read.
type Kernel struct {
	IPHook     nke.IPHook
	SocketHook nke.SocketHook
	Controls   *Controls
	// LinkList are the links Links returns (none if empty).
	LinkList []nke.Link

	mu sync.Mutex
	// +checklocks:mu
	logs []string
}

var _ nke.Kernel = (*Kernel)(nil)

func (k *Kernel) Links() []nke.Link       { return k.LinkList }
func (k *Kernel) IP() nke.IPHook          { return k.IPHook }
func (k *Kernel) Sockets() nke.SocketHook { return k.SocketHook }
func (k *Kernel) Control() nke.ControlHook {
	if k.Controls == nil {
		return nil
	}
	return k.Controls
}

// Logf records the line.
func (k *Kernel) Logf(format string, args ...any) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.logs = append(k.logs, fmt.Sprintf(format, args...))
}

// Logs returns what was logged.
func (k *Kernel) Logs() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.logs...)
}

var attachIDs atomic.Uint64

// Attachment is a fake nke.Attachment whose Detach closes Done at once
// (no call is ever in flight in a fake), after the spec's Detached.
type Attachment struct {
	name     string
	id       uint64
	once     sync.Once
	done     chan struct{}
	detached func()
}

// NewAttachment returns an attachment named name with a fresh id.
func NewAttachment(name string, detached func()) *Attachment {
	return &Attachment{name: name, id: attachIDs.Add(1), done: make(chan struct{}), detached: detached}
}

func (a *Attachment) Name() string { return a.name }
func (a *Attachment) ID() uint64   { return a.id }
func (a *Attachment) Detach() {
	a.once.Do(func() {
		if a.detached != nil {
			a.detached()
		}
		close(a.done)
	})
}
func (a *Attachment) Done() <-chan struct{} { return a.done }

// Detached reports whether Detach was called.
func (a *Attachment) Detached() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// ErrNoInject is what the fake hooks' inject functions return.
var ErrNoInject = errors.New("nketest: the fake hook does not inject")

// IPHook is a fake nke.IPHook recording the specs attached; a test calls
// the filters itself.
type IPHook struct {
	mu sync.Mutex
	// +checklocks:mu
	specs []nke.IPFilterSpec
	// +checklocks:mu
	atts []*Attachment
}

var _ nke.IPHook = (*IPHook)(nil)

func (h *IPHook) AttachIPFilter(spec nke.IPFilterSpec) (nke.Attachment, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	a := NewAttachment(spec.Name, spec.Detached)
	h.specs = append(h.specs, spec)
	h.atts = append(h.atts, a)
	return a, nil
}

// Attached returns the specs whose attachment is not detached.
func (h *IPHook) Attached() []nke.IPFilterSpec {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []nke.IPFilterSpec
	for i, a := range h.atts {
		if !a.Detached() {
			out = append(out, h.specs[i])
		}
	}
	return out
}

func (h *IPHook) InjectIPInput(*mbuf.Mbuf, nke.Attachment) error  { return ErrNoInject }
func (h *IPHook) InjectIPOutput(*mbuf.Mbuf, nke.Attachment) error { return ErrNoInject }

// SocketHook is a fake nke.SocketHook recording the filters registered;
// a test calls their callbacks itself. Detaching a registration calls
// its Unregistered.
type SocketHook struct {
	mu sync.Mutex
	// +checklocks:mu
	specs []nke.SocketFilterSpec
	// +checklocks:mu
	atts []*Attachment
}

var _ nke.SocketHook = (*SocketHook)(nil)

func (h *SocketHook) RegisterSocketFilter(spec nke.SocketFilterSpec) (nke.Attachment, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	a := NewAttachment(spec.Name, spec.Unregistered)
	h.specs = append(h.specs, spec)
	h.atts = append(h.atts, a)
	return a, nil
}

// Registered returns the specs whose registration is not detached.
func (h *SocketHook) Registered() []nke.SocketFilterSpec {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []nke.SocketFilterSpec
	for i, a := range h.atts {
		if !a.Detached() {
			out = append(out, h.specs[i])
		}
	}
	return out
}

func (h *SocketHook) AttachSocketFilter(nke.Socket, uint32) error { return ErrNoInject }
func (h *SocketHook) InjectDataIn(nke.Socket, netip.AddrPort, *mbuf.Mbuf, *mbuf.Mbuf, nke.DataFlags, nke.Attachment) error {
	return ErrNoInject
}
func (h *SocketHook) InjectDataOut(_ nke.Socket, _ netip.AddrPort, data, control *mbuf.Mbuf, _ nke.DataFlags, _ nke.Attachment) error {
	data.Free() // consumed, error or not
	control.Free()
	return ErrNoInject
}
