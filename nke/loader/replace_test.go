package loader

import (
	"errors"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/bundle"
	"github.com/nke-harness/nke/nke/mbuf"
)

// TestReplaceUnderTraffic swaps version 2 in while goroutines push
// packets through the hook: every packet meets exactly one version, none
// is lost or seen twice, and the old one gets no call after its
// Detached.
func TestReplaceUnderTraffic(t *testing.T) {
	for round := 0; round < 20; round++ {
		r := newRig(t, 0)
		var v1, v2 counter
		r.register(ipModule("r1", "com.r", &v1, nil))
		r.register(ipModule("r2", "com.r", &v2, nil))
		must(t, r.l.Load(ctx, mk("com.r", "1.0", "1.0", "r1", nil), Options{}))
		var sent atomic.Uint64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		workers := max(2, runtime.GOMAXPROCS(0))
		for w := 0; w < workers; w++ {
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
		for sent.Load() < 2000 {
			runtime.Gosched()
		}
		res, err := r.l.Replace(ctx, mk("com.r", "2.0", "1.0", "r2", nil), false)
		if err != nil {
			t.Fatal(err)
		}
		at := sent.Load()
		for sent.Load() < at+2000 {
			runtime.Gosched()
		}
		close(stop)
		wg.Wait()
		n1, n2, total := v1.seen.Load(), v2.seen.Load(), sent.Load()
		if n1+n2 != total {
			t.Fatalf("round %d: %d sent, version 1 saw %d, version 2 %d: %d lost or doubled", round, total, n1, n2, int64(total)-int64(n1+n2))
		}
		if n1 == 0 || n2 == 0 || v1.late.Load() != 0 {
			t.Fatalf("round %d: v1 %d, v2 %d, v1 calls after detached %d", round, n1, n2, v1.late.Load())
		}
		if res.Swapped != 1 || res.Beside != 0 || res.OldVersion != "1.0" || res.Version != "2.0" {
			t.Fatalf("result %+v", res)
		}
		if round == 0 {
			t.Logf("%d packets, %d to 1.0, %d to 2.0; swap %v, old drained in %v, stopped in %v", total, n1, n2, res.Swap, res.Old.Drain, res.Old.Stop)
		}
		if rows := r.l.Stat(); len(rows) != 1 || rows[0].Version != "2.0" || rows[0].Index != 1 {
			t.Fatalf("Stat after replace: %+v", rows)
		}
		must2(r.l.Unload(ctx, "com.r", false))
		if len(r.ip.Attached()) != 0 || v2.late.Load() != 0 {
			t.Fatalf("after unload: %d attached, v2 late %d", len(r.ip.Attached()), v2.late.Load())
		}
	}
}

// stateModule counts packets and hands the count over.
func stateModule(name string, got *[]byte, c *counter) nke.Module {
	return nke.Module{Name: name, ID: "com.s", Start: func(k nke.Kernel, _ string) (func() error, error) {
		h, ok := k.(Handover)
		if !ok {
			return nil, errors.New("no handover")
		}
		*got = h.HandoverState()
		base := uint64(0)
		if len(*got) > 0 {
			n, err := strconv.ParseUint(string(*got), 10, 64)
			if err != nil {
				return nil, err
			}
			base = n
		}
		h.SetExport(func() ([]byte, error) { return []byte(strconv.FormatUint(base+c.seen.Load(), 10)), nil })
		return ipModule(name, "com.s", c, nil).Start(k, "")
	}}
}

func TestReplaceWithHandover(t *testing.T) {
	r := newRig(t, 0)
	var v1, v2 counter
	var got1, got2 []byte
	r.register(stateModule("s1", &got1, &v1))
	r.register(stateModule("s2", &got2, &v2))
	must(t, r.l.Load(ctx, mk("com.s", "1.0", "1.0", "s1", nil), Options{}))
	for i := 0; i < 7; i++ {
		r.send(&mbuf.Mbuf{})
	}
	res, err := r.l.Replace(ctx, mk("com.s", "1.1", "1.0", "s2", nil), true)
	if err != nil {
		t.Fatal(err)
	}
	if got1 != nil || string(got2) != "7" || res.Handover != 1 {
		t.Errorf("first start got %q, second %q, result %+v", got1, got2, res)
	}
	// Without SetExport, a handover is refused and the old version stays.
	r.register(ipModule("plain", "com.s", &counter{}, nil))
	must2(r.l.Replace(ctx, mk("com.s", "1.2", "1.0", "plain", nil), false))
	if _, err := r.l.Replace(ctx, mk("com.s", "1.3", "1.0", "s1", nil), true); !errors.Is(err, ErrReplace) || !strings.Contains(err.Error(), "exports no state") {
		t.Errorf("handover from a version without export: %v", err)
	}
}

func TestReplaceRefusals(t *testing.T) {
	r := newRig(t, 0)
	var v1, dep counter
	r.register(ipModule("v1", "com.v", &v1, nil))
	r.register(ipModule("dep", "com.dep", &dep, nil))
	r.register(nke.Module{Name: "bad", ID: "com.v", Start: func(k nke.Kernel, _ string) (func() error, error) {
		k.IP().AttachIPFilter(nke.IPFilterSpec{Name: "com.v", Family: nke.IPv4, Filter: &counter{verdict: nke.Drop}})
		return nil, errors.New("cannot")
	}})
	if _, err := r.l.Replace(ctx, mk("com.v", "1.0", "1.0", "v1", nil), false); !errors.Is(err, ErrNotLoaded) {
		t.Errorf("Replace of nothing: %v", err)
	}
	must(t, r.l.Load(ctx, mk("com.v", "1.0", "1.0", "v1", nil), Options{}))
	must(t, r.l.Load(ctx, mk("com.dep", "1.0", "1.0", "dep", map[string]string{"com.v": "1.0"}), Options{}))
	for _, tc := range []struct {
		name string
		b    *bundle.Bundle
		want string
		err  error
	}{
		{"same version", mk("com.v", "1.0.0", "1.0", "v1", nil), "is the version loaded", ErrReplace},
		{"dependant's minimum", mk("com.v", "2.0", "2.0", "v1", nil), "com.dep -> com.v: wants version 1.0", ErrReplace},
		{"failing start", mk("com.v", "1.1", "1.0", "bad", nil), "cannot (1.0 stays)", ErrStart},
	} {
		if _, err := r.l.Replace(ctx, tc.b, false); !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %v containing %q", tc.name, err, tc.err, tc.want)
		}
		if rows := r.l.Stat(); rows[0].Version != "1.0" {
			t.Errorf("%s: version %s loaded", tc.name, rows[0].Version)
		}
		if v := r.send(&mbuf.Mbuf{}); v != nke.Continue {
			t.Errorf("%s: the failed version filters packets: %v", tc.name, v)
		}
	}
	if len(r.ip.Attached()) != 2 {
		t.Errorf("%d filters attached, want 2", len(r.ip.Attached()))
	}
	// Socket filters are not swapped.
	r.register(nke.Module{Name: "sock", ID: "com.sock", Start: func(k nke.Kernel, _ string) (func() error, error) {
		a, err := k.Sockets().RegisterSocketFilter(nke.SocketFilterSpec{Name: "com.sock", Handle: 7, Type: nke.SockStream, Filter: sockFilter{}})
		if err != nil {
			return nil, err
		}
		return func() error { a.Detach(); <-a.Done(); return nil }, nil
	}})
	must(t, r.l.Load(ctx, mk("com.sock", "1.0", "1.0", "sock", nil), Options{}))
	if _, err := r.l.Replace(ctx, mk("com.sock", "1.1", "1.0", "sock", nil), false); !errors.Is(err, ErrReplace) || !strings.Contains(err.Error(), "socket filters") {
		t.Errorf("socket filter replace: %v", err)
	}
	if err := r.l.UnloadAll(ctx); err != nil {
		t.Fatal(err)
	}
	if len(r.sockets.Registered()) != 0 {
		t.Error("socket filter left registered")
	}
}

