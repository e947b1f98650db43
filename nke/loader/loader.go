// Package loader loads NKE bundles (nke/bundle) into the guest at run
// time, Apple's kextload and kextunload for NKEs: it resolves a bundle's
// OSBundleLibraries, starts its implementation (a built-in module or a
// WebAssembly one) with its settings on a kernel of its own, enforces the
// manifest's capabilities on every verdict, refuses an unload while
// dependants or control clients hold the NKE, drains in-flight calls
// before the stop routine, swaps a new version in without losing a packet
// (Replace), and reports a kextstat-like table. docs/loader.md has the
// rules.
//
// The loader imports only nke/...: the guest hands it its hooks through
// Config.
package loader

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/bundle"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Errors of the loader. Each error it returns wraps one of these (or a
// *bundle.ManifestError) and names the bundles involved.
var (
	// ErrExists: a bundle of that CFBundleIdentifier is loaded (EEXIST).
	ErrExists = errors.New("loader: a bundle of that identifier is loaded")
	// ErrNotLoaded: no bundle of that identifier is loaded (ENOENT).
	ErrNotLoaded = errors.New("loader: no such bundle is loaded")
	// ErrDependency: a library is missing, incompatible, or the
	// dependencies form a cycle.
	ErrDependency = errors.New("loader: unresolved dependency")
	// ErrInUse: unload refused while dependants are loaded or control
	// clients are connected; errors.Is(err, nke.ErrBusy) holds too
	// (EBUSY).
	ErrInUse error = inUseError{}
	// ErrStart: the NKE's start routine failed or panicked; nothing of
	// it stays attached.
	ErrStart = errors.New("loader: start failed")
	// ErrStop: the NKE's stop routine failed or panicked; it stays
	// loaded.
	ErrStop = errors.New("loader: stop failed")
	// ErrReplace: Replace refused (same version, a dependant's minimum
	// not met, layers that cannot be swapped).
	ErrReplace = errors.New("loader: cannot replace")
)

// DefaultKPIs are the KPI ids the harness offers (OSBundleLibraries
// entries under bundle.KPIPrefix) and their versions, all 1.0 today.
var DefaultKPIs = map[string]string{
	bundle.KPIPrefix + "mbuf":    "1.0",
	bundle.KPIPrefix + "raw":     "1.0",
	bundle.KPIPrefix + "iface":   "1.0",
	bundle.KPIPrefix + "proto":   "1.0",
	bundle.KPIPrefix + "ip":      "1.0",
	bundle.KPIPrefix + "socket":  "1.0",
	bundle.KPIPrefix + "control": "1.0",
	bundle.KPIPrefix + "wasm":    "1.0",
}

type inUseError struct{}

func (inUseError) Error() string { return "loader: the bundle is in use (EBUSY)" }

// Is makes an ErrInUse an nke.ErrBusy too.
func (inUseError) Is(target error) bool { return target == nke.ErrBusy }

// DefaultDrainTimeout bounds the wait for in-flight calls at unload when
// Config.DrainTimeout is zero.
const DefaultDrainTimeout = time.Second

// Config is what the guest gives the loader.
type Config struct {
	// Kernel returns the kernel an NKE starts on, one per NKE: owner is
	// its bundle id, which its control endpoints carry. Required.
	Kernel func(owner string) nke.Kernel
	// Builtin finds a built-in implementation by the manifest's
	// NKEHarness.Builtin (nke/builtin.Lookup). Required for built-in
	// bundles.
	Builtin func(name string) (nke.Module, error)
	// WebAssembly makes a module of a bundle's WebAssembly file
	// (NKEHarness.WebAssembly, under Contents/WebAssembly/):
	// wasmbundle.Loader(wasm.Config{}). nil refuses WebAssembly bundles.
	WebAssembly func(b *bundle.Bundle, file string) (nke.Module, error)
	// KPIs are the KPI ids offered and their versions; nil is
	// DefaultKPIs. A KPI satisfies a bundle asking for version v if it
	// has the same major version and is not older.
	KPIs map[string]string
	// Events, if set, is told of loads, unloads, replaces, failures and
	// capability refusals: kind is "load", "unload", "replace",
	// "load-failed", "unload-failed" or "refused". A refusal is reported
	// from the data path (once per NKE and capability), so Events must
	// not block.
	Events func(kind, id, msg string)
	// ControlClients, if set, names the control clients connected to
	// the endpoints of owner (a bundle id): unload is refused while
	// there are any, unless forced.
	ControlClients func(owner string) []string
	// DisconnectControl, if set, disconnects every control client of
	// owner: a forced unload, and a Replace handing an endpoint to the
	// new version, call it.
	DisconnectControl func(owner string)
	// DrainTimeout bounds the wait for in-flight calls at unload;
	// zero is DefaultDrainTimeout.
	DrainTimeout time.Duration
	// Logf, if set, writes the loader's log.
	Logf func(format string, args ...any)
}

