package mbuf

import (
	"sync"
	"weak"
)

// Holders: when a filter swallows a packet, the hook marks the packet with
// the filter's attachment id; whatever hands the packet back to the kernel
// (an inject, an output) clears the mark, and freeing it does too. Once
// the filter is gone (its Detached callback has returned), ReclaimHeld
// finds the packets still marked with its id and frees them, so a filter
// that swallowed packets and never gave them back, say because it
// panicked, leaks nothing. The mark is atomic: a scan reads it while other
// goroutines own other buffers.

// SetHolder marks the packet as held by the attachment with id (0: none).
func (m *Mbuf) SetHolder(id uint64) { m.holder.Store(id) }

// Holder is the id of the attachment holding the packet, 0 if none.
func (m *Mbuf) Holder() uint64 { return m.holder.Load() }

// ClearHolder clears the mark when there is one: a load, and a store
// only on a held packet, so the transmit path pays almost nothing.
func (m *Mbuf) ClearHolder() {
	if m.holder.Load() != 0 {
		m.holder.Store(0)
	}
}

var registry struct {
	mu sync.Mutex
	// +checklocks:mu
	pools []weak.Pointer[Pool]
}

func register(p *Pool) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	registry.pools = append(registry.pools, weak.Make(p))
}

// livePools returns the pools still in use, forgetting collected ones.
func livePools() []*Pool {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	var out []*Pool
	kept := registry.pools[:0]
	for _, w := range registry.pools {
		if p := w.Value(); p != nil {
			out = append(out, p)
			kept = append(kept, w)
		}
	}
	clear(registry.pools[len(kept):])
	registry.pools = kept
	return out
}

// ReclaimHeld frees every packet, in every pool, still marked as held by
// the attachment id, and returns how many it freed. Call it only once
// nothing of that attachment runs any more.
func ReclaimHeld(id uint64) int {
	if id == 0 {
		return 0
	}
	n := 0
	for _, p := range livePools() {
		for i := range p.all {
			m := &p.all[i]
			if m.holder.Load() == id && m.refs.Load() > 0 {
				m.holder.Store(0)
				m.Free()
				n++
			}
		}
	}
	return n
}

// HeldBy reports whether the packet is still held by the attachment id:
// marked with it and not freed since. A buffer freed and handed out again
// is not held (Get clears the mark), so a caller that recorded a
// swallowed packet can poll this to learn that its holder let it go.
func (m *Mbuf) HeldBy(id uint64) bool {
	return id != 0 && m.holder.Load() == id && m.refs.Load() > 0
}
