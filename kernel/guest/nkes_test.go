package guest

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nke-harness/nke/kernel/kctl"
	"github.com/nke-harness/nke/kernel/kevent"
	"github.com/nke-harness/nke/nke"
)

// ctlModule registers a control endpoint named after its id; its stop
// deregisters it and fails while clients are connected, as tcplognke's.
func ctlModule(id string, deregister bool) nke.Module {
	return nke.Module{Name: "ctltest", ID: id, Start: func(k nke.Kernel, _ string) (func() error, error) {
		c, err := k.Control().RegisterControl(nke.ControlSpec{Name: id + ".ctl",
			Connect: func(uint32) (any, error) { return nil, nil }})
		if err != nil {
			return nil, err
		}
		return func() error {
			if deregister {
				return c.Deregister()
			}
			return nil
		}, nil
	}}
}

// An NKE with control clients is not stopped unless forced; a forced stop
// disconnects them; endpoints a stopped NKE left are removed; loads and
// unloads are published.
func TestStopWithControlClients(t *testing.T) {
	bus := &kevent.Bus{}
	sub := bus.Subscribe(32, kevent.NKELoaded, kevent.NKEUnloaded, kevent.ControlDisconnect)
	defer sub.Close()
	g := &Guest{events: bus, ctl: kctl.New(kctl.Config{Events: bus})}
	logf := func(string, ...any) {}
	if err := g.startNKE(ctlModule("com.example.a", true), "", logf); err != nil {
		t.Fatal(err)
	}
	c, err := g.ctl.Connect("com.example.a.ctl")
	if err != nil {
		t.Fatal(err)
	}
	err = g.stopNKE("com.example.a", false)
	if !errors.Is(err, nke.ErrBusy) || !strings.Contains(err.Error(), "com.example.a.ctl unit 1") {
		t.Fatalf("stop with a client: %v, want ErrBusy naming the client", err)
	}
	if len(g.started()) != 1 {
		t.Fatal("a refused stop unloaded the NKE")
	}
	if _, err := g.ctl.Connect("com.example.a.ctl"); err != nil {
		t.Errorf("connect after a refused stop: %v", err)
	}
	if err := g.stopNKE("com.example.a", true); err != nil {
		t.Fatalf("forced stop: %v", err)
	}
	if _, err := c.TryRecv(make([]byte, 8)); !errors.Is(err, kctl.ErrDisconnected) {
		t.Errorf("the client after a forced stop: %v, want ErrDisconnected", err)
	}
	// One that forgets to deregister: its endpoint goes with it.
	if err := g.startNKE(ctlModule("com.example.b", false), "", logf); err != nil {
		t.Fatal(err)
	}
	if err := g.stopNKE("ctltest", false); err != nil {
		t.Fatal(err)
	}
	if eps := g.ctl.Endpoints(""); len(eps) != 0 {
		t.Errorf("endpoints left: %v", eps)
	}
	var got []string
	for len(sub.C()) > 0 {
		e := <-sub.C()
		got = append(got, e.Kind.String()+" "+e.NKE)
	}
	want := []string{"nke-loaded com.example.a", "ctl-disconnect com.example.a", "ctl-disconnect com.example.a",
		"nke-unloaded com.example.a", "nke-loaded com.example.b", "nke-unloaded com.example.b"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("events (-want +got):\n%s", d)
	}
}
