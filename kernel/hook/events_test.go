package hook

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nke-harness/nke/kernel/kevent"
	"github.com/nke-harness/nke/nke"
)

// TestEvents: a chain with a bus publishes attaches, faults and detaches
// (a faulted filter's detach says what it panicked with), and nothing
// once the bus is taken away.
func TestEvents(t *testing.T) {
	var bus kevent.Bus
	sub := bus.Subscribe(16)
	defer sub.Close()
	ch := New[*filter]("vtnet0 filters", FIFO, nil)
	ch.SetEvents(&bus)
	bad, good := &filter{name: "com.example.bad"}, &filter{name: "com.example.good"}
	hb, _ := ch.Attach(spec(bad, nke.Order{}))
	hg, _ := ch.Attach(spec(good, nke.Order{}))
	if !hb.Entry().Guard(func() { panic("boom") }) {
		t.Fatal("Guard did not report the panic")
	}
	<-hb.Done()
	hg.Detach()
	<-hg.Done()
	ch.SetEvents(nil)
	again, _ := ch.Attach(spec(&filter{name: "com.example.quiet"}, nke.Order{}))
	again.Detach()
	<-again.Done()

	var got []string
	for len(sub.C()) > 0 {
		e := <-sub.C()
		got = append(got, fmt.Sprintf("%v %s %s %v %s", e.Kind, e.NKE, e.Hook, e.ID == hb.ID() || e.ID == hg.ID(), e.Detail))
	}
	want := []string{
		"attached com.example.bad vtnet0 filters true ",
		"attached com.example.good vtnet0 filters true ",
		"fault com.example.bad vtnet0 filters true panicked: boom (detached)",
		"detached com.example.bad vtnet0 filters true boom",
		"detached com.example.good vtnet0 filters true ",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("events (-want +got):\n%s", d)
	}
}
