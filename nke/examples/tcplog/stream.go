package tcplog

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/nke-harness/nke/nke"
)

// ControlName is the logger's kernel-control endpoint: every client
// connected to it gets each connection record as it closes, one JSON
// object a message (`nkectl ctl com.nke-harness.tcplog`).
const ControlName = "com.nke-harness.tcplog"

// OptLost is the option (GetOpt) reading how many records this client
// lost since it connected, as 8 bytes big-endian.
const OptLost = 1

// recordJSON is a Record as the stream sends it.
type recordJSON struct {
	Socket     uint64 `json:"socket"`
	Local      string `json:"local"`
	Remote     string `json:"remote"`
	Start      string `json:"start"`
	End        string `json:"end"`
	DurationUS int64  `json:"duration_us"`
	In         uint64 `json:"in"`
	Out        uint64 `json:"out"`
}

// MarshalJSON is the record as one JSON object.
func (r Record) MarshalJSON() ([]byte, error) {
	return json.Marshal(recordJSON{Socket: r.Socket, Local: r.Local.String(), Remote: r.Remote.String(),
		Start: r.Start.UTC().Format("2006-01-02T15:04:05.000000Z"), End: r.End.UTC().Format("2006-01-02T15:04:05.000000Z"),
		DurationUS: r.End.Sub(r.Start).Microseconds(), In: r.In, Out: r.Out})
}

// Stream sends records to the control clients connected to its
// endpoint. A record that does not fit a client's receive queue is not
// queued for it and counted (per client and in all): when the client
// has read and made room, it first gets {"lost":N}, the records it
// missed, so no record is lost silently.
type Stream struct {
	ctl  atomic.Pointer[nke.Control]
	lost atomic.Uint64 // all clients

	mu sync.Mutex
	// +checklocks:mu
	units map[uint32]*streamClient
}

// streamClient is one client's delivery state; mu keeps its records and
// lost notices in order when sockets close on several goroutines.
type streamClient struct {
	mu sync.Mutex
	// +checklocks:mu
	pending uint64        // lost and not reported to it yet
	lost    atomic.Uint64 // lost since it connected (GetOpt)
}

// NewStream registers the stream's endpoint, called name, on hook.
func NewStream(hook nke.ControlHook, name string) (*Stream, error) {
	s := &Stream{units: map[uint32]*streamClient{}}
	c, err := hook.RegisterControl(nke.ControlSpec{
		Name: name,
		Connect: func(unit uint32) (any, error) {
			sc := &streamClient{}
			s.mu.Lock()
			defer s.mu.Unlock()
			s.units[unit] = sc
			return sc, nil
		},
		Disconnect: func(unit uint32, _ any) {
			s.mu.Lock()
			defer s.mu.Unlock()
			delete(s.units, unit)
		},
		Send: func(uint32, any, []byte) error {
			return errors.New("tcplog: the stream takes no commands; read it, and GetOpt 1 for the records lost")
		},
		GetOpt: func(_ uint32, cookie any, opt int, buf []byte) (int, error) {
			if opt != OptLost {
				return 0, nke.ErrNoOption
			}
			if buf == nil {
				return 8, nil
			}
			if len(buf) < 8 {
				return 0, fmt.Errorf("tcplog: option %d needs 8 bytes, got %d", opt, len(buf))
			}
			binary.BigEndian.PutUint64(buf, cookie.(*streamClient).lost.Load())
			return 8, nil
		},
		Rcvd: func(unit uint32, cookie any) { s.flushLost(unit, cookie.(*streamClient)) },
	})
	if err != nil {
		return nil, err
	}
	s.ctl.Store(&c)
	return s, nil
}

// flushLost tells the client how many records it missed, once there is
// room for the notice (after each of its reads).
func (s *Stream) flushLost(unit uint32, sc *streamClient) {
	c := s.ctl.Load()
	if c == nil {
		return
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	s.flushLocked(*c, unit, sc)
}

// flushLocked queues the lost notice if one is due; it reports whether
// the client is up to date (nothing pending).
//
// +checklocks:sc.mu
func (s *Stream) flushLocked(c nke.Control, unit uint32, sc *streamClient) bool {
	if sc.pending == 0 {
		return true
	}
	if c.Enqueue(unit, fmt.Appendf(nil, `{"lost":%d}`, sc.pending)) != nil {
		return false
	}
	sc.pending = 0
	return true
}

// Publish sends r to every connected client. It never blocks.
func (s *Stream) Publish(r Record) {
	c := s.ctl.Load()
	if c == nil {
		return
	}
	s.mu.Lock()
	type target struct {
		unit uint32
		sc   *streamClient
	}
	targets := make([]target, 0, len(s.units))
	for u, sc := range s.units {
		targets = append(targets, target{u, sc})
	}
	s.mu.Unlock()
	if len(targets) == 0 {
		return
	}
	msg, err := json.Marshal(r)
	if err != nil {
		return // a Record always marshals
	}
	for _, t := range targets {
		s.deliver(*c, t.unit, t.sc, msg)
	}
}

// deliver queues msg for one client behind any lost notice due, or
// counts it lost.
func (s *Stream) deliver(c nke.Control, unit uint32, sc *streamClient, msg []byte) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if s.flushLocked(c, unit, sc) {
		err := c.Enqueue(unit, msg)
		if err == nil || errors.Is(err, nke.ErrNoUnit) { // queued, or the client is gone
			return
		}
	}
	sc.pending++
	sc.lost.Add(1)
	s.lost.Add(1)
}

// Lost is how many records could not be queued, all clients together.
func (s *Stream) Lost() uint64 { return s.lost.Load() }

// Close deregisters the endpoint: nke.ErrBusy while clients are
// connected.
func (s *Stream) Close() error {
	c := s.ctl.Load()
	if c == nil {
		return nil
	}
	return (*c).Deregister()
}
