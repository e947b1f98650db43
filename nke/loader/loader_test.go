package loader

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/bundle"
	"github.com/nke-harness/nke/nke/mbuf"
)

var ctx = context.Background()

const kpiIP = bundle.KPIPrefix + "ip"

func TestLoadSetOrderAndStat(t *testing.T) {
	r := newRig(t, 0)
	var ca, cb, cc counter
	r.register(ipModule("a", "com.a", &ca, nil))
	r.register(ipModule("b", "com.b", &cb, nil))
	r.register(ipModule("c", "com.c", &cc, nil))
	a := mk("com.a", "1.0", "1.0", "a", map[string]string{"com.b": "1.0", kpiIP: "1.0"})
	b := mk("com.b", "1.2", "1.0", "b", map[string]string{"com.c": "1.0"})
	c := mk("com.c", "1.0", "1.0", "c", nil)
	a.Manifest.Harness.Priority = -3
	a.Manifest.Harness.After = []string{"com.b"}
	if err := r.l.LoadSet(ctx, []*bundle.Bundle{a, b, c}); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"com.c 1.0", "com.b 1.2", "com.a 1.0"}, r.ids()); d != "" {
		t.Errorf("load order -want +got:\n%s", d)
	}
	rows := r.l.Stat()
	want := []Row{
		{Index: 1, Refs: 1, ID: "com.c", Version: "1.0", Kind: "builtin", Layer: "ip", Attachment: "ip inet,inet6", Order: "default", Capabilities: []string{"observe"}, Attached: 1, Filters: []string{"com.c"}, Bundle: "com.c.nke"},
		{Index: 2, Refs: 1, ID: "com.b", Version: "1.2", Kind: "builtin", Layer: "ip", Attachment: "ip inet,inet6", Order: "default", Depends: []string{"com.c"}, Capabilities: []string{"observe"}, Attached: 1, Filters: []string{"com.b"}, Bundle: "com.b.nke"},
		{Index: 3, Refs: 0, ID: "com.a", Version: "1.0", Kind: "builtin", Layer: "ip", Attachment: "ip inet,inet6", Order: "priority -3, after com.b", Depends: []string{"com.b"}, Capabilities: []string{"observe"}, Attached: 1, Filters: []string{"com.a"}, Bundle: "com.a.nke"},
	}
	if d := cmp.Diff(want, rows); d != "" {
		t.Errorf("Stat -want +got:\n%s", d)
	}
	// The manifest's order reached the hook.
	for _, s := range r.ip.Attached() {
		if s.Name == "com.a" && (s.Order.Priority != -3 || !cmp.Equal(s.Order.After, []string{"com.b"})) {
			t.Errorf("com.a attached with order %+v", s.Order)
		}
	}
	var buf bytes.Buffer
	if err := r.l.WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "Index  Refs  Version  Name") || !strings.Contains(lines[3], "com.a") || !strings.HasSuffix(lines[3], "com.b") {
		t.Errorf("table:\n%s", buf.String())
	}
	t.Logf("table:\n%s", buf.String())
	// Packets go through all three.
	if v := r.send(&mbuf.Mbuf{}); v != nke.Continue || ca.seen.Load() != 1 || cb.seen.Load() != 1 || cc.seen.Load() != 1 {
		t.Errorf("verdict %v, seen %d %d %d", v, ca.seen.Load(), cb.seen.Load(), cc.seen.Load())
	}
	if err := r.l.UnloadAll(ctx); err != nil {
		t.Fatal(err)
	}
	if len(r.l.Stat()) != 0 || len(r.ip.Attached()) != 0 {
		t.Errorf("after UnloadAll: %v, %d attached", r.ids(), len(r.ip.Attached()))
	}
	var unloads []string
	for _, e := range r.eventsOf("unload") {
		unloads = append(unloads, strings.SplitN(e, ":", 2)[0])
	}
	if d := cmp.Diff([]string{"unload com.a", "unload com.b", "unload com.c"}, unloads); d != "" {
		t.Errorf("unload order (newest first) -want +got:\n%s", d)
	}
}

