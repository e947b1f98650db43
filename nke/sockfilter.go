package nke

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/nke-harness/nke/nke/mbuf"
)

// Socket filters (Apple's kpi_socketfilter.h): a filter sits between an
// application (an in-guest service) and its socket. This file is the KPI
// a socket NKE is written against; the guest's socket layer runs it.

// Socket is what a socket filter is told about the socket it sits on
// (Apple's socket_t, the parts a filter reads; sock_getsockname and
// sock_getpeername are LocalAddr and RemoteAddr).
type Socket interface {
	// ID is unique among the guest's sockets, for a filter's tables.
	ID() uint64
	Family() IPFamily
	Type() SocketType
	// Protocol is the IP protocol: 6 (TCP), 17 (UDP), 1 or 58 (ICMP echo).
	Protocol() uint8
	// LocalAddr is the bound address, the zero value before bind.
	LocalAddr() netip.AddrPort
	// RemoteAddr is the connected peer, the zero value if none.
	RemoteAddr() netip.AddrPort
}

// SocketType is a socket's type (Apple's SOCK_STREAM, SOCK_DGRAM).
type SocketType uint8

const (
	SockStream SocketType = 1
	SockDgram  SocketType = 2
)

func (t SocketType) String() string {
	switch t {
	case SockStream:
		return "stream"
	case SockDgram:
		return "dgram"
	}
	return fmt.Sprintf("socktype(%d)", uint8(t))
}

// SocketEvent is what a filter is notified of (Apple's sflt_event_t); it
// cannot veto it.
type SocketEvent uint8

const (
	SockEventConnecting    SocketEvent = iota + 1 // sock_evt_connecting
	SockEventConnected                            // sock_evt_connected
	SockEventDisconnecting                        // sock_evt_disconnecting
	SockEventDisconnected                         // sock_evt_disconnected
	SockEventFlushRead                            // sock_evt_flush_read
	SockEventShutdown                             // sock_evt_shutdown (how in the argument)
	SockEventCantRecvMore                         // sock_evt_cantrecvmore
	SockEventCantSendMore                         // sock_evt_cantsendmore
	SockEventClosing                              // sock_evt_closing
	SockEventBound                                // sock_evt_bound
)

var sockEventNames = [...]string{"", "connecting", "connected", "disconnecting", "disconnected",
	"flush-read", "shutdown", "cant-recv-more", "cant-send-more", "closing", "bound"}

func (e SocketEvent) String() string {
	if int(e) < len(sockEventNames) && e != 0 {
		return sockEventNames[e]
	}
	return fmt.Sprintf("sockevent(%d)", uint8(e))
}

// DataFlags qualify data passing a socket filter (Apple's sflt_data_flag_t).
type DataFlags uint8

const (
	// DataOOB is out-of-band (urgent) data (sock_data_filt_flag_oob).
	DataOOB DataFlags = 1 << iota
	// DataRecord ends a record (sock_data_filt_flag_record): a datagram,
	// or the end of a message on a record socket.
	DataRecord
)

// SockOpt is a socket option a filter sees (Apple's sockopt_t): Level and
// Name as in setsockopt, Value the option's bytes. A get-option filter
// may fill Value.
type SockOpt struct {
	Level, Name int
	Value       []byte
}

// A socket filter implements SocketFilter and any of the optional
// interfaces. The control rule applies to every callback returning an
// error except the data ones: nil lets the operation go on (the next
// filter, then the socket), ErrSwallowed makes it succeed without doing
// it, another error stops it and is returned to the caller.
type (
	// SocketFilter is required (Apple: sf_attach and sf_detach). Attach
	// is called for each socket the filter attaches to: a non-nil error
	// means not attached, and Detach is not called for it. cookie is the
	// filter's per-socket state, handed back on every call.
	SocketFilter interface {
		SockAttach(so Socket) (cookie any, err error)
		SockDetach(cookie any, so Socket)
	}
	// SockNotifier is told of socket events (sf_notify).
	SockNotifier interface {
		SockNotify(cookie any, so Socket, ev SocketEvent)
	}
	// SockDataIn sees data before it is appended to the socket's
	// receive buffer (sf_data_in): from is the sender (datagrams) or
	// the peer, control ancillary data (nil if none). nil passes the
	// data on, ErrSwallowed means the filter keeps it (and must
	// re-inject it, in order, or free it), another error drops it.
	// *data may be replaced.
	SockDataIn interface {
		SockDataIn(cookie any, so Socket, from netip.AddrPort, data, control **mbuf.Mbuf, flags DataFlags) error
	}
	// SockDataOut sees data before it goes to the transport
	// (sf_data_out), with the same rules.
	SockDataOut interface {
		SockDataOut(cookie any, so Socket, to netip.AddrPort, data, control **mbuf.Mbuf, flags DataFlags) error
	}
	// SockConnectIn sees an incoming connection on a listening socket
	// (sf_connect_in): an error rejects the peer.
	SockConnectIn interface {
		SockConnectIn(cookie any, so Socket, from netip.AddrPort) error
	}
	// SockConnectOut sees a connect (sf_connect_out).
	SockConnectOut interface {
		SockConnectOut(cookie any, so Socket, to netip.AddrPort) error
	}
	// SockBinder sees a bind (sf_bind).
	SockBinder interface {
		SockBind(cookie any, so Socket, to netip.AddrPort) error
	}
	// SockListener sees a listen (sf_listen).
	SockListener interface {
		SockListen(cookie any, so Socket) error
	}
	// SockAcceptor sees a connection being accepted (sf_accept, the
	// extended KPI): ErrSwallowed disconnects the accepted socket;
	// another error closes it and is returned from Accept.
	SockAcceptor interface {
		SockAccept(cookie any, listener, so Socket, local, remote netip.AddrPort) error
	}
	// SockOptioner sees socket options (sf_setoption, sf_getoption).
	SockOptioner interface {
		SockSetOption(cookie any, so Socket, opt *SockOpt) error
		SockGetOption(cookie any, so Socket, opt *SockOpt) error
	}
	// SockIoctler sees socket ioctls (sf_ioctl).
	SockIoctler interface {
		SockIoctl(cookie any, so Socket, cmd uint32, arg []byte) error
	}
	// SockNamer sees getpeername and getsockname (sf_getpeername,
	// sf_getsockname); it may change the address reported.
	SockNamer interface {
		SockGetPeerName(cookie any, so Socket, addr *netip.AddrPort) error
		SockGetSockName(cookie any, so Socket, addr *netip.AddrPort) error
	}
)

