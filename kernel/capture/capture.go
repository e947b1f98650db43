// Package capture records packets at the hooks' capture points (before
// and after each filter, with its verdict) into a fixed ring, and writes
// what it holds as pcapng: one pcapng interface per hook, Ethernet for the
// link-layer hooks and raw IP for the IP filters, each packet commented
// with the filter, the direction and the verdict.
//
//	r := capture.NewRing(1024, 256)
//	ifp.Capture(r)      // the interface's hooks
//	stack.CaptureIP(r)  // the IP filter chains
//	...
//	ifp.Capture(nil)
//	r.WritePcapng(f)
package capture

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Record is one captured packet.
type Record struct {
	Point hook.Point
	Time  time.Time
	// Data is the packet's first bytes (frame header, if the hook keeps
	// it apart, then data), at most the ring's snap length.
	Data []byte
	// Len is the packet's whole length.
	Len int
}

// Ring is a hook.Capturer keeping the newest records in memory allocated
// once: capturing copies at most snaplen bytes per packet under a lock,
// and allocates nothing.
type Ring struct {
	snap int

	mu sync.Mutex
	// +checklocks:mu
	recs []Record
	// +checklocks:mu
	next uint64 // records written, ever
}

var _ hook.Capturer = (*Ring)(nil)

// NewRing keeps the last n packets, snaplen bytes of each.
func NewRing(n, snaplen int) *Ring {
	r := &Ring{snap: max(snaplen, 1), recs: make([]Record, max(n, 1))}
	for i := range r.recs {
		r.recs[i].Data = make([]byte, 0, r.snap)
	}
	return r
}

// Capture implements hook.Capturer.
func (r *Ring) Capture(p hook.Point, frame []byte, m *mbuf.Mbuf) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	rec := &r.recs[r.next%uint64(len(r.recs))]
	r.next++
	fill(rec, r.snap, p, now, frame, m)
}

// Records returns copies of the records held, oldest first, and how many
// older ones the ring has overwritten.
func (r *Ring) Records() (recs []Record, lost uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := uint64(len(r.recs))
	first := uint64(0)
	if r.next > n {
		first = r.next - n
	}
	for i := first; i < r.next; i++ {
		rec := r.recs[i%n]
		rec.Data = append([]byte(nil), rec.Data...)
		recs = append(recs, rec)
	}
	return recs, first
}

// Comment describes a record's point for people: "vtnet0 filters in
// com.example.fw after: drop".
func Comment(p hook.Point) string {
	when := "before"
	if p.After {
		when = "after: " + p.Verdict.String()
	}
	return fmt.Sprintf("%s %s %s %s", p.Hook, p.Dir, p.Filter, when)
}

// WritePcapng writes the records as a pcapng section to w.
func (r *Ring) WritePcapng(w io.Writer) error {
	recs, _ := r.Records()
	return WritePcapng(w, recs, r.snap)
}

// WritePcapng writes recs as a pcapng section: an interface per hook and
// link type, in order of first appearance.
func WritePcapng(w io.Writer, recs []Record, snaplen int) error {
	type ifKey struct {
		hook string
		l3   bool
	}
	var nw *pcapgo.NgWriter
	ids := map[ifKey]int{}
	for _, rec := range recs {
		k := ifKey{rec.Point.Hook, rec.Point.L3}
		id, ok := ids[k]
		if !ok {
			intf := pcapgo.NgInterface{Name: k.hook, LinkType: layers.LinkTypeEthernet, SnapLength: uint32(snaplen)}
			if k.l3 {
				intf.LinkType = layers.LinkTypeRaw
				intf.Name += " (IP)"
			}
			var err error
			if nw == nil {
				nw, err = pcapgo.NewNgWriterInterface(w, intf, pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{Application: "nke-harness"}})
				id = 0
			} else {
				id, err = nw.AddInterface(intf)
			}
			if err != nil {
				return fmt.Errorf("capture: pcapng interface %s: %w", intf.Name, err)
			}
			ids[k] = id
		}
		ci := gopacket.CaptureInfo{Timestamp: rec.Time, CaptureLength: len(rec.Data), Length: rec.Len, InterfaceIndex: id}
		if err := nw.WritePacketWithOptions(ci, rec.Data, pcapgo.NgPacketOptions{Comments: []string{Comment(rec.Point)}}); err != nil {
			return fmt.Errorf("capture: pcapng packet: %w", err)
		}
	}
	if nw == nil {
		var err error
		if nw, err = pcapgo.NewNgWriter(w, layers.LinkTypeEthernet); err != nil {
			return fmt.Errorf("capture: pcapng: %w", err)
		}
	}
	return nw.Flush()
}
