package tcplog

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/nketest"
)

func record(i int) Record {
	start := time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)
	return Record{Socket: uint64(i), Local: netip.MustParseAddrPort("10.0.2.15:7"),
		Remote: netip.MustParseAddrPort("10.0.2.2:40000"), Start: start, End: start.Add(1500 * time.Microsecond),
		In: 100, Out: uint64(i)}
}

func TestStreamRecords(t *testing.T) {
	hook := &nketest.Controls{}
	s, err := NewStream(hook, ControlName)
	if err != nil {
		t.Fatal(err)
	}
	s.Publish(record(0)) // nobody connected: nothing, nothing lost
	a, _ := hook.Connect(ControlName)
	b, _ := hook.Connect(ControlName)
	s.Publish(record(1))
	want := `{"socket":1,"local":"10.0.2.15:7","remote":"10.0.2.2:40000","start":"2026-12-02T08:00:00.000000Z",` +
		`"end":"2026-12-02T08:00:00.001500Z","duration_us":1500,"in":100,"out":1}`
	for _, c := range []*nketest.ControlClient{a, b} {
		if d := cmp.Diff([]string{want}, c.Recv()); d != "" {
			t.Errorf("unit %d (-want +got):\n%s", c.Unit, d)
		}
	}
	if s.Lost() != 0 {
		t.Errorf("lost %d", s.Lost())
	}
	if err := a.Send("hello"); err == nil {
		t.Error("the stream took a command")
	}
	if err := s.Close(); !errors.Is(err, nke.ErrBusy) {
		t.Errorf("close with clients: %v, want ErrBusy", err)
	}
	a.Close()
	b.Close()
	if err := s.Close(); err != nil {
		t.Error(err)
	}
}

// A client that does not read loses records, counted; after it reads, it
// is told how many before the next record.
func TestStreamFlowControl(t *testing.T) {
	hook := &nketest.Controls{}
	s, _ := NewStream(hook, ControlName)
	slow, _ := hook.Connect(ControlName)
	fast, _ := hook.Connect(ControlName)
	const n = 1000
	var fastGot int
	for i := range n {
		s.Publish(record(i))
		fastGot += len(fast.Recv())
	}
	if fastGot != n {
		t.Errorf("the reading client got %d of %d", fastGot, n)
	}
	// Reading makes room: a notice of what is still unreported is queued.
	recs, noticed := split(t, slow.Recv())
	lost := int(s.Lost())
	if lost == 0 || recs+lost != n {
		t.Fatalf("slow client: %d records and %d lost, want %d in all with some lost", recs, lost, n)
	}
	opt, err := slow.GetOpt(OptLost, 8)
	if err != nil || binary.BigEndian.Uint64(opt) != uint64(lost) {
		t.Errorf("GetOpt(OptLost) = %x, %v; want %d", opt, err, lost)
	}
	s.Publish(record(n))
	next := slow.Recv()
	if len(next) != 2 || !strings.HasPrefix(next[0], `{"lost":`) || !strings.Contains(next[1], `"socket":1000`) {
		t.Fatalf("after reading: %q, want the lost notice then record 1000", next)
	}
	_, more := split(t, next[:1])
	if noticed+more != lost {
		t.Errorf("notices say %d+%d lost, Lost says %d", noticed, more, lost)
	}
	if _, err := slow.GetOpt(2, 8); !errors.Is(err, nke.ErrNoOption) {
		t.Errorf("GetOpt(2): %v", err)
	}
}

// split counts the records among msgs and sums their lost notices.
func split(t *testing.T, msgs []string) (records, lost int) {
	t.Helper()
	for _, m := range msgs {
		var v struct {
			Socket *uint64 `json:"socket"`
			Lost   int     `json:"lost"`
		}
		if err := json.Unmarshal([]byte(m), &v); err != nil {
			t.Fatalf("%q: %v", m, err)
		}
		if v.Socket != nil {
			records++
		}
		lost += v.Lost
	}
	return records, lost
}

// Records published from many goroutines while a client reads: each is
// either received once or counted in exactly one lost notice.
func TestStreamConcurrent(t *testing.T) {
	hook := &nketest.Controls{}
	s, _ := NewStream(hook, ControlName)
	c, _ := hook.Connect(ControlName)
	const writers, each = 4, 2000
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				s.Publish(record(w*each + i))
			}
		}()
	}
	seen, lostSum := map[uint64]bool{}, 0
	read := func() {
		for _, m := range c.Recv() {
			var v struct {
				Socket *uint64 `json:"socket"`
				Lost   int     `json:"lost"`
			}
			if err := json.Unmarshal([]byte(m), &v); err != nil {
				t.Fatal(err)
			}
			if v.Socket == nil {
				lostSum += v.Lost
				continue
			}
			if seen[*v.Socket] {
				t.Fatalf("record %d twice", *v.Socket)
			}
			seen[*v.Socket] = true
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for {
		select {
		case <-done:
			read()
			read() // the last notice, queued by the last read's Rcvd
			if len(seen)+lostSum != writers*each || uint64(lostSum) != s.Lost() {
				t.Fatalf("%d received + %d in notices, want %d; Lost %d", len(seen), lostSum, writers*each, s.Lost())
			}
			return
		default:
			read()
		}
	}
}

// The module streams the records of its filter; its stop is refused
// while a client is connected.
func TestModuleStream(t *testing.T) {
	sockets := &nketest.SocketHook{}
	k := &nketest.Kernel{SocketHook: sockets, Controls: &nketest.Controls{}}
	stop, err := Module.Start(k, "")
	if err != nil {
		t.Fatal(err)
	}
	regs := sockets.Registered()
	if len(regs) != 1 {
		t.Fatalf("%d filters registered", len(regs))
	}
	c, err := k.Controls.Connect(ControlName)
	if err != nil {
		t.Fatal(err)
	}
	l := regs[0].Filter.(*Logger)
	so := nketest.TCP("10.0.2.15:7", "10.0.2.2:40000")
	ck, _ := l.SockAttach(so)
	l.SockNotify(ck, so, nke.SockEventClosing)
	msgs := c.Recv()
	if len(msgs) != 1 || !strings.Contains(msgs[0], `"local":"10.0.2.15:7","remote":"10.0.2.2:40000"`) {
		t.Fatalf("streamed %q", msgs)
	}
	if err := stop(); !errors.Is(err, nke.ErrBusy) {
		t.Fatalf("stop with a client: %v, want ErrBusy", err)
	}
	if len(sockets.Registered()) != 1 {
		t.Fatal("a refused stop unregistered the filter")
	}
	c.Close()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if len(sockets.Registered()) != 0 || k.Controls.Registered(ControlName) {
		t.Error("stop left the filter or the endpoint")
	}
}