// Options qualify one load.
type Options struct {
	// Settings replace the manifest's NKEHarness.Settings when
	// OverrideSettings is set.
	Settings         string
	OverrideSettings bool
}

// Loader loads and unloads bundles.
type Loader struct {
	cfg Config

	// op serialises loads, unloads and replaces (start and stop run
	// under it); mu guards the list, which Stat reads without waiting
	// for a start.
	op sync.Mutex
	mu sync.Mutex
	// +checklocks:mu
	loaded []*instance
	// +checklocks:mu
	nextIndex int
}

// New returns a loader.
func New(cfg Config) (*Loader, error) {
	if cfg.Kernel == nil {
		return nil, errors.New("loader: Config.Kernel is required")
	}
	if cfg.KPIs == nil {
		cfg.KPIs = DefaultKPIs
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	return &Loader{cfg: cfg}, nil
}

func (l *Loader) event(kind, id, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.cfg.Logf("%s %s: %s", kind, id, msg)
	if l.cfg.Events != nil {
		l.cfg.Events(kind, id, msg)
	}
}

// caps are the manifest's capabilities as flags for the data path.
type caps struct{ modify, drop, inject bool }

// instance is a loaded (or loading) bundle.
type instance struct {
	l        *Loader
	b        *bundle.Bundle
	index    int
	settings string
	can      caps
	stop     func() error
	loadedAt time.Time

	paused  atomic.Bool
	refused atomic.Uint64
	logged  atomic.Uint32 // capabilities whose refusal was logged, a bit each

	handoverIn []byte

	mu sync.Mutex
	// +checklocks:mu
	replacing *instance
	// +checklocks:mu
	atts []*attachment
	// +checklocks:mu
	pruneAt int
	// +checklocks:mu
	plain []nke.Attachment
	// +checklocks:mu
	prunePlainAt int
	// +checklocks:mu
	controls []*control
	// +checklocks:mu
	export func() ([]byte, error)
	// +checklocks:mu
	taken map[any]bool
}

func (inst *instance) id() string { return inst.b.Manifest.ID }

// addAttachment records a; attachments that are done are dropped from
// the list as it grows (an NKE such as churn attaches and detaches all
// the time).
func (inst *instance) addAttachment(a *attachment) {
	inst.mu.Lock()
	defer inst.mu.Unlock()
	if len(inst.atts) >= inst.pruneAt {
		inst.atts = slices.DeleteFunc(inst.atts, func(a *attachment) bool { return isClosed(a.done) })
		inst.pruneAt = max(16, 2*len(inst.atts))
	}
	inst.atts = append(inst.atts, a)
}

func (inst *instance) addPlain(a nke.Attachment) {
	inst.mu.Lock()
	defer inst.mu.Unlock()
	if len(inst.plain) >= inst.prunePlainAt {
		inst.plain = slices.DeleteFunc(inst.plain, func(a nke.Attachment) bool { return isClosed(a.Done()) })
		inst.prunePlainAt = max(16, 2*len(inst.plain))
	}
	inst.plain = append(inst.plain, a)
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func (inst *instance) addControl(c *control) {
	inst.mu.Lock()
	defer inst.mu.Unlock()
	inst.controls = append(inst.controls, c)
}

func (inst *instance) oldVersion() *instance {
	inst.mu.Lock()
	defer inst.mu.Unlock()
	return inst.replacing
}

// takeSlot finds, in a Replace, the old version's slot at key with the
// same form, not yet taken, for the new version's filter to go in.
func (inst *instance) takeSlot(key, form string) *slot {
	old := inst.oldVersion()
	if old == nil {
		return nil
	}
	old.mu.Lock()
	atts := slices.Clone(old.atts)
	old.mu.Unlock()
	inst.mu.Lock()
	defer inst.mu.Unlock()
	for _, a := range atts {
		s := a.s
		if s.key != key || s.form != form || a.detachedYet() || s.cur.Load() != a.im || inst.taken[s] {
			continue
		}
		if inst.taken == nil {
			inst.taken = map[any]bool{}
		}
		inst.taken[s] = true
		return s
	}
	return nil
}

// takeControl finds, in a Replace, the old version's endpoint called name.
func (inst *instance) takeControl(name string) *ctlProxy {
	old := inst.oldVersion()
	if old == nil {
		return nil
	}
	old.mu.Lock()
	cs := slices.Clone(old.controls)
	old.mu.Unlock()
	inst.mu.Lock()
	defer inst.mu.Unlock()
	for _, c := range cs {
		if c.spec.Name != name || c.isGone() || inst.taken[c.p] {
			continue
		}
		if inst.taken == nil {
			inst.taken = map[any]bool{}
		}
		inst.taken[c.p] = true
		return c.p
	}
	return nil
}

var capBits = map[string]uint32{bundle.CapModify: 1, bundle.CapDrop: 2, bundle.CapInject: 4}

// refused counts an operation the manifest does not allow and logs the
// first of each capability.
func (inst *instance) refusedOp(capability, what string) {
	inst.refused.Add(1)
	bit := capBits[capability]
	for {
		old := inst.logged.Load()
		if old&bit != 0 {
			return
		}
		if inst.logged.CompareAndSwap(old, old|bit) {
			break
		}
	}
	inst.l.event("refused", inst.id(), "tried to %s without the %s capability (refused; counted, logged once)", what, capability)
}

func (inst *instance) refuse(capability, what string) error {
	inst.refusedOp(capability, what)
	return fmt.Errorf("%w: %s may not %s without %q", ErrCapability, inst.id(), what, capability)
}

// verdict checks a filter's verdict against the capabilities: a packet
// replaced (by another, not nil) without modify is dropped (the replacement freed by the
// kernel; the original was the filter's to free, as with any
// replacement), a drop or swallow without drop becomes continue.
func (inst *instance) verdict(v nke.Verdict, orig, now *mbuf.Mbuf) nke.Verdict {
	if !inst.can.modify && orig != now && orig != nil && now != nil {
		inst.refusedOp(bundle.CapModify, "replace a packet")
		return nke.Drop
	}
	if (v == nke.Drop || v == nke.Swallow) && !inst.can.drop {
		inst.refusedOp(bundle.CapDrop, v.String()+" a packet")
		return nke.Continue
	}
	return v
}

func (inst *instance) rawVerdict(v nke.RawVerdict) nke.RawVerdict {
	switch {
	case v == nke.RawDrop && !inst.can.drop:
		inst.refusedOp(bundle.CapDrop, "drop a frame at the ring")
		return nke.RawPass
	case v == nke.RawTransmit && !inst.can.inject:
		inst.refusedOp(bundle.CapInject, "transmit a frame back")
		return nke.RawPass
	}
	return v
}

// find returns the loaded instance of id.
func (l *Loader) find(id string) *instance {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, inst := range l.loaded {
		if inst.id() == id {
			return inst
		}
	}
	return nil
}

func (l *Loader) list() []*instance {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.loaded)
}

// kpiSatisfies: same major version, offered not older than wanted.
func kpiSatisfies(offered, want string) bool {
	c, err := bundle.CompareVersions(want, offered)
	if err != nil || c > 0 {
		return false
	}
	major := func(v string) string { m, _, _ := strings.Cut(v, "."); return strings.TrimLeft(m, "0") }
	return major(offered) == major(want)
}

// checkLibraries checks b's libraries against the KPIs and the loaded
// bundles (and staged ones, which LoadSet loads first).
func (l *Loader) checkLibraries(b *bundle.Bundle, staged map[string]*bundle.Bundle) error {
	m := b.Manifest
	for _, k := range m.KPIs() {
		have, ok := l.cfg.KPIs[k]
		if !ok {
			return fmt.Errorf("%w: %s needs KPI %s %s, which this guest does not offer (it offers %s)", ErrDependency, m.ID, k, m.Libraries[k], strings.Join(sortedKeys(l.cfg.KPIs), ", "))
		}
		if !kpiSatisfies(have, m.Libraries[k]) {
			return fmt.Errorf("%w: %s needs KPI %s %s, this guest offers %s", ErrDependency, m.ID, k, m.Libraries[k], have)
		}
	}
	for _, d := range m.Depends() {
		want := m.Libraries[d]
		var dm *bundle.Manifest
		where := "loaded"
		if inst := l.find(d); inst != nil {
			dm = inst.b.Manifest
		} else if sb := staged[d]; sb != nil {
			dm, where = sb.Manifest, "in this request"
		} else {
			return fmt.Errorf("%w: %s -> %s: %s is not loaded (load it first, or in the same request)", ErrDependency, m.ID, d, d)
		}
		if !bundle.Satisfies(dm.Version, dm.Compatible, want) {
			compat := dm.Compatible
			if compat == "" {
				compat = "none: it is not a library (no OSBundleCompatibleVersion)"
			}
			return fmt.Errorf("%w: %s -> %s: wants version %s, %s %s (compatible back to %s) is %s", ErrDependency, m.ID, d, want, d, dm.Version, compat, where)
		}
	}
	return nil
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// module finds b's implementation.
func (l *Loader) module(b *bundle.Bundle) (nke.Module, error) {
	h := b.Manifest.Harness
	var m nke.Module
	var err error
	switch {
	case h.WebAssembly != "":
		if l.cfg.WebAssembly == nil {
			return m, fmt.Errorf("%w: %s is a WebAssembly NKE and this loader has no WebAssembly runtime", ErrStart, b.Manifest.ID)
		}
		if _, err := b.WebAssemblyModule(); err != nil {
			return m, fmt.Errorf("%w: %w", ErrStart, err)
		}
		m, err = l.cfg.WebAssembly(b, h.WebAssembly)
	default:
		if l.cfg.Builtin == nil {
			return m, fmt.Errorf("%w: %s: this loader has no built-in NKEs", ErrStart, b.Manifest.ID)
		}
		m, err = l.cfg.Builtin(h.Builtin)
		if err == nil && m.ID != b.Manifest.ID {
			err = fmt.Errorf("built-in %s is %s, but the manifest's CFBundleIdentifier is %s", h.Builtin, m.ID, b.Manifest.ID)
		}
	}
	if err == nil {
		err = m.Check()
	}
	if err != nil {
		return m, fmt.Errorf("%w: %s: %w", ErrStart, b.Manifest.ID, err)
	}
	return m, nil
}

func (l *Loader) newInstance(b *bundle.Bundle, opts Options) *instance {
	h := b.Manifest.Harness
	inst := &instance{l: l, b: b, settings: h.Settings, loadedAt: time.Now(),
		can: caps{modify: h.Can(bundle.CapModify), drop: h.Can(bundle.CapDrop), inject: h.Can(bundle.CapInject)}}
	if opts.OverrideSettings {
		inst.settings = opts.Settings
	}
	return inst
}

// start runs the module's start, a panic being a failure.
func (inst *instance) start(m nke.Module, k nke.Kernel) (stop func() error, err error) {
	defer func() {
		if r := recover(); r != nil {
			stop, err = nil, fmt.Errorf("start panicked: %v\n%s", r, debug.Stack())
		}
	}()
	stop, err = m.Start(k, inst.settings)
	if err == nil && stop == nil {
		err = errors.New("start returned no stop routine")
	}
	return stop, err
}

func (inst *instance) callStop() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("stop panicked: %v", r)
		}
	}()
	return inst.stop()
}

