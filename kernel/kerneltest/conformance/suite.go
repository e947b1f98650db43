package conformance

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/nke-harness/nke/nke"
)

// A rule is one check, run on every layer it applies to, in both forms.
type rule struct {
	name    string
	applies func(layer) bool // nil: every layer
	run     func(e *env, b Behaviour)
}

func notRaw(l layer) bool  { return l.kind != rawKind }
func onlyRaw(l layer) bool { return l.kind == rawKind }
func onlyIf(l layer) bool  { return l.kind == ifKind }
func onlyIP(l layer) bool  { return l.kind == ipKind }

// Run runs the suite against impl: every rule on every layer it applies
// to, with per-packet and with burst callbacks, each on a rig of its own
// (kerneltest: device model, driver, interface and, for the IP layers,
// the stack), whose teardown fails the test on a leaked packet buffer.
// Subtests are named layer/form/rule ("ip6/in/burst/verdict/drop").
func Run(t *testing.T, impl Impl) {
	for _, l := range layers {
		t.Run(l.name, func(t *testing.T) {
			for _, burst := range []bool{false, true} {
				form := "per-packet"
				if burst {
					form = "burst"
				}
				t.Run(form, func(t *testing.T) {
					for _, r := range rules {
						if r.applies != nil && !r.applies(l) {
							continue
						}
						t.Run(r.name, func(t *testing.T) {
							e := newEnv(t, impl, l, fmt.Sprintf("%s %s %s: %s", impl.Name(), l.name, form, r.name))
							r.run(e, Behaviour{Burst: burst})
						})
					}
				})
			}
		})
	}
	t.Run("tags", func(t *testing.T) { tagsAcrossLayers(t, impl) })
}

// The rules, one line each in the package doc.
var rules = []rule{
	{"verdict/continue", nil, continueRule},
	{"verdict/drop", nil, dropRule},
	{"verdict/swallow-reinject", notRaw, swallowReinject},
	{"verdict/swallow-free", notRaw, swallowFree},
	{"verdict/transmit", onlyRaw, rawTransmit},
	{"order/default", nil, orderDefault},
	{"order/priority", nil, orderPriority},
	{"order/before", nil, orderBefore},
	{"order/after", nil, orderAfter},
	{"order/refused", nil, orderRefused},
	{"detach/later-burst", nil, detachLater},
	{"detach/inside-callback", nil, detachInside},
	{"detach/while-running", nil, detachRunning},
	{"panic", nil, panicRule},
	{"inject/provenance", onlyIf, injectProvenance},
	{"inject/reference", onlyIP, injectReference},
	{"inject/hop-limit", notRaw, hopLimit},
}

// with returns b with the verdicts given as marker, verdict pairs.
func with(b Behaviour, pairs ...any) Behaviour {
	b.Verdicts = map[byte]nke.Verdict{}
	for i := 0; i < len(pairs); i += 2 {
		b.Verdicts[byte(pairs[i].(int))] = pairs[i+1].(nke.Verdict)
	}
	return b
}

// after places a filter after another, whatever the layer's default.
func after(name string) nke.Order { return nke.Order{After: []string{name}} }

// calls are the markers of a filter's calls (not its Detached).
func (e *env) calls(name string) []byte {
	var out []byte
	for _, c := range e.log.Of(name) {
		if c.Dir != Detached {
			out = append(out, c.Marker)
		}
	}
	return out
}

// sees checks the markers a filter was called for, in order.
func (e *env) sees(rule, name string, want ...byte) {
	e.t.Helper()
	if got := e.calls(name); !slices.Equal(got, want) {
		e.t.Errorf("%s: %s: %s was called for %v, want %v (log %v)", e.name, rule, name, got, want, e.log)
	}
}

// onePerBurst reports whether the layer sends what send is given as
// separate bursts (the stack's output: one write, one call).
func (e *env) onePerBurst() bool { return e.l.kind == ipKind && e.l.out }

