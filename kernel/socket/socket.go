// Package socket is the guest's socket layer over netstack: TCP stream
// sockets, UDP datagram sockets and ICMP echo ("ping") sockets, IPv4 and
// IPv6, on types of its own that implement net.Conn, net.Listener and
// net.PacketConn, so that ordinary Go servers (net/http) run on them
// unchanged. It owns the data path between the application and gVisor's
// transport endpoints: every byte received passes through one function
// (dataIn) on its way from the endpoint to the reader, every byte sent
// through one other (dataOut) on its way to the endpoint.
//
// It is the future home of Apple's socket filters (kpi_socketfilter.h).
// Every point where Apple's KPI calls a filter is one method of sock,
// named after the callback, through which that operation passes:
//
//	attach        sf_attach        a socket is created (Layer.newSock)
//	detach        sf_detach        the socket is released, after closing
//	notify(ev)    sf_notify        connecting, connected, disconnecting,
//	                               disconnected, flush-read, shutdown,
//	                               can't-receive-more, can't-send-more,
//	                               closing, bound
//	dataIn        sf_data_in       received data, before the reader gets it
//	dataOut       sf_data_out      data to send, before the transport gets it
//	connectIn     sf_connect_in    a listener's new peer, before it is accepted
//	connectOut    sf_connect_out   an outgoing connect, before the transport's
//	bind          sf_bind          an explicit bind
//	listen        sf_listen        listen
//	accept        sf_accept        a connection handed to Accept's caller
//	setOption     sf_setoption     SetOption and the typed setters
//	getOption     sf_getoption     GetOption
//	ioctl         sf_ioctl         Ioctl
//	peerName      sf_getpeername   RemoteAddr
//	sockName      sf_getsockname   LocalAddr, Addr
//
// No filter runs yet: the seams do the operation and nothing else, and
// cost nothing beyond gVisor's gonet adapters (docs/performance.md).
//
// The layer starts no goroutine: a socket waits for its endpoint through
// one waiter entry registered for its lifetime, and deadlines are timers.
package socket

import (
	"bytes"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/nke-harness/nke/kernel/netstack"
)

// Layer is the socket layer of one stack: it creates the sockets and
// closes them all at Close.
type Layer struct {
	s *netstack.Stack
	// trace, set only by internal tests, sees every seam a socket passes.
	trace func(s *sock, what string)

	mu sync.Mutex
	// +checklocks:mu
	socks map[*sock]struct{}
	// +checklocks:mu
	closed bool
}

// New returns the socket layer over s.
func New(s *netstack.Stack) *Layer {
	return &Layer{s: s, socks: map[*sock]struct{}{}}
}

// Close closes every socket of the layer (blocked calls return
// net.ErrClosed) and refuses new ones.
func (l *Layer) Close() error {
	l.mu.Lock()
	l.closed = true
	socks := make([]*sock, 0, len(l.socks))
	for s := range l.socks {
		socks = append(socks, s)
	}
	l.mu.Unlock()
	for _, s := range socks {
		s.close()
	}
	return nil
}

// Sockets reports how many sockets are open.
func (l *Layer) Sockets() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.socks)
}

// Event is what notify reports: Apple's sflt_event_t.
type Event int

// The events, in kpi_socketfilter.h's order.
const (
	EvConnecting Event = iota + 1
	EvConnected
	EvDisconnecting
	EvDisconnected
	EvFlushRead
	EvShutdown
	EvCantRecvMore
	EvCantSendMore
	EvClosing
	EvBound
)

var eventNames = [...]string{"", "connecting", "connected", "disconnecting", "disconnected",
	"flush-read", "shutdown", "cantrecvmore", "cantsendmore", "closing", "bound"}

func (e Event) String() string {
	if e > 0 && int(e) < len(eventNames) {
		return eventNames[e]
	}
	return "event?"
}

type kind uint8

const (
	kindTCP kind = iota
	kindUDP
	kindICMP
)

// state bits: which notify events have been sent, so each is sent once.
const (
	stConnected = 1 << iota
	stDisconnected
	stCantRecv
	stCantSend
	stDetached
)

