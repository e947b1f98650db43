package hook

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nke-harness/nke/nke"
)

// filter is a test filter: it counts calls, and fails the test if called
// after its Detached callback.
type filter struct {
	name     string
	calls    atomic.Int64
	detached atomic.Bool
	late     atomic.Int64 // calls after Detached
}

func (f *filter) call() {
	if f.detached.Load() {
		f.late.Add(1)
	}
	f.calls.Add(1)
}

func spec(f *filter, o nke.Order) Spec[*filter] {
	return Spec[*filter]{Name: f.name, Order: o, Filter: f, Detached: func() { f.detached.Store(true) }}
}

func names(t *testing.T, c *Chain[*filter]) []string {
	t.Helper()
	s := c.Acquire()
	defer s.Release()
	var out []string
	for _, e := range s.Entries {
		out = append(out, e.Name)
	}
	return out
}

func TestDefaultOrder(t *testing.T) {
	for _, c := range []struct {
		policy Policy
		want   []string
	}{
		{FIFO, []string{"a", "b", "c"}}, // Apple's interface filters
		{LIFO, []string{"c", "b", "a"}}, // Apple's IP and socket filters
	} {
		ch := New[*filter]("test", c.policy, nil)
		for _, n := range []string{"a", "b", "c"} {
			if _, err := ch.Attach(spec(&filter{name: n}, nke.Order{})); err != nil {
				t.Fatal(err)
			}
		}
		if diff := cmp.Diff(c.want, names(t, ch)); diff != "" {
			t.Errorf("policy %d (-want +got):\n%s", c.policy, diff)
		}
	}
}

func TestExplicitOrder(t *testing.T) {
	type att struct {
		name  string
		order nke.Order
	}
	cases := []struct {
		name   string
		policy Policy
		atts   []att
		want   []string
		err    string // substring of the error of the last attach
	}{
		{"priority beats attach order", FIFO, []att{{"a", nke.Order{Priority: 10}}, {"b", nke.Order{}}, {"c", nke.Order{Priority: -5}}},
			[]string{"c", "b", "a"}, ""},
		{"before", FIFO, []att{{"a", nke.Order{}}, {"b", nke.Order{}}, {"c", nke.Order{Before: []string{"a"}}}},
			[]string{"c", "a", "b"}, ""},
		{"after", LIFO, []att{{"a", nke.Order{}}, {"b", nke.Order{}}, {"c", nke.Order{After: []string{"a"}}}},
			[]string{"b", "a", "c"}, ""},
		{"after beats priority", FIFO, []att{{"a", nke.Order{Priority: 100}}, {"b", nke.Order{Priority: -100, After: []string{"a"}}}},
			[]string{"a", "b"}, ""},
		{"before an absent filter is ignored", FIFO, []att{{"a", nke.Order{}}, {"b", nke.Order{Before: []string{"zz"}}}},
			[]string{"a", "b"}, ""},
		{"same priority, LIFO, then name", LIFO, []att{{"x", nke.Order{Priority: 1}}, {"y", nke.Order{Priority: 1}}, {"w", nke.Order{}}},
			[]string{"w", "y", "x"}, ""},
		{"unmet after", FIFO, []att{{"a", nke.Order{}}, {"b", nke.Order{After: []string{"missing"}}}},
			[]string{"a"}, "must run after missing, which is not attached"},
		{"cycle", FIFO, []att{{"a", nke.Order{}}, {"b", nke.Order{After: []string{"a"}}}, {"c", nke.Order{After: []string{"b"}, Before: []string{"a"}}}},
			[]string{"a", "b"}, "a, b, c form a cycle"},
		{"self", FIFO, []att{{"a", nke.Order{Before: []string{"a"}}}}, nil, "ordered against itself"},
		{"duplicate", FIFO, []att{{"a", nke.Order{}}, {"a", nke.Order{}}}, []string{"a"}, "a filter of that name"},
		{"bad name", FIFO, []att{{"has space", nke.Order{}}}, nil, "printable ASCII"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ch := New[*filter]("test", c.policy, nil)
			var err error
			for _, a := range c.atts {
				_, err = ch.Attach(spec(&filter{name: a.name}, a.order))
			}
			switch {
			case c.err == "" && err != nil:
				t.Fatalf("Attach: %v", err)
			case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
				t.Fatalf("Attach = %v, want an error containing %q", err, c.err)
			}
			if diff := cmp.Diff(c.want, names(t, ch)); diff != "" {
				t.Errorf("order (-want +got):\n%s", diff)
			}
		})
	}
}

// The order depends only on the filters attached, not on the order the
// constraints were met in.
func TestOrderIsDeterministic(t *testing.T) {
	order := map[string]nke.Order{
		"fw":  {Priority: -10},
		"log": {After: []string{"fw"}},
		"nat": {Before: []string{"log"}, After: []string{"fw"}},
		"cap": {},
	}
	var first []string
	for _, perm := range [][]string{{"fw", "log", "nat", "cap"}, {"fw", "cap", "nat", "log"}, {"fw", "nat", "log", "cap"}} {
		ch := New[*filter]("test", FIFO, nil)
		for _, n := range perm {
			if _, err := ch.Attach(spec(&filter{name: n}, order[n])); err != nil {
				t.Fatal(err)
			}
		}
		got := names(t, ch)
		if got[0] != "fw" || indexOf(got, "nat") > indexOf(got, "log") {
			t.Errorf("%v: order %v breaks a constraint", perm, got)
		}
		if first == nil {
			first = got
		} else if perm[3] == first[3] && !cmp.Equal(first, got) {
			t.Errorf("%v: %v, another attach order gave %v", perm, got, first)
		}
	}
}

