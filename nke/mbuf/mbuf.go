// Package mbuf holds packet buffers: fixed-size buffers in DMA memory with
// headroom for headers, chained into packets, reference counted and recycled
// through pools. Nothing here allocates once a pool exists.
//
// The names follow the BSD/xnu mbuf KPI where the operation is the same
// (Prepend, Adj, Next), so NKE authors recognise them.
package mbuf

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/nke-harness/nke/nke/dma"
)

// Flags describe a packet, as in xnu's mbuf packet-header flags.
type Flags uint32

// Packet flags.
const (
	FlagBroadcast Flags = 1 << iota
	FlagMulticast
	FlagPromisc  // received only because the interface is promiscuous
	FlagFragment // an IP fragment (xnu MBUF_FRAG)
)

// Mbuf is one buffer of a packet. The packet header (Flags, RcvIf, the
// frame header, checksum offload state, the VLAN tag, the next packet of a
// list and the tags) is meaningful on the first buffer of a chain; a pool
// resets it when it hands a buffer out.
//
// An Mbuf is owned by one goroutine at a time; ownership moves with the
// pointer (into a ring, through a queue, to a filter).
type Mbuf struct {
	buf  []byte // the whole buffer
	addr uint64 // device address of buf[0]
	off  int    // start of data in buf
	n    int    // bytes of data
	next *Mbuf  // next buffer of the same packet
	pool *Pool
	refs atomic.Int32
	// holder is the attachment holding a swallowed packet (holder.go).
	holder atomic.Uint64

	// Flags describe the packet (first buffer only).
	Flags Flags
	// RcvIf is the receiving interface's index, 0 for locally sent packets.
	RcvIf uint16

	hdr pkthdr // the rest of the packet header (first buffer only)
}

// Bytes returns the buffer's data. It aliases the buffer.
func (m *Mbuf) Bytes() []byte { return m.buf[m.off : m.off+m.n] }

// Len is the number of data bytes in this buffer.
func (m *Mbuf) Len() int { return m.n }

// PktLen is the number of data bytes in the whole chain.
func (m *Mbuf) PktLen() int {
	n := 0
	for b := m; b != nil; b = b.next {
		n += b.n
	}
	return n
}

// Addr is the device address of Bytes()[0].
func (m *Mbuf) Addr() uint64 { return m.addr + uint64(m.off) }

// Raw is the whole underlying buffer, headroom and tailroom included, for
// drivers that place device headers around the data.
func (m *Mbuf) Raw() []byte { return m.buf }

// BufAddr is the device address of the start of the whole buffer.
func (m *Mbuf) BufAddr() uint64 { return m.addr }

// Cap is the size of the whole buffer.
func (m *Mbuf) Cap() int { return len(m.buf) }

// Headroom is the free space before the data.
func (m *Mbuf) Headroom() int { return m.off }

// Tailroom is the free space after the data.
func (m *Mbuf) Tailroom() int { return len(m.buf) - m.off - m.n }

// Next is the next buffer of the packet, or nil.
func (m *Mbuf) Next() *Mbuf { return m.next }

// SetNext links n after m.
func (m *Mbuf) SetNext(n *Mbuf) { m.next = n }

// Segs counts the buffers in the chain.
func (m *Mbuf) Segs() int {
	k := 0
	for b := m; b != nil; b = b.next {
		k++
	}
	return k
}

// Prepend grows the data by n bytes at the front and returns them. It
// reports false, changing nothing, when the headroom is smaller than n.
func (m *Mbuf) Prepend(n int) ([]byte, bool) {
	if n < 0 || n > m.off {
		return nil, false
	}
	m.off -= n
	m.n += n
	return m.buf[m.off : m.off+n], true
}

// Append grows the data by n bytes at the end and returns them. It reports
// false when the tailroom is smaller than n.
func (m *Mbuf) Append(n int) ([]byte, bool) {
	if n < 0 || n > m.Tailroom() {
		return nil, false
	}
	b := m.buf[m.off+m.n : m.off+m.n+n]
	m.n += n
	return b, true
}