// cleanup detaches and deregisters what the NKE left, and waits (bounded)
// for the detaches. It returns how many it found.
func (inst *instance) cleanup() int {
	inst.mu.Lock()
	atts := slices.Clone(inst.atts)
	plain := slices.Clone(inst.plain)
	ctls := slices.Clone(inst.controls)
	inst.mu.Unlock()
	n := 0
	var waits []<-chan struct{}
	for _, a := range atts {
		if !a.detachedYet() {
			n++
			a.Detach()
		}
		waits = append(waits, a.Done())
	}
	for _, a := range plain {
		select {
		case <-a.Done():
			continue
		default:
		}
		n++
		a.Detach()
		waits = append(waits, a.Done())
	}
	for _, c := range ctls {
		if c.isGone() {
			continue
		}
		n++
		if err := c.Deregister(); errors.Is(err, nke.ErrBusy) && inst.l.cfg.DisconnectControl != nil {
			inst.l.cfg.DisconnectControl(inst.id())
			c.Deregister()
		}
	}
	deadline := time.After(inst.l.cfg.DrainTimeout)
	for _, w := range waits {
		select {
		case <-w:
		case <-deadline:
			inst.l.cfg.Logf("%s: detach not finished after %v", inst.id(), inst.l.cfg.DrainTimeout)
			return n
		}
	}
	return n
}

