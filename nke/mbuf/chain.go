package mbuf

import (
	"errors"
	"math"
)

// Chain operation errors. On error nothing has changed.
var (
	ErrRange     = errors.New("mbuf: offset or length outside the packet")
	ErrShared    = errors.New("mbuf: packet is shared and cannot be changed in place")
	ErrNoBuffers = errors.New("mbuf: pool has too few free buffers")
	ErrNoPool    = errors.New("mbuf: operation needs a pool")
	ErrBufSize   = errors.New("mbuf: data does not fit in a buffer of the pool")
)

// LeadingSpace is the headroom that may be written: the free space before
// the data, 0 when the buffer is shared (xnu mbuf_leadingspace; writing
// needs exclusive ownership).
func (m *Mbuf) LeadingSpace() int {
	if m.refs.Load() > 1 {
		return 0
	}
	return m.off
}

// TrailingSpace is the tailroom that may be written, 0 when the buffer is
// shared (xnu mbuf_trailingspace).
func (m *Mbuf) TrailingSpace() int {
	if m.refs.Load() > 1 {
		return 0
	}
	return m.Tailroom()
}

// Last is the last buffer of the chain.
func (m *Mbuf) Last() *Mbuf {
	for m.next != nil {
		m = m.next
	}
	return m
}

// Pullup makes the first n bytes of the packet contiguous in its first
// buffer, moving bytes from later buffers and freeing buffers it empties
// (xnu mbuf_pullup, which allocates where this slides the data towards
// the front of the buffer, frame header with it, when the tailroom is
// short). It reports false, changing nothing, when n < 0, the packet is
// shorter than n, the buffer is smaller than n, or a move is needed and
// the chain is shared.
func (m *Mbuf) Pullup(n int) bool {
	if n < 0 {
		return false
	}
	if n <= m.n {
		return true
	}
	if n > len(m.buf) || m.PktLen() < n || m.Shared() {
		return false
	}
	if m.off+n > len(m.buf) {
		d := m.off + n - len(m.buf)
		start := m.off
		fh := int(m.hdr.frame) - 1
		if fh >= 0 && fh < m.off && fh >= d {
			start = fh
		} else {
			m.hdr.frame = 0
		}
		copy(m.buf[start-d:], m.buf[start:m.off+m.n])
		m.off -= d
		if m.hdr.frame != 0 {
			m.hdr.frame -= int32(d)
		}
	}
	for m.n < n {
		b := m.next
		k := copy(m.buf[m.off+m.n:m.off+n], b.Bytes())
		m.n += k
		b.off += k
		b.n -= k
		if b.n == 0 {
			m.next = b.next
			b.next = nil
			b.Free()
		}
	}
	return true
}

// CopyData copies len(dst) bytes of the packet starting at byte off into
// dst (xnu mbuf_copydata). It returns ErrRange, copying nothing, unless
// the whole range is in the packet.
func (m *Mbuf) CopyData(off int, dst []byte) error {
	if off < 0 || off > m.PktLen()-len(dst) {
		return ErrRange
	}
	for b := m; b != nil && len(dst) > 0; b = b.next {
		if off >= b.n {
			off -= b.n
			continue
		}
		k := copy(dst, b.buf[b.off+off:b.off+b.n])
		dst = dst[k:]
		off = 0
	}
	return nil
}

// AdjPkt trims n bytes from the front of the packet when n > 0 and -n
// bytes from its end when n < 0, across buffers (xnu mbuf_adj). Buffers
// it empties stay in the chain with no data; the first keeps the packet
// header. It reports false, changing nothing, when the packet is shorter
// than |n| or the chain is shared.
func (m *Mbuf) AdjPkt(n int) bool {
	if n == 0 {
		return true
	}
	if n == math.MinInt || m.Shared() {
		return false
	}
	total := m.PktLen()
	if n > 0 {
		if n > total {
			return false
		}
		for b := m; n > 0; b = b.next {
			k := min(n, b.n)
			b.off += k
			b.n -= k
			n -= k
		}
		return true
	}
	if -n > total {
		return false
	}
	keep, cum := total+n, 0
	for b := m; b != nil; b = b.next {
		if cum+b.n > keep {
			b.n = max(0, keep-cum)
		}
		cum += b.n
	}
	return true
}

