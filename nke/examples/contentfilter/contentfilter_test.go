package contentfilter

import (
	"bytes"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/nke/mbuf/mbuftest"
	"github.com/nke-harness/nke/nke/nketest"
)

// hook is a SocketHook that, as the socket layer will, stamps injected
// data with the injector and runs the filter's data out again; what
// passes is "sent" (recorded, freed).
type hook struct {
	f      *Filter
	cookie any
	mu     sync.Mutex
	sent   [][]byte
}

func (h *hook) RegisterSocketFilter(nke.SocketFilterSpec) (nke.Attachment, error) { return nil, nil }
func (h *hook) AttachSocketFilter(nke.Socket, uint32) error                       { return nil }
func (h *hook) InjectDataIn(nke.Socket, netip.AddrPort, *mbuf.Mbuf, *mbuf.Mbuf, nke.DataFlags, nke.Attachment) error {
	return nil
}

func (h *hook) InjectDataOut(so nke.Socket, to netip.AddrPort, data, control *mbuf.Mbuf, flags nke.DataFlags, by nke.Attachment) error {
	if _, err := nke.StampInjection(data, by.ID()); err != nil {
		data.Free()
		return err
	}
	h.out(so, to, data, flags)
	return nil
}

// out is the socket layer's send: the filter's data out, then the wire.
func (h *hook) out(so nke.Socket, to netip.AddrPort, m *mbuf.Mbuf, flags nke.DataFlags) {
	if err := h.f.SockDataOut(h.cookie, so, to, &m, nil, flags); err == nke.ErrSwallowed {
		return
	}
	b := make([]byte, m.PktLen())
	m.CopyOut(b)
	m.Free()
	h.mu.Lock()
	h.sent = append(h.sent, b)
	h.mu.Unlock()
}

func (h *hook) got() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, b := range h.sent {
		out = append(out, string(b))
	}
	return out
}

type att struct{}

func (att) Name() string          { return Name }
func (att) ID() uint64            { return 42 }
func (att) Detach()               {}
func (att) Done() <-chan struct{} { return nil }

func chunkOf(t *testing.T, p *mbuf.Pool, s string) *mbuf.Mbuf {
	m := p.AllocPacket(len(s))
	if m == nil {
		t.Fatal("pool empty")
	}
	m.CopyBack(0, []byte(s))
	return m
}

// Data is held until its verdict, then re-injected in order (passing the
// filter's own data out as its own), or dropped when blocked; what is
// still held when the socket detaches is freed.
func TestHoldsUntilVerdict(t *testing.T) {
	pool := mbuftest.NewPool(t, "cf", 32, 2048, 128)
	mbuftest.CheckPools(t, pool)
	release := make(chan struct{})
	h := &hook{}
	f := New(h, func(_ nke.Socket, chunk []byte) bool {
		<-release // a slow verdict
		return !bytes.Contains(chunk, []byte("secret"))
	})
	h.f = f
	f.SetAttachment(att{})
	if err := f.Spec(0xcf).Check(); err != nil {
		t.Fatal(err)
	}
	so := nketest.TCP("10.0.2.15:7", "10.0.2.2:5000")
	ck, err := f.SockAttach(so)
	if err != nil {
		t.Fatal(err)
	}
	h.cookie = ck
	for _, s := range []string{"one ", "two ", "the secret ", "three"} {
		h.out(so, so.Remote, chunkOf(t, pool, s), 0)
	}
	time.Sleep(20 * time.Millisecond)
	if got := h.got(); len(got) != 0 {
		t.Fatalf("sent %q before any verdict", got)
	}
	for i := 0; i < 4; i++ {
		release <- struct{}{}
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(h.got()) < 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := h.got(); len(got) != 3 || got[0] != "one " || got[1] != "two " || got[2] != "three" {
		t.Fatalf("sent %q, want one, two, three in order", got)
	}
	// Two more held when the socket goes away: freed, counted.
	h.out(so, so.Remote, chunkOf(t, pool, "late"), 0)
	h.out(so, so.Remote, chunkOf(t, pool, "later"), 0)
	go func() { release <- struct{}{} }() // the one being decided finishes
	f.SockDetach(ck, so)
	st := f.Stats()
	if st.Held != 6 || st.Allowed+st.Blocked+st.Dropped != 6 || st.Blocked != 1 || st.Dropped < 1 {
		t.Errorf("stats %+v", st)
	}
}

// Without its attachment known, the filter holds nothing.
func TestPassesUntilAttached(t *testing.T) {
	pool := mbuftest.NewPool(t, "cf", 4, 2048, 128)
	f := New(&hook{}, func(nke.Socket, []byte) bool { return false })
	so := nketest.TCP("10.0.2.15:7", "10.0.2.2:5000")
	ck, _ := f.SockAttach(so)
	m := chunkOf(t, pool, "x")
	if err := f.SockDataOut(ck, so, so.Remote, &m, nil, 0); err != nil {
		t.Fatalf("data out before SetAttachment: %v", err)
	}
	m.Free()
	f.SockDetach(ck, so)
}