// sock is the state every socket shares: the endpoint, its waiter
// entry, deadlines, and the seams.
type sock struct {
	l      *Layer
	kind   kind
	v6     bool
	ep     tcpip.Endpoint
	wq     *waiter.Queue
	entry  waiter.Entry
	rdWake chan struct{} // readable, or error/hang-up (capacity 1)
	wrWake chan struct{} // writable, or error/hang-up (capacity 1)
	closed chan struct{}
	once   sync.Once
	rd     deadline // reads and accepts
	wr     deadline

	// readMu serializes readers; rbuf is the reader's buffer as the
	// endpoint's io.Writer.
	readMu sync.Mutex
	// +checklocks:readMu
	rbuf tcpip.SliceWriter
	// writeMu serializes writers; wbuf is the writer's data as the
	// endpoint's Payloader.
	writeMu sync.Mutex
	// +checklocks:writeMu
	wbuf bytes.Reader

	mu sync.Mutex
	// +checklocks:mu
	state int
}

// newSock makes ep (whose waiter queue is wq) a socket of the layer:
// the one place sockets are created, where filters will attach.
func (l *Layer) newSock(k kind, v6 bool, ep tcpip.Endpoint, wq *waiter.Queue) (*sock, error) {
	s := &sock{l: l, kind: k, v6: v6, ep: ep, wq: wq,
		rdWake: make(chan struct{}, 1), wrWake: make(chan struct{}, 1), closed: make(chan struct{})}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		ep.Close()
		return nil, net.ErrClosed
	}
	l.socks[s] = struct{}{}
	l.mu.Unlock()
	s.entry.Init(s, waiter.ReadableEvents|waiter.WritableEvents|waiter.EventErr|waiter.EventHUp)
	wq.EventRegister(&s.entry)
	s.attach()
	return s, nil
}

// NotifyEvent is the endpoint's waiter callback: it wakes a blocked
// reader or writer (the stack calls it; it must not block).
func (s *sock) NotifyEvent(m waiter.EventMask) {
	if m&(waiter.ReadableEvents|waiter.EventErr|waiter.EventHUp) != 0 {
		select {
		case s.rdWake <- struct{}{}:
		default:
		}
	}
	if m&(waiter.WritableEvents|waiter.EventErr|waiter.EventHUp) != 0 {
		select {
		case s.wrWake <- struct{}{}:
		default:
		}
	}
}

func (s *sock) tr(what string) {
	if s.l.trace != nil {
		s.l.trace(s, what)
	}
}

// --- The seams. ---

// attach is sf_attach: the socket has just been created.
func (s *sock) attach() { s.tr("attach") }

// detach is sf_detach: the socket is released, after closing.
func (s *sock) detach() { s.tr("detach") }

// notify is sf_notify: every event of a socket's life goes through it.
// Each of connected, disconnected, can't-receive-more and can't-send-more
// is sent once; nothing is sent after detach.
func (s *sock) notify(ev Event) {
	var bit int
	switch ev {
	case EvConnected:
		bit = stConnected
	case EvDisconnected:
		bit = stDisconnected
	case EvCantRecvMore:
		bit = stCantRecv
	case EvCantSendMore:
		bit = stCantSend
	}
	s.mu.Lock()
	if s.state&stDetached != 0 || s.state&bit != 0 {
		s.mu.Unlock()
		return
	}
	s.state |= bit
	s.mu.Unlock()
	s.tr("notify:" + ev.String())
}

// dataIn is sf_data_in: data the transport received (from is the
// sender of a datagram, nil on a stream), in the reader's buffer,
// before the reader is given it. It returns the data the reader gets.
func (s *sock) dataIn(from *tcpip.FullAddress, data []byte) []byte {
	s.tr("data_in")
	return data
}

// dataOut is sf_data_out: data to send (to: a datagram's destination,
// nil when connected), handed to the transport. It returns what the
// transport took.
//
// +checklocks:s.writeMu
func (s *sock) dataOut(to *tcpip.FullAddress, data []byte) (int64, tcpip.Error) {
	s.tr("data_out")
	s.wbuf.Reset(data)
	return s.ep.Write(&s.wbuf, tcpip.WriteOptions{To: to})
}