func TestDependencyErrors(t *testing.T) {
	r := newRig(t, 0)
	var c counter
	for _, n := range []string{"a", "b", "c"} {
		r.register(ipModule(n, "com."+n, &c, nil))
	}
	for _, tc := range []struct {
		name    string
		set     []*bundle.Bundle
		loaded  []*bundle.Bundle
		want    string
		wantErr error
	}{
		{"missing", []*bundle.Bundle{mk("com.a", "1.0", "1.0", "a", map[string]string{"com.b": "1.0"})}, nil,
			"com.a -> com.b: com.b is not loaded nor in this request", ErrDependency},
		{"missing deep", []*bundle.Bundle{mk("com.a", "1.0", "1.0", "a", map[string]string{"com.b": "1.0"}), mk("com.b", "1.0", "1.0", "b", map[string]string{"com.c": "1.0"})}, nil,
			"com.a -> com.b -> com.c: com.c is not loaded", ErrDependency},
		{"cycle", []*bundle.Bundle{mk("com.a", "1.0", "1.0", "a", map[string]string{"com.b": "1.0"}), mk("com.b", "1.0", "1.0", "b", map[string]string{"com.a": "1.0"})}, nil,
			"a cycle: com.a -> com.b -> com.a", ErrDependency},
		{"cycle of three", []*bundle.Bundle{mk("com.a", "1.0", "1.0", "a", map[string]string{"com.b": "1.0"}), mk("com.b", "1.0", "1.0", "b", map[string]string{"com.c": "1.0"}), mk("com.c", "1.0", "1.0", "c", map[string]string{"com.a": "1.0"})}, nil,
			"a cycle: com.a -> com.b -> com.c -> com.a", ErrDependency},
		{"too old", []*bundle.Bundle{mk("com.a", "1.0", "1.0", "a", map[string]string{"com.b": "2.0"})}, []*bundle.Bundle{mk("com.b", "1.5", "1.0", "b", nil)},
			"com.a -> com.b: wants version 2.0, com.b 1.5 (compatible back to 1.0) is loaded", ErrDependency},
		{"broke compatibility", []*bundle.Bundle{mk("com.a", "1.0", "1.0", "a", map[string]string{"com.b": "1.0"})}, []*bundle.Bundle{mk("com.b", "2.0", "2.0", "b", nil)},
			"wants version 1.0, com.b 2.0 (compatible back to 2.0)", ErrDependency},
		{"not a library", []*bundle.Bundle{mk("com.a", "1.0", "1.0", "a", map[string]string{"com.b": "1.0"})}, []*bundle.Bundle{mk("com.b", "1.0", "", "b", nil)},
			"not a library", ErrDependency},
		{"no such kpi", []*bundle.Bundle{mk("com.a", "1.0", "1.0", "a", map[string]string{bundle.KPIPrefix + "usb": "1.0"})}, nil,
			"needs KPI com.nke-harness.kpi.usb 1.0, which this guest does not offer", ErrDependency},
		{"kpi too new", []*bundle.Bundle{mk("com.a", "1.0", "1.0", "a", map[string]string{kpiIP: "1.1"})}, nil,
			"needs KPI com.nke-harness.kpi.ip 1.1, this guest offers 1.0", ErrDependency},
		{"kpi other major", []*bundle.Bundle{mk("com.a", "1.0", "1.0", "a", map[string]string{kpiIP: "0.9"})}, nil,
			"this guest offers 1.0", ErrDependency},
		{"twice in a set", []*bundle.Bundle{mk("com.a", "1.0", "1.0", "a", nil), mk("com.a", "1.1", "1.0", "a", nil)}, nil,
			"com.a twice in the request", ErrExists},
		{"duplicate", []*bundle.Bundle{mk("com.a", "1.1", "1.0", "a", nil)}, []*bundle.Bundle{mk("com.a", "1.0", "1.0", "a", nil)},
			"com.a 1.0 (from com.a.nke) is loaded", ErrExists},
		{"builtin missing", []*bundle.Bundle{mk("com.a", "1.0", "1.0", "nope", nil)}, nil, `no built-in "nope"`, ErrStart},
		{"builtin of another id", []*bundle.Bundle{mk("com.x", "1.0", "1.0", "a", nil)}, nil, "built-in a is com.a, but the manifest's CFBundleIdentifier is com.x", ErrStart},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, b := range tc.loaded {
				if err := r.l.Load(ctx, b, Options{}); err != nil {
					t.Fatal(err)
				}
			}
			err := r.l.LoadSet(ctx, tc.set)
			if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("LoadSet = %v, want %v containing %q", err, tc.wantErr, tc.want)
			}
			if len(tc.set) == 1 {
				if err := r.l.Load(ctx, tc.set[0], Options{}); !errors.Is(err, tc.wantErr) {
					t.Errorf("Load = %v, want %v", err, tc.wantErr)
				}
			}
			if n := len(r.l.Stat()); n != len(tc.loaded) {
				t.Errorf("%d loaded after the refusal: %v", n, r.ids())
			}
			if err := r.l.UnloadAll(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestLoadSetUndoesOnFailure(t *testing.T) {
	r := newRig(t, 0)
	var cb counter
	r.register(ipModule("b", "com.b", &cb, nil))
	r.register(nke.Module{Name: "a", ID: "com.a", Start: func(nke.Kernel, string) (func() error, error) {
		return nil, errors.New("no")
	}})
	err := r.l.LoadSet(ctx, []*bundle.Bundle{mk("com.a", "1.0", "1.0", "a", map[string]string{"com.b": "1.0"}), mk("com.b", "1.0", "1.0", "b", nil)})
	if !errors.Is(err, ErrStart) {
		t.Fatalf("LoadSet = %v", err)
	}
	if len(r.l.Stat()) != 0 || len(r.ip.Attached()) != 0 {
		t.Errorf("left loaded: %v", r.ids())
	}
}

func TestUnloadRefusedByDependantsThenForced(t *testing.T) {
	r := newRig(t, 0)
	var ca, cb, cc counter
	r.register(ipModule("a", "com.a", &ca, nil))
	r.register(ipModule("b", "com.b", &cb, nil))
	r.register(ipModule("c", "com.c", &cc, nil))
	must(t, r.l.LoadSet(ctx, []*bundle.Bundle{
		mk("com.c", "1.0", "1.0", "c", nil),
		mk("com.b", "1.0", "1.0", "b", map[string]string{"com.c": "1.0"}),
		mk("com.a", "1.0", "1.0", "a", map[string]string{"com.c": "1.0"}),
	}))
	_, err := r.l.Unload(ctx, "com.c", false)
	if !errors.Is(err, ErrInUse) || !errors.Is(err, nke.ErrBusy) || !strings.Contains(err.Error(), "loaded bundles depend on it: com.a, com.b") {
		t.Fatalf("Unload = %v", err)
	}
	if len(r.l.Stat()) != 3 || r.send(&mbuf.Mbuf{}) != nke.Continue || cc.seen.Load() != 1 {
		t.Fatalf("a refused unload changed something: %v", r.ids())
	}
	res, err := r.l.Unload(ctx, "com.c", true)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"com.a", "com.b"}, res.Dependants); d != "" {
		t.Errorf("dependants unloaded -want +got:\n%s", d)
	}
	if len(r.l.Stat()) != 0 || len(r.ip.Attached()) != 0 {
		t.Errorf("left: %v", r.ids())
	}
	if _, err := r.l.Unload(ctx, "com.c", false); !errors.Is(err, ErrNotLoaded) {
		t.Errorf("Unload again = %v", err)
	}
}

