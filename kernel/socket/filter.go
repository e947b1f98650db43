package socket

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"

	"github.com/nke-harness/nke/kernel/sockfilter"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/mbuf"
)

// How the layer runs socket filters.
//
// A socket's filters see its data in mbuf chains from a pool the layer
// owns (FilterPoolBuffers buffers of FilterBufSize bytes on heap memory),
// copied only when the socket has a filter. A send is cut into chunks of
// at most MaxFilterChunk bytes, each passed to the filters' data out
// (DataRecord on datagrams); what they pass is written, what they
// swallow counts as written (the filter re-injects it later through
// Registry.InjectDataOut, which reaches SendOut), a drop returns the
// filter's error to the writer. What the transport received is passed
// to the filters' data in: what they pass, and what they inject
// (DeliverIn), goes to the socket's receive queue, which reads consume
// before data from gVisor (datagrams keep their boundaries and sender;
// a datagram socket with filters reads each datagram whole, so filters
// see all of it, and a read shorter than it is truncated from the queue);
// what they swallow is theirs, what they drop is freed (for a stream, the
// bytes are lost: the filter's decision). When the pool is exhausted
// (filters hold its buffers) the data path waits for buffers.

// Geometry of the pool of a layer with filters.
const (
	FilterBufSize     = 2048
	FilterPoolBuffers = 4096 // 8 MiB
	MaxFilterChunk    = 64 << 10
)

// LayerOption configures a Layer.
type LayerOption func(*Layer)

// WithFilters makes the layer run the socket filters of reg: every new
// socket (accepted ones too) is attached with reg.NewSocket and its
// filters are called at each of Apple's points. A nil reg is no filters.
func WithFilters(reg *sockfilter.Registry) LayerOption {
	return func(l *Layer) { l.reg = reg }
}

// ErrNoFilters is the error of a programmatic attach on a layer without a
// registry.
var ErrNoFilters = errors.New("socket: the socket layer runs no socket filters (socket.New without WithFilters)")

func newFilterPool() *mbuf.Pool {
	// Room for the buffers and their cache-line alignment.
	h := dma.NewHeap(FilterPoolBuffers*FilterBufSize + 1<<20)
	p, err := mbuf.NewPool(h, "socket filters", FilterPoolBuffers, FilterBufSize, 0)
	if err != nil {
		panic(err) // the geometry is constant
	}
	return p
}

// Filters returns the layer's registry (nil: no filters).
func (l *Layer) Filters() *sockfilter.Registry { return l.reg }

// FilterBuffersInUse is how many buffers of the layer's filter pool are
// out (held by filters, queued for readers or in flight).
func (l *Layer) FilterBuffersInUse() int {
	if l.pool == nil {
		return 0
	}
	return l.pool.InUse()
}

var sockIDs atomic.Uint64

// --- nke.Socket: what a filter is told about the socket. ---

var (
	_ nke.Socket          = (*sock)(nil)
	_ sockfilter.Endpoint = (*sock)(nil)
)

// ID is unique among the sockets of the process.
func (s *sock) ID() uint64 { return s.id }

// Family is IPv4 or IPv6.
func (s *sock) Family() nke.IPFamily {
	if s.v6 {
		return nke.IPv6
	}
	return nke.IPv4
}

// Type is stream (TCP) or dgram (UDP, ICMP echo).
func (s *sock) Type() nke.SocketType {
	if s.kind == kindTCP {
		return nke.SockStream
	}
	return nke.SockDgram
}

// Protocol is the IP protocol number.
func (s *sock) Protocol() uint8 {
	switch {
	case s.kind == kindTCP:
		return 6
	case s.kind == kindUDP:
		return 17
	case s.v6:
		return 58
	}
	return 1
}

// LocalAddr is the bound address (the filters' view: no seam runs); after
// close, the last one.
func (s *sock) LocalAddr() netip.AddrPort { return s.cachedAddr(true) }

// RemoteAddr is the connected peer, the zero value if none; after close,
// the last one.
func (s *sock) RemoteAddr() netip.AddrPort { return s.cachedAddr(false) }

// cachedAddr reads the local or remote address from the endpoint while
// the socket is open, keeping it for after close.
func (s *sock) cachedAddr(local bool) netip.AddrPort {
	get := s.ep.GetRemoteAddress
	if local {
		get = s.ep.GetLocalAddress
	}
	a, err := get()
	open := err == nil && !s.isClosed()
	s.mu.Lock()
	defer s.mu.Unlock()
	cache := &s.raddr
	if local {
		cache = &s.laddr
	}
	if open {
		*cache = addrPort(a)
	}
	return *cache
}