// Load loads b: its libraries must be offered (KPIs) or loaded
// (bundles) at compatible versions, its id not loaded; it starts with
// its settings (or opts'). It fully succeeds or leaves nothing behind.
func (l *Loader) Load(ctx context.Context, b *bundle.Bundle, opts Options) error {
	l.op.Lock()
	defer l.op.Unlock()
	return l.load(ctx, b, opts, nil)
}

func (l *Loader) load(ctx context.Context, b *bundle.Bundle, opts Options, staged map[string]*bundle.Bundle) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if b == nil || b.Manifest == nil {
		return errors.New("loader: no bundle")
	}
	id := b.Manifest.ID
	if old := l.find(id); old != nil {
		return fmt.Errorf("%w: %s %s (from %s) is loaded; unload it first, or replace it", ErrExists, id, old.b.Manifest.Version, old.b.Name)
	}
	if err := l.checkLibraries(b, staged); err != nil {
		l.event("load-failed", id, "%v", err)
		return err
	}
	m, err := l.module(b)
	if err != nil {
		l.event("load-failed", id, "%v", err)
		return err
	}
	inst := l.newInstance(b, opts)
	stop, err := inst.start(m, &kernel{base: l.cfg.Kernel(id), inst: inst})
	if err != nil {
		left := inst.cleanup()
		err = fmt.Errorf("%w: %s: %w", ErrStart, id, err)
		l.event("load-failed", id, "%v (%d attachments it left detached)", err, left)
		return err
	}
	inst.stop = stop
	l.mu.Lock()
	l.nextIndex++
	inst.index = l.nextIndex
	l.loaded = append(l.loaded, inst)
	l.mu.Unlock()
	l.event("load", id, "version %s loaded from %s (%s)", b.Manifest.Version, b.Name, b.Manifest.Harness.Kind())
	return nil
}

