// Package logring is a fixed ring of records that a data path fills
// without allocating and a reader drains at its own pace: what the example
// NKEs (ethlog, tcplog) keep instead of logging from a callback, which
// must not block.
package logring

import (
	"fmt"
	"sync"
)

// Ring keeps the last records added. It is safe for concurrent use.
type Ring[T fmt.Stringer] struct {
	mu sync.Mutex
	// +checklocks:mu
	recs []T
	// +checklocks:mu
	next uint64 // records added, ever
	// +checklocks:mu
	read uint64 // records handed out
}

// New returns a ring keeping the last size records (at least one).
func New[T fmt.Stringer](size int) *Ring[T] { return &Ring[T]{recs: make([]T, max(size, 1))} }

// Add records r, overwriting the oldest when the ring is full.
func (r *Ring[T]) Add(rec T) {
	r.mu.Lock()
	r.recs[r.next%uint64(len(r.recs))] = rec
	r.next++
	r.mu.Unlock()
}

// Records returns the records not read yet, oldest first, and how many
// were lost because the ring wrapped before they were read.
func (r *Ring[T]) Records() (recs []T, lost uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n := uint64(len(r.recs)); r.next-r.read > n {
		lost = r.next - r.read - n
		r.read = r.next - n
	}
	for ; r.read < r.next; r.read++ {
		recs = append(recs, r.recs[r.read%uint64(len(r.recs))])
	}
	return recs, lost
}

// Lines formats Records, one line each, with a line saying how many were
// lost if any were.
func (r *Ring[T]) Lines() []string {
	recs, lost := r.Records()
	var out []string
	if lost > 0 {
		out = append(out, fmt.Sprintf("(%d records lost)", lost))
	}
	for _, rec := range recs {
		out = append(out, rec.String())
	}
	return out
}