func indexOf(s []string, x string) int {
	for i, v := range s {
		if v == x {
			return i
		}
	}
	return -1
}

// Detach with readers in flight: the Detached callback comes once, after
// every call that was in flight, and no call follows it.
func TestDetachWaitsForReaders(t *testing.T) {
	ch := New[*filter]("test", FIFO, nil)
	f := &filter{name: "f"}
	h, err := ch.Attach(spec(f, nke.Order{}))
	if err != nil {
		t.Fatal(err)
	}
	s := ch.Acquire() // a burst in flight
	h.Detach()
	if !ch.Empty() {
		t.Fatal("still attached after Detach")
	}
	select {
	case <-h.Done():
		t.Fatal("Detached ran while a burst still held the filter")
	case <-time.After(20 * time.Millisecond):
	}
	for _, e := range s.Entries {
		e.Filter.call() // the burst goes on calling it: allowed
	}
	s.Release()
	<-h.Done()
	if !f.detached.Load() || f.late.Load() != 0 {
		t.Fatalf("detached %v, %d calls after it", f.detached.Load(), f.late.Load())
	}
	h.Detach() // again: nothing
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
}

// Many readers and an attach/detach loop: every filter is told it is
// detached exactly once, never called after that, and the chain ends
// empty (run with -race).
func TestDetachUnderLoad(t *testing.T) {
	ch := New[*filter]("test", FIFO, nil)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if ch.Empty() {
					runtime.Gosched()
					continue
				}
				s := ch.Acquire()
				for _, e := range s.Entries {
					e.Filter.call()
				}
				s.Release()
			}
		}()
	}
	var all []*filter
	var handles []*Handle[*filter]
	for i := 0; i < 300; i++ {
		f := &filter{name: fmt.Sprintf("f%d", i)}
		h, err := ch.Attach(spec(f, nke.Order{Priority: i % 3}))
		if err != nil {
			t.Fatal(err)
		}
		all, handles = append(all, f), append(handles, h)
		if i%3 == 2 {
			handles[i-1].Detach()
		}
	}
	for _, h := range handles {
		h.Detach()
	}
	for _, h := range handles {
		<-h.Done()
	}
	close(stop)
	wg.Wait()
	for _, f := range all {
		if !f.detached.Load() || f.late.Load() != 0 {
			t.Fatalf("%s: detached %v, %d calls after Detached", f.name, f.detached.Load(), f.late.Load())
		}
	}
	if !ch.Empty() {
		t.Fatalf("chain not empty: %v", ch.Names())
	}
}

func TestFaultDetachesAndReports(t *testing.T) {
	var faults []Fault
	var mu sync.Mutex
	ch := New[*filter]("vtnet0 input", FIFO, func(f Fault) { mu.Lock(); faults = append(faults, f); mu.Unlock() })
	bad, good := &filter{name: "bad"}, &filter{name: "good"}
	hb, _ := ch.Attach(spec(bad, nke.Order{}))
	ch.Attach(spec(good, nke.Order{}))
	s := ch.Acquire()
	func() {
		defer func() {
			if v := recover(); v != nil {
				s.Entries[0].Fault(v)
			}
		}()
		panic("index out of range in a filter")
	}()
	s.Release()
	<-hb.Done()
	if diff := cmp.Diff([]string{"good"}, ch.Names()); diff != "" {
		t.Errorf("after the fault (-want +got):\n%s", diff)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(faults) != 1 || faults[0].Filter != "bad" || !strings.Contains(faults[0].Stack, "TestFaultDetachesAndReports") ||
		!strings.Contains(faults[0].String(), "vtnet0 input: filter bad panicked: index out of range") {
		t.Fatalf("faults %+v", faults)
	}
	if c := hb.Stats(); c.Faults != 1 {
		t.Errorf("fault not counted: %+v", c)
	}
}

func TestStatsSumLanes(t *testing.T) {
	var s Stats
	s.Add(0, &Burst{Packets: 32, Bytes: 32 * 64, Verdicts: [nke.NumVerdicts]uint64{30, 1, 1}})
	s.Add(SharedLane, &Burst{Packets: 1, Bytes: 100, Verdicts: [nke.NumVerdicts]uint64{0, 0, 1}})
	s.AddSample(0, 32, 320)
	want := Counters{Packets: 33, Bytes: 32*64 + 100, Continue: 30, Swallow: 1, Drop: 2, NsPerPacket: 10}
	if diff := cmp.Diff(want, s.Read()); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestAttachNeedsAFilter(t *testing.T) {
	type face interface{ M() }
	ch := New[face]("test", FIFO, nil)
	if _, err := ch.Attach(Spec[face]{Name: "x"}); !errors.Is(err, ErrNoFilter) {
		t.Fatalf("Attach without a filter = %v", err)
	}
}

// The data path's use of a chain allocates nothing.
func TestAcquireDoesNotAllocate(t *testing.T) {
	ch := New[*filter]("test", FIFO, nil)
	ch.Attach(spec(&filter{name: "a"}, nke.Order{}))
	var b Burst
	if n := testing.AllocsPerRun(1000, func() {
		if ch.Empty() {
			return
		}
		s := ch.Acquire()
		for _, e := range s.Entries {
			b.Packets++
			e.Stats.Add(0, &b)
		}
		s.Release()
	}); n != 0 {
		t.Fatalf("%v allocations per burst", n)
	}
}

func BenchmarkAcquireRelease(b *testing.B) {
	ch := New[*filter]("test", FIFO, nil)
	ch.Attach(spec(&filter{name: "a"}, nke.Order{}))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		s := ch.Acquire()
		s.Release()
	}
}