// LoadSet loads bundles together, each after the bundles of the set it
// depends on; a cycle, or a library neither loaded nor in the set, is
// refused with the chain named ("com.a -> com.b -> com.a") before
// anything starts. If one fails to start, those the call loaded are
// unloaded again, newest first.
func (l *Loader) LoadSet(ctx context.Context, bs []*bundle.Bundle) error {
	l.op.Lock()
	defer l.op.Unlock()
	order, err := l.order(bs)
	if err != nil {
		return err
	}
	staged := map[string]*bundle.Bundle{}
	for _, b := range bs {
		staged[b.Manifest.ID] = b
	}
	var done []string
	for _, b := range order {
		if err := l.load(ctx, b, Options{}, staged); err != nil {
			for i := len(done) - 1; i >= 0; i-- {
				if _, uerr := l.unload(ctx, done[i], true); uerr != nil {
					err = errors.Join(err, uerr)
				}
			}
			return err
		}
		done = append(done, b.Manifest.ID)
	}
	return nil
}

// order sorts a set so that dependencies come first.
func (l *Loader) order(bs []*bundle.Bundle) ([]*bundle.Bundle, error) {
	byID := map[string]*bundle.Bundle{}
	for _, b := range bs {
		id := b.Manifest.ID
		if byID[id] != nil {
			return nil, fmt.Errorf("%w: %s twice in the request (%s and %s)", ErrExists, id, byID[id].Name, b.Name)
		}
		byID[id] = b
	}
	var out []*bundle.Bundle
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(id string, path []string) error
	visit = func(id string, path []string) error {
		path = append(path, id)
		switch state[id] {
		case 1:
			return fmt.Errorf("%w: a cycle: %s", ErrDependency, strings.Join(path, " -> "))
		case 2:
			return nil
		}
		b := byID[id]
		state[id] = 1
		for _, d := range b.Manifest.Depends() {
			if byID[d] != nil {
				if err := visit(d, path); err != nil {
					return err
				}
			} else if l.find(d) == nil {
				return fmt.Errorf("%w: %s -> %s: %s is not loaded nor in this request", ErrDependency, strings.Join(path, " -> "), d, d)
			}
		}
		state[id] = 2
		out = append(out, b)
		return nil
	}
	for _, b := range bs {
		if err := visit(b.Manifest.ID, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// UnloadResult reports an unload.
type UnloadResult struct {
	// ID is the bundle unloaded.
	ID string
	// Dependants are the bundles a forced unload unloaded first, in
	// that order.
	Dependants []string
	// Disconnected: a forced unload disconnected control clients.
	Disconnected []string
	// Drain is how long the in-flight calls took to end after the
	// NKE's filters stopped being called; DrainTimedOut if some were
	// still running at DrainTimeout (stop was called anyway, and the
	// kernel's detach waits for them).
	Drain         time.Duration
	DrainTimedOut bool
	// Stop is how long the stop routine took.
	Stop time.Duration
	// Leftovers are the attachments and endpoints its stop left, which
	// the loader detached.
	Leftovers int
}

// dependants are the loaded bundles depending on id, newest first.
func (l *Loader) dependants(id string) []*instance {
	var out []*instance
	all := l.list()
	for i := len(all) - 1; i >= 0; i-- {
		if slices.Contains(all[i].b.Manifest.Depends(), id) {
			out = append(out, all[i])
		}
	}
	return out
}

// Unload unloads the bundle id. It is refused (ErrInUse, wrapping
// nke.ErrBusy, naming them) while loaded bundles depend on it or control
// clients are connected to its endpoints, unless force: then its
// dependants are unloaded first, newest first, and its clients
// disconnected. Its filters stop being called, the calls in flight drain
// (bounded by DrainTimeout, measured), then its stop routine runs; a stop
// that fails keeps it loaded, its filters called again.
func (l *Loader) Unload(ctx context.Context, id string, force bool) (*UnloadResult, error) {
	l.op.Lock()
	defer l.op.Unlock()
	return l.unload(ctx, id, force)
}

func (l *Loader) unload(ctx context.Context, id string, force bool) (*UnloadResult, error) {
	inst := l.find(id)
	if inst == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotLoaded, id)
	}
	res := &UnloadResult{ID: id}
	deps := l.dependants(id)
	var clients []string
	if l.cfg.ControlClients != nil {
		clients = l.cfg.ControlClients(id)
	}
	if !force && (len(deps) > 0 || len(clients) > 0) {
		var why []string
		if len(deps) > 0 {
			var names []string
			for _, d := range deps {
				names = append(names, d.id())
			}
			why = append(why, "loaded bundles depend on it: "+strings.Join(names, ", "))
		}
		if len(clients) > 0 {
			why = append(why, "control clients are connected: "+strings.Join(clients, ", "))
		}
		err := fmt.Errorf("%w: %s: %s (unload those first, or force the unload)", ErrInUse, id, strings.Join(why, "; "))
		l.event("unload-failed", id, "%v", err)
		return nil, err
	}
	for _, d := range deps {
		if l.find(d.id()) != d {
			continue // unloaded already, as a dependant of another
		}
		r, err := l.unload(ctx, d.id(), true)
		if err != nil {
			return nil, fmt.Errorf("unload %s: its dependant: %w", id, err)
		}
		res.Dependants = append(res.Dependants, r.Dependants...)
		res.Dependants = append(res.Dependants, d.id())
	}
	if len(clients) > 0 && l.cfg.DisconnectControl != nil {
		l.cfg.DisconnectControl(id)
		res.Disconnected = clients
	}
	if err := l.stopInstance(ctx, inst, res); err != nil {
		return res, err
	}
	l.remove(inst)
	l.event("unload", id, "version %s unloaded (drain %v%s, stop %v)", inst.b.Manifest.Version, res.Drain, map[bool]string{true: ", timed out"}[res.DrainTimedOut], res.Stop)
	return res, nil
}

func (l *Loader) remove(inst *instance) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.loaded = slices.DeleteFunc(l.loaded, func(i *instance) bool { return i == inst })
}

