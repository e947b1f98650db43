// Package ethlog is an example interface filter (Apple's data-link NKE):
// it records every frame that crosses an interface, in and out, without
// changing or stopping any.
//
// It demonstrates the interface-filter KPI: one value implementing
// FilterInput (a packet at its network header, the link header beside it)
// and FilterOutput (a whole frame), attached for every protocol, and
// data-path code that allocates nothing: records go into a fixed ring that
// a reader drains at its own pace (Lines), so a burst of traffic costs a
// copy of a few header fields per frame, never a log write on the poll
// loop.
//
//	log := ethlog.New(256)
//	a, err := ifp.AttachFilter(log.Spec())
//	...
//	for _, l := range log.Lines() { fmt.Println(l) }
package ethlog

import (
	"fmt"
	"net"
	"time"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/logring"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Name is the filter's name on an interface.
const Name = "com.example.ethlog"

// Record is one frame seen.
type Record struct {
	Out      bool // sent (output) rather than received
	Src, Dst [6]byte
	Type     uint16 // EtherType (or 802.3 length)
	Len      int    // bytes of the whole frame
	If       uint16 // interface index
}

func (r Record) String() string {
	dir := "in "
	if r.Out {
		dir = "out"
	}
	return fmt.Sprintf("%s if%d %s > %s type %#04x len %d", dir, r.If,
		net.HardwareAddr(r.Src[:]), net.HardwareAddr(r.Dst[:]), r.Type, r.Len)
}

// Logger is the filter. Its callbacks run on the poll loop; Lines and
// Records may be called from any goroutine.
type Logger struct {
	ring *logring.Ring[Record]
}

// New returns a logger keeping the last size records.
func New(size int) *Logger { return &Logger{ring: logring.New[Record](size)} }

// Spec is the spec to attach it with, for every protocol.
func (l *Logger) Spec() nke.InterfaceFilterSpec {
	return nke.InterfaceFilterSpec{Name: Name, Filter: l}
}

func (l *Logger) add(r Record) { l.ring.Add(r) }

// FilterInput implements nke.InputFilter.
func (l *Logger) FilterInput(ifp nke.Interface, proto uint16, m **mbuf.Mbuf, frame []byte) nke.Verdict {
	r := Record{Type: proto, Len: len(frame) + (*m).PktLen(), If: ifp.Index()}
	if len(frame) >= 12 {
		copy(r.Dst[:], frame[0:6])
		copy(r.Src[:], frame[6:12])
	}
	l.add(r)
	return nke.Continue
}

// FilterOutput implements nke.OutputFilter.
func (l *Logger) FilterOutput(ifp nke.Interface, proto uint16, m **mbuf.Mbuf) nke.Verdict {
	r := Record{Out: true, Type: proto, Len: (*m).PktLen(), If: ifp.Index()}
	var hdr [12]byte
	if (*m).CopyOut(hdr[:]) == len(hdr) {
		copy(r.Dst[:], hdr[0:6])
		copy(r.Src[:], hdr[6:12])
	}
	l.add(r)
	return nke.Continue
}

// Records returns the records not read yet, oldest first, and how many
// were lost because the ring wrapped before they were read.
func (l *Logger) Records() (recs []Record, lost uint64) { return l.ring.Records() }

// Lines formats Records, one line each, with a line saying how many were
// lost if any were.
func (l *Logger) Lines() []string { return l.ring.Lines() }

// Module starts the logger on every interface. With args "print" it
// writes what it recorded to the guest's log twice a second; otherwise it
// only keeps the last 256 records.
var Module = nke.Module{
	Name: "ethlog",
	ID:   Name,
	Doc:  "records every frame in and out of each interface",
	Start: func(k nke.Kernel, args string) (func() error, error) {
		var d nke.Detacher
		l := New(256)
		for _, link := range k.Links() {
			a, err := link.AttachFilter(l.Spec())
			if err != nil {
				d.DetachAll()
				return nil, err
			}
			d.Add(a)
		}
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			if args != "print" {
				<-stop
				return
			}
			t := time.NewTicker(500 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					for _, line := range l.Lines() {
						k.Logf("%s", line)
					}
				}
			}
		}()
		return func() error {
			d.DetachAll()
			close(stop)
			<-done
			return nil
		}, nil
	},
}
