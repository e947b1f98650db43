package hook

import (
	"sync/atomic"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Capture points: every chain can have a capturer that sees each packet
// before and after each filter, with the verdict. With none set (the
// normal case) a dispatch loop pays one atomic load per burst.

// Dir is the direction a packet travels through a hook.
type Dir uint8

const (
	In Dir = iota
	Out
)

func (d Dir) String() string {
	if d == Out {
		return "out"
	}
	return "in"
}

// Point says where a packet was seen.
type Point struct {
	Hook   string // the chain's name ("vtnet0 filters")
	Filter string // the filter about to run or that just ran
	Dir    Dir
	// L3 is set where packets start at the IP header (the IP filter
	// chains); elsewhere they are Ethernet frames.
	L3 bool
	// After is set once the filter has run; Verdict is then its verdict.
	After   bool
	Verdict nke.Verdict
}

// Capturer receives captured packets. frame is the link header when the
// hook keeps it apart from m (input filters, protocols), else nil; both
// are valid during the call only. It runs on the data path: it must not
// block.
type Capturer interface {
	Capture(p Point, frame []byte, m *mbuf.Mbuf)
}

type capturerBox struct{ c Capturer }

// SetCapturer starts capturing on the chain (nil stops).
func (c *Chain[F]) SetCapturer(cp Capturer) {
	if cp == nil {
		c.capture.Store(nil)
		return
	}
	c.capture.Store(&capturerBox{cp})
}

// Capturer is the chain's capturer, or nil: a dispatch loop reads it once
// per burst.
func (c *Chain[F]) Capturer() Capturer {
	if b := c.capture.Load(); b != nil {
		return b.c
	}
	return nil
}

// captureSlot keeps the chain's capturer.
type captureSlot = atomic.Pointer[capturerBox]