// drain pauses inst and waits for its in-flight calls, bounded.
func (l *Loader) drain(ctx context.Context, inst *instance, res *UnloadResult) {
	inst.paused.Store(true)
	start := time.Now()
	inst.mu.Lock()
	atts := slices.Clone(inst.atts)
	inst.mu.Unlock()
	deadline := start.Add(l.cfg.DrainTimeout)
	for d := time.Microsecond; ; d = min(2*d, time.Millisecond) {
		busy := false
		for _, a := range atts {
			if a.im.inflight.Load() != 0 {
				busy = true
				break
			}
		}
		if !busy {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			res.DrainTimedOut = true
			break
		}
		time.Sleep(d)
	}
	res.Drain = time.Since(start)
}

// stopInstance drains and stops inst; on failure it is in service again.
func (l *Loader) stopInstance(ctx context.Context, inst *instance, res *UnloadResult) error {
	l.drain(ctx, inst, res)
	t := time.Now()
	err := inst.callStop()
	res.Stop = time.Since(t)
	if err != nil {
		inst.paused.Store(false)
		err = fmt.Errorf("%w: %s: %w (still loaded; its filters are called again)", ErrStop, inst.id(), err)
		l.event("unload-failed", inst.id(), "%v", err)
		return err
	}
	if n := inst.cleanup(); n > 0 {
		res.Leftovers = n
		l.cfg.Logf("%s: its stop left %d attachments or endpoints; detached", inst.id(), n)
	}
	return nil
}