type sockFilter struct{}

func (sockFilter) SockAttach(nke.Socket) (any, error) { return nil, nil }
func (sockFilter) SockDetach(any, nke.Socket)         {}

// TestReplaceControl: an endpoint of the same name goes to the new
// version; the old version's clients are disconnected.
func TestReplaceControl(t *testing.T) {
	r := newRig(t, 0)
	var mu sync.Mutex
	var log []string
	mod := func(name string) nke.Module {
		return nke.Module{Name: name, ID: "com.c", Start: func(k nke.Kernel, _ string) (func() error, error) {
			ctl, err := k.Control().RegisterControl(nke.ControlSpec{Name: "com.c.ctl",
				Connect: func(uint32) (any, error) { return nil, nil },
				Send: func(_ uint32, _ any, data []byte) error {
					mu.Lock()
					defer mu.Unlock()
					log = append(log, name+" "+string(data))
					return nil
				}})
			if err != nil {
				return nil, err
			}
			return func() error { return ctl.Deregister() }, nil
		}}
	}
	r.register(mod("c1"))
	r.register(mod("c2"))
	must(t, r.l.Load(ctx, mk("com.c", "1.0", "1.0", "c1", nil), Options{}))
	old := r.connect("com.c", "com.c.ctl")
	must(t, old.Send("a"))
	res, err := r.l.Replace(ctx, mk("com.c", "1.1", "1.0", "c2", nil), false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Swapped != 1 || res.OldStopError != nil {
		t.Errorf("result %+v", res)
	}
	if err := old.Send("b"); err == nil {
		t.Error("the old version's client is still connected")
	}
	cl := r.connect("com.c", "com.c.ctl")
	must(t, cl.Send("c"))
	mu.Lock()
	if strings.Join(log, ",") != "c1 a,c2 c" {
		t.Errorf("messages: %v", log)
	}
	mu.Unlock()
	r.l.cfg.DisconnectControl("com.c") // the rig's way to close its clients
	must2(r.l.Unload(ctx, "com.c", false))
	if r.controls.Registered("com.c.ctl") {
		t.Error("endpoint left after unload")
	}
}

// TestReplaceWhileOldDetaches: the old version detaches its filter while
// the new one is starting (as churn does all the time); the place in the
// chain is kept for the new one, or given up if the new start fails.
func TestReplaceWhileOldDetaches(t *testing.T) {
	for _, fail := range []bool{false, true} {
		r := newRig(t, 0)
		var oldAtt nke.Attachment
		var v1, v2 counter
		r.register(nke.Module{Name: "o1", ID: "com.o", Start: func(k nke.Kernel, _ string) (func() error, error) {
			a, err := k.IP().AttachIPFilter(nke.IPFilterSpec{Name: "com.o", Family: nke.IPv4, Filter: &v1, Detached: func() { v1.gone.Store(true) }})
			oldAtt = a
			return func() error { a.Detach(); <-a.Done(); return nil }, err
		}})
		r.register(nke.Module{Name: "o2", ID: "com.o", Start: func(k nke.Kernel, _ string) (func() error, error) {
			a, err := k.IP().AttachIPFilter(nke.IPFilterSpec{Name: "com.o", Family: nke.IPv4, Filter: &v2})
			if err != nil {
				return nil, err
			}
			oldAtt.Detach() // the old version, concurrently, in its own loop
			<-oldAtt.Done()
			r.send(&mbuf.Mbuf{}) // between: passes, reaches neither
			if fail {
				a.Detach()
				<-a.Done()
				return nil, errors.New("fails")
			}
			return func() error { a.Detach(); <-a.Done(); return nil }, nil
		}})
		must(t, r.l.Load(ctx, mk("com.o", "1.0", "1.0", "o1", nil), Options{}))
		_, err := r.l.Replace(ctx, mk("com.o", "2.0", "1.0", "o2", nil), false)
		if fail {
			if !errors.Is(err, ErrStart) || len(r.ip.Attached()) != 0 {
				t.Errorf("failed replace: %v, %d attached", err, len(r.ip.Attached()))
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(r.ip.Attached()) != 1 {
			t.Fatalf("%d attached", len(r.ip.Attached()))
		}
		r.send(&mbuf.Mbuf{})
		if v1.seen.Load() != 0 || v2.seen.Load() != 1 || !v1.gone.Load() {
			t.Errorf("v1 %d (gone %v), v2 %d", v1.seen.Load(), v1.gone.Load(), v2.seen.Load())
		}
		must(t, r.l.UnloadAll(ctx))
		if len(r.ip.Attached()) != 0 {
			t.Error("left attached")
		}
	}
}
