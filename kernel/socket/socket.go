// Package socket is the guest's socket layer over netstack: TCP stream
// sockets, UDP datagram sockets and ICMP echo ("ping") sockets, IPv4 and
// IPv6, on types of its own that implement net.Conn, net.Listener and
// net.PacketConn, so that ordinary Go servers (net/http) run on them
// unchanged. It owns the data path between the application and gVisor's
// transport endpoints: every byte received passes through one function
// (dataIn) on its way from the endpoint to the reader, every byte sent
// through one other (dataOut, or for a socket with filters
// sendFiltered, which runs them) on its way to the endpoint.
//
// It runs Apple's socket filters (kpi_socketfilter.h) when made with
// WithFilters (filter.go; docs/nke.md, "Socket filters").
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
// A layer made with WithFilters runs the socket filters of a
// kernel/sockfilter Registry at these points (filter.go): each seam calls
// the socket's sockfilter.Filters. Without a registry, or on a socket no
// filter is attached to, a seam does the operation and nothing else (one
// atomic load more), and costs nothing beyond gVisor's gonet adapters
// (docs/performance.md).
//
// The layer starts no goroutine: a socket waits for its endpoint through
// one waiter entry registered for its lifetime, and deadlines are timers.
package socket

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/nke-harness/nke/kernel/netstack"
	"github.com/nke-harness/nke/kernel/sockfilter"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Layer is the socket layer of one stack: it creates the sockets and
// closes them all at Close.
type Layer struct {
	s *netstack.Stack
	// trace, set only by internal tests, sees every seam a socket passes.
	trace func(s *sock, what string)
	// reg runs the socket filters (nil: none); pool holds the data they
	// see, made with the layer when reg is set.
	reg  *sockfilter.Registry
	pool *mbuf.Pool

	mu sync.Mutex
	// +checklocks:mu
	socks map[*sock]struct{}
	// +checklocks:mu
	closed bool
}

// New returns the socket layer over s. With WithFilters its sockets run
// the registry's socket filters.
func New(s *netstack.Stack, opts ...LayerOption) *Layer {
	l := &Layer{s: s, socks: map[*sock]struct{}{}}
	for _, o := range opts {
		o(l)
	}
	if l.reg != nil && l.pool == nil {
		l.pool = newFilterPool()
	}
	return l
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
	stBound
	stListening
	stConnecting
	stDisconnecting
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
	id     uint64
	// fs is the socket's filters, set at attach when the layer has a
	// registry (nil otherwise) and never changed.
	fs *sockfilter.Filters

	// abortErr is set when the socket was aborted because a filter
	// detached holding its data (linger.go).
	abortErr atomic.Pointer[error]

	// heldMu guards what the filters swallowed and still hold, each way
	// (linger.go).
	heldMu sync.Mutex
	// +checklocks:heldMu
	heldIn held
	// +checklocks:heldMu
	heldOut held

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
	// outData and outCtl are the data and control a send hands its
	// filters (fields, so that taking their address allocates nothing).
	// +checklocks:writeMu
	outData *mbuf.Mbuf
	// +checklocks:writeMu
	outCtl *mbuf.Mbuf
	// inData and inCtl are the same for data in (the reader's).
	// +checklocks:readMu
	inData *mbuf.Mbuf
	// +checklocks:readMu
	inCtl *mbuf.Mbuf
	// dgBuf is where a datagram socket with filters reads, whole, so
	// that filters see all of each datagram (made at the first).
	// +checklocks:readMu
	dgBuf []byte
	// rctl is the control messages of the datagram last read (in
	// ctlBuf, made at the first), for ReadMsgUDP.
	// +checklocks:readMu
	rctl []byte
	// +checklocks:readMu
	ctlBuf []byte
	// woob is the control messages a WriteMsgUDP passes its filters,
	// wcm what they say to the endpoint.
	// +checklocks:writeMu
	woob []byte
	// +checklocks:writeMu
	wcm tcpip.SendableControlMessages
	// +checklocks:writeMu
	wctl []byte // room to read back the filters' control

	// outMu serializes what goes to the endpoint from the filtered send
	// path and injected data (SendOut); obuf is its Payloader.
	outMu sync.Mutex
	// +checklocks:outMu
	obuf chainReader
	// +checklocks:outMu
	ocm tcpip.SendableControlMessages

	// rqAny says the receive queue may hold data (read without rqMu).
	rqAny atomic.Bool
	rqMu  sync.Mutex
	// +checklocks:rqMu
	rq []rqEntry
	// +checklocks:rqMu
	rqHead int
	// +checklocks:rqMu
	rqClosed bool

	mu sync.Mutex
	// +checklocks:mu
	state int
	// +checklocks:mu
	laddr netip.AddrPort
	// +checklocks:mu
	raddr netip.AddrPort
	// +checklocks:mu
	progs []uint32 // filters attached on request (SO_NKE), inherited by accepted sockets
}

