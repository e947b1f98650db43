// Package tcplog is an example socket filter in the manner of Apple's
// tcplognke sample: for every TCP connection it records the addresses and
// ports, when it started and ended, and the bytes each way, and reports
// the record when the connection closes.
//
// It demonstrates the socket-filter KPI: SockAttach creating per-socket
// state (the cookie handed back on every call), notify events marking the
// connection's life (connected, disconnected, closing), data in and data
// out observed without changing or keeping anything, and SockDetach as
// the socket's last call, where a record not reported yet is reported.
// The callbacks run on the socket's goroutines: the per-connection state
// is touched only through atomics, and finished records go into a fixed
// ring that a reader drains at its own pace (Records, Lines).
//
//	l := tcplog.New(256, nil)
//	att, err := sockets.RegisterSocketFilter(l.Spec(0x7c9))
//	...
//	for _, line := range l.Lines() { fmt.Println(line) }
package tcplog

import (
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/logring"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Name is the filter's name.
const Name = "com.example.tcplog"

// Record is one connection.
type Record struct {
	Socket        uint64
	Local, Remote netip.AddrPort
	Start, End    time.Time
	// In and Out are the payload bytes received and sent.
	In, Out uint64
}

func (r Record) String() string {
	return fmt.Sprintf("tcp %v <-> %v: %d bytes in, %d out, %v", r.Local, r.Remote, r.In, r.Out,
		r.End.Sub(r.Start).Round(time.Microsecond))
}

// Logger is the filter.
type Logger struct {
	report func(Record) // also called with each record, if set
	now    func() time.Time
	ring   *logring.Ring[Record]
}

// conn is a connection's state, the filter's cookie.
type conn struct {
	start    atomic.Int64 // unix nanoseconds
	in, out  atomic.Uint64
	reported atomic.Bool
}

var (
	_ nke.SocketFilter = (*Logger)(nil)
	_ nke.SockNotifier = (*Logger)(nil)
	_ nke.SockDataIn   = (*Logger)(nil)
	_ nke.SockDataOut  = (*Logger)(nil)
)

// New returns a logger keeping the last size records; report, if not
// nil, is also called with each record as the connection closes (on the
// socket's goroutine: it must not block).
func New(size int, report func(Record)) *Logger {
	return &Logger{report: report, now: time.Now, ring: logring.New[Record](size)}
}

// Spec registers it for every TCP socket, IPv4 and IPv6, new ones and
// (Extended) those open already.
func (l *Logger) Spec(handle uint32) nke.SocketFilterSpec {
	return nke.SocketFilterSpec{Name: Name, Handle: handle, Type: nke.SockStream, Protocol: 6,
		Global: true, Extended: true, Filter: l}
}

// SockAttach starts a record; a socket attached while connected (an
// accepted one, or an existing one with Extended) starts now.
func (l *Logger) SockAttach(so nke.Socket) (any, error) {
	c := &conn{}
	if so.RemoteAddr().IsValid() {
		c.start.Store(l.now().UnixNano())
	}
	return c, nil
}

// SockNotify marks the connection's start and end.
func (l *Logger) SockNotify(cookie any, so nke.Socket, ev nke.SocketEvent) {
	c := cookie.(*conn)
	switch ev {
	case nke.SockEventConnected:
		c.start.CompareAndSwap(0, l.now().UnixNano())
	case nke.SockEventDisconnected, nke.SockEventClosing:
		l.finish(c, so)
	}
}

// SockDataIn counts received bytes.
func (l *Logger) SockDataIn(cookie any, _ nke.Socket, _ netip.AddrPort, data, _ **mbuf.Mbuf, _ nke.DataFlags) error {
	if *data != nil {
		cookie.(*conn).in.Add(uint64((*data).PktLen()))
	}
	return nil
}

// SockDataOut counts sent bytes.
func (l *Logger) SockDataOut(cookie any, _ nke.Socket, _ netip.AddrPort, data, _ **mbuf.Mbuf, _ nke.DataFlags) error {
	if *data != nil {
		cookie.(*conn).out.Add(uint64((*data).PktLen()))
	}
	return nil
}

// SockDetach reports a connection not reported yet (the socket went
// away, or the filter was unregistered, without a close event).
func (l *Logger) SockDetach(cookie any, so nke.Socket) { l.finish(cookie.(*conn), so) }

// finish reports c once, and only a connection that started.
func (l *Logger) finish(c *conn, so nke.Socket) {
	start := c.start.Load()
	if start == 0 || !c.reported.CompareAndSwap(false, true) {
		return
	}
	r := Record{Socket: so.ID(), Local: so.LocalAddr(), Remote: so.RemoteAddr(),
		Start: time.Unix(0, start), End: l.now(), In: c.in.Load(), Out: c.out.Load()}
	l.ring.Add(r)
	if l.report != nil {
		l.report(r)
	}
}

// Records returns the records not read yet, oldest first, and how many
// were lost because the ring wrapped before they were read.
func (l *Logger) Records() (recs []Record, lost uint64) { return l.ring.Records() }

// Lines formats Records, one line each.
func (l *Logger) Lines() []string { return l.ring.Lines() }
