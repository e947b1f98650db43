// Package hook is the filter chain every hook point of the guest runs:
// interface filters on the rings, IP filters next to the stack, and later
// socket filters. It does what is the same at every layer, so that each
// layer only writes its dispatch loop:
//
//   - attach from a declarative spec, validated, that fully succeeds or
//     changes nothing, returning a handle whose Detach unlinks the filter;
//   - order: the layer's default (Apple's: FIFO for interface filters,
//     newest first for IP filters) refined by priorities and before/after
//     constraints, resolved deterministically, cycles and unmet
//     constraints refused with an error naming the filters;
//   - an immutable snapshot of the chain behind an atomic pointer, taken
//     once per burst, so no lock sits on the data path;
//   - quiescence: a detached filter's Detached callback runs once, after
//     every call into it has returned, and is the last call it gets;
//   - counters per filter (packets, bytes, each verdict, faults, sampled
//     latency), kept per lane so the poll loop writes cache lines of its
//     own;
//   - faults: a filter that panics is detached and reported with its
//     stack.
//
// Readers (a poll loop, a stack goroutine) call Acquire, walk the
// snapshot's entries, and call Release. Acquire and Release cost three
// atomic operations on a chain that is not empty and one load on an empty
// one (Empty).
package hook

import (
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/nke-harness/nke/kernel/kevent"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Policy is a hook's default order, for filters no constraint or priority
// places.
type Policy uint8

const (
	// FIFO runs filters in attach order (Apple's interface filters).
	FIFO Policy = iota
	// LIFO runs the newest first (Apple's IP and socket filters).
	LIFO
)

// Errors from Attach.
var (
	ErrDuplicate = errors.New("hook: a filter of that name is attached")
	ErrOrder     = errors.New("hook: the filters cannot be ordered")
	ErrNoFilter  = errors.New("hook: spec has no filter")
)

// Spec is a filter to attach: what every layer's spec has in common.
type Spec[F any] struct {
	// Name identifies the filter on this hook, like a bundle id
	// ("com.example.firewall"); unique per hook.
	Name string
	// Order places it among the others.
	Order nke.Order
	// Filter is the layer's filter value.
	Filter F
	// Detached, if set, is called once when the filter is gone: after
	// Detach and every call into the filter in flight has returned. It
	// is the last call the filter gets. It runs on its own goroutine.
	Detached func()
}

// Fault reports a filter that panicked. The filter has been detached.
type Fault struct {
	Hook, Filter string
	Value        any    // what it panicked with
	Stack        string // the goroutine's stack at the panic
}

func (f Fault) String() string {
	return fmt.Sprintf("%s: filter %s panicked: %v (detached)", f.Hook, f.Filter, f.Value)
}

// Chain is the filters attached to one hook.
type Chain[F any] struct {
	name   string
	policy Policy
	report func(Fault)

	mu sync.Mutex
	// +checklocks:mu
	entries []*Entry[F]
	// +checklocks:mu
	seq uint64
	// +checklocks:mu
	gone []Gone // the last filters detached, newest last

	cur     atomic.Pointer[Snapshot[F]]
	capture captureSlot
	events  atomic.Pointer[kevent.Bus]
}

// SetEvents makes the chain publish its attaches, detaches and faults on
// b (nil: stop). They are control-path events: the data path does not
// look at b.
func (c *Chain[F]) SetEvents(b *kevent.Bus) { c.events.Store(b) }

// New returns an empty chain. name says which hook it is in errors and
// fault reports ("vtnet0 input"); report, if not nil, receives each
// fault.
func New[F any](name string, policy Policy, report func(Fault)) *Chain[F] {
	c := &Chain[F]{name: name, policy: policy, report: report}
	c.cur.Store(&Snapshot[F]{})
	return c
}

// Name is the hook's name.
func (c *Chain[F]) Name() string { return c.name }

// Snapshot is the chain as one reader sees it: entries in the order they
// run. It stays valid until Release.
type Snapshot[F any] struct {
	Entries  []*Entry[F]
	inflight atomic.Int64
	retired  atomic.Bool
	released atomic.Bool
}

// Entry is one attached filter as the data path sees it.
type Entry[F any] struct {
	// ID is unique among all entries of all chains (nke.Attachment.ID).
	ID     uint64
	Name   string
	Filter F
	// Stats are the filter's counters; the dispatch loop adds to them.
	Stats Stats

	order    nke.Order
	seq      uint64
	chain    *Chain[F]
	detached func()
	refs     atomic.Int32 // live snapshots holding this entry
	fault    atomic.Pointer[string]
	unlinked atomic.Bool
	finished sync.Once
	done     chan struct{}
}

// Empty reports whether no filter is attached: the data path's check
// before anything else, one atomic load.
func (c *Chain[F]) Empty() bool { return len(c.cur.Load().Entries) == 0 }

// Acquire returns the current snapshot and holds it until Release: the
// filters in it are not told they are detached meanwhile.
func (c *Chain[F]) Acquire() *Snapshot[F] {
	for {
		s := c.cur.Load()
		s.inflight.Add(1)
		// A snapshot replaced between the load and the increment may
		// already have been given up: take the new one.
		if c.cur.Load() == s {
			return s
		}
		s.Release()
	}
}

// Release ends a reader's use of the snapshot.
func (s *Snapshot[F]) Release() {
	if s.inflight.Add(-1) == 0 && s.retired.Load() {
		s.release()
	}
}

// retire is called once the snapshot is no longer current.
func (s *Snapshot[F]) retire() {
	s.retired.Store(true)
	if s.inflight.Load() == 0 {
		s.release()
	}
}

func (s *Snapshot[F]) release() {
	if !s.released.CompareAndSwap(false, true) {
		return
	}
	for _, e := range s.Entries {
		if e.refs.Add(-1) == 0 && e.unlinked.Load() {
			e.finish()
		}
	}
}

func (e *Entry[F]) finish() {
	e.finished.Do(func() {
		go func() {
			if e.detached != nil {
				e.detached()
			}
			// What it swallowed and never gave back is freed now.
			if n := mbuf.ReclaimHeld(e.ID); n > 0 {
				e.Stats.reclaimed.Add(uint64(n))
				msg := fmt.Sprintf("detached holding %d swallowed packets it never re-injected or freed: freed them", n)
				e.chain.events.Load().Publish(kevent.Event{Kind: kevent.Fault, NKE: e.Name, Hook: e.chain.name, ID: e.ID, Detail: msg})
				if e.chain.report != nil {
					e.chain.report(Fault{Hook: e.chain.name, Filter: e.Name, Value: msg})
				}
			}
			e.chain.recordGone(e)
			close(e.done)
		}()
	})
}

// MaxGone is how many detached filters a chain remembers.
const MaxGone = 16

// Gone is a filter that was detached, with its counters at the end: what
// a status page shows once the filter itself is no longer attached
// (above all, one detached for a fault).
type Gone struct {
	Hook  string `json:"hook"`
	Name  string `json:"name"`
	ID    uint64 `json:"id"`
	Fault string `json:"fault,omitempty"` // what it panicked with, if it did
	Counters
}

func (c *Chain[F]) recordGone(e *Entry[F]) {
	g := Gone{Hook: c.name, Name: e.Name, ID: e.ID, Counters: e.Stats.Read()}
	if f := e.fault.Load(); f != nil {
		g.Fault = *f
	}
	c.events.Load().Publish(kevent.Event{Kind: kevent.FilterDetached, NKE: g.Name, Hook: g.Hook, ID: g.ID, Detail: g.Fault})
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.gone) == MaxGone {
		copy(c.gone, c.gone[1:])
		c.gone = c.gone[:MaxGone-1]
	}
	c.gone = append(c.gone, g)
}

