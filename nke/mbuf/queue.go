package mbuf

import "sync"

// Queue is a bounded FIFO of packets, many producers and one consumer: how
// other goroutines hand packets to a poll loop that owns a device's rings.
// Batch calls take the lock once; nothing allocates after NewQueue.
type Queue struct {
	mu sync.Mutex
	// +checklocks:mu
	ring []*Mbuf
	// +checklocks:mu
	head int
	// +checklocks:mu
	n int
}

// NewQueue returns a queue holding at most capacity packets.
func NewQueue(capacity int) *Queue {
	return &Queue{ring: make([]*Mbuf, capacity)}
}

// Enqueue appends m and reports whether there was room. On false the caller
// still owns m.
func (q *Queue) Enqueue(m *Mbuf) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n == len(q.ring) {
		return false
	}
	q.ring[(q.head+q.n)%len(q.ring)] = m
	q.n++
	return true
}

// DequeueBatch moves up to len(dst) packets into dst, oldest first, and
// returns how many.
func (q *Queue) DequeueBatch(dst []*Mbuf) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	k := min(len(dst), q.n)
	for i := 0; i < k; i++ {
		dst[i] = q.ring[q.head]
		q.ring[q.head] = nil
		q.head = (q.head + 1) % len(q.ring)
	}
	q.n -= k
	return k
}

// Len is the number of queued packets.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}

// Drain frees every queued packet and returns how many there were.
func (q *Queue) Drain() int {
	var batch [32]*Mbuf
	total := 0
	for {
		k := q.DequeueBatch(batch[:])
		for _, m := range batch[:k] {
			m.Free()
		}
		total += k
		if k == 0 {
			return total
		}
	}
}