// PrependPkt grows the packet by n bytes at the front (xnu mbuf_prepend)
// and returns its first buffer, whose first n bytes of data are the new
// (unwritten) ones. It uses the first buffer's leading space when there
// is enough; otherwise it links a buffer from pool in front, with the new
// bytes at its end so that later prepends find room, and moves the packet
// header to it (the frame header is dropped). The caller must continue
// with the returned buffer. On error m is unchanged.
func (m *Mbuf) PrependPkt(n int, pool *Pool) (*Mbuf, error) {
	if n < 0 {
		return nil, ErrRange
	}
	if n <= m.LeadingSpace() {
		m.off -= n
		m.n += n
		return m, nil
	}
	if pool == nil {
		return nil, ErrNoPool
	}
	if n > pool.bufSize {
		return nil, ErrBufSize
	}
	nb := pool.Get()
	if nb == nil {
		return nil, ErrNoBuffers
	}
	nb.off, nb.n = len(nb.buf)-n, n
	m.moveHdr(nb)
	nb.next = m
	return nb, nil
}

// Split cuts the packet at byte off (xnu mbuf_split): m keeps [0, off)
// and its packet header, tags included, and the rest is returned as a new
// packet with RcvIf copied and an otherwise empty header. When off falls
// inside a buffer the bytes after it are copied into a buffer from pool.
// It returns ErrRange unless 0 < off < PktLen, ErrShared for a shared
// chain, and ErrNoPool, ErrNoBuffers or ErrBufSize when a buffer is needed
// and cannot be had; m is unchanged then.
func (m *Mbuf) Split(off int, pool *Pool) (*Mbuf, error) {
	if off <= 0 || off >= m.PktLen() {
		return nil, ErrRange
	}
	if m.Shared() {
		return nil, ErrShared
	}
	b := m
	for off > b.n {
		off -= b.n
		b = b.next
	}
	var rest *Mbuf
	if off == b.n {
		// On a boundary: skip empty buffers so the head keeps them.
		rest = b.next
		for rest.n == 0 {
			b, rest = rest, rest.next
		}
		rest.resetHdr()
	} else {
		t := b.n - off
		if pool == nil {
			return nil, ErrNoPool
		}
		if t > pool.bufSize {
			return nil, ErrBufSize
		}
		rest = pool.Get()
		if rest == nil {
			return nil, ErrNoBuffers
		}
		rest.off = min(rest.off, len(rest.buf)-t)
		rest.n = copy(rest.buf[rest.off:rest.off+t], b.buf[b.off+off:b.off+b.n])
		rest.next = b.next
		b.n = off
	}
	b.next = nil
	rest.RcvIf = m.RcvIf
	return rest, nil
}

// Dup returns a deep copy of the packet in buffers from pool (xnu
// mbuf_dup): the data, compacted into as few buffers as the pool's
// geometry allows, and the packet header with its tags, as CopyPktHdr
// copies it. The next-packet link is not copied. It returns ErrNoBuffers,
// taking nothing, when the pool has too few buffers.
func (m *Mbuf) Dup(pool *Pool) (*Mbuf, error) {
	d, err := m.copyRange(0, m.PktLen(), pool)
	if err != nil {
		return nil, err
	}
	CopyPktHdr(d, m)
	return d, nil
}

// Copy returns a new packet in buffers from pool holding bytes
// [off, off+n) of this one (xnu mbuf_copym). As in xnu the packet header
// (tags included) is copied only when off is 0. It returns ErrRange
// unless the range is in the packet and ErrNoBuffers, taking nothing, when
// the pool has too few buffers.
func (m *Mbuf) Copy(off, n int, pool *Pool) (*Mbuf, error) {
	if off < 0 || n < 0 || off > m.PktLen()-n {
		return nil, ErrRange
	}
	c, err := m.copyRange(off, n, pool)
	if err != nil {
		return nil, err
	}
	if off == 0 {
		CopyPktHdr(c, m)
	}
	return c, nil
}

func (m *Mbuf) copyRange(off, n int, pool *Pool) (*Mbuf, error) {
	if pool == nil {
		return nil, ErrNoPool
	}
	var c *Mbuf
	if n == 0 {
		c = pool.Get()
	} else {
		c = pool.AllocPacket(n)
	}
	if c == nil {
		return nil, ErrNoBuffers
	}
	for b := c; b != nil; b = b.next {
		if err := m.CopyData(off, b.Bytes()); err != nil {
			panic("mbuf: copyRange: " + err.Error()) // the range was checked
		}
		off += b.n
	}
	return c, nil
}