// Adj drops n bytes from the front of this buffer's data. It reports false
// when the buffer holds fewer than n bytes.
func (m *Mbuf) Adj(n int) bool {
	if n < 0 || n > m.n {
		return false
	}
	m.off += n
	m.n -= n
	return true
}

// Trim drops n bytes from the end of this buffer's data.
func (m *Mbuf) Trim(n int) bool {
	if n < 0 || n > m.n {
		return false
	}
	m.n -= n
	return true
}

// SetData places the data at [off, off+n) of the buffer. It reports false if
// that range does not fit.
func (m *Mbuf) SetData(off, n int) bool {
	if off < 0 || n < 0 || off > len(m.buf) || n > len(m.buf)-off {
		return false
	}
	m.off, m.n = off, n
	return true
}

// CopyOut copies the chain's data into dst and returns the number of bytes
// copied (at most len(dst)).
func (m *Mbuf) CopyOut(dst []byte) int {
	k := 0
	for b := m; b != nil && k < len(dst); b = b.next {
		k += copy(dst[k:], b.Bytes())
	}
	return k
}

// Ref adds a reference to every buffer of the chain, so that a packet
// shared by two owners survives until both have called Free.
func (m *Mbuf) Ref() {
	for b := m; b != nil; b = b.next {
		b.refs.Add(1)
	}
}

// Shared reports whether any buffer of the chain has another owner: its
// bytes, headroom included, must not be written in place.
func (m *Mbuf) Shared() bool {
	for b := m; b != nil; b = b.next {
		if b.refs.Load() > 1 {
			return true
		}
	}
	return false
}

// CopyBack copies src into the chain's data starting at byte off of the
// packet, as xnu's mbuf_copyback does within existing data, and returns the
// number of bytes copied (fewer when the packet ends first).
func (m *Mbuf) CopyBack(off int, src []byte) int {
	k := 0
	for b := m; b != nil && k < len(src); b = b.next {
		if off >= b.n {
			off -= b.n
			continue
		}
		k += copy(b.buf[b.off+off:b.off+b.n], src[k:])
		off = 0
	}
	return k
}

// Free drops a reference to each buffer of the chain; a buffer whose last
// reference goes returns to its pool.
func (m *Mbuf) Free() {
	for m != nil {
		next := m.next
		switch r := m.refs.Add(-1); {
		case r == 0:
			m.next = nil
			m.pool.put(m)
		case r < 0:
			panic(fmt.Sprintf("mbuf: double free of a buffer from pool %q", m.pool.name))
		}
		m = next
	}
}

// FreeBatch frees every chain in ms, like calling Free on each, but
// returns buffers to their pool under one lock per run of buffers from the
// same pool. ms is left holding nils.
func FreeBatch(ms []*Mbuf) {
	var batch [32]*Mbuf
	n := 0
	var pool *Pool
	flush := func() {
		if n > 0 {
			pool.putBatch(batch[:n])
			n = 0
		}
	}
	for i, m := range ms {
		ms[i] = nil
		for m != nil {
			next := m.next
			switch r := m.refs.Add(-1); {
			case r == 0:
				m.next = nil
				if m.pool != pool || n == len(batch) {
					flush()
					pool = m.pool
				}
				batch[n] = m
				n++
			case r < 0:
				panic(fmt.Sprintf("mbuf: double free of a buffer from pool %q", m.pool.name))
			}
			m = next
		}
	}
	flush()
}

// Pool is a fixed set of equal buffers carved from DMA memory. It is safe
// for concurrent use; batch calls take its lock once.
type Pool struct {
	name     string
	bufSize  int
	headroom int
	all      []Mbuf

	mu sync.Mutex
	// +checklocks:mu
	free []*Mbuf
}