// ctlModule registers a control endpoint and an IP filter.
func ctlModule(name, id, endpoint string, c *counter) nke.Module {
	return nke.Module{Name: name, ID: id, Start: func(k nke.Kernel, _ string) (func() error, error) {
		ctl, err := k.Control().RegisterControl(nke.ControlSpec{Name: endpoint,
			Connect: func(uint32) (any, error) { return nil, nil },
			Send: func(unit uint32, _ any, data []byte) error {
				return nil
			}})
		if err != nil {
			return nil, err
		}
		a, err := k.IP().AttachIPFilter(nke.IPFilterSpec{Name: id, Family: nke.IPv4, Filter: c})
		if err != nil {
			ctl.Deregister()
			return nil, err
		}
		return func() error {
			if err := ctl.Deregister(); err != nil {
				return err // kern_ctl's EBUSY: stays loaded
			}
			a.Detach()
			<-a.Done()
			return nil
		}, nil
	}}
}

func TestUnloadRefusedByControlClientsThenForced(t *testing.T) {
	r := newRig(t, 0)
	var c counter
	r.register(ctlModule("x", "com.x", "com.x.ctl", &c))
	must(t, r.l.Load(ctx, mk("com.x", "1.0", "1.0", "x", nil), Options{}))
	cl := r.connect("com.x", "com.x.ctl")
	if rows := r.l.Stat(); rows[0].Refs != 1 {
		t.Errorf("refs = %d, want 1 (the client)", rows[0].Refs)
	}
	_, err := r.l.Unload(ctx, "com.x", false)
	if !errors.Is(err, nke.ErrBusy) || !strings.Contains(err.Error(), "control clients are connected: unit 1") {
		t.Fatalf("Unload = %v", err)
	}
	if err := cl.Send("hi"); err != nil {
		t.Errorf("the client lost its NKE: %v", err)
	}
	res, err := r.l.Unload(ctx, "com.x", true)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"unit 1"}, res.Disconnected); d != "" {
		t.Error(d)
	}
	if r.controls.Registered("com.x.ctl") || len(r.ip.Attached()) != 0 {
		t.Error("endpoint or filter left")
	}
}

