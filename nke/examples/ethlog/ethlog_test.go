package ethlog

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/mbuf"
)

type fakeIf struct{}

func (fakeIf) Name() string  { return "vt0" }
func (fakeIf) Index() uint16 { return 3 }
func (fakeIf) MAC() [6]byte  { return [6]byte{2, 0, 0, 0, 0, 1} }
func (fakeIf) MTU() int      { return 1500 }

func packet(t *testing.T, pool *mbuf.Pool, b []byte) *mbuf.Mbuf {
	m := pool.Get()
	d, _ := m.Append(len(b))
	copy(d, b)
	return m
}

func TestLogsBothWays(t *testing.T) {
	pool, err := mbuf.NewPool(dma.NewHeap(1<<16), "t", 4, 2048, 128)
	if err != nil {
		t.Fatal(err)
	}
	l := New(2)
	if err := l.Spec().Check(); err != nil {
		t.Fatal(err)
	}
	frame := []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00}
	in := packet(t, pool, make([]byte, 46))
	if v := l.FilterInput(fakeIf{}, 0x0800, &in, frame); v != nke.Continue {
		t.Fatalf("input verdict %v", v)
	}
	out := packet(t, pool, append(append([]byte(nil), frame...), make([]byte, 50)...))
	if v := l.FilterOutput(fakeIf{}, 0x0800, &out); v != nke.Continue {
		t.Fatalf("output verdict %v", v)
	}
	want := []string{
		"in  if3 02:00:00:00:00:02 > 02:00:00:00:00:01 type 0x0800 len 60",
		"out if3 02:00:00:00:00:02 > 02:00:00:00:00:01 type 0x0800 len 64",
	}
	if diff := cmp.Diff(want, l.Lines()); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if got := l.Lines(); len(got) != 0 {
		t.Errorf("records handed out twice: %v", got)
	}
	// The ring keeps the newest and says how many it lost.
	for i := 0; i < 5; i++ {
		l.FilterOutput(fakeIf{}, 0x0800, &out)
	}
	if got := l.Lines(); len(got) != 3 || got[0] != "(3 records lost)" {
		t.Errorf("after wrapping: %v", got)
	}
	if a := testing.AllocsPerRun(100, func() { l.FilterInput(fakeIf{}, 0x0800, &in, frame) }); a != 0 {
		t.Errorf("FilterInput allocated %v times", a)
	}
	in.Free()
	out.Free()
}