// cacheAddrs keeps the addresses for filters asking after close.
func (s *sock) cacheAddrs() {
	if s.fs != nil {
		s.LocalAddr()
		s.RemoteAddr()
	}
}

// --- sockfilter.Endpoint. ---

// State is what is true of the socket now, as Apple's so_state.
func (s *sock) State() sockfilter.State {
	s.mu.Lock()
	st := s.state
	s.mu.Unlock()
	var r sockfilter.State
	if st&stBound != 0 {
		r |= sockfilter.StateBound
	}
	if st&stListening != 0 {
		r |= sockfilter.StateListening
	}
	switch {
	case st&stDisconnected != 0:
		r |= sockfilter.StateDisconnected
	case st&stDisconnecting != 0:
		r |= sockfilter.StateDisconnecting
	case st&stConnected != 0:
		r |= sockfilter.StateConnected
	case st&stConnecting != 0:
		r |= sockfilter.StateConnecting
	}
	if st&stCantRecv != 0 {
		r |= sockfilter.StateCantRecvMore
	}
	if st&stCantSend != 0 {
		r |= sockfilter.StateCantSendMore
	}
	return r
}

// rqEntry is data in the receive queue.
type rqEntry struct {
	from  netip.AddrPort
	m     *mbuf.Mbuf
	off   int        // read so far (streams)
	trunc bool       // a datagram cut short before the filters saw it
	ctl   *mbuf.Mbuf // a datagram's control messages, or nil
}

// DeliverIn appends data to the socket's receive queue, which reads
// consume before data from the transport; a datagram's control goes
// with it to ReadMsgUDP (a stream's is freed). It consumes both; after
// close they are freed and net.ErrClosed returned.
func (s *sock) DeliverIn(from netip.AddrPort, data, control *mbuf.Mbuf, flags nke.DataFlags) error {
	return s.enqueue(from, data, control, false)
}

func (s *sock) enqueue(from netip.AddrPort, data, control *mbuf.Mbuf, trunc bool) error {
	if control != nil && (s.kind == kindTCP || data == nil) {
		control.Free()
		control = nil
	}
	if data == nil {
		return nil
	}
	s.rqMu.Lock()
	if s.rqClosed {
		s.rqMu.Unlock()
		data.Free()
		if control != nil {
			control.Free()
		}
		return net.ErrClosed
	}
	s.rq = append(s.rq, rqEntry{from: from, m: data, trunc: trunc, ctl: control})
	s.rqAny.Store(true)
	s.rqMu.Unlock()
	select {
	case s.rdWake <- struct{}{}:
	default:
	}
	return nil
}

// fromQueue reads the receive queue's first data into p: as much as
// fits of a stream's, one datagram (truncated to p) otherwise, with its
// control messages in s.rctl.
//
// +checklocks:s.readMu
func (s *sock) fromQueue(p []byte) (tcpip.ReadResult, []byte, bool) {
	s.rqMu.Lock()
	defer s.rqMu.Unlock()
	if s.rqHead == len(s.rq) {
		return tcpip.ReadResult{}, nil, false
	}
	e := &s.rq[s.rqHead]
	left := e.m.PktLen() - e.off
	n := min(len(p), left)
	_ = e.m.CopyData(e.off, p[:n])
	res := tcpip.ReadResult{Count: n, Total: left, RemoteAddr: fullAddr(e.from, 0)}
	if s.kind == kindTCP {
		res.Total = n
		if e.off += n; e.off < e.m.PktLen() {
			return res, p[:n], true
		}
	} else if e.trunc && res.Total == n {
		res.Total++
	}
	if e.ctl != nil {
		k := e.ctl.PktLen()
		if cap(s.ctlBuf) < k {
			s.ctlBuf = make([]byte, 0, max(k, ctlRoom))
		}
		s.rctl = s.ctlBuf[:k]
		_ = e.ctl.CopyData(0, s.rctl)
		e.ctl.Free()
	}
	e.m.Free()
	*e = rqEntry{}
	if s.rqHead++; s.rqHead == len(s.rq) {
		s.rq, s.rqHead = s.rq[:0], 0
		s.rqAny.Store(false)
	}
	return res, p[:n], true
}