// connectIn is sf_connect_in on a listener: a new connection from peer,
// before it is accepted. An error refuses it.
func (s *sock) connectIn(peer tcpip.FullAddress) error {
	s.tr("connect_in")
	return nil
}

// connectOut is sf_connect_out: an outgoing connect to addr, handed to
// the transport.
func (s *sock) connectOut(addr tcpip.FullAddress) tcpip.Error {
	s.tr("connect_out")
	return s.ep.Connect(addr)
}

// bind is sf_bind: an explicit bind to addr; bound is notified when it
// succeeds.
func (s *sock) bind(addr tcpip.FullAddress) tcpip.Error {
	s.tr("bind")
	if err := s.ep.Bind(addr); err != nil {
		return err
	}
	s.notify(EvBound)
	return nil
}

// listen is sf_listen.
func (s *sock) listen(backlog int) tcpip.Error {
	s.tr("listen")
	return s.ep.Listen(backlog)
}

// accept is sf_accept on a listener: c, connected, is about to be
// returned by Accept. An error closes it and goes to Accept's caller.
func (s *sock) accept(c *sock) error {
	s.tr("accept")
	return nil
}

// setOption is sf_setoption: every option set goes through it.
func (s *sock) setOption(o Option, v int) error {
	s.tr("setoption")
	return o.set(s.ep, v)
}

// getOption is sf_getoption.
func (s *sock) getOption(o Option) (int, error) {
	s.tr("getoption")
	return o.get(s.ep)
}

// ioctl is sf_ioctl.
func (s *sock) ioctl(req Ioctl) (int, error) {
	s.tr("ioctl")
	return req.do(s.ep)
}

// peerName is sf_getpeername.
func (s *sock) peerName() (tcpip.FullAddress, tcpip.Error) {
	s.tr("getpeername")
	return s.ep.GetRemoteAddress()
}

// sockName is sf_getsockname.
func (s *sock) sockName() (tcpip.FullAddress, tcpip.Error) {
	s.tr("getsockname")
	return s.ep.GetLocalAddress()
}

// --- The socket's life. ---

// shutdown is shutdown(2): notify shutdown, then for the read side
// flush-read and can't-receive-more, for the write side can't-send-more,
// as Apple's soshutdown does.
func (s *sock) shutdown(flags tcpip.ShutdownFlags) tcpip.Error {
	s.notify(EvShutdown)
	if err := s.ep.Shutdown(flags); err != nil {
		return err
	}
	if flags&tcpip.ShutdownRead != 0 {
		s.notify(EvFlushRead)
		s.notify(EvCantRecvMore)
	}
	if flags&tcpip.ShutdownWrite != 0 {
		s.notify(EvCantSendMore)
	}
	return nil
}

// close closes the socket once: closing, then for a connected socket
// disconnecting and disconnected, then detach. Blocked calls return
// net.ErrClosed.
func (s *sock) close() {
	s.once.Do(func() {
		s.notify(EvClosing)
		s.mu.Lock()
		connected := s.state&(stConnected|stDisconnected) == stConnected
		s.mu.Unlock()
		if connected {
			s.notify(EvDisconnecting)
		}
		close(s.closed)
		s.ep.Close()
		s.wq.EventUnregister(&s.entry)
		if connected {
			s.notify(EvDisconnected)
		}
		s.rd.set(time.Time{})
		s.wr.set(time.Time{})
		s.l.mu.Lock()
		delete(s.l.socks, s)
		s.l.mu.Unlock()
		s.mu.Lock()
		s.state |= stDetached // no notify from a late reader or writer now
		s.mu.Unlock()
		s.detach()
	})
}

func (s *sock) isClosed() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
	}
}

