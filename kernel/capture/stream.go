package capture

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Match selects the capture points of one hook: every point, or only the
// point before (Before) or after (After) one filter.
type Match struct {
	Hook   string
	Before string
	After  string
}

// Matches reports whether p is one of m's points.
func (m Match) Matches(p hook.Point) bool {
	switch {
	case p.Hook != m.Hook:
		return false
	case m.Before != "":
		return !p.After && p.Filter == m.Before
	case m.After != "":
		return p.After && p.Filter == m.After
	}
	return true
}

// Stream is a Capturer for one live reader (nkectl capture): matching
// packets are copied, at most snaplen bytes each, into a ring allocated
// once, and WritePcapng sends them on as they come. The data path never
// waits: when the reader falls behind, the newest packets are dropped
// and counted (Lost).
type Stream struct {
	match Match
	snap  int
	wake  chan struct{}
	lost  atomic.Uint64

	mu sync.Mutex
	// +checklocks:mu
	recs []Record
	// +checklocks:mu
	head uint64 // next record to read
	// +checklocks:mu
	tail uint64 // next record to write
}

var _ hook.Capturer = (*Stream)(nil)

// NewStream queues up to n matching packets, snaplen bytes of each.
func NewStream(m Match, n, snaplen int) *Stream {
	s := &Stream{match: m, snap: max(snaplen, 1), wake: make(chan struct{}, 1), recs: make([]Record, max(n, 1))}
	for i := range s.recs {
		s.recs[i].Data = make([]byte, 0, s.snap)
	}
	return s
}

// Lost is how many matching packets the ring had no room for.
func (s *Stream) Lost() uint64 { return s.lost.Load() }

// Capture implements hook.Capturer.
func (s *Stream) Capture(p hook.Point, frame []byte, m *mbuf.Mbuf) {
	if !s.match.Matches(p) {
		return
	}
	now := time.Now()
	s.mu.Lock()
	if s.tail-s.head == uint64(len(s.recs)) {
		s.mu.Unlock()
		s.lost.Add(1)
		return
	}
	rec := &s.recs[s.tail%uint64(len(s.recs))]
	s.tail++
	fill(rec, s.snap, p, now, frame, m)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// fill copies a packet into rec.
func fill(rec *Record, snap int, p hook.Point, now time.Time, frame []byte, m *mbuf.Mbuf) {
	rec.Point, rec.Time = p, now
	n := min(len(frame), snap)
	rec.Data = append(rec.Data[:0], frame[:n]...)
	rec.Len = len(frame)
	if m != nil {
		rec.Len += m.PktLen()
		if k := snap - n; k > 0 {
			rec.Data = rec.Data[:n+min(k, m.PktLen())]
			m.CopyOut(rec.Data[n:])
		}
	}
}

// take moves the queued records into out (reusing its buffers) and
// returns them.
func (s *Stream) take(out []Record) []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	out = out[:0]
	for ; s.head < s.tail; s.head++ {
		r := &s.recs[s.head%uint64(len(s.recs))]
		var data []byte
		if k := len(out); k < cap(out) {
			data = out[:k+1][k].Data[:0]
		}
		out = append(out, Record{Point: r.Point, Time: r.Time, Len: r.Len, Data: append(data, r.Data...)})
	}
	return out
}

// WritePcapng writes a pcapng section to w: its header and the hook's
// interface at once (raw IP when l3, else Ethernet), then each packet as
// it comes, commented with the filter, direction and verdict, until ctx
// ends, count packets were written (0: no limit) or w fails. A ctx that
// ends is not an error.
func (s *Stream) WritePcapng(ctx context.Context, w io.Writer, l3 bool, count int) error {
	intf := pcapgo.NgInterface{Name: s.match.Hook, LinkType: layers.LinkTypeEthernet, SnapLength: uint32(s.snap)}
	if l3 {
		intf.LinkType = layers.LinkTypeRaw
	}
	nw, err := pcapgo.NewNgWriterInterface(w, intf, pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{Application: "nke-harness"}})
	if err != nil {
		return fmt.Errorf("capture: pcapng: %w", err)
	}
	if err := nw.Flush(); err != nil {
		return fmt.Errorf("capture: pcapng: %w", err)
	}
	var batch []Record
	written := 0
	for {
		batch = s.take(batch)
		for _, rec := range batch {
			ci := gopacket.CaptureInfo{Timestamp: rec.Time, CaptureLength: len(rec.Data), Length: rec.Len}
			if err := nw.WritePacketWithOptions(ci, rec.Data, pcapgo.NgPacketOptions{Comments: []string{Comment(rec.Point)}}); err != nil {
				return fmt.Errorf("capture: pcapng packet: %w", err)
			}
			if written++; count > 0 && written == count {
				return nw.Flush()
			}
		}
		if len(batch) > 0 {
			if err := nw.Flush(); err != nil {
				return fmt.Errorf("capture: pcapng: %w", err)
			}
		}
		select {
		case <-s.wake:
		case <-ctx.Done():
			return nil
		}
	}
}

// Tee hands every packet to each of its capturers, so that several
// readers capture at once (a chain has one capturer).
type Tee struct {
	cs atomic.Pointer[[]hook.Capturer]
	mu sync.Mutex // serialises Add and remove
}

var _ hook.Capturer = (*Tee)(nil)

// Capture implements hook.Capturer.
func (t *Tee) Capture(p hook.Point, frame []byte, m *mbuf.Mbuf) {
	if cs := t.cs.Load(); cs != nil {
		for _, c := range *cs {
			c.Capture(p, frame, m)
		}
	}
}

// Len is the number of capturers.
func (t *Tee) Len() int {
	if cs := t.cs.Load(); cs != nil {
		return len(*cs)
	}
	return 0
}

// Add adds c and returns the function that removes it (once) and the
// number of capturers before and after.
func (t *Tee) Add(c hook.Capturer) (remove func() (left int), before int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var cur []hook.Capturer
	if p := t.cs.Load(); p != nil {
		cur = *p
	}
	next := append(append([]hook.Capturer(nil), cur...), c)
	t.cs.Store(&next)
	var once sync.Once
	left := 0
	return func() int {
		once.Do(func() {
			t.mu.Lock()
			defer t.mu.Unlock()
			var out []hook.Capturer
			for _, x := range *t.cs.Load() {
				if x != c {
					out = append(out, x)
				}
			}
			if len(out) == 0 {
				t.cs.Store(nil)
			} else {
				t.cs.Store(&out)
			}
			left = len(out)
		})
		return left
	}, len(cur)
}