func TestDrainBoundedAndReported(t *testing.T) {
	for _, tc := range []struct {
		name     string
		hold     time.Duration
		timeout  time.Duration
		timedOut bool
	}{
		{"drains", 30 * time.Millisecond, time.Second, false},
		{"bounded", 400 * time.Millisecond, 50 * time.Millisecond, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, tc.timeout)
			in := make(chan struct{})
			c := &counter{hook: func() { close(in); time.Sleep(tc.hold) }}
			r.register(ipModule("a", "com.a", c, nil))
			must(t, r.l.Load(ctx, mk("com.a", "1.0", "1.0", "a", nil), Options{}))
			done := make(chan struct{})
			go func() { r.send(&mbuf.Mbuf{}); close(done) }()
			<-in
			res, err := r.l.Unload(ctx, "com.a", false)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("drain %v (timed out %v), stop %v", res.Drain, res.DrainTimedOut, res.Stop)
			if res.DrainTimedOut != tc.timedOut {
				t.Errorf("DrainTimedOut = %v", res.DrainTimedOut)
			}
			lo := min(tc.hold, tc.timeout) - 10*time.Millisecond
			if res.Drain < lo || res.Drain > min(tc.hold, tc.timeout)+300*time.Millisecond {
				t.Errorf("Drain = %v, want about %v", res.Drain, min(tc.hold, tc.timeout))
			}
			<-done
			// Paused, then detached: later packets do not reach it.
			r.send(&mbuf.Mbuf{})
			if n := c.seen.Load(); n != 1 {
				t.Errorf("seen %d", n)
			}
		})
	}
}