func continueRule(e *env, b Behaviour) {
	a := e.mustAttach("conf.a", b, nke.Order{})
	e.send(1, 2, 3)
	e.expect("continue delivers unchanged", 1, 2, 3)
	e.sees("continue", "conf.a", 1, 2, 3)
	for _, c := range e.log.Of("conf.a") {
		if c.Dir != e.l.dir() {
			e.t.Errorf("%s: call %v, want direction %s", e.name, c, e.l.dir())
		}
	}
	c := e.counters(a.Name())
	if c.Packets < 3 || c.Continue < 3 || c.Drop != 0 || c.Swallow != 0 || c.Bytes == 0 || c.Faults != 0 {
		e.t.Errorf("%s: counters %+v, want 3 packets (or more: other traffic) all continued, bytes counted", e.name, c)
	}
}

func dropRule(e *env, b Behaviour) {
	a := e.mustAttach("conf.a", with(b, 2, nke.Drop), nke.Order{})
	e.mustAttach("conf.b", b, after("conf.a"))
	d0, _ := e.stops()
	e.send(1, 2, 3, 4)
	e.expect("drop", 1, 3, 4)
	e.sees("drop: a later filter never sees a dropped packet", "conf.b", 1, 3, 4)
	if c := e.counters(a.Name()); c.Drop != 1 {
		e.t.Errorf("%s: the filter's counters %+v, want 1 drop", e.name, c)
	}
	if d, _ := e.stops(); d-d0 != 1 {
		e.t.Errorf("%s: the layer counted %d drops, want 1", e.name, d-d0)
	}
}

// keeper collects swallowed packets.
type keeper struct {
	mu   sync.Mutex
	kept []Kept
}

func (k *keeper) keep(x Kept) {
	k.mu.Lock()
	k.kept = append(k.kept, x)
	k.mu.Unlock()
}

func (k *keeper) take() []Kept {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := k.kept
	k.kept = nil
	return out
}

func keptMarkers(ks []Kept) []byte {
	var out []byte
	for _, k := range ks {
		out = append(out, k.Call.Marker)
	}
	return out
}

func swallowReinject(e *env, b Behaviour) {
	var k keeper
	b.PassMine, b.Keep = true, k.keep
	a := e.mustAttach("conf.a", with(b, 2, nke.Swallow, 3, nke.Swallow), nke.Order{})
	e.mustAttach("conf.b", Behaviour{Burst: b.Burst}, after("conf.a"))
	_, s0 := e.stops()
	e.send(1, 2, 3, 4)
	e.expect("swallow: not delivered", 1, 4)
	kept := k.take()
	if got := keptMarkers(kept); !slices.Equal(got, []byte{2, 3}) {
		e.t.Fatalf("%s: the filter was handed %v to keep, want [2 3]", e.name, got)
	}
	if c := e.counters(a.Name()); c.Swallow != 2 {
		e.t.Errorf("%s: the filter's counters %+v, want 2 swallowed", e.name, c)
	}
	if _, s := e.stops(); s-s0 != 2 {
		e.t.Errorf("%s: the layer counted %d swallowed, want 2", e.name, s-s0)
	}
	for _, x := range kept {
		if err := e.reinject(x, a); err != nil {
			e.t.Fatalf("%s: re-inject %d: %v", e.name, x.Call.Marker, err)
		}
	}
	e.expect("swallow, then re-inject: delivered in order", 2, 3)
	e.sees("swallow, then re-inject: the next filter sees each packet once", "conf.b", 1, 4, 2, 3)
}

func swallowFree(e *env, b Behaviour) {
	var k keeper
	b.Keep = k.keep
	e.mustAttach("conf.a", with(b, 2, nke.Swallow), nke.Order{})
	e.send(1, 2, 3)
	e.expect("swallow, freed by the filter", 1, 3)
	for _, x := range k.take() {
		x.M.Free() // the filter's to free; the teardown finds it back
	}
}

