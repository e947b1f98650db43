package guest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nke-harness/nke/kernel/kctl"
	"github.com/nke-harness/nke/kernel/kevent"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/bundle"
	"github.com/nke-harness/nke/nke/loader"
)

// ctlModule registers a control endpoint named after its id; its stop
// deregisters it (or forgets to).
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

// ctlBundle is a bundle whose built-in is ctlModule.
func ctlBundle(t *testing.T, id string) *bundle.Bundle {
	t.Helper()
	plist := fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>
<plist version="1.0"><dict>
<key>CFBundleIdentifier</key><string>%s</string>
<key>CFBundleVersion</key><string>1.0</string>
<key>OSBundleLibraries</key><dict><key>com.nke-harness.kpi.control</key><string>1.0</string></dict>
<key>NKEHarness</key><dict>
<key>Layer</key><string>ip</string>
<key>Capabilities</key><array><string>observe</string></array>
<key>Builtin</key><string>%s</string>
</dict></dict></plist>`, id, id)
	m, err := bundle.ParseManifest(id+".nke/Contents/Info.plist", []byte(plist))
	if err != nil {
		t.Fatal(err)
	}
	return &bundle.Bundle{Name: id + ".nke", Manifest: m, Files: map[string][]byte{bundle.InfoPlist: []byte(plist)}}
}

// Through the guest's loader: an NKE with control clients is not
// unloaded unless forced, the refusal names the clients; a forced unload
// disconnects them; endpoints a stopped NKE left are removed; loads and
// unloads are published on the kernel's event bus.
func TestUnloadWithControlClients(t *testing.T) {
	bus := &kevent.Bus{}
	sub := bus.Subscribe(32, kevent.NKELoaded, kevent.NKEUnloaded, kevent.ControlDisconnect)
	defer sub.Close()
	g := &Guest{events: bus, ctl: kctl.New(kctl.Config{Events: bus}),
		builtins: func(name string) (nke.Module, error) { return ctlModule(name, name == "com.example.a"), nil }}
	var err error
	if g.loader, err = g.newLoader(func(string, ...any) {}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := g.loader.Load(ctx, ctlBundle(t, "com.example.a"), loader.Options{}); err != nil {
		t.Fatal(err)
	}
	c, err := g.ctl.Connect("com.example.a.ctl")
	if err != nil {
		t.Fatal(err)
	}
	_, err = g.loader.Unload(ctx, "com.example.a", false)
	if !errors.Is(err, nke.ErrBusy) || !strings.Contains(err.Error(), "com.example.a.ctl unit 1") {
		t.Fatalf("unload with a client: %v, want EBUSY naming the client", err)
	}
	if len(g.started()) != 1 {
		t.Fatal("a refused unload unloaded the NKE")
	}
	if _, err := g.ctl.Connect("com.example.a.ctl"); err != nil {
		t.Errorf("connect after a refused unload: %v", err)
	}
	if _, err := g.loader.Unload(ctx, "com.example.a", true); err != nil {
		t.Fatalf("forced unload: %v", err)
	}
	if _, err := c.TryRecv(make([]byte, 8)); !errors.Is(err, kctl.ErrDisconnected) {
		t.Errorf("the client after a forced unload: %v, want ErrDisconnected", err)
	}
	// One that forgets to deregister: its endpoint goes with it.
	if err := g.loader.Load(ctx, ctlBundle(t, "com.example.b"), loader.Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := g.loader.Unload(ctx, "com.example.b", false); err != nil {
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