// newSock makes ep (whose waiter queue is wq) a socket of the layer:
// the one place sockets are created, where filters will attach.
func (l *Layer) newSock(k kind, v6 bool, ep tcpip.Endpoint, wq *waiter.Queue) (*sock, error) {
	s := &sock{l: l, kind: k, v6: v6, ep: ep, wq: wq, id: sockIDs.Add(1),
		rdWake: make(chan struct{}, 1), wrWake: make(chan struct{}, 1), closed: make(chan struct{})}
	s.entry.Init(s, waiter.ReadableEvents|waiter.WritableEvents|waiter.EventErr|waiter.EventHUp)
	wq.EventRegister(&s.entry)
	s.attach()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		s.once.Do(func() {
			close(s.closed)
			ep.Close()
			wq.EventUnregister(&s.entry)
			s.mu.Lock()
			s.state |= stDetached
			s.mu.Unlock()
			s.detach()
		})
		return nil, net.ErrClosed
	}
	l.socks[s] = struct{}{}
	l.mu.Unlock()
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

// filtered reports whether a filter is attached to the socket: one
// atomic load when the layer has a registry.
func (s *sock) filtered() bool { return s.fs != nil && !s.fs.Empty() }

// attach is sf_attach: the socket has just been created; the registry's
// matching global filters attach to it.
func (s *sock) attach() {
	s.tr("attach")
	if s.l.reg != nil {
		s.fs = s.l.reg.NewSocket(s, s)
	}
}

// detach is sf_detach: the socket is released, after closing. Every
// filter detaches (once its calls in flight return); what the receive
// queue still holds is freed.
func (s *sock) detach() {
	s.tr("detach")
	if s.fs != nil {
		s.fs.Close()
		s.freeRecvQueue()
	}
}

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
	case EvBound:
		bit = stBound
	case EvConnecting:
		bit = stConnecting
	case EvDisconnecting:
		bit = stDisconnecting
	}
	s.mu.Lock()
	if s.state&stDetached != 0 || s.state&bit != 0 {
		s.mu.Unlock()
		return
	}
	s.state |= bit
	s.mu.Unlock()
	s.tr("notify:" + ev.String())
	if s.fs != nil {
		s.fs.Notify(nke.SocketEvent(ev))
	}
}

// dataIn is sf_data_in: data the transport received (from is the
// sender of a datagram, nil on a stream; trunc: the datagram was longer
// than data), in the reader's buffer, before the reader is given it. It
// returns the data the reader gets; with filters that is none: what they
// pass goes to the receive queue, which the reader reads next.
//
// +checklocks:s.readMu
func (s *sock) dataIn(from *tcpip.FullAddress, data, ctl []byte, trunc bool) []byte {
	s.tr("data_in")
	if !s.filtered() || len(data) == 0 {
		s.rctl = ctl
		return data
	}
	s.filterIn(from, data, ctl, trunc)
	return nil
}