// SocketFilterSpec registers a socket filter (Apple's sflt_filter passed
// to sflt_register).
type SocketFilterSpec struct {
	// Name identifies the filter ("com.example.tcplog").
	Name string
	// Handle is the filter's handle (sf_handle): nonzero, unique among
	// registered filters; programmatic attaches name it.
	Handle uint32
	// Family, Type and Protocol say which sockets it is for; a zero
	// Family or Protocol matches any.
	Family   IPFamily
	Type     SocketType
	Protocol uint8
	// Global attaches it to every new matching socket (SFLT_GLOBAL);
	// otherwise it attaches only on request (SFLT_PROG: the SO_NKE
	// option of the socket layer).
	Global bool
	// Extended also attaches it to matching sockets that exist at
	// registration, replaying their state as notify events
	// (SFLT_EXTENDED_REGISTRY).
	Extended bool
	// Order places it among the filters of a socket; by default the
	// newest attachment runs first, the same order in and out.
	Order Order
	// Filter implements SocketFilter and any optional interfaces.
	Filter any
	// Unregistered, if set, is the very last call (sf_unregistered),
	// once every socket has detached it and no call is in flight; the
	// NKE may be unloaded after it.
	Unregistered func()
}

// ErrSocketFilterCallbacks reports a filter without attach and detach.
var ErrSocketFilterCallbacks = errors.New("nke: a socket filter needs SockAttach and SockDetach (SocketFilter)")

// Check validates the spec.
func (s SocketFilterSpec) Check() error {
	if err := CheckName(s.Name); err != nil {
		return err
	}
	if s.Handle == 0 {
		return fmt.Errorf("nke: socket filter %s: handle 0: want a nonzero handle", s.Name)
	}
	if s.Family != 0 && s.Family != IPv4 && s.Family != IPv6 {
		return fmt.Errorf("nke: socket filter %s: family %v: want IPv4, IPv6 or 0 for both", s.Name, s.Family)
	}
	if s.Type != SockStream && s.Type != SockDgram {
		return fmt.Errorf("nke: socket filter %s: type %v: want stream or dgram", s.Name, s.Type)
	}
	if _, ok := s.Filter.(SocketFilter); !ok {
		return fmt.Errorf("nke: socket filter %s (%T): %w", s.Name, s.Filter, ErrSocketFilterCallbacks)
	}
	return nil
}

// Matches reports whether a socket of that family, type and protocol is
// one the filter is for.
func (s SocketFilterSpec) Matches(f IPFamily, t SocketType, proto uint8) bool {
	return (s.Family == 0 || s.Family == f) && s.Type == t && (s.Protocol == 0 || s.Protocol == proto)
}

// SocketHook is where socket filters register and data is injected
// (Apple's sflt_register, sflt_unregister through the attachment,
// sflt_attach, sock_inject_data_in, sock_inject_data_out).
type SocketHook interface {
	// RegisterSocketFilter registers a filter; a duplicate handle is
	// refused. Detaching the returned attachment unregisters it: no
	// new attaches, existing sockets detach once their calls drain, then
	// Unregistered, then Done.
	RegisterSocketFilter(spec SocketFilterSpec) (Attachment, error)
	// AttachSocketFilter attaches the registered filter with handle to
	// so (sflt_attach; what the SO_NKE option does).
	AttachSocketFilter(so Socket, handle uint32) error
	// InjectDataIn hands data to so as if received, through every
	// filter's data-in again (sock_inject_data_in); out-of-band data is
	// refused. by, the injecting filter's attachment or nil, goes into
	// the data's provenance (InjectedByMe), so the filter knows its own. On error the data is
	// still the caller's.
	InjectDataIn(so Socket, from netip.AddrPort, data, control *mbuf.Mbuf, flags DataFlags, by Attachment) error
	// InjectDataOut sends data on so through every filter's data-out
	// again (sock_inject_data_out); out-of-band data is refused. The
	// data is consumed, error or not.
	InjectDataOut(so Socket, to netip.AddrPort, data, control *mbuf.Mbuf, flags DataFlags, by Attachment) error
}