func TestFailingStopKeepsItLoaded(t *testing.T) {
	r := newRig(t, 0)
	var c counter
	fail := atomic.Bool{}
	fail.Store(true)
	r.register(ipModule("a", "com.a", &c, func() error {
		if fail.Load() {
			return errors.New("busy: a client is connected")
		}
		return nil
	}))
	must(t, r.l.Load(ctx, mk("com.a", "1.0", "1.0", "a", nil), Options{}))
	_, err := r.l.Unload(ctx, "com.a", false)
	if !errors.Is(err, ErrStop) || !strings.Contains(err.Error(), "still loaded") {
		t.Fatalf("Unload = %v", err)
	}
	if len(r.l.Stat()) != 1 {
		t.Fatal("unloaded anyway")
	}
	r.send(&mbuf.Mbuf{})
	if c.seen.Load() != 1 {
		t.Errorf("its filter is not called again after the failed stop (seen %d)", c.seen.Load())
	}
	fail.Store(false)
	if _, err := r.l.Unload(ctx, "com.a", false); err != nil {
		t.Fatal(err)
	}
	if c.late.Load() != 0 {
		t.Errorf("%d calls after detached", c.late.Load())
	}
}

func TestPanickingStart(t *testing.T) {
	r := newRig(t, 0)
	var detached atomic.Bool
	r.register(nke.Module{Name: "p", ID: "com.p", Start: func(k nke.Kernel, _ string) (func() error, error) {
		k.IP().AttachIPFilter(nke.IPFilterSpec{Name: "com.p", Family: nke.IPv4, Filter: &counter{}, Detached: func() { detached.Store(true) }})
		k.Control().RegisterControl(nke.ControlSpec{Name: "com.p.ctl", Connect: func(uint32) (any, error) { return nil, nil }})
		panic("boom")
	}})
	err := r.l.Load(ctx, mk("com.p", "1.0", "1.0", "p", nil), Options{})
	if !errors.Is(err, ErrStart) || !strings.Contains(err.Error(), "start panicked: boom") {
		t.Fatalf("Load = %v", err)
	}
	if len(r.l.Stat()) != 0 || len(r.ip.Attached()) != 0 || r.controls.Registered("com.p.ctl") || !detached.Load() {
		t.Errorf("left behind: %v, %d filters, endpoint %v, detached %v", r.ids(), len(r.ip.Attached()), r.controls.Registered("com.p.ctl"), detached.Load())
	}
	if len(r.eventsOf("load-failed")) != 1 {
		t.Errorf("events: %v", r.eventsOf("load-failed"))
	}
	// A panicking stop keeps it loaded.
	r.register(ipModule("s", "com.s", &counter{}, func() error { panic("stop boom") }))
	must(t, r.l.Load(ctx, mk("com.s", "1.0", "1.0", "s", nil), Options{}))
	if _, err := r.l.Unload(ctx, "com.s", false); !errors.Is(err, ErrStop) || !strings.Contains(err.Error(), "stop panicked") {
		t.Errorf("Unload = %v", err)
	}
	if err := r.l.UnloadAll(ctx); !errors.Is(err, ErrStop) || len(r.l.Stat()) != 0 || len(r.ip.Attached()) != 0 {
		t.Errorf("UnloadAll = %v, left %v", err, r.ids())
	}
}

