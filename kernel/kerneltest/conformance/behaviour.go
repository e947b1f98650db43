package conformance

import (
	"bytes"
	"fmt"
	"strings"
	"sync"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Impl is a filter backend under test: it builds, for each layer, a filter
// value that behaves as a Behaviour says. The suite attaches the values
// itself (it owns the specs: name, order, Detached), so a backend only
// turns a Behaviour into callbacks.
type Impl interface {
	// Name names the backend in test names ("native", "wasm").
	Name() string
	// InterfaceFilter returns a value implementing nke.InputFilter and
	// nke.OutputFilter, or with b.Burst nke.InputBurstFilter and
	// nke.OutputBurstFilter (Dir In and Out).
	InterfaceFilter(name string, b Behaviour) any
	// IPFilter returns a value implementing nke.IPInputFilter and
	// nke.IPOutputFilter, or with b.Burst their burst forms (Dir In and
	// Out).
	IPFilter(name string, b Behaviour) any
	// RawHook returns an nke.RawFilter, or with b.Burst an
	// nke.RawBurstFilter (Dir Raw). The raw layer has no swallow: a
	// Swallow verdict means nke.RawTransmit; Keep, the Pass flags and
	// tags do not apply (a raw hook sees bytes, not packets).
	RawHook(name string, b Behaviour) any
}

// Behaviour is what a filter does with each packet, declared. A packet is
// "marked" when its bytes contain Magic followed by a marker byte
// (MarkerOf); the suite marks every packet it sends. A filter ignores
// packets that are not marked (neighbour discovery and the like): it
// passes them, and records and calls nothing for them.
//
// For a marked packet, in this order: the call is recorded in Record and
// passed to OnCall; the filter panics if the marker is PanicOn; it puts
// the tag (PutTag); a packet it injected itself passes if PassMine, one
// anybody injected passes if PassInjected; otherwise the verdict is
// Verdicts[marker] (Continue if absent). A swallowed packet is handed to
// Keep before the callback returns (in the burst form, after the whole
// burst has been decided), with the frame header of an input packet at
// the interface layer; without Keep the filter frees it.
type Behaviour struct {
	Verdicts map[byte]nke.Verdict
	// PanicOn is a marker the filter panics on (0: never).
	PanicOn byte
	// Record, if set, gets each call on a marked packet.
	Record *Log
	// Burst selects the burst form of the layer's callbacks.
	Burst bool
	// PassMine passes packets the filter injected itself
	// (nke.InjectedByMe with Self()), whatever their marker.
	PassMine bool
	// PassInjected passes every injected packet (nke.InjectedBy).
	PassInjected bool
	// Self returns the filter's own attachment, once attached; the
	// suite sets it (for PassMine and Call.Mine).
	Self func() nke.Attachment
	// PutTag puts the suite's tag (TagName, type TagType) with the
	// marker as value on each marked packet.
	PutTag bool
	// OnCall, if set, is called with each recorded call, before the
	// verdict: the suite detaches from inside a callback with it.
	OnCall func(Call)
	// Keep receives each swallowed packet: it now owns it.
	Keep func(Kept)
}

// Kept is a swallowed packet handed to Behaviour.Keep.
type Kept struct {
	Call Call
	M    *mbuf.Mbuf
	// Frame is a copy of the link header of an interface-layer input
	// packet (the packet's data starts at the network header); nil
	// otherwise.
	Frame []byte
}

// Dir is the direction a call saw a packet in.
type Dir string

const (
	In       Dir = "in"
	Out      Dir = "out"
	Raw      Dir = "raw"
	Detached Dir = "detached" // the suite's Detached callback
)

// Call is one callback's view of one marked packet.
type Call struct {
	Filter string
	Dir    Dir
	Marker byte
	// Mine: the packet was injected by the filter itself (Self).
	Mine bool
	// Injected: the packet carries injection provenance.
	Injected bool
	// Tagged: the packet carries the suite's tag with its marker as
	// value.
	Tagged bool
}

func (c Call) String() string {
	if c.Dir == Detached {
		return c.Filter + " detached"
	}
	s := fmt.Sprintf("%s %s %d", c.Filter, c.Dir, c.Marker)
	if c.Mine {
		s += " mine"
	}
	if c.Tagged {
		s += " tagged"
	}
	return s
}

// Log records calls; it is safe for concurrent use.
type Log struct {
	mu    sync.Mutex
	calls []Call
}

// Add appends c.
func (l *Log) Add(c Call) {
	l.mu.Lock()
	l.calls = append(l.calls, c)
	l.mu.Unlock()
}

// Calls returns the calls so far.
func (l *Log) Calls() []Call {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Call(nil), l.calls...)
}

// Reset forgets the calls so far.
func (l *Log) Reset() {
	l.mu.Lock()
	l.calls = nil
	l.mu.Unlock()
}

// Of returns the calls of one filter.
func (l *Log) Of(filter string) []Call {
	var out []Call
	for _, c := range l.Calls() {
		if c.Filter == filter {
			out = append(out, c)
		}
	}
	return out
}

func (l *Log) String() string {
	var b strings.Builder
	for i, c := range l.Calls() {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(c.String())
	}
	return "[" + b.String() + "]"
}

// Magic precedes the marker byte in every packet the suite sends.
var Magic = []byte("nkeconf:")

// MarkerOf finds the marker of a packet's bytes: the byte after the first
// Magic. Markers are never 0.
func MarkerOf(b []byte) (byte, bool) {
	i := bytes.Index(b, Magic)
	if i < 0 || i+len(Magic) >= len(b) || b[i+len(Magic)] == 0 {
		return 0, false
	}
	return b[i+len(Magic)], true
}

// TagName and TagType are the tag PutTag puts (mbuf.TagID(TagName)): a
// one-byte value, the marker.
const (
	TagName        = "com.nke-harness.conformance"
	TagType uint16 = 1
)

var tagID = func() mbuf.TagIDType {
	id, err := mbuf.TagID(TagName)
	if err != nil {
		panic(err)
	}
	return id
}()

// PutMarkerTag puts the suite's tag with marker on m.
func PutMarkerTag(m *mbuf.Mbuf, marker byte) error { return mbuf.TagPut(m, tagID, TagType, marker) }

// MarkerTag returns the value of the suite's tag on m.
func MarkerTag(m *mbuf.Mbuf) (byte, bool) { return mbuf.TagGet[byte](m, tagID, TagType) }