// NewPool carves count buffers of bufSize bytes from a, each with headroom
// bytes reserved in front of the data when handed out.
func NewPool(a dma.Allocator, name string, count, bufSize, headroom int) (*Pool, error) {
	if count <= 0 || bufSize <= 0 || headroom < 0 || headroom >= bufSize {
		return nil, fmt.Errorf("mbuf: pool %q: bad geometry: %d buffers of %d bytes, headroom %d", name, count, bufSize, headroom)
	}
	p := &Pool{name: name, bufSize: bufSize, headroom: headroom, all: make([]Mbuf, count), free: make([]*Mbuf, 0, count)}
	for i := range p.all {
		// Cache-line alignment keeps buffers from sharing lines.
		b, err := a.Alloc(bufSize, 64)
		if err != nil {
			return nil, fmt.Errorf("mbuf: pool %q: buffer %d of %d: %w", name, i, count, err)
		}
		m := &p.all[i]
		m.buf, m.addr, m.pool = b.Buf, b.Addr, p
		p.free = append(p.free, m)
	}
	register(p)
	return p, nil
}

// Name is the pool's name in errors.
func (p *Pool) Name() string { return p.name }

// BufSize is the size of every buffer.
func (p *Pool) BufSize() int { return p.bufSize }

// Headroom is the headroom of a fresh buffer.
func (p *Pool) Headroom() int { return p.headroom }

// Cap is the number of buffers the pool owns.
func (p *Pool) Cap() int { return len(p.all) }

// InUse is the number of buffers handed out and not yet returned.
func (p *Pool) InUse() int { return p.Cap() - p.Avail() }

// Avail is the number of free buffers.
func (p *Pool) Avail() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.free)
}

// Get returns a fresh buffer (no data, default headroom, one reference), or
// nil when the pool is empty.
func (p *Pool) Get() *Mbuf {
	p.mu.Lock()
	n := len(p.free)
	if n == 0 {
		p.mu.Unlock()
		return nil
	}
	m := p.free[n-1]
	p.free = p.free[:n-1]
	p.mu.Unlock()
	p.init(m)
	return m
}

// GetBatch fills dst with fresh buffers and returns how many it got.
func (p *Pool) GetBatch(dst []*Mbuf) int {
	p.mu.Lock()
	n := min(len(dst), len(p.free))
	copy(dst, p.free[len(p.free)-n:])
	p.free = p.free[:len(p.free)-n]
	p.mu.Unlock()
	for _, m := range dst[:n] {
		p.init(m)
	}
	return n
}

// AllocPacket returns a chain of fresh buffers holding n bytes of
// (unwritten) data, the first with the pool's headroom and the rest full
// from their first byte, as xnu's mbuf_allocpacket does; nil when the pool
// has too few buffers (nothing is taken then) or n < 1.
func (p *Pool) AllocPacket(n int) *Mbuf {
	if n < 1 {
		return nil
	}
	need := 1
	if rest := n - (p.bufSize - p.headroom); rest > 0 {
		need += (rest + p.bufSize - 1) / p.bufSize
	}
	p.mu.Lock()
	if need > len(p.free) {
		p.mu.Unlock()
		return nil
	}
	// Link the chain under the lock: the free list's backing array is
	// written by the next put as soon as the lock is released.
	var head *Mbuf
	for i := 0; i < need; i++ {
		m := p.free[len(p.free)-1-i]
		m.next = head
		head = m
	}
	p.free = p.free[:len(p.free)-need]
	p.mu.Unlock()
	left := n
	for m := head; m != nil; m = m.next {
		next := m.next
		p.init(m)
		m.next = next
		if m != head {
			m.off = 0
		}
		m.n = min(left, len(m.buf)-m.off)
		left -= m.n
	}
	return head
}

func (p *Pool) init(m *Mbuf) {
	m.off, m.n, m.next = p.headroom, 0, nil
	m.ClearHolder()
	m.resetHdr()
	m.refs.Store(1)
}

func (p *Pool) put(m *Mbuf) {
	p.mu.Lock()
	p.free = append(p.free, m)
	p.mu.Unlock()
}

func (p *Pool) putBatch(ms []*Mbuf) {
	p.mu.Lock()
	p.free = append(p.free, ms...)
	p.mu.Unlock()
}
