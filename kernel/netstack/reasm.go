package netstack

import (
	"encoding/binary"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/nke-harness/nke/nke/mbuf"
)

// reassembler puts IPv4 and IPv6 fragments back together into whole
// datagrams (RFC 791 section 3.2, RFC 8200 section 4.5), within bounds:
// datagrams in progress at once, payload bytes held, fragments per
// datagram, and a timeout from a datagram's first fragment. Fragments are
// keyed by source, destination, id and protocol (the fragment header's
// Next Header for IPv6), and by family.
//
// Overlaps: a fragment that overlaps another of its datagram (RFC 5722 for
// IPv6; IPv4 is handled the same way, the overlapping-fragment attacks
// being the same) discards the datagram, and the datagram's key is
// remembered until its timeout so that its later fragments are discarded
// too. An exact duplicate (same offset and length) is dropped on its own:
// a retransmitted fragment is not an attack.
//
// Every fragment is counted once in Fragments and ends in one of: a
// reassembled datagram, a drop counted by its reason, or still held.
//
// Nothing here allocates: slots are a fixed array, pieces are mbuf chains.
// With copy set, each fragment's payload is copied into a chain from pool
// and the fragment freed at once (received fragments live in rx buffers,
// which must go back to the ring); without, the fragment's own chain is
// trimmed to its payload and held.
type reassembler struct {
	pool    *mbuf.Pool
	copy    bool
	timeout int64
	maxDg   int
	maxB    int
	now     func() int64

	mu sync.Mutex
	// +checklocks:mu
	slots []reasmSlot
	// +checklocks:mu
	held int // payload bytes held
	// +checklocks:mu
	nextDeadline int64

	inUse     atomic.Int32 // slots in use, read without the lock
	fragments atomic.Uint64
	datagrams atomic.Uint64
	timeouts  atomic.Uint64
	drops     [numReasmDrops]atomic.Uint64
}

// Reasons a fragment is dropped.
const (
	dropMalformed    = iota // bad lengths, not a multiple of 8, past 64 KiB, inconsistent end
	dropOverlap             // overlaps another fragment (the datagram goes too)
	dropDuplicate           // the same offset and length as one held
	dropNoSlot              // too many datagrams in progress
	dropTooManyFrags        // more fragments than a datagram may have
	dropMemory              // the byte bound was reached
	dropNoBufs              // the pool ran out
	dropTimeout             // its datagram timed out
	numReasmDrops
)

// maxPieces bounds the fragments of one datagram: a 64 KiB datagram at an
// MTU of 1280 takes 52.
const maxPieces = 64

// maxUnfrag bounds the part of the header each fragment repeats.
const maxUnfrag = maxParseHead - fragHdrLen

// ReasmConfig bounds a reassembler; zero fields take the defaults.
type ReasmConfig struct {
	// MaxDatagrams in progress at once (default 64).
	MaxDatagrams int
	// MaxBytes of fragment payload held (default 256 KiB).
	MaxBytes int
	// Timeout from a datagram's first fragment (default 30 s, gVisor's
	// and Linux's).
	Timeout time.Duration
}

func (c *ReasmConfig) defaults() {
	if c.MaxDatagrams <= 0 {
		c.MaxDatagrams = 64
	}
	if c.MaxBytes <= 0 {
		c.MaxBytes = 256 << 10
	}
	if c.Timeout <= 0 {
		c.Timeout = 30 * time.Second
	}
}

var epoch = time.Now()

func monotonic() int64 { return int64(time.Since(epoch)) }

type fragKey struct {
	src, dst [16]byte
	id       uint32
	proto    uint8
	v6       bool
}

type piece struct {
	off, end int // payload bytes [off, end) of the datagram
	m        *mbuf.Mbuf
}

type reasmSlot struct {
	used     bool
	dead     bool // discarded (overlap): later fragments are dropped
	key      fragKey
	deadline int64
	n        int
	pieces   [maxPieces]piece
	total    int // payload length, -1 until the last fragment
	held     int
	// From the first fragment (offset 0): the header every fragment
	// repeats, where IPv6's Next Header to patch is, the frame header.
	hdrLen  int
	hdr     [maxUnfrag]byte
	nhOff   int
	fragNH  uint8
	link    [ethHdrLen]byte
	hasLink bool
	flags   mbuf.Flags
	rcvIf   uint16
}