func rawTransmit(e *env, b Behaviour) {
	a := e.mustAttach("conf.a", with(b, 2, nke.Swallow), nke.Order{})
	_, s0 := e.stops()
	e.send(1, 2, 3)
	e.expect("transmit: not delivered", 1, 3)
	if got := e.wire(); !slices.Equal(got, []byte{2}) {
		e.t.Errorf("%s: sent back %v, want [2]", e.name, got)
	}
	if c := e.counters(a.Name()); c.Swallow != 1 {
		e.t.Errorf("%s: counters %+v, want the transmit counted as a swallow", e.name, c)
	}
	if _, s := e.stops(); s-s0 != 1 {
		e.t.Errorf("%s: the layer counted %d sent back, want 1", e.name, s-s0)
	}
}

// order is the order the filters were called for marker 1.
func (e *env) order() []string {
	var out []string
	for _, c := range e.log.Calls() {
		if c.Dir != Detached && c.Marker == 1 {
			out = append(out, strings.TrimPrefix(c.Filter, "conf."))
		}
	}
	return out
}

func (e *env) checkOrder(rule string, want ...string) {
	e.t.Helper()
	e.send(1)
	e.collect(1)
	if got := e.order(); !slices.Equal(got, want) {
		e.t.Errorf("%s: %s: filters ran %v, want %v", e.name, rule, got, want)
	}
}

// defaultOrder is the layer's default order of filters attached a, b, c.
func (e *env) defaultOrder(names ...string) []string {
	out := slices.Clone(names)
	if e.l.lifo() {
		slices.Reverse(out)
	}
	return out
}

func orderDefault(e *env, b Behaviour) {
	for _, n := range []string{"conf.a", "conf.b", "conf.c"} {
		e.mustAttach(n, b, nke.Order{})
	}
	what := "attach order (FIFO, as Apple's interface filters)"
	if e.l.lifo() {
		what = "newest first (LIFO, as Apple's IP filters)"
	}
	e.checkOrder("default order: "+what, e.defaultOrder("a", "b", "c")...)
}

func orderPriority(e *env, b Behaviour) {
	e.mustAttach("conf.a", b, nke.Order{Priority: 5})
	e.mustAttach("conf.b", b, nke.Order{Priority: -1})
	e.mustAttach("conf.c", b, nke.Order{})
	e.checkOrder("lower priority first", "b", "c", "a")
}

func orderBefore(e *env, b Behaviour) {
	e.mustAttach("conf.a", b, nke.Order{})
	e.mustAttach("conf.b", b, nke.Order{})
	d := e.defaultOrder("a", "b")
	// Its priority would put it last: the constraint wins.
	e.mustAttach("conf.c", b, nke.Order{Priority: 1, Before: []string{"conf." + d[0]}})
	e.checkOrder("before the first, over priority", "c", d[0], d[1])
}

func orderAfter(e *env, b Behaviour) {
	e.mustAttach("conf.a", b, nke.Order{})
	e.mustAttach("conf.b", b, nke.Order{})
	d := e.defaultOrder("a", "b")
	// Its priority would put it first: the constraint wins, and it
	// moves down only as far as the filter it named.
	e.mustAttach("conf.c", b, nke.Order{Priority: -1, After: []string{"conf." + d[0]}})
	e.checkOrder("after the first, over priority: moves next to it", d[0], "c", d[1])
}

func orderRefused(e *env, b Behaviour) {
	e.mustAttach("conf.cycle-one", b, nke.Order{Before: []string{"conf.cycle-two"}})
	_, err := e.attach("conf.cycle-two", b, nke.Order{Before: []string{"conf.cycle-one"}})
	if err == nil || !strings.Contains(err.Error(), "conf.cycle-one") || !strings.Contains(err.Error(), "conf.cycle-two") {
		e.t.Errorf("%s: a cycle: attach gave %v, want an error naming conf.cycle-one and conf.cycle-two", e.name, err)
	}
	_, err = e.attach("conf.late", b, after("conf.absent"))
	if err == nil || !strings.Contains(err.Error(), "conf.late") || !strings.Contains(err.Error(), "conf.absent") {
		e.t.Errorf("%s: an unmet After: attach gave %v, want an error naming conf.late and conf.absent", e.name, err)
	}
	e.checkOrder("a refused attach changes nothing", "cycle-one")
	for _, n := range []string{"conf.cycle-two", "conf.late"} {
		if k := e.detachedCount(n); k != 0 {
			e.t.Errorf("%s: the refused %s got Detached %d times", e.name, n, k)
		}
	}
}