func TestCapabilityRefusal(t *testing.T) {
	r := newRig(t, 0)
	drop := &counter{verdict: nke.Drop}
	swallow := &counter{verdict: nke.Swallow}
	repl := &counter{replace: true}
	r.register(ipModule("drop", "com.drop", drop, nil))
	r.register(ipModule("swallow", "com.swallow", swallow, nil))
	r.register(ipModule("repl", "com.repl", repl, nil))
	must(t, r.l.Load(ctx, mk("com.drop", "1.0", "1.0", "drop", nil), Options{}))
	for i := 0; i < 5; i++ {
		if v := r.send(&mbuf.Mbuf{}); v != nke.Continue {
			t.Fatalf("observe-only drop: verdict %v, want continue", v)
		}
	}
	must(t, r.l.Load(ctx, mk("com.swallow", "1.0", "1.0", "swallow", nil), Options{}))
	if v := r.send(&mbuf.Mbuf{}); v != nke.Continue {
		t.Errorf("observe-only swallow: verdict %v", v)
	}
	must(t, r.l.Load(ctx, mk("com.repl", "1.0", "1.0", "repl", nil, bundle.CapObserve, bundle.CapDrop), Options{}))
	if v := r.send(&mbuf.Mbuf{}); v != nke.Drop {
		t.Errorf("replacing without modify: verdict %v, want drop", v)
	}
	got := map[string]uint64{}
	for _, row := range r.l.Stat() {
		got[row.ID] = row.Refused
	}
	if d := cmp.Diff(map[string]uint64{"com.drop": 7, "com.swallow": 2, "com.repl": 1}, got); d != "" {
		t.Errorf("refused counters -want +got:\n%s", d)
	}
	if n := len(r.eventsOf("refused")); n != 3 {
		t.Errorf("%d refusals logged, want one per NKE and capability: %v", n, r.eventsOf("refused"))
	}
	must2(r.l.Unload(ctx, "com.repl", false))
	must2(r.l.Unload(ctx, "com.swallow", false))
	must2(r.l.Unload(ctx, "com.drop", false))

	// With the capabilities, verdicts stand.
	must(t, r.l.Load(ctx, mk("com.drop", "1.0", "1.0", "drop", nil, bundle.CapObserve, bundle.CapDrop), Options{}))
	if v := r.send(&mbuf.Mbuf{}); v != nke.Drop {
		t.Errorf("with drop: verdict %v", v)
	}
	must2(r.l.Unload(ctx, "com.drop", false))
	must(t, r.l.Load(ctx, mk("com.repl", "1.0", "1.0", "repl", nil, bundle.CapModify), Options{}))
	if v := r.send(&mbuf.Mbuf{}); v != nke.Continue {
		t.Errorf("with modify: verdict %v", v)
	}

	// Inject without the capability.
	var injErr error
	r.register(nke.Module{Name: "inj", ID: "com.inj", Start: func(k nke.Kernel, _ string) (func() error, error) {
		injErr = k.IP().InjectIPInput(&mbuf.Mbuf{}, nil)
		return func() error { return nil }, nil
	}})
	must(t, r.l.Load(ctx, mk("com.inj", "1.0", "1.0", "inj", nil), Options{}))
	if !errors.Is(injErr, ErrCapability) || !strings.Contains(injErr.Error(), `com.inj may not inject an IP packet without "inject"`) {
		t.Errorf("inject: %v", injErr)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func must2[T any](_ T, err error) {
	if err != nil {
		panic(err)
	}
}

var _ = sync.Mutex{}

// TestUnloadUnderTraffic: with packets flowing, an unload never lets a
// call reach the filter after its Detached, and every packet gets a
// verdict.
func TestUnloadUnderTraffic(t *testing.T) {
	for round := 0; round < 20; round++ {
		r := newRig(t, 0)
		c := &counter{}
		r.register(ipModule("a", "com.a", c, nil))
		must(t, r.l.Load(ctx, mk("com.a", "1.0", "1.0", "a", nil), Options{}))
		var sent atomic.Uint64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := 0; w < 2; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					r.send(&mbuf.Mbuf{})
					sent.Add(1)
				}
			}()
		}
		for sent.Load() < 1000 {
			time.Sleep(10 * time.Microsecond)
		}
		res, err := r.l.Unload(ctx, "com.a", false)
		if err != nil {
			t.Fatal(err)
		}
		close(stop)
		wg.Wait()
		if c.late.Load() != 0 || res.DrainTimedOut {
			t.Fatalf("round %d: %d calls after Detached, drain %v timed out %v", round, c.late.Load(), res.Drain, res.DrainTimedOut)
		}
		if round == 0 {
			t.Logf("%d packets, %d seen; drain %v, stop %v", sent.Load(), c.seen.Load(), res.Drain, res.Stop)
		}
	}
}
