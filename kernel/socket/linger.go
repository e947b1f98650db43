package socket

import (
	"net"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"

	"github.com/nke-harness/nke/kernel/sockfilter"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Lingering for data a filter holds: a filter that swallows data owns it
// until it re-injects or frees it, and a content filter may take its time.
// The socket must not end the stream under it: a shutdown of the sending
// side (or a close) waits until the filters have let go of the output
// they hold, and a reader does not see the end of the stream while they
// hold input, up to Linger. Held data is tracked by the packets swallowed
// and their holder mark (mbuf.HeldBy): re-injecting or freeing a packet
// clears it.

// Linger bounds how long a shutdown, a close or the end of the stream
// waits for data filters hold.
const Linger = 30 * time.Second

// heldChunk is a swallowed packet and the attachment that took it.
type heldChunk struct {
	m  *mbuf.Mbuf
	id uint64
}

// held is a socket's swallowed packets in one direction.
type held struct {
	list []heldChunk
}

// add records m, just swallowed (a hook marked it with its holder).
func (h *held) add(m *mbuf.Mbuf) {
	if id := m.Holder(); id != 0 {
		h.list = append(h.list, heldChunk{m, id})
	}
}

// pending prunes what was let go and reports whether anything is held.
func (h *held) pending() bool {
	kept := h.list[:0]
	for _, c := range h.list {
		if c.m.HeldBy(c.id) {
			kept = append(kept, c)
		}
	}
	clear(h.list[len(kept):])
	h.list = kept
	return len(kept) > 0
}

// waitHeld waits until h holds nothing, the socket closes, or Linger
// passes. check runs with the lock that guards h.
func (s *sock) waitHeld(check func() bool) {
	deadline := time.Now().Add(Linger)
	for check() && time.Now().Before(deadline) {
		select {
		case <-s.closed:
			return
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// lingerOut waits for the output filters hold (a shutdown or close must
// not overtake it).
func (s *sock) lingerOut() {
	if !s.filtered() {
		return
	}
	s.waitHeld(func() bool {
		s.heldMu.Lock()
		defer s.heldMu.Unlock()
		return s.heldOut.pending()
	})
}

// lingerIn waits for the input filters hold, and reports whether it
// waited for any (then the reader looks at its queue again).
func (s *sock) lingerIn() bool {
	if !s.filtered() {
		return false
	}
	waited := false
	s.waitHeld(func() bool {
		s.heldMu.Lock()
		defer s.heldMu.Unlock()
		p := s.heldIn.pending()
		waited = waited || p
		return p
	})
	return waited
}

// heldOutAdd and heldInAdd record a packet a filter just swallowed.
func (s *sock) heldOutAdd(m *mbuf.Mbuf) {
	s.heldMu.Lock()
	defer s.heldMu.Unlock()
	s.heldOut.add(m)
}

func (s *sock) heldInAdd(m *mbuf.Mbuf) {
	s.heldMu.Lock()
	defer s.heldMu.Unlock()
	s.heldIn.add(m)
}

var _ sockfilter.Aborter = (*sock)(nil)

// Abort closes the connection with an error (sockfilter.Aborter): a
// filter detached holding data it had swallowed, so the stream has lost
// it. The peer gets a reset; the socket's reads and writes return err.
func (s *sock) Abort(err error) {
	s.abortErr.CompareAndSwap(nil, &err)
	s.ep.Abort()
}

// failed is what a read or write reports for a transport error:
// net.ErrClosed once the socket is closed, the abort's error if it was
// aborted for lost data, else the errno; a lost connection is noted.
func (s *sock) failed(err tcpip.Error) error {
	if s.isClosed() {
		return net.ErrClosed
	}
	s.lost(err)
	if e := s.abortErr.Load(); e != nil {
		return *e
	}
	return tcpipErr(err)
}
