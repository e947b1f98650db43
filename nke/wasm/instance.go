package wasm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/sys"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/nke/wasm/abi"
)

// Host is what an instance is given by whoever runs it (the loader, a
// test). Every field is optional.
type Host struct {
	// Name names the instance in logs and faults ("com.example.wasmfw").
	Name string
	// Logf receives the module's log calls and its stdout and stderr.
	Logf func(format string, args ...any)
	// OnFault is told once when the instance faults.
	OnFault func(*Fault)
	// Control receives the module's ctl_send calls: data for the
	// kernel-control client conn. It must not call back into the
	// instance. Without it ctl_send fails with abi.ErrNotHere.
	Control func(conn uint32, data []byte) error
	// Swallowed receives each packet the module swallowed (it owns it
	// then). Without it the host frees them.
	Swallowed func(Swallowed)
	// Pool is where packets the module injects come from. Without it
	// the pool of the interface the filter is bound to is used.
	Pool *mbuf.Pool
}

// Swallowed is a packet a module swallowed, handed to Host.Swallowed once
// the call into the module has returned.
type Swallowed struct {
	Hook    int // abi.Hook*
	M       *mbuf.Mbuf
	Frame   []byte         // input at the interface layer: the link header
	Binding *Binding       // the filter that swallowed it
	Self    nke.Attachment // its attachment, if known
}

// FaultKind says why an instance faulted.
type FaultKind uint8

// Fault kinds, each with its sentinel error.
const (
	FaultTrap FaultKind = iota + 1
	FaultRunaway
	FaultBadResult
	FaultHostArg
)

func (k FaultKind) sentinel() error {
	switch k {
	case FaultTrap:
		return ErrTrap
	case FaultRunaway:
		return ErrRunaway
	case FaultBadResult:
		return ErrBadResult
	case FaultHostArg:
		return ErrHostArg
	}
	return ErrFaulted
}

// Fault is why an instance stopped: what a faulting filter panics with,
// and what Host.OnFault gets.
type Fault struct {
	Name string // Host.Name
	Kind FaultKind
	Hook int // the hook of the call (abi.Hook*), 0 for init/ctl/stop
	// Elapsed is how long the faulting call ran.
	Elapsed time.Duration
	Err     error
}

func (f *Fault) Error() string {
	return fmt.Sprintf("wasm NKE %s: %v (hook %s, after %v): %v", f.Name, f.Kind.sentinel(), hookName(f.Hook), f.Elapsed.Round(time.Microsecond), f.Err)
}

// Unwrap gives the kind's sentinel and the cause.
func (f *Fault) Unwrap() []error { return []error{f.Kind.sentinel(), f.Err} }

func hookName(h int) string {
	switch h {
	case abi.HookRaw:
		return "raw"
	case abi.HookIfIn:
		return "if-in"
	case abi.HookIfOut:
		return "if-out"
	case abi.HookIP4In:
		return "ip4-in"
	case abi.HookIP4Out:
		return "ip4-out"
	case abi.HookIP6In:
		return "ip6-in"
	case abi.HookIP6Out:
		return "ip6-out"
	case 0:
		return "none"
	}
	return fmt.Sprintf("hook(%d)", h)
}

// Stats are an instance's counters.
type Stats struct {
	Calls    uint64 // calls into nke_filter
	Packets  uint64
	Verdicts [nke.NumVerdicts]uint64
	Injected uint64 // packets injected by the module
	// InjectErrors counts injections the hook refused after the call.
	InjectErrors uint64
	// CallNanos sums the time spent in nke_filter.
	CallNanos uint64
}

// Instance is one instantiation of a program: its memory, its state.
// Calls into it are serialised by its mutex; a host function called by
// the module runs with the mutex held.
type Instance struct {
	prog *Program
	host Host
	name string
	mod  api.Module
	// ctx carries the instance to the host functions; the watchdog
	// cancels it to stop a runaway call (which closes the module).
	ctx    context.Context
	cancel context.CancelFunc

	fnFilter api.Function
	fnCtl    api.Function
	fnStop   api.Function

	buf     uint32 // address of the shared buffer in the module's memory
	bufSize uint32
	snap    int // bytes per packet the module wants; 0: whole

	started atomic.Int64 // monotonic ns of the running call's start, 0 idle
	runaway atomic.Bool
	fault   atomic.Pointer[Fault]

	counters [abi.MaxCounters]atomic.Uint64

	calls      atomic.Uint64
	packets    atomic.Uint64
	injected   atomic.Uint64
	injectErrs atomic.Uint64
	callNanos  atomic.Uint64
	verdicts   [nke.NumVerdicts]atomic.Uint64

	mu sync.Mutex
	// +checklocks:mu
	stack [4]uint64
	// +checklocks:mu
	cur burst
	// +checklocks:mu
	argErr error
	// +checklocks:mu
	stopped bool
	// +checklocks:mu
	tagIDs int
}