// dataOut is sf_data_out: data to send (to: a datagram's destination,
// nil when connected), handed to the transport. It returns what the
// transport took.
//
// +checklocks:s.writeMu
func (s *sock) dataOut(to *tcpip.FullAddress, data []byte) (int64, tcpip.Error) {
	s.tr("data_out")
	s.wbuf.Reset(data)
	return s.ep.Write(&s.wbuf, tcpip.WriteOptions{To: to, ControlMessages: s.wcm})
}

// The control seams follow the control rule: a filter's error is
// returned (ferr, which callers put in the *net.OpError), a filter's
// nke.ErrSwallowed makes the operation succeed without being done.

// connectIn is sf_connect_in on a listener: a new connection from peer,
// before it is accepted (gVisor has completed the handshake). An error
// refuses it.
func (s *sock) connectIn(peer tcpip.FullAddress) error {
	s.tr("connect_in")
	if !s.filtered() {
		return nil
	}
	return s.fs.ConnectIn(addrPort(peer))
}

// connectOut is sf_connect_out: an outgoing connect to addr, handed to
// the transport.
func (s *sock) connectOut(addr tcpip.FullAddress) (terr tcpip.Error, ferr error) {
	s.tr("connect_out")
	if s.filtered() {
		if done, err := s.fs.ConnectOut(addrPort(addr)); done || err != nil {
			return nil, err
		}
	}
	return s.ep.Connect(addr), nil
}

// bind is sf_bind: an explicit bind to addr; bound is notified when it
// succeeds.
func (s *sock) bind(addr tcpip.FullAddress) (terr tcpip.Error, ferr error) {
	s.tr("bind")
	if s.filtered() {
		if done, err := s.fs.Bind(addrPort(addr)); done || err != nil {
			return nil, err
		}
	}
	if err := s.ep.Bind(addr); err != nil {
		return err, nil
	}
	s.notify(EvBound)
	return nil, nil
}

// listen is sf_listen.
func (s *sock) listen(backlog int) (terr tcpip.Error, ferr error) {
	s.tr("listen")
	if s.filtered() {
		if done, err := s.fs.Listen(); done || err != nil {
			return nil, err
		}
	}
	if err := s.ep.Listen(backlog); err != nil {
		return err, nil
	}
	s.mu.Lock()
	s.state |= stListening
	s.mu.Unlock()
	return nil, nil
}

// accept is sf_accept on a listener: c, connected, is about to be
// returned by Accept; c's filters say what becomes of it.
func (s *sock) accept(c *sock) (sockfilter.AcceptResult, error) {
	s.tr("accept")
	if !c.filtered() {
		return sockfilter.AcceptOK, nil
	}
	return c.fs.Accept(s, c.LocalAddr(), c.RemoteAddr())
}

// setOption is sf_setoption: every option set goes through it. A filter
// may change the value set (opt.Value).
func (s *sock) setOption(o Option, v int) error {
	s.tr("setoption")
	if s.filtered() {
		opt := o.sockOpt(s.v6, v)
		if done, err := s.fs.SetOption(&opt); done || err != nil {
			return err
		}
		v = optValue(opt.Value, v)
	}
	if o == OptNKE {
		return s.attachFilter(uint32(v))
	}
	return o.set(s.ep, s.v6, v)
}

// getOption is sf_getoption: a filter that swallows it answers (its
// opt.Value).
func (s *sock) getOption(o Option) (int, error) {
	s.tr("getoption")
	if s.filtered() {
		opt := o.sockOpt(s.v6, 0)
		if done, err := s.fs.GetOption(&opt); err != nil {
			return 0, err
		} else if done {
			return optValue(opt.Value, 0), nil
		}
	}
	return o.get(s.ep, s.v6)
}

// ioctl is sf_ioctl: a filter that swallows it answers (its arg).
func (s *sock) ioctl(req Ioctl) (int, error) {
	s.tr("ioctl")
	if s.filtered() {
		arg := make([]byte, 4)
		if done, err := s.fs.Ioctl(req.cmd(), arg); err != nil {
			return 0, err
		} else if done {
			return optValue(arg, 0), nil
		}
	}
	return req.do(s.ep)
}