func newReassembler(pool *mbuf.Pool, copy bool, cfg ReasmConfig) *reassembler {
	cfg.defaults()
	r := &reassembler{pool: pool, copy: copy, timeout: int64(cfg.Timeout), maxDg: cfg.MaxDatagrams,
		maxB: cfg.MaxBytes, now: monotonic}
	r.slots = make([]reasmSlot, cfg.MaxDatagrams)
	r.nextDeadline = math.MaxInt64
	return r
}

// ReasmStats count a reassembler's work.
type ReasmStats struct {
	Fragments   uint64 `json:"fragments"`
	Reassembled uint64 `json:"reassembled"`
	Timeouts    uint64 `json:"timeouts"`
	InProgress  uint64 `json:"in_progress"`
	// Fragments dropped, by reason.
	DropMalformed    uint64 `json:"drop_malformed"`
	DropOverlap      uint64 `json:"drop_overlap"`
	DropDuplicate    uint64 `json:"drop_duplicate"`
	DropNoSlot       uint64 `json:"drop_too_many_datagrams"`
	DropTooManyFrags uint64 `json:"drop_too_many_fragments"`
	DropMemory       uint64 `json:"drop_memory"`
	DropNoBufs       uint64 `json:"drop_no_bufs"`
	DropTimeout      uint64 `json:"drop_timeout"`
}

// Dropped sums the drops.
func (s ReasmStats) Dropped() uint64 {
	return s.DropMalformed + s.DropOverlap + s.DropDuplicate + s.DropNoSlot + s.DropTooManyFrags +
		s.DropMemory + s.DropNoBufs + s.DropTimeout
}

func (r *reassembler) stats() ReasmStats {
	d := func(i int) uint64 { return r.drops[i].Load() }
	return ReasmStats{
		Fragments: r.fragments.Load(), Reassembled: r.datagrams.Load(), Timeouts: r.timeouts.Load(),
		InProgress:    uint64(r.inUse.Load()),
		DropMalformed: d(dropMalformed), DropOverlap: d(dropOverlap), DropDuplicate: d(dropDuplicate),
		DropNoSlot: d(dropNoSlot), DropTooManyFrags: d(dropTooManyFrags), DropMemory: d(dropMemory),
		DropNoBufs: d(dropNoBufs), DropTimeout: d(dropTimeout),
	}
}

// pending reports whether datagrams are in progress.
func (r *reassembler) pending() bool { return r.inUse.Load() > 0 }