func detachLater(e *env, b Behaviour) {
	a := e.mustAttach("conf.a", b, nke.Order{})
	e.mustAttach("conf.b", b, after("conf.a"))
	e.send(1, 2)
	e.expect("before detach", 1, 2)
	a.Detach()
	e.checkDetached("detach", a)
	a.Detach() // again: nothing
	e.send(3, 4)
	e.expect("after detach", 3, 4)
	e.sees("no call after Detach", "conf.a", 1, 2)
	e.sees("the others go on", "conf.b", 1, 2, 3, 4)
	if n := e.detachedCount("conf.a"); n != 1 {
		e.t.Errorf("%s: Detached ran %d times after a second Detach, want once", e.name, n)
	}
}

func detachInside(e *env, b Behaviour) {
	var mu sync.Mutex
	var a nke.Attachment
	b.OnCall = func(c Call) {
		mu.Lock()
		self := a
		mu.Unlock()
		if c.Marker == 2 {
			self.Detach()
		}
	}
	mu.Lock()
	a = e.mustAttach("conf.a", b, nke.Order{})
	mu.Unlock()
	e.send(1, 2, 3)
	e.expect("detach from inside a callback: the burst goes on", 1, 2, 3)
	e.checkDetached("detach from inside a callback", a)
	e.send(4, 5)
	e.expect("after the detach", 4, 5)
	for _, m := range e.calls("conf.a") {
		if m > 3 || m == 3 && e.onePerBurst() {
			e.t.Errorf("%s: detached inside its callback, the filter was called for %d in a later burst (calls %v)", e.name, m, e.calls("conf.a"))
		}
	}
}

func detachRunning(e *env, b Behaviour) {
	const chunks, per = 10, 20
	a := e.mustAttach("conf.a", b, nke.Order{})
	e.mustAttach("conf.b", b, nke.Order{})
	e.start()
	var got []byte
	var want []byte
	done := make(chan struct{})
	for c := 0; c < chunks; c++ {
		var ms []byte
		for i := 0; i < per; i++ {
			ms = append(ms, byte(1+c*per+i))
		}
		want = append(want, ms...)
		if c == 3 {
			go func() {
				a.Detach()
				close(done)
			}()
		}
		e.send(ms...)
		got = append(got, markers(e.collect(len(want)-len(got)))...)
	}
	<-done
	if !slices.Equal(got, want) {
		e.t.Errorf("%s: detach while traffic flows: delivered %d of %d packets, in order: %v", e.name, len(got), len(want), slices.Equal(got, want))
	}
	e.checkDetached("detach while traffic flows", a)
	if n := len(e.calls("conf.b")); n != len(want) {
		e.t.Errorf("%s: the filter left was called for %d packets, want %d", e.name, n, len(want))
	}
}

