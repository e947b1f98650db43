package kevent

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var t0 = time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)

func TestPublishOrderAndStamp(t *testing.T) {
	b := &Bus{Now: func() time.Time { return t0 }}
	b.Publish(Event{Kind: LinkUp}) // nobody subscribed: numbered, not kept
	s := b.Subscribe(8)
	defer s.Close()
	b.Publish(Event{Kind: FilterAttached, NKE: "com.example.ipfw", Hook: "inet filters", ID: 3})
	b.Publish(Event{Kind: Fault, NKE: "com.example.ipfw", Detail: "boom"})
	want := []Event{
		{Seq: 2, Time: t0, Kind: FilterAttached, NKE: "com.example.ipfw", Hook: "inet filters", ID: 3},
		{Seq: 3, Time: t0, Kind: Fault, NKE: "com.example.ipfw", Detail: "boom"},
	}
	var got []Event
	for range want {
		e, err := s.Next(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("events (-want +got):\n%s", d)
	}
	if b.Published() != 3 {
		t.Errorf("Published = %d, want 3", b.Published())
	}
}

func TestSlowSubscriberLosesNotBlocks(t *testing.T) {
	var b Bus
	slow := b.Subscribe(4)
	fast := b.Subscribe(100)
	defer slow.Close()
	defer fast.Close()
	done := make(chan struct{})
	go func() {
		for i := 0; i < 100; i++ {
			b.Publish(Event{Kind: InjectLoop, ID: uint64(i)})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Publish blocked on a subscriber that does not read")
	}
	if got := slow.Lost(); got != 96 {
		t.Errorf("slow subscriber lost %d, want 96", got)
	}
	if got := fast.Lost(); got != 0 {
		t.Errorf("fast subscriber lost %d, want 0", got)
	}
	// The slow one has the first four; the gap shows in Seq.
	var seqs []uint64
	for len(slow.C()) > 0 {
		seqs = append(seqs, (<-slow.C()).Seq)
	}
	if d := cmp.Diff([]uint64{1, 2, 3, 4}, seqs); d != "" {
		t.Errorf("slow subscriber's seqs (-want +got):\n%s", d)
	}
}

func TestKindFilter(t *testing.T) {
	var b Bus
	s := b.Subscribe(8, LinkUp, LinkDown)
	defer s.Close()
	for _, k := range []Kind{LinkUp, Fault, ControlConnect, LinkDown} {
		b.Publish(Event{Kind: k})
	}
	var got []Kind
	for len(s.C()) > 0 {
		got = append(got, (<-s.C()).Kind)
	}
	if d := cmp.Diff([]Kind{LinkUp, LinkDown}, got); d != "" {
		t.Errorf("kinds (-want +got):\n%s", d)
	}
	if s.Lost() != 0 {
		t.Errorf("filtered events counted as lost: %d", s.Lost())
	}
}

func TestCloseAndContext(t *testing.T) {
	var b Bus
	s := b.Subscribe(1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := s.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Next on an empty queue past the deadline: %v, want DeadlineExceeded", err)
	}
	s.Close()
	s.Close() // twice is fine
	if _, err := s.Next(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Next after Close: %v, want ErrClosed", err)
	}
	b.Publish(Event{Kind: LinkUp})
	if len(s.C()) != 0 {
		t.Error("a closed subscriber still receives")
	}
	var nilBus *Bus
	nilBus.Publish(Event{Kind: LinkUp}) // must not panic
}

func TestKindText(t *testing.T) {
	for k := Kind(1); k < numKinds; k++ {
		b, _ := k.MarshalText()
		var back Kind
		if err := back.UnmarshalText(b); err != nil || back != k {
			t.Errorf("%v: round trip gave %v, %v", k, back, err)
		}
	}
	if _, err := ParseKind("nope"); err == nil {
		t.Error("ParseKind(nope) succeeded")
	}
	j, err := json.Marshal(Event{Seq: 1, Time: t0, Kind: LinkDown, Interface: "vtnet0"})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"seq":1,"time":"2026-12-02T08:00:00Z","kind":"link-down","interface":"vtnet0"}`
	if string(j) != want {
		t.Errorf("JSON %s, want %s", j, want)
	}
	if got, want := (Event{Seq: 7, Time: t0, Kind: Fault, NKE: "x", ID: 2, Detail: "boom"}).String(), "#7 08:00:00.000000 fault nke=x id=2: boom"; got != want {
		t.Errorf("String %q, want %q", got, want)
	}
}

func TestConcurrentPublishSubscribe(t *testing.T) {
	var b Bus
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				b.Publish(Event{Kind: FilterDetached})
			}
		}()
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				s := b.Subscribe(16)
				for len(s.C()) > 0 {
					<-s.C()
				}
				s.Close()
			}
		}()
	}
	wg.Wait()
	if b.Published() != 4000 {
		t.Errorf("Published = %d, want 4000", b.Published())
	}
}

func TestPublishAllocs(t *testing.T) {
	var b Bus
	e := Event{Kind: InjectLoop, Interface: "vtnet0"}
	if n := testing.AllocsPerRun(1000, func() { b.Publish(e) }); n != 0 {
		t.Errorf("Publish with no subscriber: %v allocs, want 0", n)
	}
	s := b.Subscribe(4)
	defer s.Close()
	if n := testing.AllocsPerRun(1000, func() { b.Publish(e) }); n != 0 {
		t.Errorf("Publish to a full subscriber: %v allocs, want 0", n)
	}
}

func BenchmarkPublish(b *testing.B) {
	for _, subs := range []int{0, 1, 4} {
		b.Run(map[int]string{0: "subs=0", 1: "subs=1", 4: "subs=4"}[subs], func(b *testing.B) {
			var bus Bus
			for i := 0; i < subs; i++ {
				s := bus.Subscribe(1024)
				defer s.Close()
				go func() {
					for {
						select {
						case <-s.C():
						case <-s.Done():
							return
						}
					}
				}()
			}
			e := Event{Kind: FilterDetached}
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				bus.Publish(e)
			}
		})
	}
}