// add takes fragment m (data at its IP header, in parsed by parseIP with
// in.frag set) and returns the whole datagram when m completed one (data
// at the IP header, the first fragment's frame header in the headroom
// before it, flags and receiving interface of the first fragment), nil
// otherwise. m is consumed either way. link, if not nil, is m's frame
// header.
func (r *reassembler) add(m *mbuf.Mbuf, in *ipInfo, link *[ethHdrLen]byte) *mbuf.Mbuf {
	r.fragments.Add(1)
	payLen := in.totalLen - in.payOff
	end := in.fragOff + payLen
	// The reassembled datagram's length must fit its header's field:
	// IPv4's total length, IPv6's payload length.
	fixed := in.hdrLen
	if in.v6 {
		fixed = in.unfrag - ipv6HdrLen
	}
	if payLen <= 0 || (in.more && payLen%8 != 0) || in.unfrag > maxUnfrag || fixed+end > maxIPPacket {
		r.drop(m, dropMalformed)
		return nil
	}
	key := fragKey{src: in.src, dst: in.dst, id: in.id, v6: in.v6, proto: in.proto}
	if in.v6 {
		key.proto = in.fragNH
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if now >= r.nextDeadline {
		r.expireLocked(now)
	}
	s := r.findLocked(&key)
	if s == nil {
		if s = r.newSlotLocked(&key, now); s == nil {
			r.drop(m, dropNoSlot)
			return nil
		}
	}
	if s.dead {
		r.drop(m, dropOverlap)
		return nil
	}
	// Where it goes, and whether it fits with what is held.
	at := s.n
	for i := 0; i < s.n; i++ {
		p := &s.pieces[i]
		if in.fragOff == p.off && end == p.end {
			r.drop(m, dropDuplicate)
			return nil
		}
		if in.fragOff < p.end && end > p.off {
			r.drop(m, dropOverlap)
			r.killLocked(s, dropOverlap, true)
			return nil
		}
		if p.off > in.fragOff && at == s.n {
			at = i
		}
	}
	switch {
	case !in.more && s.total >= 0 && s.total != end, // a second, different end
		!in.more && s.n > 0 && s.pieces[s.n-1].end > end, // data past the end
		in.more && s.total >= 0 && end > s.total:
		r.drop(m, dropMalformed)
		r.killLocked(s, dropMalformed, false)
		return nil
	case s.n == maxPieces:
		r.drop(m, dropTooManyFrags)
		r.killLocked(s, dropTooManyFrags, false)
		return nil
	case r.held+payLen > r.maxB:
		r.drop(m, dropMemory)
		r.killLocked(s, dropMemory, false)
		return nil
	}
	if in.fragOff == 0 {
		// The first fragment's header is the datagram's.
		n := m.CopyOut(s.hdr[:in.unfrag])
		if n != in.unfrag {
			r.drop(m, dropMalformed)
			return nil
		}
		s.hdrLen, s.nhOff, s.fragNH = in.unfrag, in.nhOff, in.fragNH
		s.flags, s.rcvIf = m.Flags, m.RcvIf
		if link != nil {
			s.link, s.hasLink = *link, true
		}
	}
	var pm *mbuf.Mbuf
	if r.copy {
		if pm = r.pool.AllocPacket(payLen); pm == nil {
			r.drop(m, dropNoBufs)
			return nil
		}
		copyRange(pm, 0, m, in.payOff, payLen)
		if in.fragOff == 0 {
			mbuf.CopyPktHdr(pm, m) // tags and all, for the datagram
		}
		m.Free()
	} else {
		var hdr *mbuf.Mbuf
		if in.fragOff == 0 && m.Len() <= in.payOff {
			// trimChain frees the head: keep its packet header.
			if hdr = r.pool.Get(); hdr != nil {
				mbuf.CopyPktHdr(hdr, m)
			}
		}
		pm = trimChain(m, in.payOff, payLen)
		if hdr != nil {
			mbuf.CopyPktHdr(pm, hdr)
			hdr.Free()
		}
	}
	copy(s.pieces[at+1:s.n+1], s.pieces[at:s.n])
	s.pieces[at] = piece{off: in.fragOff, end: end, m: pm}
	s.n++
	s.held += payLen
	r.held += payLen
	if !in.more {
		s.total = end
	}
	if s.total < 0 || s.hdrLen == 0 || s.held != s.total {
		return nil
	}
	return r.completeLocked(s)
}

func (r *reassembler) drop(m *mbuf.Mbuf, reason int) {
	m.Free()
	r.drops[reason].Add(1)
}

// +checklocks:r.mu
func (r *reassembler) findLocked(k *fragKey) *reasmSlot {
	for i := range r.slots {
		if s := &r.slots[i]; s.used && s.key == *k {
			return s
		}
	}
	return nil
}

// +checklocks:r.mu
func (r *reassembler) newSlotLocked(k *fragKey, now int64) *reasmSlot {
	for i := range r.slots {
		if s := &r.slots[i]; !s.used {
			s.used, s.dead, s.key, s.n, s.total, s.held, s.hdrLen, s.hasLink = true, false, *k, 0, -1, 0, 0, false
			s.deadline = now + r.timeout
			r.nextDeadline = min(r.nextDeadline, s.deadline)
			r.inUse.Add(1)
			return s
		}
	}
	return nil
}

// killLocked frees what s holds, counting its fragments as dropped for
// reason; with keep the slot stays (dead) until its deadline.
//
// +checklocks:r.mu
func (r *reassembler) killLocked(s *reasmSlot, reason int, keep bool) {
	for i := 0; i < s.n; i++ {
		s.pieces[i].m.Free()
		s.pieces[i].m = nil
	}
	r.drops[reason].Add(uint64(s.n))
	r.held -= s.held
	s.n, s.held = 0, 0
	if keep {
		s.dead = true
		return
	}
	r.freeSlotLocked(s)
}

// +checklocks:r.mu
func (r *reassembler) freeSlotLocked(s *reasmSlot) {
	s.used = false
	r.inUse.Add(-1)
}

// expireLocked discards the datagrams whose time is up.
//
// +checklocks:r.mu
func (r *reassembler) expireLocked(now int64) {
	next := int64(math.MaxInt64)
	for i := range r.slots {
		s := &r.slots[i]
		if !s.used {
			continue
		}
		if s.deadline <= now {
			if !s.dead {
				r.timeouts.Add(1)
			}
			r.killLocked(s, dropTimeout, false)
			continue
		}
		next = min(next, s.deadline)
	}
	r.nextDeadline = next
}

// expire discards the datagrams whose time is up; the data path calls it
// once per burst when a deadline may have passed.
func (r *reassembler) expire() {
	if !r.pending() {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := r.now(); now >= r.nextDeadline {
		r.expireLocked(now)
	}
}

// flush discards everything held (counted as timeouts), as at shutdown.
func (r *reassembler) flush() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expireLocked(math.MaxInt64)
}

// completeLocked builds s's datagram: a buffer for the header, then the
// pieces in order.
//
// +checklocks:r.mu
func (r *reassembler) completeLocked(s *reasmSlot) *mbuf.Mbuf {
	h := r.pool.Get()
	if h == nil {
		r.killLocked(s, dropNoBufs, false)
		return nil
	}
	b, ok := h.Append(s.hdrLen)
	if !ok {
		h.Free()
		r.killLocked(s, dropNoBufs, false)
		return nil
	}
	copy(b, s.hdr[:s.hdrLen])
	if s.key.v6 {
		binary.BigEndian.PutUint16(b[4:], uint16(s.hdrLen-ipv6HdrLen+s.total))
		b[s.nhOff] = s.fragNH
	} else {
		ip := header.IPv4(b)
		ip.SetTotalLength(uint16(s.hdrLen + s.total))
		ip.SetFlagsFragmentOffset(ip.Flags()&header.IPv4FlagDontFragment, 0)
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	if s.hasLink {
		if p, ok := h.Prepend(ethHdrLen); ok {
			copy(p, s.link[:])
			h.Adj(ethHdrLen)
		}
	}
	// The datagram's packet header (flags, receiving interface, tags)
	// is the first fragment's, as the first piece kept it.
	mbuf.CopyPktHdr(h, s.pieces[0].m)
	h.Flags, h.RcvIf = s.flags, s.rcvIf
	if s.hasLink {
		h.SetFrameHeader(-ethHdrLen)
	} else {
		h.ClearFrameHeader()
	}
	tail := h
	for i := 0; i < s.n; i++ {
		tail.SetNext(s.pieces[i].m)
		tail = last(s.pieces[i].m)
		s.pieces[i].m = nil
	}
	r.held -= s.held
	s.n, s.held = 0, 0
	r.freeSlotLocked(s)
	r.datagrams.Add(1)
	return h
}

func last(m *mbuf.Mbuf) *mbuf.Mbuf {
	for m.Next() != nil {
		m = m.Next()
	}
	return m
}

// copyRange copies n bytes of src's packet from byte off into dst's
// packet from byte at.
func copyRange(dst *mbuf.Mbuf, at int, src *mbuf.Mbuf, off, n int) {
	k := 0
	for b := src; b != nil && k < n; b = b.Next() {
		d := b.Bytes()
		if off >= len(d) {
			off -= len(d)
			continue
		}
		d = d[off:]
		off = 0
		if len(d) > n-k {
			d = d[:n-k]
		}
		k += dst.CopyBack(at+k, d)
	}
}

// trimChain cuts m's packet to its n bytes from byte off, freeing the
// buffers that end up empty, and returns the new first buffer.
func trimChain(m *mbuf.Mbuf, off, n int) *mbuf.Mbuf {
	for m.Len() <= off && m.Next() != nil {
		off -= m.Len()
		next := m.Next()
		m.SetNext(nil)
		m.Free()
		m = next
	}
	m.Adj(off)
	k := 0
	for b := m; b != nil; b = b.Next() {
		if k+b.Len() >= n {
			b.Trim(b.Len() - (n - k))
			if rest := b.Next(); rest != nil {
				b.SetNext(nil)
				rest.Free()
			}
			break
		}
		k += b.Len()
	}
	return m
}