func panicRule(e *env, b Behaviour) {
	b.PanicOn = 2
	a := e.mustAttach("conf.a", b, nke.Order{})
	e.mustAttach("conf.b", Behaviour{Burst: b.Burst}, after("conf.a"))
	d0, _ := e.stops()
	e.send(1, 2, 3)
	want, lost := []byte{1, 3}, uint64(1)
	if b.Burst && !e.onePerBurst() {
		want, lost = nil, 3 // the burst it was handling
	}
	e.expect("a panicking filter's packet is dropped", want...)
	e.checkDetached("a panicking filter is detached", a)
	e.send(4, 5)
	e.expect("traffic goes on", 4, 5)
	for _, m := range e.calls("conf.a") {
		if m > 2 {
			e.t.Errorf("%s: the panicked filter was called again, for %d", e.name, m)
		}
	}
	if c := e.counters("conf.b"); c.Packets < uint64(len(want)+2) {
		e.t.Errorf("%s: the next filter counted %d packets, want %d", e.name, c.Packets, len(want)+2)
	}
	if n := e.faultReports("conf.a"); n != 1 {
		e.t.Errorf("%s: the fault was reported %d times, want once (log %q)", e.name, n, e.faults)
	}
	if d, _ := e.stops(); d-d0 != lost {
		e.t.Errorf("%s: the layer counted %d drops, want %d", e.name, d-d0, lost)
	}
}

func injectProvenance(e *env, b Behaviour) {
	var k keeper
	bc := b
	e.mustAttach("conf.c", bc, nke.Order{})
	ba := b
	ba.PassMine, ba.Keep = true, k.keep
	a := e.mustAttach("conf.a", with(ba, 2, nke.Swallow), after("conf.c"))
	e.mustAttach("conf.b", b, after("conf.a"))
	e.send(1, 2, 3)
	e.expect("swallowed", 1, 3)
	e.log.Reset()
	kept := k.take()
	if len(kept) != 1 {
		e.t.Fatalf("%s: kept %v, want [2]", e.name, keptMarkers(kept))
	}
	if err := e.reinject(kept[0], a); err != nil {
		e.t.Fatalf("%s: re-inject: %v", e.name, err)
	}
	got := e.expect("re-injected", 2)
	if got := fmt.Sprint(e.log.Calls()); got != "[conf.c "+string(e.l.dir())+" 2 conf.a "+string(e.l.dir())+" 2 mine conf.b "+string(e.l.dir())+" 2]" {
		e.t.Errorf("%s: re-injection must re-run every filter, the injector too, which recognises its packet: calls %s", e.name, got)
	}
	if !e.l.out && len(got) == 1 {
		if p := got[0].prov; p != (nke.Provenance{Injector: a.ID(), Generation: 1}) {
			e.t.Errorf("%s: delivered with provenance %+v, want injector %d, generation 1", e.name, p, a.ID())
		}
	}
}

func injectReference(e *env, b Behaviour) {
	var k keeper
	e.mustAttach("conf.c", b, nke.Order{})
	ba := b
	ba.PassInjected, ba.Keep = true, k.keep
	a := e.mustAttach("conf.a", with(ba, 2, nke.Swallow, 3, nke.Swallow, 5, nke.Swallow), after("conf.c"))
	e.mustAttach("conf.b", b, after("conf.a"))
	e.send(1, 2, 3, 4, 5)
	e.expect("swallowed", 1, 4)
	kept := k.take()
	if got := keptMarkers(kept); !slices.Equal(got, []byte{2, 3, 5}) {
		e.t.Fatalf("%s: kept %v, want [2 3 5]", e.name, got)
	}
	e.log.Reset()
	if err := e.reinject(kept[0], a); err != nil {
		e.t.Fatalf("%s: re-inject with a reference: %v", e.name, err)
	}
	e.expect("re-injected with a reference", 2)
	e.sees("with a reference the filters up to it are skipped", "conf.c")
	e.sees("with a reference the filters up to and including it are skipped", "conf.a")
	e.sees("with a reference the filters after it run", "conf.b", 2)
	e.log.Reset()
	if err := e.reinject(kept[1], nil); err != nil {
		e.t.Fatalf("%s: re-inject without a reference: %v", e.name, err)
	}
	e.expect("re-injected without a reference", 3)
	if got := e.order3(); !slices.Equal(got, []string{"c", "a", "b"}) {
		e.t.Errorf("%s: without a reference every filter runs again: %v", e.name, got)
	}
	// A reference no longer attached: an error, and the packet is the
	// caller's (input) or freed (output); the teardown finds it back
	// either way, or a double free shows.
	g := e.mustAttach("conf.gone", b, nke.Order{})
	g.Detach()
	<-g.Done()
	e.log.Reset()
	if err := e.reinject(kept[2], g); err == nil {
		e.t.Errorf("%s: inject with a detached reference succeeded", e.name)
	}
	e.expect("a refused inject delivers nothing")
	if c := e.log.Calls(); len(c) != 0 {
		e.t.Errorf("%s: filters ran on a refused inject: %v", e.name, c)
	}
}