// freeRecvQueue frees the receive queue and refuses more.
func (s *sock) freeRecvQueue() {
	s.rqMu.Lock()
	defer s.rqMu.Unlock()
	s.rqClosed = true
	for i := s.rqHead; i < len(s.rq); i++ {
		s.rq[i].m.Free()
		if s.rq[i].ctl != nil {
			s.rq[i].ctl.Free()
		}
	}
	s.rq, s.rqHead = nil, 0
	s.rqAny.Store(false)
}

// SendOut writes data to the endpoint, bypassing the filters (injected
// data: they have run); it consumes data and control. A stream's data
// is written whole, waiting for room; the socket's write deadline does
// not apply. A datagram's control is applied as WriteMsgUDP's is
// (control.go); one that cannot be is an error, and nothing is sent.
func (s *sock) SendOut(to netip.AddrPort, data, control *mbuf.Mbuf, flags nke.DataFlags) error {
	var cm tcpip.SendableControlMessages
	if control != nil {
		var err error
		if s.kind != kindTCP {
			cm, err = s.controlOf(control, nil)
		}
		control.Free()
		if err != nil {
			if data != nil {
				data.Free()
			}
			return err
		}
	}
	if data == nil {
		return nil
	}
	var fa *tcpip.FullAddress
	if s.kind != kindTCP && to.IsValid() {
		a := fullAddr(to, 0)
		fa = &a
	}
	_, err := s.writeChain(fa, data, cm, nil)
	return err
}

// chainReader is an mbuf chain as a tcpip.Payloader.
type chainReader struct {
	m    *mbuf.Mbuf
	off  int
	left int
}

func (r *chainReader) reset(m *mbuf.Mbuf) { r.m, r.off, r.left = m, 0, m.PktLen() }

func (r *chainReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) && r.m != nil {
		k := copy(p[n:], r.m.Bytes()[r.off:])
		n, r.off, r.left = n+k, r.off+k, r.left-k
		if r.off == r.m.Len() {
			r.m, r.off = r.m.Next(), 0
		}
	}
	if n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	return n, nil
}

func (r *chainReader) Len() int { return r.left }

// writeChain writes m (freed here) to the endpoint, all of it for a
// stream, waiting for room, for dl (nil: no deadline) or close. It
// returns how much was written.
func (s *sock) writeChain(to *tcpip.FullAddress, m *mbuf.Mbuf, cm tcpip.SendableControlMessages, dl <-chan struct{}) (int, error) {
	s.outMu.Lock()
	s.obuf.reset(m)
	s.ocm = cm
	n, err := s.writeChainLocked(to, m.PktLen(), dl)
	s.obuf.reset(nil)
	s.outMu.Unlock()
	m.Free()
	// A writer on the unfiltered path (the filters detached meanwhile)
	// may wait on the same wake-up: pass it on (and writeChainLocked
	// looks again now and then rather than rely on one).
	select {
	case s.wrWake <- struct{}{}:
	default:
	}
	return n, err
}

// writeChainLocked writes s.obuf, total bytes.
//
// +checklocks:s.outMu
func (s *sock) writeChainLocked(to *tcpip.FullAddress, total int, dl <-chan struct{}) (int, error) {
	var retry *time.Timer
	n, err := s.writeLoop(to, total, dl, &retry)
	if retry != nil {
		retry.Stop()
	}
	return n, err
}

