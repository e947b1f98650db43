package capture

import (
	"bytes"
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf/mbuftest"
)

func TestMatch(t *testing.T) {
	before := hook.Point{Hook: "vt0 filters", Filter: "a"}
	after := hook.Point{Hook: "vt0 filters", Filter: "a", After: true, Verdict: nke.Drop}
	other := hook.Point{Hook: "inet filters", Filter: "a"}
	for _, c := range []struct {
		m    Match
		want [3]bool
	}{
		{Match{Hook: "vt0 filters"}, [3]bool{true, true, false}},
		{Match{Hook: "vt0 filters", Before: "a"}, [3]bool{true, false, false}},
		{Match{Hook: "vt0 filters", After: "a"}, [3]bool{false, true, false}},
		{Match{Hook: "vt0 filters", After: "b"}, [3]bool{false, false, false}},
		{Match{Hook: "inet filters"}, [3]bool{false, false, true}},
	} {
		got := [3]bool{c.m.Matches(before), c.m.Matches(after), c.m.Matches(other)}
		if got != c.want {
			t.Errorf("%+v: %v, want %v", c.m, got, c.want)
		}
	}
}

// lockedBuffer is written by WritePcapng while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

func TestStreamPcapng(t *testing.T) {
	pool := mbuftest.NewPool(t, "stream", 4, 2048, 128)
	mbuftest.CheckPools(t, pool)
	m := pool.Get()
	defer m.Free()
	b, _ := m.Append(30)
	for i := range b {
		b[i] = byte(i)
	}
	s := NewStream(Match{Hook: "inet filters", After: "com.example.fw"}, 2, 16)
	var out lockedBuffer
	done := make(chan error, 1)
	go func() { done <- s.WritePcapng(context.Background(), &out, true, 3) }()
	// The header goes out before any packet.
	for deadline := time.Now().Add(5 * time.Second); out.Len() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("no pcapng header written before the first packet")
		}
		time.Sleep(time.Millisecond)
	}
	p := hook.Point{Hook: "inet filters", Filter: "com.example.fw", Dir: hook.In, L3: true, After: true, Verdict: nke.Drop}
	s.Capture(hook.Point{Hook: "inet filters", Filter: "com.example.fw", Dir: hook.In, L3: true}, nil, m) // before: not matched
	for i := 0; i < 3; i++ {
		s.Capture(p, nil, m)
		time.Sleep(20 * time.Millisecond) // the reader keeps up: nothing lost
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WritePcapng did not end after count packets")
	}
	rd, err := pcapgo.NewNgReader(bytes.NewReader(out.b.Bytes()), pcapgo.NgReaderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rd.LinkType() != layers.LinkTypeRaw {
		t.Errorf("link type %v, want raw IP", rd.LinkType())
	}
	var got []string
	for {
		data, ci, opts, err := rd.ReadPacketDataWithOptions()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(data, b[:16]) || ci.Length != 30 {
			t.Errorf("packet % x, length %d", data, ci.Length)
		}
		got = append(got, opts.Comments...)
	}
	want := []string{"inet filters in com.example.fw after: drop", "inet filters in com.example.fw after: drop", "inet filters in com.example.fw after: drop"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("comments (-want +got):\n%s", d)
	}
	if s.Lost() != 0 {
		t.Errorf("%d lost", s.Lost())
	}
}

func TestStreamFullDropsAndCounts(t *testing.T) {
	s := NewStream(Match{Hook: "h"}, 2, 8)
	for i := 0; i < 5; i++ {
		s.Capture(hook.Point{Hook: "h", Filter: "f"}, []byte{byte(i)}, nil)
	}
	if s.Lost() != 3 {
		t.Errorf("lost %d, want 3", s.Lost())
	}
	recs := s.take(nil)
	if len(recs) != 2 || recs[0].Data[0] != 0 || recs[1].Data[0] != 1 {
		t.Errorf("kept %+v, want the two oldest", recs)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out bytes.Buffer
	if err := s.WritePcapng(ctx, &out, false, 0); err != nil {
		t.Errorf("cancelled stream: %v, want nil", err)
	}
}

func TestStreamCaptureDoesNotAllocate(t *testing.T) {
	s := NewStream(Match{Hook: "h"}, 4, 64)
	frame := make([]byte, 60)
	p := hook.Point{Hook: "h", Filter: "f"}
	var recs []Record
	if n := testing.AllocsPerRun(100, func() {
		s.Capture(p, frame, nil)
		recs = s.take(recs)
	}); n != 0 {
		t.Errorf("%v allocations per captured packet", n)
	}
}

func TestTee(t *testing.T) {
	var tee Tee
	a, b := NewStream(Match{Hook: "h"}, 4, 8), NewStream(Match{Hook: "h"}, 4, 8)
	ra, n0 := tee.Add(a)
	rb, n1 := tee.Add(b)
	if n0 != 0 || n1 != 1 || tee.Len() != 2 {
		t.Fatalf("before %d, %d; len %d", n0, n1, tee.Len())
	}
	tee.Capture(hook.Point{Hook: "h"}, []byte{1}, nil)
	if left := ra(); left != 1 {
		t.Errorf("left %d after removing a, want 1", left)
	}
	if left := ra(); left != 1 {
		t.Errorf("second remove: left %d, want 1 (once)", left)
	}
	tee.Capture(hook.Point{Hook: "h"}, []byte{2}, nil)
	if left := rb(); left != 0 || tee.Len() != 0 {
		t.Errorf("left %d, len %d after removing both", left, tee.Len())
	}
	tee.Capture(hook.Point{Hook: "h"}, []byte{3}, nil)
	if na, nb := len(a.take(nil)), len(b.take(nil)); na != 1 || nb != 2 {
		t.Errorf("a got %d, b got %d; want 1, 2", na, nb)
	}
}
