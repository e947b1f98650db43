// Package contentfilter is an example socket filter in the manner of
// macOS content filters: it holds every chunk of data a socket sends until
// a decision is made about it, then re-injects it (allowed) or drops it
// (blocked), keeping the stream in order.
//
// It demonstrates the socket-filter KPI's swallow-and-reinject pattern:
// SockDataOut swallows the data (nke.ErrSwallowed: the filter owns it
// now); a goroutine per socket asks the decider about each chunk in turn,
// possibly slowly, and hands allowed chunks back with
// SocketHook.InjectDataOut, which runs every filter's data out again; the
// filter recognises its own re-injected data by its provenance
// (nke.InjectedByMe) and lets it pass. SockDetach drains the socket's
// queue (what is still held is freed and counted) before it returns, so
// nothing runs after the socket's last call.
//
//	cf := contentfilter.New(sockets, func(so nke.Socket, chunk []byte) bool { return !bytes.Contains(chunk, secret) })
//	att, err := sockets.RegisterSocketFilter(cf.Spec(0xcf))
//	cf.SetAttachment(att)
package contentfilter

import (
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Name is the filter's name.
const Name = "com.example.contentfilter"

// MaxInspect bounds how many bytes of a chunk the decider sees.
const MaxInspect = 4096

// Decider says whether a chunk may be sent (its first MaxInspect bytes).
// It runs on the socket's own goroutine, never on the data path, and may
// take its time: the chunk and those after it wait.
type Decider func(so nke.Socket, chunk []byte) (allow bool)

// Filter is the content filter.
type Filter struct {
	hook   nke.SocketHook
	decide Decider
	att    atomic.Pointer[attachment]

	held, allowed, blocked, dropped atomic.Uint64
}

type attachment struct{ a nke.Attachment }

var (
	_ nke.SocketFilter = (*Filter)(nil)
	_ nke.SockDataOut  = (*Filter)(nil)
)

// New returns a content filter that re-injects through hook.
func New(hook nke.SocketHook, decide Decider) *Filter { return &Filter{hook: hook, decide: decide} }

// Spec registers it for every TCP socket, IPv4 and IPv6.
func (f *Filter) Spec(handle uint32) nke.SocketFilterSpec {
	return nke.SocketFilterSpec{Name: Name, Handle: handle, Type: nke.SockStream, Protocol: 6, Global: true, Filter: f}
}

// SetAttachment tells the filter its registration, by which it knows its
// own re-injected data; until then it holds nothing (passes all).
func (f *Filter) SetAttachment(a nke.Attachment) { f.att.Store(&attachment{a}) }

// chunk is data held for a decision.
type chunk struct {
	to            netip.AddrPort
	data, control *mbuf.Mbuf
	flags         nke.DataFlags
}

// flow is a socket's queue and its decider goroutine.
type flow struct {
	so nke.Socket

	mu sync.Mutex
	// +checklocks:mu
	queue []chunk
	// +checklocks:mu
	closed bool
	wake   chan struct{} // a chunk queued, or closed
	done   chan struct{} // the goroutine has ended
}

// SockAttach starts the socket's decider goroutine.
func (f *Filter) SockAttach(so nke.Socket) (any, error) {
	fl := &flow{so: so, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go f.run(fl)
	return fl, nil
}

// SockDataOut holds the data for a decision, unless it is the filter's
// own re-injection.
func (f *Filter) SockDataOut(cookie any, so nke.Socket, to netip.AddrPort, data, control **mbuf.Mbuf, flags nke.DataFlags) error {
	a := f.att.Load()
	if a == nil || *data == nil || nke.InjectedByMe(*data, a.a) {
		return nil
	}
	fl := cookie.(*flow)
	fl.mu.Lock()
	if fl.closed {
		fl.mu.Unlock()
		return nil
	}
	c := chunk{to: to, data: *data, flags: flags}
	if control != nil {
		c.control = *control
	}
	fl.queue = append(fl.queue, c)
	fl.mu.Unlock()
	f.held.Add(1)
	select {
	case fl.wake <- struct{}{}:
	default:
	}
	return nke.ErrSwallowed
}

// run decides the socket's chunks in order.
func (f *Filter) run(fl *flow) {
	defer close(fl.done)
	var buf [MaxInspect]byte
	for {
		fl.mu.Lock()
		if len(fl.queue) == 0 {
			closed := fl.closed
			fl.mu.Unlock()
			if closed {
				return
			}
			<-fl.wake
			continue
		}
		c := fl.queue[0]
		closed := fl.closed
		fl.queue = fl.queue[1:]
		fl.mu.Unlock()
		if closed {
			f.free(c)
			f.dropped.Add(1)
			continue
		}
		n := c.data.CopyOut(buf[:])
		if !f.decide(fl.so, buf[:n]) {
			f.free(c)
			f.blocked.Add(1)
			continue
		}
		f.allowed.Add(1)
		// Consumed, error or not (sock_inject_data_out's rule).
		f.hook.InjectDataOut(fl.so, c.to, c.data, c.control, c.flags, f.att.Load().a)
	}
}

func (f *Filter) free(c chunk) {
	c.data.Free()
	if c.control != nil {
		c.control.Free()
	}
}

// SockDetach ends the socket's goroutine; what it still held is freed and
// counted as dropped. It returns once the goroutine has ended, so nothing
// of this socket runs after its last call.
func (f *Filter) SockDetach(cookie any, _ nke.Socket) {
	fl := cookie.(*flow)
	fl.mu.Lock()
	fl.closed = true
	fl.mu.Unlock()
	select {
	case fl.wake <- struct{}{}:
	default:
	}
	<-fl.done
}

// Stats are the filter's counters: chunks held, then allowed (and
// re-injected), blocked, or dropped because the socket went away first.
type Stats struct {
	Held, Allowed, Blocked, Dropped uint64
}

// Stats returns the counters.
func (f *Filter) Stats() Stats {
	return Stats{f.held.Load(), f.allowed.Load(), f.blocked.Load(), f.dropped.Load()}
}