// peerName is sf_getpeername: filters see the address the socket would
// report and may change it.
func (s *sock) peerName() (tcpip.FullAddress, error) {
	s.tr("getpeername")
	a, terr := s.ep.GetRemoteAddress()
	return s.nameFilter(a, terr, (*sockfilter.Filters).GetPeerName)
}

// sockName is sf_getsockname, as peerName.
func (s *sock) sockName() (tcpip.FullAddress, error) {
	s.tr("getsockname")
	a, terr := s.ep.GetLocalAddress()
	return s.nameFilter(a, terr, (*sockfilter.Filters).GetSockName)
}

func (s *sock) nameFilter(a tcpip.FullAddress, terr tcpip.Error, call func(*sockfilter.Filters, *netip.AddrPort) (bool, error)) (tcpip.FullAddress, error) {
	if !s.filtered() {
		if terr != nil {
			return a, tcpipErr(terr)
		}
		return a, nil
	}
	var ap netip.AddrPort
	if terr == nil {
		ap = addrPort(a)
	}
	orig := ap
	done, err := call(s.fs, &ap)
	switch {
	case err != nil:
		return tcpip.FullAddress{}, err
	case done || ap != orig:
		return fullAddr(ap, a.NIC), nil
	case terr != nil:
		return a, tcpipErr(terr)
	}
	return a, nil
}

// --- The socket's life. ---

// shutdown is shutdown(2): notify shutdown, then for the read side
// flush-read and can't-receive-more, for the write side can't-send-more,
// as Apple's soshutdown does.
func (s *sock) shutdown(flags tcpip.ShutdownFlags) tcpip.Error {
	if flags&tcpip.ShutdownWrite != 0 {
		s.lingerOut()
	}
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
	s.lingerOut()
	s.once.Do(func() {
		s.notify(EvClosing)
		s.mu.Lock()
		connected := s.state&(stConnected|stDisconnected) == stConnected
		s.mu.Unlock()
		if connected {
			s.notify(EvDisconnecting)
		}
		s.cacheAddrs()
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
	s.rctl = nil
	for {
		select {
		case <-s.closed:
			return tcpip.ReadResult{}, nil, net.ErrClosed
		case <-dl:
			return tcpip.ReadResult{}, nil, os.ErrDeadlineExceeded
		default:
		}
		if s.rqAny.Load() { // data the filters passed or injected comes first
			if res, data, ok := s.fromQueue(p); ok {
				return res, data, nil
			}
		}
		s.rbuf = p
		if s.kind != kindTCP && s.filtered() {
			if s.dgBuf == nil {
				s.dgBuf = make([]byte, 1<<16)
			}
			s.rbuf = s.dgBuf
		}
		buf := []byte(s.rbuf)
		res, err := s.ep.Read(&s.rbuf, opts)
		switch err.(type) {
		case nil:
			var from *tcpip.FullAddress
			if opts.NeedRemoteAddr {
				from = &res.RemoteAddr
			}
			var ctl []byte
			if s.kind != kindTCP {
				ctl = s.recvControl(&res.ControlMessages)
			}
			data := s.dataIn(from, buf[:res.Count], ctl, res.Total > res.Count)
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
			// The stream has ended, but not before what filters
			// hold of it has been re-injected (or let go).
			if s.lingerIn() || s.rqAny.Load() {
				continue
			}
			s.notify(EvCantRecvMore)
			return tcpip.ReadResult{}, nil, io.EOF
		default:
			return tcpip.ReadResult{}, nil, s.failed(err)
		}
	}
}

// send is the socket's send path: all of p goes through dataOut,
// waiting for room in the endpoint's send buffer (backpressure), the
// deadline or Close. A datagram (atomic) is sent whole or not at all.
//
// +checklocks:s.writeMu
func (s *sock) send(p []byte, to *tcpip.FullAddress) (int, error) {
	if s.filtered() {
		return s.sendFiltered(p, to)
	}
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
			return n, s.failed(err)
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