// order3 is the order filters ran for marker 3, without the prefix.
func (e *env) order3() []string {
	var out []string
	for _, c := range e.log.Calls() {
		if c.Dir != Detached && c.Marker == 3 {
			out = append(out, strings.TrimPrefix(c.Filter, "conf."))
		}
	}
	return out
}

func hopLimit(e *env, b Behaviour) {
	var mu sync.Mutex
	var errs []error
	var self nke.Attachment
	b.Keep = func(k Kept) {
		// Re-inject at once, from inside the callback: the filter
		// swallows it again and again. At the interface layer with its
		// own reference (every filter runs again); at the IP layer
		// without one (with it, the filter would be skipped).
		ref := self
		if e.l.kind == ipKind {
			ref = nil
		}
		err := e.reinject(k, ref)
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	d0 := e.r.Ifp.Stats().InjectDrops
	self = e.mustAttach("conf.a", with(b, 9, nke.Swallow), nke.Order{})
	e.send(9)
	e.expect("a re-injection loop delivers nothing")
	if n := len(e.calls("conf.a")); n != nke.MaxInjections+1 {
		e.t.Errorf("%s: the looping filter saw the packet %d times, want %d (the first and nke.MaxInjections)", e.name, n, nke.MaxInjections+1)
	}
	mu.Lock()
	defer mu.Unlock()
	// IP injects run the filters at once, so the innermost (failing)
	// inject returns first there.
	loops, others := 0, 0
	for _, err := range errs {
		switch {
		case errors.Is(err, nke.ErrInjectLoop):
			loops++
		case err != nil:
			others++
		}
	}
	if len(errs) != nke.MaxInjections+1 || loops != 1 || others != 0 {
		e.t.Errorf("%s: injections returned %v, want %d successes and one nke.ErrInjectLoop", e.name, errs, nke.MaxInjections)
	}
	if e.l.kind == ifKind {
		if d := e.r.Ifp.Stats().InjectDrops - d0; d != 1 {
			e.t.Errorf("%s: the interface counted %d inject drops, want 1", e.name, d)
		}
	}
}

// tagsAcrossLayers: a tag an interface filter puts on a packet is there
// when the IP input filters of the same packet run, IPv4 and IPv6, both
// forms.
func tagsAcrossLayers(t *testing.T, impl Impl) {
	for _, l := range layers {
		if l.kind != ipKind || l.out {
			continue
		}
		for _, burst := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/burst=%v", l.name, burst), func(t *testing.T) {
				e := newEnv(t, impl, l, fmt.Sprintf("%s tags %s burst=%v", impl.Name(), l.name, burst))
				b := Behaviour{Burst: burst, Record: e.log}
				tb := b
				tb.PutTag = true
				if _, err := e.r.Ifp.AttachFilter(nke.InterfaceFilterSpec{Name: "conf.tagger",
					Filter: impl.InterfaceFilter("conf.tagger", tb)}); err != nil {
					t.Fatal(err)
				}
				e.mustAttach("conf.reader", b, nke.Order{})
				e.send(1, 2)
				e.expect("tagged", 1, 2)
				calls := e.log.Of("conf.reader")
				if len(calls) != 2 {
					t.Fatalf("%s: the IP filter saw %v", e.name, calls)
				}
				for _, c := range calls {
					if !c.Tagged {
						t.Errorf("%s: the IP input filter saw %v without the interface filter's tag", e.name, c)
					}
				}
			})
		}
	}
}
