package hook

import (
	"sync/atomic"

	"github.com/nke-harness/nke/nke"
)

// Lanes: each poll loop counts on a lane of its own, so that its counters
// share no cache line with another writer's; goroutines that are not a
// poll loop (the stack's timers and senders) share SharedLane.
const (
	MaxLanes   = 4
	SharedLane = MaxLanes - 1
)

// SampleEvery is how often (in calls) a dispatch loop times a filter.
const SampleEvery = 64

// Stats are one filter's counters, always on. A dispatch loop adds a
// burst's worth at a time with Add; Read sums the lanes.
type Stats struct {
	lanes     [MaxLanes]lane
	faults    atomic.Uint64
	reclaimed atomic.Uint64 // swallowed packets freed at detach
}

type lane struct {
	packets  atomic.Uint64
	bytes    atomic.Uint64
	verdicts [nke.NumVerdicts]atomic.Uint64
	sampled  atomic.Uint64 // packets in timed calls
	ns       atomic.Uint64 // their time
	_        [64]byte      // keep the next lane off this one's cache line
}

// Burst is what a dispatch loop counted for one filter over one burst.
type Burst struct {
	Packets, Bytes uint64
	Verdicts       [nke.NumVerdicts]uint64
}

// Add records a burst on lane l (0 to MaxLanes-1): two atomic adds, and
// one more for each of swallow and drop that happened. Continue is what
// the others leave, derived by Read.
func (s *Stats) Add(l int, b *Burst) {
	ln := &s.lanes[l]
	ln.packets.Add(b.Packets)
	ln.bytes.Add(b.Bytes)
	for v := nke.Continue + 1; v < nke.NumVerdicts; v++ {
		if n := b.Verdicts[v]; n != 0 {
			ln.verdicts[v].Add(n)
		}
	}
}

// AddSample records a timed call of the filter over packets packets.
func (s *Stats) AddSample(l int, packets, ns uint64) {
	ln := &s.lanes[l]
	ln.sampled.Add(packets)
	ln.ns.Add(ns)
}

// Counters are a filter's counters summed over the lanes.
type Counters struct {
	Packets  uint64 `json:"packets"`
	Bytes    uint64 `json:"bytes"`
	Continue uint64 `json:"continue"`
	Swallow  uint64 `json:"swallow"`
	Drop     uint64 `json:"drop"`
	Faults   uint64 `json:"faults"`
	// Reclaimed counts packets the filter swallowed and still held when
	// it was detached, freed by the kernel.
	Reclaimed uint64 `json:"reclaimed,omitempty"`
	// NsPerPacket is the sampled cost of the filter per packet.
	NsPerPacket float64 `json:"ns_per_packet"`
}

// Read sums the lanes. Safe from any goroutine.
func (s *Stats) Read() Counters {
	var c Counters
	var sampled, ns uint64
	for i := range s.lanes {
		ln := &s.lanes[i]
		// Verdicts before packets: a writer adds packets first, so
		// what is read here never has more stopped than counted.
		sw, dr := ln.verdicts[nke.Swallow].Load(), ln.verdicts[nke.Drop].Load()
		p := ln.packets.Load()
		c.Packets += p
		c.Bytes += ln.bytes.Load()
		c.Swallow += sw
		c.Drop += dr
		c.Continue += p - sw - dr
		sampled += ln.sampled.Load()
		ns += ln.ns.Load()
	}
	c.Faults = s.faults.Load()
	c.Reclaimed = s.reclaimed.Load()
	if sampled > 0 {
		c.NsPerPacket = float64(ns) / float64(sampled)
	}
	return c
}