// +checklocks:s.outMu
func (s *sock) writeLoop(to *tcpip.FullAddress, total int, dl <-chan struct{}, retryp **time.Timer) (int, error) {
	retry := *retryp
	n := 0
	for {
		if s.isClosed() {
			return n, net.ErrClosed
		}
		k, err := s.ep.Write(&s.obuf, tcpip.WriteOptions{To: to, ControlMessages: s.ocm})
		n += int(k)
		switch err.(type) {
		case nil:
			if n == total || s.kind != kindTCP {
				return n, nil
			}
		case *tcpip.ErrWouldBlock:
			if retry == nil {
				retry = time.NewTimer(50 * time.Millisecond)
				*retryp = retry
			} else {
				retry.Reset(50 * time.Millisecond)
			}
			select {
			case <-s.wrWake:
			case <-retry.C:
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

// allocChain returns a chain of n bytes from the layer's pool, waiting
// while filters hold it all; nil once the socket is closed.
func (s *sock) allocChain(n int, dl <-chan struct{}) *mbuf.Mbuf {
	for {
		if m := s.l.pool.AllocPacket(n); m != nil {
			return m
		}
		select {
		case <-s.closed:
			return nil
		case <-dl:
			return nil
		case <-time.After(time.Millisecond):
		}
	}
}

func copyIn(m *mbuf.Mbuf, p []byte) {
	for ; m != nil; m = m.Next() {
		p = p[copy(m.Bytes(), p):]
	}
}

// sendFiltered is send for a socket with filters: p in chunks through
// dataOut's filters, then to the endpoint.
//
// +checklocks:s.writeMu
func (s *sock) sendFiltered(p []byte, to *tcpip.FullAddress) (int, error) {
	dl := s.wr.wait()
	var dest netip.AddrPort
	var flags nke.DataFlags
	if to != nil {
		dest = addrPort(*to)
	} else {
		dest = s.RemoteAddr()
	}
	if s.kind != kindTCP {
		flags = nke.DataRecord
	}
	n := 0
	for first := true; first || n < len(p); first = false {
		select {
		case <-s.closed:
			return n, net.ErrClosed
		case <-dl:
			return n, os.ErrDeadlineExceeded
		default:
		}
		chunk := p[n:]
		if s.kind == kindTCP && len(chunk) > MaxFilterChunk {
			chunk = chunk[:MaxFilterChunk]
		}
		s.tr("data_out")
		if len(chunk) == 0 { // an empty datagram: nothing for the filters
			s.wbuf.Reset(chunk)
			k, err := s.ep.Write(&s.wbuf, tcpip.WriteOptions{To: to, ControlMessages: s.wcm})
			if err != nil {
				return 0, tcpipErr(err)
			}
			return int(k), nil
		}
		m := s.allocChain(len(chunk), dl)
		if m == nil {
			if s.isClosed() {
				return n, net.ErrClosed
			}
			return n, os.ErrDeadlineExceeded
		}
		copyIn(m, chunk)
		var ctl *mbuf.Mbuf
		if len(s.woob) > 0 {
			if ctl = s.allocChain(len(s.woob), dl); ctl == nil {
				m.Free()
				if s.isClosed() {
					return n, net.ErrClosed
				}
				return n, os.ErrDeadlineExceeded
			}
			copyIn(ctl, s.woob)
		}
		s.outData, s.outCtl = m, ctl
		orig := m
		swallowed, err := s.fs.DataOut(dest, &s.outData, &s.outCtl, flags)
		m, ctl = s.outData, s.outCtl
		s.outData, s.outCtl = nil, nil
		switch {
		case swallowed:
			s.heldOutAdd(orig)
			n += len(chunk)
			continue
		case err != nil:
			if m != nil {
				m.Free()
			}
			if ctl != nil {
				ctl.Free()
			}
			return n, err
		}
		cm := s.wcm
		if ctl != nil {
			var cerr error
			if k := ctl.PktLen(); cap(s.wctl) < k {
				s.wctl = make([]byte, 0, max(k, ctlRoom))
			}
			cm, cerr = s.controlOf(ctl, s.wctl[:0])
			ctl.Free()
			if cerr != nil { // what the filters left cannot be applied
				if m != nil {
					m.Free()
				}
				return n, cerr
			}
		}
		if m == nil { // taken by a filter
			n += len(chunk)
			continue
		}
		k, werr := s.writeChain(to, m, cm, dl)
		if werr != nil {
			return n + min(k, len(chunk)), werr
		}
		n += len(chunk)
	}
	return n, nil
}

// filterIn runs the filters' data in on data the transport received;
// what they pass is queued for the reader.
//
// +checklocks:s.readMu
func (s *sock) filterIn(from *tcpip.FullAddress, data, ctlData []byte, trunc bool) {
	m := s.allocChain(len(data), nil)
	if m == nil {
		return // closed
	}
	copyIn(m, data)
	var ctl *mbuf.Mbuf
	if len(ctlData) > 0 {
		if ctl = s.allocChain(len(ctlData), nil); ctl == nil {
			m.Free()
			return // closed
		}
		copyIn(ctl, ctlData)
	}
	var src netip.AddrPort
	var flags nke.DataFlags
	if from != nil {
		src = addrPort(*from)
	} else {
		src = s.RemoteAddr()
	}
	if s.kind != kindTCP {
		flags = nke.DataRecord
	}
	s.inData, s.inCtl = m, ctl
	orig := m
	swallowed, err := s.fs.DataIn(src, &s.inData, &s.inCtl, flags)
	m, ctl = s.inData, s.inCtl
	s.inData, s.inCtl = nil, nil
	switch {
	case swallowed:
		s.heldInAdd(orig)
		return
	case err != nil:
		if m != nil {
			m.Free()
		}
		if ctl != nil {
			ctl.Free()
		}
		return
	}
	s.enqueue(src, m, ctl, trunc)
}

// attachFilter attaches the registered filter with handle to the socket
// (sflt_attach: the SO_NKE option). Sockets accepted on a listener get
// the filters attached to it so.
func (s *sock) attachFilter(handle uint32) error {
	if s.fs == nil {
		return ErrNoFilters
	}
	if err := s.l.reg.AttachSocketFilter(s, handle); err != nil {
		return err
	}
	s.mu.Lock()
	s.progs = append(s.progs, handle)
	s.mu.Unlock()
	return nil
}

// inherit attaches to c, accepted on the listener s, the filters
// attached to s on request.
func (s *sock) inherit(c *sock) {
	if c.fs == nil {
		return
	}
	s.mu.Lock()
	progs := s.progs
	s.mu.Unlock()
	for _, h := range progs {
		if c.l.reg.AttachSocketFilter(c, h) == nil {
			c.mu.Lock()
			c.progs = append(c.progs, h)
			c.mu.Unlock()
		}
	}
}

// --- Options and ioctls as a filter sees them. ---

// OptNKE attaches the socket filter whose handle is the value (Apple's
// SO_NKE; set only).
const OptNKE Option = 100

// The levels and names filters see, Linux's numbers.
const (
	SOLSocket  = 1
	IPProtoIP  = 0
	IPProtoTCP = 6
	IPProtoV6  = 41
)

func (o Option) sockOpt(v6 bool, v int) nke.SockOpt {
	level, name := SOLSocket, 0
	switch o {
	case OptReuseAddr:
		name = 2
	case OptKeepAlive:
		name = 9
	case OptRcvBuf:
		name = 8
	case OptSndBuf:
		name = 7
	case OptBroadcast:
		name = 6
	case OptNoDelay:
		level, name = IPProtoTCP, 1
	case OptV6Only:
		level, name = IPProtoV6, 26
	case OptRecvPktInfo:
		level, name = IPProtoIP, 8 // IP_PKTINFO
		if v6 {
			level, name = IPProtoV6, 49 // IPV6_RECVPKTINFO
		}
	case OptRecvTOS:
		level, name = IPProtoIP, 13 // IP_RECVTOS
		if v6 {
			level, name = IPProtoV6, 66 // IPV6_RECVTCLASS
		}
	case OptRecvTTL:
		level, name = IPProtoIP, 12 // IP_RECVTTL
		if v6 {
			level, name = IPProtoV6, 51 // IPV6_RECVHOPLIMIT
		}
	case OptNKE:
		name = 0x1101 // SO_NKE on Darwin
	}
	val := make([]byte, 4)
	binary.LittleEndian.PutUint32(val, uint32(int32(v)))
	return nke.SockOpt{Level: level, Name: name, Value: val}
}

func optValue(b []byte, def int) int {
	if len(b) < 4 {
		return def
	}
	return int(int32(binary.LittleEndian.Uint32(b)))
}

// cmd is the ioctl's request number filters see (Linux's).
func (r Ioctl) cmd() uint32 {
	switch r {
	case FIONREAD:
		return 0x541b
	case FIONWRITE:
		return 0x5411 // TIOCOUTQ
	}
	return uint32(r)
}

// AttachFilter attaches the registered socket filter with handle to the
// connection (SO_NKE).
func (c *TCPConn) AttachFilter(handle uint32) error { return c.s.attachFilter(handle) }

// AttachFilter attaches the registered socket filter with handle to the
// listener (SO_NKE); the connections it accepts from then on have it
// too.
func (ln *TCPListener) AttachFilter(handle uint32) error { return ln.s.attachFilter(handle) }

// AttachFilter attaches the registered socket filter with handle to the
// socket (SO_NKE).
func (d dgram) AttachFilter(handle uint32) error { return d.s.attachFilter(handle) }

// --- Address conversions. ---

func addrPort(a tcpip.FullAddress) netip.AddrPort {
	na, ok := netip.AddrFromSlice(a.Addr.AsSlice())
	if !ok {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(na, a.Port)
}

func fullAddr(ap netip.AddrPort, nic tcpip.NICID) tcpip.FullAddress {
	if !ap.IsValid() {
		return tcpip.FullAddress{}
	}
	a := ap.Addr().Unmap()
	fa := tcpip.FullAddress{Addr: tcpip.AddrFromSlice(a.AsSlice()), Port: ap.Port(), NIC: nic}
	return fa
}