// UnloadAll unloads every bundle, newest first, by force (shutdown). A
// stop that fails is reported and the NKE's attachments detached anyway.
func (l *Loader) UnloadAll(ctx context.Context) error {
	l.op.Lock()
	defer l.op.Unlock()
	var errs []error
	all := l.list()
	for i := len(all) - 1; i >= 0; i-- {
		inst := all[i]
		if l.find(inst.id()) == nil {
			continue // unloaded as a dependant
		}
		if _, err := l.unload(ctx, inst.id(), true); err != nil {
			errs = append(errs, err)
			inst.cleanup()
			l.remove(inst)
		}
	}
	return errors.Join(errs...)
}

// ReplaceResult reports a Replace.
type ReplaceResult struct {
	ID                  string
	OldVersion, Version string
	// Swapped counts the filters and endpoints the new version took
	// over in place; Beside those it attached anew (kept beside the old
	// ones until the old version's stop detached them).
	Swapped, Beside int
	// Swap is how long putting every new filter in place took (one
	// atomic store each), Handover the state's size if handed over.
	Swap     time.Duration
	Handover int
	// Old is the old version's unload (drain and stop); OldStopError
	// says if its stop failed (it is then detached anyway).
	Old          UnloadResult
	OldStopError error
}

// Replace swaps the loaded bundle of b's id for b, a different version:
// every dependant's minimum version must still be met. The new version
// starts beside the old one; each filter it attaches at the same hook,
// name and form as one of the old version goes into that filter's place
// in the chain, and once its start succeeded all go in at once (one
// atomic store each), so every packet meets exactly one version and none
// is lost; control endpoints of the same name go over too (the old
// version's clients are disconnected). Then the old version is drained
// and stopped. With handover the old version's export (Handover) is
// called first and its state handed to the new start. If the new start
// fails, the old version goes on untouched. NKEs with socket filters or
// protocols cannot be swapped (unload and load them).
func (l *Loader) Replace(ctx context.Context, b *bundle.Bundle, handover bool) (*ReplaceResult, error) {
	l.op.Lock()
	defer l.op.Unlock()
	id := b.Manifest.ID
	old := l.find(id)
	if old == nil {
		return nil, fmt.Errorf("%w: %s (load it instead)", ErrNotLoaded, id)
	}
	res := &ReplaceResult{ID: id, OldVersion: old.b.Manifest.Version, Version: b.Manifest.Version}
	if c, err := bundle.CompareVersions(b.Manifest.Version, old.b.Manifest.Version); err != nil || c == 0 {
		return nil, fmt.Errorf("%w: %s %s is the version loaded; a replace needs another version", ErrReplace, id, b.Manifest.Version)
	}
	for _, d := range l.dependants(id) {
		want := d.b.Manifest.Libraries[id]
		if !bundle.Satisfies(b.Manifest.Version, b.Manifest.Compatible, want) {
			return nil, fmt.Errorf("%w: %s -> %s: wants version %s, which %s %s (compatible back to %q) does not meet", ErrReplace, d.id(), id, want, id, b.Manifest.Version, b.Manifest.Compatible)
		}
	}
	old.mu.Lock()
	plain := len(old.plain)
	export := old.export
	old.mu.Unlock()
	if plain > 0 {
		return nil, fmt.Errorf("%w: %s has socket filters or protocols, which the loader cannot swap in place; unload and load it", ErrReplace, id)
	}
	if err := l.checkLibraries(b, nil); err != nil {
		return nil, err
	}
	m, err := l.module(b)
	if err != nil {
		return nil, err
	}
	inst := l.newInstance(b, Options{})
	inst.mu.Lock()
	inst.replacing = old
	inst.mu.Unlock()
	if handover {
		if export == nil {
			return nil, fmt.Errorf("%w: %s %s exports no state (its start did not call SetExport); replace without handover", ErrReplace, id, res.OldVersion)
		}
		state, err := callExport(export)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: export: %w", ErrReplace, id, err)
		}
		inst.handoverIn = state
		res.Handover = len(state)
	}
	stop, err := inst.start(m, &kernel{base: l.cfg.Kernel(id), inst: inst})
	inst.mu.Lock()
	inst.replacing = nil
	atts := slices.Clone(inst.atts)
	ctls := slices.Clone(inst.controls)
	inst.mu.Unlock()
	if err != nil {
		inst.cleanup()
		err = fmt.Errorf("%w: %s %s: %w (%s stays)", ErrStart, id, b.Manifest.Version, err, res.OldVersion)
		l.event("load-failed", id, "%v", err)
		return nil, err
	}
	inst.stop = stop
	t := time.Now()
	for _, a := range atts {
		if a.staged.Load() {
			a.commit()
			res.Swapped++
		} else {
			res.Beside++
		}
	}
	res.Swap = time.Since(t)
	tookCtl := false
	for _, c := range ctls {
		if c.staged.Load() {
			c.commit()
			res.Swapped++
			tookCtl = true
		}
	}
	if tookCtl && l.cfg.DisconnectControl != nil {
		l.cfg.DisconnectControl(id)
	}
	// The new version takes the old one's place in the list.
	l.mu.Lock()
	inst.index = old.index
	for i, x := range l.loaded {
		if x == old {
			l.loaded[i] = inst
		}
	}
	l.mu.Unlock()
	res.Old.ID = id
	if err := l.stopInstance(ctx, old, &res.Old); err != nil {
		res.OldStopError = err
		old.cleanup()
	}
	l.event("replace", id, "version %s replaced by %s (%d swapped in place, %d beside, swap %v, old drained in %v)", res.OldVersion, res.Version, res.Swapped, res.Beside, res.Swap, res.Old.Drain)
	return res, nil
}

// callExport runs an old version's export, a panic being an error.
func callExport(export func() ([]byte, error)) (state []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("export panicked: %v", r)
		}
	}()
	return export()
}