// burst is the state of the call in progress, for the host functions.
type burst struct {
	hook    int
	b       *Binding
	hasPkts bool // pk holds the packets (not at the raw hook)
	n       int  // descriptors of the current call
	pk      [abi.MaxBurst]*mbuf.Mbuf
	off, cl [abi.MaxBurst]uint32 // where the host put each packet's bytes
	inj     [maxPending]*mbuf.Mbuf
	injW    [maxPending]uint8
	ninj    int
}

// maxPending bounds the injections of one call.
const maxPending = 32

type ctxKey struct{}

// Instantiate instantiates the program, hands settings to nke_init and
// returns the instance ready to be bound.
func (p *Program) Instantiate(ctx context.Context, settings []byte, host Host) (*Instance, error) {
	name, err := p.nextName()
	if err != nil {
		return nil, err
	}
	if host.Name == "" {
		host.Name = name
	}
	i := &Instance{prog: p, host: host, name: host.Name}
	i.ctx, i.cancel = context.WithCancel(context.WithValue(context.Background(), ctxKey{}, i))
	logw := &logWriter{i: i}
	mc := wazero.NewModuleConfig().WithName(name).
		WithStartFunctions("_initialize").
		WithStdout(logw).WithStderr(logw).
		WithSysWalltime().WithSysNanotime().
		WithRandSource(randReader())
	ictx, cancel := context.WithTimeout(i.ctx, p.cfg.InitBudget)
	defer cancel()
	mod, err := p.rt.InstantiateModule(ictx, p.compiled, mc)
	if err != nil {
		return nil, fmt.Errorf("wasm: instantiate %s: %w", host.Name, classify(err, ictx))
	}
	i.mod = mod
	fail := func(err error) (*Instance, error) {
		i.cancel()
		mod.Close(context.Background())
		return nil, fmt.Errorf("wasm: instantiate %s: %w", host.Name, err)
	}
	i.fnFilter = mod.ExportedFunction(abi.ExportFilter)
	i.fnCtl = mod.ExportedFunction(abi.ExportCtl)
	i.fnStop = mod.ExportedFunction(abi.ExportStop)
	res, err := mod.ExportedFunction(abi.ExportABI).Call(ictx)
	if err != nil {
		return fail(classify(err, ictx))
	}
	if v := uint32(res[0]); v != abi.Version {
		return fail(fmt.Errorf("%w: the module speaks ABI %d, the host %d (rebuild it with this harness's nke/wasm/sdk)", ErrABI, v, abi.Version))
	}
	size := uint32(abi.DataOffset + p.cfg.DataSize)
	res, err = mod.ExportedFunction(abi.ExportBuffer).Call(ictx, uint64(size))
	if err != nil {
		return fail(classify(err, ictx))
	}
	i.buf, i.bufSize = uint32(res[0]), size
	if _, ok := span(mod.Memory().Size(), i.buf, size); !ok || i.buf == 0 {
		return fail(fmt.Errorf("%w: nke_buffer(%d) returned %#x, outside its %d-byte memory", ErrBadResult, size, i.buf, mod.Memory().Size()))
	}
	if len(settings) > p.cfg.DataSize {
		return fail(fmt.Errorf("wasm: settings of %d bytes: at most %d", len(settings), p.cfg.DataSize))
	}
	if !mod.Memory().Write(i.buf+abi.DataOffset, settings) {
		return fail(fmt.Errorf("%w: cannot write the settings", ErrBadResult))
	}
	res, err = mod.ExportedFunction(abi.ExportInit).Call(ictx, uint64(len(settings)))
	if err != nil {
		return fail(classify(err, ictx))
	}
	if r := int32(res[0]); r < 0 {
		return fail(fmt.Errorf("%w (nke_init returned %d; its log says why)", ErrInit, r))
	} else {
		i.snap = int(r)
	}
	p.wd.add(i)
	return i, nil
}

// classify turns a failed call's error into a fault kind's error.
func classify(err error, ctx context.Context) error {
	var ee *sys.ExitError
	if errors.As(err, &ee) && (ee.ExitCode() == sys.ExitCodeDeadlineExceeded || ee.ExitCode() == sys.ExitCodeContextCanceled) || ctx.Err() != nil {
		return fmt.Errorf("%w: %v", ErrRunaway, err)
	}
	return fmt.Errorf("%w: %v", ErrTrap, err)
}

// Name is the instance's name (Host.Name).
func (i *Instance) Name() string { return i.name }

// Snap is the number of bytes per packet the module asked to see (0:
// whole packets).
func (i *Instance) Snap() int { return i.snap }

// Fault returns the instance's fault, nil while it is healthy.
func (i *Instance) Fault() *Fault { return i.fault.Load() }

// Counter returns the module's counter idx (counter_add).
func (i *Instance) Counter(idx int) uint64 {
	if idx < 0 || idx >= abi.MaxCounters {
		return 0
	}
	return i.counters[idx].Load()
}

// Stats returns the instance's counters.
func (i *Instance) Stats() Stats {
	s := Stats{Calls: i.calls.Load(), Packets: i.packets.Load(), Injected: i.injected.Load(),
		InjectErrors: i.injectErrs.Load(), CallNanos: i.callNanos.Load()}
	for v := range s.Verdicts {
		s.Verdicts[v] = i.verdicts[v].Load()
	}
	return s
}