// Gone returns the last MaxGone filters detached from the chain, oldest
// first, each once its Detached callback has returned.
func (c *Chain[F]) Gone() []Gone {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Gone(nil), c.gone...)
}

// Attach validates spec, places the filter among those attached and
// publishes the new chain. It fails, changing nothing, on a bad name, a
// duplicate, a missing filter, or an order that cannot be met.
func (c *Chain[F]) Attach(spec Spec[F]) (*Handle[F], error) {
	if err := nke.CheckName(spec.Name); err != nil {
		return nil, fmt.Errorf("%s: %w", c.name, err)
	}
	if any(spec.Filter) == nil {
		return nil, fmt.Errorf("%s: attach %s: %w", c.name, spec.Name, ErrNoFilter)
	}
	for _, n := range append(append([]string(nil), spec.Order.Before...), spec.Order.After...) {
		if err := nke.CheckName(n); err != nil {
			return nil, fmt.Errorf("%s: attach %s: order: %w", c.name, spec.Name, err)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.entries {
		if e.Name == spec.Name {
			return nil, fmt.Errorf("%s: attach %s: %w", c.name, spec.Name, ErrDuplicate)
		}
	}
	for _, a := range spec.Order.After {
		if !c.hasLocked(a) {
			return nil, fmt.Errorf("%s: attach %s: %w: it must run after %s, which is not attached", c.name, spec.Name, ErrOrder, a)
		}
	}
	c.seq++
	e := &Entry[F]{ID: nextID.Add(1), Name: spec.Name, Filter: spec.Filter, order: spec.Order, seq: c.seq, chain: c,
		detached: spec.Detached, done: make(chan struct{})}
	next, err := resolve(c.policy, append(append([]*Entry[F](nil), c.entries...), e))
	if err != nil {
		return nil, fmt.Errorf("%s: attach %s: %w", c.name, spec.Name, err)
	}
	c.publishLocked(next)
	c.events.Load().Publish(kevent.Event{Kind: kevent.FilterAttached, NKE: e.Name, Hook: c.name, ID: e.ID})
	return &Handle[F]{e: e}, nil
}

// +checklocks:c.mu
func (c *Chain[F]) hasLocked(name string) bool {
	for _, e := range c.entries {
		if e.Name == name {
			return true
		}
	}
	return false
}

// publishLocked makes entries the chain readers see next.
//
// +checklocks:c.mu
func (c *Chain[F]) publishLocked(entries []*Entry[F]) {
	c.entries = entries
	s := &Snapshot[F]{Entries: entries}
	for _, e := range entries {
		e.refs.Add(1)
	}
	c.cur.Swap(s).retire()
}

// detach unlinks e if it is still attached; it reports whether it was.
func (c *Chain[F]) detach(e *Entry[F]) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := -1
	for j, x := range c.entries {
		if x == e {
			i = j
		}
	}
	if i < 0 {
		return false
	}
	next := make([]*Entry[F], 0, len(c.entries)-1)
	next = append(next, c.entries[:i]...)
	next = append(next, c.entries[i+1:]...)
	// Marked before the old snapshot is retired: the release that drops
	// the last reference must see it.
	e.unlinked.Store(true)
	c.publishLocked(next)
	return true
}

// DetachAll detaches every filter of the chain and waits until each is
// gone (its Detached callback returned): what a hook's owner does when
// the hook goes away. Not from inside a callback of the chain.
func (c *Chain[F]) DetachAll() {
	var hs []*Handle[F]
	for _, e := range c.Entries() {
		hs = append(hs, c.HandleOf(e))
	}
	for _, h := range hs {
		h.Detach()
	}
	for _, h := range hs {
		<-h.Done()
	}
}

// Names lists the attached filters in the order they run.
func (c *Chain[F]) Names() []string {
	s := c.cur.Load()
	names := make([]string, len(s.Entries))
	for i, e := range s.Entries {
		names[i] = e.Name
	}
	return names
}

// Entries returns the attached filters in the order they run, for status
// pages (their Stats may be read concurrently).
func (c *Chain[F]) Entries() []*Entry[F] {
	return append([]*Entry[F](nil), c.cur.Load().Entries...)
}

// Fault records that e panicked with v while handling a packet: it counts
// the fault, reports it with the stack of the calling goroutine (call it
// from the deferred function that recovered), and detaches e. The
// dispatch loop drops the packet it was handling.
func (e *Entry[F]) Fault(v any) {
	e.Stats.faults.Add(1)
	msg := fmt.Sprint(v)
	e.fault.CompareAndSwap(nil, &msg)
	f := Fault{Hook: e.chain.name, Filter: e.Name, Value: v, Stack: string(debug.Stack())}
	if !e.chain.detach(e) {
		return
	}
	e.chain.events.Load().Publish(kevent.Event{Kind: kevent.Fault, NKE: e.Name, Hook: e.chain.name, ID: e.ID,
		Detail: fmt.Sprintf("panicked: %s (detached)", msg)})
	if e.chain.report != nil {
		e.chain.report(f)
	}
}

// Attached reports whether e is still attached (it may still be in a
// snapshot a reader holds).
func (e *Entry[F]) Attached() bool { return !e.unlinked.Load() }

// Index is e's position in the snapshot, or -1 if it is not in it.
func (s *Snapshot[F]) Index(e *Entry[F]) int {
	for i, x := range s.Entries {
		if x == e {
			return i
		}
	}
	return -1
}

// Entry is the handle's entry.
func (h *Handle[F]) Entry() *Entry[F] { return h.e }

// Guard runs call, a control callback of e's filter (an event, an
// ioctl), and reports whether it panicked: a panic is a Fault (e is
// detached and reported), not the caller's crash.
func (e *Entry[F]) Guard(call func()) (panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			e.Fault(r)
			panicked = true
		}
	}()
	call()
	return false
}

