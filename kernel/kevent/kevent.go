// Package kevent is the guest's kernel event stream (Apple's kern_event):
// one-way broadcast of typed events (NKEs loaded and unloaded, filters
// attached and detached, faults, link changes, injections stopped by the
// hop limit, control clients coming and going) to any number of
// subscribers, the source of `nkectl events`.
//
// Publish never blocks and never waits for a subscriber: each subscriber
// has a bounded queue, and an event that does not fit is counted as lost
// for that subscriber (Lost, and the gap in Seq). With nobody subscribed
// Publish is one atomic add and one atomic load. A nil *Bus takes and
// drops every event, so a source may hold one unconditionally.
package kevent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Kind is what happened.
type Kind uint16

// Kinds. New ones go at the end: the numbers are part of what nkectl
// --json prints.
const (
	NKELoaded         Kind = iota + 1 // the loader started an NKE
	NKEUnloaded                       // the loader stopped one
	FilterAttached                    // a filter, protocol or hook was attached
	FilterDetached                    // it is gone (Detached has run); Detail says why if it faulted
	Fault                             // a filter or callback panicked or trapped and was detached
	LinkUp                            // an interface's link came up
	LinkDown                          // and went down
	InjectLoop                        // an injection past nke.MaxInjections was dropped
	ControlConnect                    // a kernel-control client connected
	ControlDisconnect                 // and went
	NKEReplaced                       // the loader swapped a bundle for another version
	NKELoadFailed                     // a load (or replace) was refused or its start failed
	NKEUnloadFailed                   // an unload's stop failed: the NKE stays loaded
	CapabilityRefused                 // an NKE tried what its manifest's capabilities do not allow
	numKinds
)

var kindNames = [...]string{"", "nke-loaded", "nke-unloaded", "attached", "detached", "fault",
	"link-up", "link-down", "inject-loop", "ctl-connect", "ctl-disconnect",
	"nke-replaced", "nke-load-failed", "nke-unload-failed", "refused"}

func (k Kind) String() string {
	if k > 0 && k < numKinds {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint16(k))
}

// ParseKind is String's inverse, for an event filter given by name.
func ParseKind(s string) (Kind, error) {
	for k := Kind(1); k < numKinds; k++ {
		if kindNames[k] == s {
			return k, nil
		}
	}
	return 0, fmt.Errorf("kevent: unknown event kind %q: want one of %s", s, strings.Join(kindNames[1:], ", "))
}

// MarshalText names the kind in JSON.
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText reads a name MarshalText wrote.
func (k *Kind) UnmarshalText(b []byte) error {
	v, err := ParseKind(string(b))
	if err == nil {
		*k = v
	}
	return err
}

// Event is one event. Publish sets Seq and Time; the source fills the
// rest that applies.
type Event struct {
	// Seq numbers the bus's events from 1 with no gap: a subscriber that
	// sees one knows it lost events.
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	Kind Kind      `json:"kind"`
	// NKE is the bundle id or filter name the event is about.
	NKE string `json:"nke,omitempty"`
	// Hook is the hook point ("vtnet0 filters", "inet filters",
	// "control com.nke-harness.ipfw").
	Hook string `json:"hook,omitempty"`
	// Interface is the interface of a link or injection event.
	Interface string `json:"interface,omitempty"`
	// ID is the attachment id or the control unit.
	ID uint64 `json:"id,omitempty"`
	// Detail is a human-readable remainder: a fault's value, a refusal.
	Detail string `json:"detail,omitempty"`
}

func (e Event) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "#%d %s %s", e.Seq, e.Time.UTC().Format("15:04:05.000000"), e.Kind)
	for _, f := range []struct{ k, v string }{{"nke", e.NKE}, {"hook", e.Hook}, {"if", e.Interface}} {
		if f.v != "" {
			fmt.Fprintf(&b, " %s=%s", f.k, f.v)
		}
	}
	if e.ID != 0 {
		fmt.Fprintf(&b, " id=%d", e.ID)
	}
	if e.Detail != "" {
		fmt.Fprintf(&b, ": %s", e.Detail)
	}
	return b.String()
}

// Bus is an event stream. The zero value is ready to use.
type Bus struct {
	seq  atomic.Uint64
	subs atomic.Pointer[[]*Sub] // nil or a copy-on-write list
	// Now is the clock, for tests; nil is time.Now. Set before use.
	Now func() time.Time

	mu sync.Mutex // serialises the writers of subs
}

// Publish sends e to every subscriber, stamped with the next sequence
// number and the time. It never blocks.
func (b *Bus) Publish(e Event) {
	if b == nil {
		return
	}
	e.Seq = b.seq.Add(1)
	subs := b.subs.Load()
	if subs == nil {
		return
	}
	if b.Now != nil {
		e.Time = b.Now()
	} else {
		e.Time = time.Now()
	}
	for _, s := range *subs {
		s.offer(e)
	}
}

// Published is how many events the bus has numbered.
func (b *Bus) Published() uint64 {
	if b == nil {
		return 0
	}
	return b.seq.Load()
}

// ErrClosed is what Next returns once the subscription is closed.
var ErrClosed = errors.New("kevent: subscription closed")

// DefaultQueue is a subscriber's queue length when Subscribe is given 0.
const DefaultQueue = 256

// Sub is one subscriber.
type Sub struct {
	b     *Bus
	kinds uint64 // bit k set: Kind k wanted; 0: all
	q     chan Event
	lost  atomic.Uint64
	done  chan struct{}
	once  sync.Once
}

// Subscribe returns a subscriber whose queue holds queue events (0:
// DefaultQueue), receiving the kinds listed (none: all of them), from the
// next event published on.
func (b *Bus) Subscribe(queue int, kinds ...Kind) *Sub {
	if queue <= 0 {
		queue = DefaultQueue
	}
	s := &Sub{b: b, q: make(chan Event, queue), done: make(chan struct{})}
	for _, k := range kinds {
		if k > 0 && k < 64 {
			s.kinds |= 1 << k
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var list []*Sub
	if p := b.subs.Load(); p != nil {
		list = append(list, *p...)
	}
	list = append(list, s)
	b.subs.Store(&list)
	return s
}

func (s *Sub) offer(e Event) {
	if s.kinds != 0 && (e.Kind >= 64 || s.kinds&(1<<e.Kind) == 0) {
		return
	}
	select {
	case s.q <- e:
	default:
		s.lost.Add(1)
	}
}

// C is the subscriber's queue. It is never closed: select on Done too.
func (s *Sub) C() <-chan Event { return s.q }

// Done is closed by Close.
func (s *Sub) Done() <-chan struct{} { return s.done }

// Lost is how many events were dropped because the queue was full.
func (s *Sub) Lost() uint64 { return s.lost.Load() }

// Next waits for the next event, ctx's end or Close.
func (s *Sub) Next(ctx context.Context) (Event, error) {
	select {
	case e := <-s.q:
		return e, nil
	default:
	}
	select {
	case e := <-s.q:
		return e, nil
	case <-s.done:
		return Event{}, ErrClosed
	case <-ctx.Done():
		return Event{}, ctx.Err()
	}
}

// Close unsubscribes; events still queued can be read from C.
func (s *Sub) Close() {
	s.once.Do(func() {
		b := s.b
		b.mu.Lock()
		defer b.mu.Unlock()
		var list []*Sub
		for _, x := range *b.subs.Load() {
			if x != s {
				list = append(list, x)
			}
		}
		if len(list) == 0 {
			b.subs.Store(nil)
		} else {
			b.subs.Store(&list)
		}
		close(s.done)
	})
}