// recv is the socket's receive path: it waits for the endpoint to have
// data (or the deadline, or Close), reads it into p and passes it
// through dataIn. It returns io.EOF when the peer has finished sending.
//
// +checklocks:s.readMu
func (s *sock) recv(p []byte, opts tcpip.ReadOptions) (tcpip.ReadResult, []byte, error) {
	dl := s.rd.wait()
	for {
		select {
		case <-s.closed:
			return tcpip.ReadResult{}, nil, net.ErrClosed
		case <-dl:
			return tcpip.ReadResult{}, nil, os.ErrDeadlineExceeded
		default:
		}
		s.rbuf = p
		res, err := s.ep.Read(&s.rbuf, opts)
		switch err.(type) {
		case nil:
			var from *tcpip.FullAddress
			if opts.NeedRemoteAddr {
				from = &res.RemoteAddr
			}
			data := s.dataIn(from, p[:res.Count])
			if len(data) == 0 && res.Count > 0 {
				continue // taken by the receive path; wait for more
			}
			return res, data, nil
		case *tcpip.ErrWouldBlock:
			select {
			case <-s.rdWake:
			case <-dl:
				return tcpip.ReadResult{}, nil, os.ErrDeadlineExceeded
			case <-s.closed:
				return tcpip.ReadResult{}, nil, net.ErrClosed
			}
		case *tcpip.ErrClosedForReceive:
			if s.isClosed() {
				return tcpip.ReadResult{}, nil, net.ErrClosed
			}
			s.notify(EvCantRecvMore)
			return tcpip.ReadResult{}, nil, io.EOF
		default:
			if s.isClosed() {
				return tcpip.ReadResult{}, nil, net.ErrClosed
			}
			s.lost(err)
			return tcpip.ReadResult{}, nil, tcpipErr(err)
		}
	}
}

// send is the socket's send path: all of p goes through dataOut,
// waiting for room in the endpoint's send buffer (backpressure), the
// deadline or Close. A datagram (atomic) is sent whole or not at all.
//
// +checklocks:s.writeMu
func (s *sock) send(p []byte, to *tcpip.FullAddress) (int, error) {
	dl := s.wr.wait()
	n := 0
	for {
		select {
		case <-s.closed:
			return n, net.ErrClosed
		case <-dl:
			return n, os.ErrDeadlineExceeded
		default:
		}
		k, err := s.dataOut(to, p[n:])
		n += int(k)
		switch err.(type) {
		case nil:
			if n == len(p) || s.kind != kindTCP {
				return n, nil
			}
		case *tcpip.ErrWouldBlock:
			select {
			case <-s.wrWake:
			case <-dl:
				return n, os.ErrDeadlineExceeded
			case <-s.closed:
				return n, net.ErrClosed
			}
		default:
			if s.isClosed() {
				return n, net.ErrClosed
			}
			s.lost(err)
			return n, tcpipErr(err)
		}
	}
}

// lost notes a connection the transport lost (reset, aborted, timed out).
func (s *sock) lost(err tcpip.Error) {
	switch err.(type) {
	case *tcpip.ErrConnectionReset, *tcpip.ErrConnectionAborted, *tcpip.ErrTimeout:
		s.mu.Lock()
		connected := s.state&stConnected != 0
		s.mu.Unlock()
		if connected {
			s.notify(EvDisconnected)
		}
	}
}

// deadline is one direction's deadline: a channel closed when it
// passes (gonet's scheme).
type deadline struct {
	mu sync.Mutex
	// +checklocks:mu
	timer *time.Timer
	// +checklocks:mu
	ch chan struct{}
}

// wait returns the channel closed when the deadline passes.
func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ch == nil {
		d.ch = make(chan struct{})
	}
	return d.ch
}

// set moves the deadline to t (zero: none).
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ch == nil {
		d.ch = make(chan struct{})
	}
	if d.timer != nil && !d.timer.Stop() {
		d.ch = make(chan struct{}) // the old one fired, or is firing
	}
	d.timer = nil
	select {
	case <-d.ch:
		d.ch = make(chan struct{})
	default:
	}
	if t.IsZero() {
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		close(d.ch)
		return
	}
	ch := d.ch
	d.timer = time.AfterFunc(dur, func() { close(ch) })
}
