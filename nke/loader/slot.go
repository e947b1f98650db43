package loader

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/nke-harness/nke/nke"
)

// A slot is one attachment the loader made on a real hook for an NKE: the
// kernel calls the loader's wrapper filter, which calls the NKE's filter
// that is current in the slot (an impl). Replace puts the new version's
// impl in the old one's slot with one atomic store, so every packet meets
// exactly one of the two; unload pauses the instance, which makes the
// wrapper pass packets without calling in, and counts the calls in flight
// to wait for them.
type slot struct {
	key  string         // where: "ip inet com.example.ipfw", for Replace to match
	form string         // which wrapper forms it has (per-packet or burst per direction)
	real nke.Attachment // the kernel's attachment of the wrapper
	cur  atomic.Pointer[impl]

	mu sync.Mutex
	// prev is the impl cur superseded (Replace) while its attachment is
	// not detached yet: a failed or undone Replace puts it back.
	// +checklocks:mu
	prev *impl
	// +checklocks:mu
	realDetached bool
	// heir is the attachment a Replace staged for this slot: if the old
	// version detaches its filter before the heir goes in, the slot (its
	// place in the chain) is kept for the heir.
	// +checklocks:mu
	heir *attachment
}

// impl is one NKE filter behind a slot, with its callbacks asserted
// once (nil where it has none).
type impl struct {
	inst     *instance
	filter   any
	detached func()
	inflight atomic.Int64

	ifIn    nke.InputFilter
	ifInB   nke.InputBurstFilter
	ifOut   nke.OutputFilter
	ifOutB  nke.OutputBurstFilter
	ifEvent nke.EventFilter
	ifIoctl nke.IoctlFilter
	ipIn    nke.IPInputFilter
	ipInB   nke.IPInputBurstFilter
	ipOut   nke.IPOutputFilter
	ipOutB  nke.IPOutputBurstFilter
	raw     nke.RawFilter
	rawB    nke.RawBurstFilter
}

func newImpl(inst *instance, filter any, detached func()) *impl {
	im := &impl{inst: inst, filter: filter, detached: detached}
	im.ifIn, _ = filter.(nke.InputFilter)
	im.ifInB, _ = filter.(nke.InputBurstFilter)
	im.ifOut, _ = filter.(nke.OutputFilter)
	im.ifOutB, _ = filter.(nke.OutputBurstFilter)
	im.ifEvent, _ = filter.(nke.EventFilter)
	im.ifIoctl, _ = filter.(nke.IoctlFilter)
	im.ipIn, _ = filter.(nke.IPInputFilter)
	im.ipInB, _ = filter.(nke.IPInputBurstFilter)
	im.ipOut, _ = filter.(nke.IPOutputFilter)
	im.ipOutB, _ = filter.(nke.IPOutputBurstFilter)
	im.raw, _ = filter.(nke.RawFilter)
	im.rawB, _ = filter.(nke.RawBurstFilter)
	return im
}

// enter returns the impl to call, counted as in flight, or nil to pass
// the packet without calling in (no impl, or its instance is paused).
// The count is taken before cur and the pause are checked again, so a
// drain that saw the count at zero after storing cur or the pause has no
// call into the old impl left (the atomics are sequentially consistent).
//
// A paused impl that is no longer current was replaced (Replace pauses
// the old version after the new one went in): the packet goes to the
// current one instead, or it would meet neither.
func (s *slot) enter() *impl {
	for {
		im := s.cur.Load()
		if im == nil {
			return nil
		}
		if im.inst.paused.Load() {
			if s.cur.Load() == im {
				return nil
			}
			continue
		}
		im.inflight.Add(1)
		if s.cur.Load() == im && !im.inst.paused.Load() {
			return im
		}
		im.inflight.Add(-1)
	}
}

func (im *impl) exit() { im.inflight.Add(-1) }

// waitIdle waits until no call into im is in flight.
func (im *impl) waitIdle() {
	for d := time.Microsecond; im.inflight.Load() != 0; d = min(2*d, time.Millisecond) {
		time.Sleep(d)
	}
}

// onRealDetached is the real attachment's Detached: the kernel has no
// call into the wrapper left.
func (s *slot) onRealDetached() {
	s.mu.Lock()
	s.realDetached = true
	s.mu.Unlock()
	if im := s.cur.Load(); im != nil && im.detached != nil {
		im.detached()
	}
}

// attachment is what the NKE gets back from an attach the loader
// wrapped: its own view of the slot.
type attachment struct {
	s    *slot
	im   *impl
	once sync.Once
	done chan struct{}
	// staged: made during a Replace, not yet in the slot.
	staged atomic.Bool
	gone   atomic.Bool
}

var _ nke.Attachment = (*attachment)(nil)

func (a *attachment) Name() string          { return a.s.real.Name() }
func (a *attachment) ID() uint64            { return a.s.real.ID() }
func (a *attachment) Done() <-chan struct{} { return a.done }

// Detach detaches the NKE's filter. If it is current in its slot and
// superseded nobody still attached, the real attachment is detached (the
// kernel's quiescence, then Detached). If it superseded an impl still
// attached (a Replace being undone), that one is put back. If it was
// superseded, or never got into its slot, it only waits for its own calls
// to end.
func (a *attachment) Detach() {
	a.once.Do(func() {
		a.gone.Store(true)
		s := a.s
		s.mu.Lock()
		switch {
		case a.staged.Load():
			if s.heir == a {
				s.heir = nil
			}
			// The old version gave the slot up for this heir: nobody
			// holds it now.
			orphan := s.cur.Load() == nil && !s.realDetached
			s.mu.Unlock()
			if orphan {
				s.real.Detach()
			}
			a.finish()
			return
		case s.cur.Load() == a.im && s.heir != nil && !s.heir.gone.Load():
			// A Replace is staging the next version here: keep the place
			// for it, passing packets until it goes in.
			s.cur.Store(nil)
			s.mu.Unlock()
			a.finish()
			return
		case s.cur.Load() == a.im && s.prev != nil:
			s.cur.Store(s.prev)
			s.prev = nil
			s.mu.Unlock()
			a.finish()
			return
		case s.cur.Load() == a.im:
			s.mu.Unlock()
			s.real.Detach()
			go func() {
				<-s.real.Done()
				close(a.done)
			}()
			return
		}
		if s.prev == a.im {
			s.prev = nil
		}
		s.mu.Unlock()
		a.finish()
	})
}

// finish ends an attachment that is not (or no longer) in its slot.
func (a *attachment) finish() {
	go func() {
		a.im.waitIdle()
		if a.im.detached != nil {
			a.im.detached()
		}
		close(a.done)
	}()
}

// commit puts a staged attachment in its slot (Replace).
func (a *attachment) commit() {
	s := a.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.heir == a {
		s.heir = nil
	}
	if a.gone.Load() {
		return
	}
	s.prev = s.cur.Load()
	s.cur.Store(a.im)
	a.staged.Store(false)
}

// bequeath makes a, staged in a Replace, the heir of s.
func (s *slot) bequeath(a *attachment) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.heir = a
}

// detached reports whether Detach was called.
func (a *attachment) detachedYet() bool { return a.gone.Load() }