// faultWith records the instance's fault (the first one wins), closes
// the module and tells Host.OnFault once. It returns the fault in force.
func (i *Instance) faultWith(kind FaultKind, hook int, elapsed time.Duration, err error) *Fault {
	f := &Fault{Name: i.name, Kind: kind, Hook: hook, Elapsed: elapsed, Err: err}
	if !i.fault.CompareAndSwap(nil, f) {
		return i.fault.Load()
	}
	i.prog.wd.remove(i)
	i.cancel()
	i.mod.Close(context.Background())
	if i.host.OnFault != nil {
		i.host.OnFault(f)
	}
	return f
}

// call runs fn under the watchdog. The stack is i.stack.
//
// +checklocks:i.mu
func (i *Instance) call(fn api.Function, hook int, nparams int) (uint64, error) {
	if f := i.fault.Load(); f != nil {
		return 0, f
	}
	i.argErr = nil
	t0 := nanotime()
	i.started.Store(t0)
	err := fn.CallWithStack(i.ctx, i.stack[:max(nparams, 1)])
	i.started.Store(0)
	el := time.Duration(nanotime() - t0)
	switch {
	case i.argErr != nil:
		return 0, i.faultWith(FaultHostArg, hook, el, i.argErr)
	case err != nil && (i.runaway.Load() || i.ctx.Err() != nil):
		return 0, i.faultWith(FaultRunaway, hook, el, fmt.Errorf("stopped by the watchdog (budget %v): %v", i.prog.cfg.Budget, err))
	case err != nil:
		return 0, i.faultWith(FaultTrap, hook, el, err)
	}
	if hook != 0 {
		i.callNanos.Add(uint64(el))
	}
	return i.stack[0], nil
}

// Control hands a kernel-control message to the module's nke_ctl (kind
// abi.CtlConnect, CtlDisconnect or CtlSend; data for CtlSend). Replies come
// through Host.Control. A module without nke_ctl refuses with an error.
func (i *Instance) Control(conn uint32, kind int, data []byte) error {
	if i.fnCtl == nil {
		return fmt.Errorf("wasm NKE %s: the module has no kernel control (it exports no %s)", i.name, abi.ExportCtl)
	}
	if len(data) > i.prog.cfg.DataSize {
		return fmt.Errorf("wasm NKE %s: control message of %d bytes: at most %d", i.name, len(data), i.prog.cfg.DataSize)
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if f := i.fault.Load(); f != nil {
		return f
	}
	if mem := i.mod.Memory(); !mem.Write(i.buf+abi.DataOffset, data) {
		return fmt.Errorf("wasm NKE %s: %w: its buffer is gone", i.name, ErrBadResult)
	}
	i.stack[0], i.stack[1], i.stack[2] = uint64(conn), uint64(uint32(kind)), uint64(len(data))
	r, err := i.call(i.fnCtl, 0, 3)
	if err != nil {
		return err
	}
	if rc := int32(r); rc != 0 {
		return fmt.Errorf("wasm NKE %s: nke_ctl(%d, kind %d) returned %d", i.name, conn, kind, rc)
	}
	return nil
}

// Close calls the module's nke_stop (if it has one and has not faulted)
// and closes the instance. Unbind its filters first.
func (i *Instance) Close() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.stopped {
		return nil
	}
	i.stopped = true
	var err error
	if i.fnStop != nil && i.fault.Load() == nil {
		r, cerr := i.call(i.fnStop, 0, 0)
		switch {
		case cerr != nil:
			err = cerr
		case int32(r) != 0:
			err = fmt.Errorf("wasm NKE %s: nke_stop returned %d", i.name, int32(r))
		}
	}
	i.prog.wd.remove(i)
	i.cancel()
	if cerr := i.mod.Close(context.Background()); err == nil && cerr != nil && i.fault.Load() == nil {
		err = cerr
	}
	return err
}

// memory returns the module's whole memory.
func (i *Instance) memory() []byte {
	m := i.mod.Memory()
	b, _ := m.Read(0, m.Size())
	return b
}

var le = binary.LittleEndian

// logWriter takes the module's stdout and stderr to Host.Logf.
type logWriter struct{ i *Instance }

func (w *logWriter) Write(b []byte) (int, error) {
	if w.i.host.Logf != nil {
		w.i.host.Logf("%s: %s", w.i.name, trimNL(b))
	}
	return len(b), nil
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

var errBufferGone = errors.New("the module's buffer is outside its memory")

func badVerdict(pkt int, v uint8) error {
	return fmt.Errorf("verdict %d for packet %d (want 0 continue, 1 drop, 2 swallow)", v, pkt)
}

func filterResult(rc int32) error { return fmt.Errorf("nke_filter returned %d", rc) }

func (c *burst) reset() {
	// Injections still queued belong to a call that failed: free them.
	for k := 0; k < c.ninj; k++ {
		c.inj[k].Free()
		c.inj[k] = nil
	}
	for k := 0; k < c.n; k++ {
		c.pk[k] = nil
	}
	c.n, c.ninj, c.hook, c.b, c.hasPkts = 0, 0, 0, nil, false
}
