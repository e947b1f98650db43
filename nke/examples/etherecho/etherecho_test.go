package etherecho

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/mbuf"
)

type fakeIf struct{}

func (fakeIf) Name() string  { return "vt0" }
func (fakeIf) Index() uint16 { return 1 }
func (fakeIf) MAC() [6]byte  { return [6]byte{2, 0, 0, 0, 0, 1} }
func (fakeIf) MTU() int      { return 1500 }

// sender is an attachment that runs pre-output and records the frame the
// framer would build.
type sender struct {
	e    *Echo
	sent [][]byte
}

func (s *sender) Name() string          { return Name }
func (s *sender) Detach()               {}
func (s *sender) Done() <-chan struct{} { return nil }
func (s *sender) Output(m *mbuf.Mbuf, dest []byte) error {
	defer m.Free()
	ft, mac, err := s.e.ProtoPreOutput(fakeIf{}, &m, dest)
	if err != nil {
		return err
	}
	b := append(mac[:], 2, 0, 0, 0, 0, 1, byte(ft>>8), byte(ft))
	b = append(b, make([]byte, m.PktLen())...)
	m.CopyOut(b[14:])
	s.sent = append(s.sent, b)
	return nil
}

func TestEcho(t *testing.T) {
	pool, err := mbuf.NewPool(dma.NewHeap(1<<16), "t", 8, 2048, 128)
	if err != nil {
		t.Fatal(err)
	}
	e := New()
	if err := e.Spec().Check(); err != nil {
		t.Fatal(err)
	}
	s := &sender{e: e}
	frame := []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 7, 0x88, 0xb5}
	in := func(body ...byte) {
		m := pool.Get()
		b, _ := m.Append(len(body))
		copy(b, body)
		e.ProtoInput(fakeIf{}, m, frame)
	}
	in(TypeRequest, 'h', 'i') // not attached yet: dropped, counted
	e.SetAttachment(s)
	in(TypeRequest, 'h', 'i')
	in(TypeReply, 'h', 'i')
	in(0x7f)
	in()
	want := [][]byte{{2, 0, 0, 0, 0, 7, 2, 0, 0, 0, 0, 1, 0x88, 0xb5, TypeReply, 'h', 'i'}}
	if diff := cmp.Diff(want, s.sent); diff != "" {
		t.Errorf("sent (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(Stats{Requests: 2, Replies: 1, Malformed: 2, SendErrors: 1}, e.Stats()); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
	if pool.Avail() != pool.Cap() {
		t.Errorf("%d buffers leaked", pool.Cap()-pool.Avail())
	}
	if _, _, err := e.ProtoPreOutput(fakeIf{}, nil, []byte{1}); err == nil {
		t.Error("pre-output took a 1-byte destination")
	}
}

var _ nke.ProtocolAttachment = (*sender)(nil)

func TestEchoDoesNotAllocate(t *testing.T) {
	pool, err := mbuf.NewPool(dma.NewHeap(1<<16), "t", 8, 2048, 128)
	if err != nil {
		t.Fatal(err)
	}
	e := New()
	e.SetAttachment(nopSender{e})
	frame := []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 7, 0x88, 0xb5}
	if a := testing.AllocsPerRun(100, func() {
		m := pool.Get()
		b, _ := m.Append(64)
		b[0] = TypeRequest
		e.ProtoInput(fakeIf{}, m, frame)
	}); a != 0 {
		t.Fatalf("%v allocations per echo", a)
	}
}

type nopSender struct{ e *Echo }

func (nopSender) Name() string          { return Name }
func (nopSender) Detach()               {}
func (nopSender) Done() <-chan struct{} { return nil }
func (s nopSender) Output(m *mbuf.Mbuf, dest []byte) error {
	_, _, err := s.e.ProtoPreOutput(fakeIf{}, &m, dest)
	m.Free()
	return err
}