// HandleOf returns the handle of an attached entry, for the owner of the
// hook (detaching everything when the interface goes away).
func (c *Chain[F]) HandleOf(e *Entry[F]) *Handle[F] { return &Handle[F]{e: e} }

// Handle is an attached filter. Its Detach unlinks it.
type Handle[F any] struct{ e *Entry[F] }

// Name is the filter's name.
func (h *Handle[F]) Name() string { return h.e.Name }

// ID is the attachment's unique id.
func (h *Handle[F]) ID() uint64 { return h.e.ID }

// nextID numbers entries across every chain.
var nextID atomic.Uint64

// Detach unlinks the filter: no burst that starts after Detach returns
// calls it. Its Detached callback follows once the calls in flight have
// returned (Done is closed then). It does not wait, so it may be called
// from inside a filter callback; calling it again does nothing.
func (h *Handle[F]) Detach() { h.e.chain.detach(h.e) }

// Done is closed once the filter's Detached callback has returned.
func (h *Handle[F]) Done() <-chan struct{} { return h.e.done }

// Close detaches the filter and waits for its Detached callback. It must
// not be called from inside a callback of the same hook (use Detach).
func (h *Handle[F]) Close() error {
	h.Detach()
	<-h.e.done
	return nil
}

// Stats returns the filter's counters.
func (h *Handle[F]) Stats() Counters { return h.e.Stats.Read() }

// String describes the chain for logs: "vtnet0 input: a, b, c".
func (c *Chain[F]) String() string {
	return c.name + ": " + strings.Join(c.Names(), ", ")
}
