package nke

import (
	"errors"
	"fmt"

	"github.com/nke-harness/nke/nke/mbuf"
)

// Kernel control (Apple's kern_control.h): an NKE registers a named
// endpoint; user space (nkectl ctl, through the guest's control channel)
// connects to it by name and gets a unit number, sends it messages,
// sets and gets options, and reads what the NKE enqueues back for that
// unit. Messages keep their boundaries (Apple's datagram control
// sockets); the receive queue of each client is bounded in bytes, and an
// enqueue that does not fit fails with ErrNoBufs rather than blocking the
// NKE.

// Errors of kernel control, Apple's errno in brackets.
var (
	// ErrControlExists: an endpoint of that name is registered (EEXIST).
	ErrControlExists = errors.New("nke: a control endpoint of that name is registered")
	// ErrBusy: Deregister while clients are connected (EBUSY).
	ErrBusy = errors.New("nke: control endpoint has connected clients")
	// ErrNoBufs: the client's receive queue is full (ENOBUFS); the data
	// was not enqueued. Wait for the Rcvd callback and try again.
	ErrNoBufs = errors.New("nke: control client's receive queue is full")
	// ErrMsgSize: a message larger than the queue or send size (EMSGSIZE).
	ErrMsgSize = errors.New("nke: control message too large")
	// ErrNoUnit: no client is connected on that unit (ENOTCONN).
	ErrNoUnit = errors.New("nke: no control client on that unit")
	// ErrNoOption: the endpoint has no such option (EOPNOTSUPP).
	ErrNoOption = errors.New("nke: control option not supported")
	// ErrDeregistered: the endpoint is gone.
	ErrDeregistered = errors.New("nke: control endpoint deregistered")
)

// Default and largest buffer sizes of a control endpoint.
const (
	DefaultControlSendSize = 8 << 10
	DefaultControlRecvSize = 64 << 10
	MaxControlBufSize      = 4 << 20
)

// ControlSpec declares a control endpoint (Apple's kern_ctl_reg).
//
// Callbacks for one unit are never called concurrently, and Disconnect is
// the last call a unit gets; callbacks for different units may run at
// once. A callback may call Enqueue for any unit. A callback that panics
// disconnects its client (with the panic as the reason) and is reported;
// other clients go on.
type ControlSpec struct {
	// Name is what clients connect to, like a bundle id
	// ("com.nke-harness.ipfw"); checked by CheckName.
	Name string
	// SendSize bounds one message a client sends (ctl_sendsize);
	// RecvSize bounds the bytes queued for one client (ctl_recvsize).
	// Zero takes the defaults; at most MaxControlBufSize.
	SendSize, RecvSize int
	// Connect is called when a client connects on unit (ctl_connect). A
	// non-nil error refuses the client, who gets it. cookie is the NKE's
	// per-unit state, handed back on every call. Required.
	Connect func(unit uint32) (cookie any, err error)
	// Disconnect is called once when the client goes: it closed, the
	// NKE was forcibly unloaded, or a callback panicked (ctl_disconnect).
	Disconnect func(unit uint32, cookie any)
	// Send is a message from the client (ctl_send). data is valid only
	// during the call. An error is returned to the client's Send.
	Send func(unit uint32, cookie any, data []byte) error
	// SetOpt sets an option (ctl_setopt); ErrNoOption for one it does
	// not know.
	SetOpt func(unit uint32, cookie any, opt int, data []byte) error
	// GetOpt reads an option (ctl_getopt) into buf and returns the
	// length used; a nil buf asks for the length it needs. ErrNoOption
	// for one it does not know.
	GetOpt func(unit uint32, cookie any, opt int, buf []byte) (int, error)
	// Rcvd, if set, is called after the client read from its queue:
	// room has been made, an enqueue that failed with ErrNoBufs may be
	// retried (ctl_rcvd, xnu's flow control).
	Rcvd func(unit uint32, cookie any)
}

// Check validates the spec.
func (s *ControlSpec) Check() error {
	if err := CheckName(s.Name); err != nil {
		return fmt.Errorf("control endpoint: %w", err)
	}
	if s.Connect == nil {
		return fmt.Errorf("nke: control endpoint %s: needs a Connect callback", s.Name)
	}
	for _, n := range []struct {
		what string
		v    int
	}{{"SendSize", s.SendSize}, {"RecvSize", s.RecvSize}} {
		if n.v < 0 || n.v > MaxControlBufSize {
			return fmt.Errorf("nke: control endpoint %s: %s %d: want 0 (default) to %d", s.Name, n.what, n.v, MaxControlBufSize)
		}
	}
	return nil
}

// ControlHook is where an NKE registers control endpoints
// (ctl_register).
type ControlHook interface {
	RegisterControl(spec ControlSpec) (Control, error)
}

// Control is a registered endpoint, the NKE's side (kern_ctl_ref).
type Control interface {
	Name() string
	// Enqueue copies data into unit's receive queue as one message
	// (ctl_enqueuedata). ErrNoBufs if it does not fit now, ErrMsgSize if
	// it never would, ErrNoUnit if no client is on unit.
	Enqueue(unit uint32, data []byte) error
	// EnqueueMbuf is Enqueue with a packet's bytes (ctl_enqueuembuf);
	// on success m is consumed, on error it is still the caller's.
	EnqueueMbuf(unit uint32, m *mbuf.Mbuf) error
	// EnqueueSpace is the largest message unit's queue takes now
	// (ctl_getenqueuespace).
	EnqueueSpace(unit uint32) (int, error)
	// Units are the connected clients' units, in connect order.
	Units() []uint32
	// Deregister removes the endpoint (ctl_deregister); ErrBusy while
	// clients are connected, who are left as they are.
	Deregister() error
}
