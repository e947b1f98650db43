// Package wasm runs WebAssembly NKEs: modules built against ABI version 1
// (docs/wasm-abi.md, numbers in nke/wasm/abi), compiled by wazero's
// compiler backend, each instance with its own linear memory.
//
// A Program is a compiled module; Instantiate gives an Instance (the
// module's memory and state, its init called with the settings); Bind
// turns an instance into filter values for a layer (raw ring hook,
// interface filter, IP filter; per-packet or burst form) that the hooks
// call. One filter call is one call into the module per burst: the
// packets (up to the snap length the module asked for) are copied into
// its buffer, a verdict per packet comes back.
//
// A module that traps, runs past its time budget (stopped by the
// program's watchdog), returns a bad verdict or passes a bad pointer to a
// host function is faulted: Host.OnFault is told once, and each of its
// filters panics with the *Fault on its next call, so the hook applies the
// policy of a panicking native filter (detach, report, drop the packet or
// burst) while traffic goes on. Program.Module wraps all of it as an
// nke.Module for the loader.
package wasm

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/nke-harness/nke/nke/wasm/abi"
)

// Errors. A *Fault wraps one of the Err* kinds; Compile and Instantiate
// wrap ErrModule or ErrABI.
var (
	// ErrModule: the code is not a usable NKE module.
	ErrModule = errors.New("wasm: not an NKE module")
	// ErrABI: the module was built for another ABI version.
	ErrABI = errors.New("wasm: ABI version mismatch")
	// ErrInit: the module's nke_init refused its settings.
	ErrInit = errors.New("wasm: the module refused its settings")
	// ErrTrap: the module trapped (unreachable, out-of-bounds, a Go panic).
	ErrTrap = errors.New("wasm: the module trapped")
	// ErrRunaway: the module ran past its time budget and was stopped.
	ErrRunaway = errors.New("wasm: the module ran past its time budget")
	// ErrBadResult: the module returned an error code or a bad verdict.
	ErrBadResult = errors.New("wasm: the module returned a bad result")
	// ErrHostArg: the module passed a pointer or length outside its
	// memory to a host function.
	ErrHostArg = errors.New("wasm: bad argument to a host function")
	// ErrFaulted: the instance faulted earlier and runs no more.
	ErrFaulted = errors.New("wasm: the instance has faulted")
)

// Config tunes a program. The zero value is usable.
type Config struct {
	// Budget bounds one call into the module (a burst); past it the
	// watchdog stops the module. 0 means DefaultBudget.
	Budget time.Duration
	// InitBudget bounds instantiation, nke_init, nke_ctl and nke_stop.
	// 0 means DefaultInitBudget.
	InitBudget time.Duration
	// MemoryLimitPages bounds each instance's memory in 64 KiB pages. 0
	// means DefaultMemoryPages.
	MemoryLimitPages uint32
	// DataSize is the packet area of an instance's buffer. 0 means
	// DefaultDataSize.
	DataSize int
	// Interpreter selects wazero's interpreter instead of the compiler:
	// a fallback for platforms the compiler does not support.
	Interpreter bool
	// Unguarded compiles the module without termination checks: calls
	// cost a quarter to a sixth as much for Go-built modules (see
	// docs/performance.md), but a runaway module can no longer be
	// stopped and stalls its hook for good. Only for trusted modules.
	Unguarded bool
}

// Defaults of Config.
const (
	DefaultBudget      = 50 * time.Millisecond
	DefaultInitBudget  = 5 * time.Second
	DefaultMemoryPages = 1024 // 64 MiB
	DefaultDataSize    = 256 << 10
	minDataSize        = 2048
	maxDataSize        = 16 << 20
)

func (c Config) withDefaults() (Config, error) {
	if c.Budget == 0 {
		c.Budget = DefaultBudget
	}
	if c.InitBudget == 0 {
		c.InitBudget = DefaultInitBudget
	}
	if c.MemoryLimitPages == 0 {
		c.MemoryLimitPages = DefaultMemoryPages
	}
	if c.DataSize == 0 {
		c.DataSize = DefaultDataSize
	}
	switch {
	case c.Budget < time.Millisecond:
		return c, fmt.Errorf("wasm: budget %v: want at least 1ms", c.Budget)
	case c.DataSize < minDataSize || c.DataSize > maxDataSize:
		return c, fmt.Errorf("wasm: data size %d: want %d to %d bytes", c.DataSize, minDataSize, maxDataSize)
	case c.MemoryLimitPages > 65536:
		return c, fmt.Errorf("wasm: memory limit %d pages: at most 65536", c.MemoryLimitPages)
	}
	return c, nil
}

// Program is a compiled NKE module. Its instances share the compiled code
// and the watchdog, nothing else.
type Program struct {
	cfg      Config
	rt       wazero.Runtime
	compiled wazero.CompiledModule
	hasCtl   bool
	hasStop  bool
	wd       *watchdog

	mu sync.Mutex
	// +checklocks:mu
	seq uint64
	// +checklocks:mu
	closed bool
}

// Compile validates and compiles code, a module of ABI version 1.
func Compile(ctx context.Context, code []byte, cfg Config) (*Program, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	var rc wazero.RuntimeConfig
	if cfg.Interpreter {
		rc = wazero.NewRuntimeConfigInterpreter()
	} else {
		if err := compilerCPU(); err != nil {
			return nil, err
		}
		rc = wazero.NewRuntimeConfigCompiler()
	}
	// CloseOnContextDone compiles termination checks into loops and
	// calls: what lets the watchdog stop a runaway module.
	rc = rc.WithCloseOnContextDone(!cfg.Unguarded).WithMemoryLimitPages(cfg.MemoryLimitPages)
	rt := wazero.NewRuntimeWithConfig(ctx, rc)
	p := &Program{cfg: cfg, rt: rt}
	fail := func(err error) (*Program, error) {
		rt.Close(ctx)
		return nil, err
	}
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, rt); err != nil {
		return fail(fmt.Errorf("wasm: WASI: %w", err))
	}
	if err := instantiateHost(ctx, rt); err != nil {
		return fail(err)
	}
	cm, err := rt.CompileModule(ctx, code)
	if err != nil {
		return fail(fmt.Errorf("%w: %v", ErrModule, err))
	}
	p.compiled = cm
	if err := p.checkExports(); err != nil {
		return fail(err)
	}
	if err := checkImports(cm); err != nil {
		return fail(err)
	}
	p.wd = newWatchdog(cfg.Budget)
	return p, nil
}

// signature checks of the exports.
var wantExports = []struct {
	name     string
	params   []api.ValueType
	results  []api.ValueType
	optional bool
}{
	{abi.ExportABI, nil, []api.ValueType{api.ValueTypeI32}, false},
	{abi.ExportBuffer, []api.ValueType{api.ValueTypeI32}, []api.ValueType{api.ValueTypeI32}, false},
	{abi.ExportInit, []api.ValueType{api.ValueTypeI32}, []api.ValueType{api.ValueTypeI32}, false},
	{abi.ExportFilter, []api.ValueType{api.ValueTypeI32, api.ValueTypeI32}, []api.ValueType{api.ValueTypeI32}, false},
	{abi.ExportCtl, []api.ValueType{api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI32}, []api.ValueType{api.ValueTypeI32}, true},
	{abi.ExportStop, nil, []api.ValueType{api.ValueTypeI32}, true},
}

func (p *Program) checkExports() error {
	fns := p.compiled.ExportedFunctions()
	for _, w := range wantExports {
		d, ok := fns[w.name]
		if !ok {
			if w.optional {
				continue
			}
			return fmt.Errorf("%w: it does not export %s (build it with nke/wasm/sdk, ABI %d)", ErrModule, w.name, abi.Version)
		}
		if !sameTypes(d.ParamTypes(), w.params) || !sameTypes(d.ResultTypes(), w.results) {
			return fmt.Errorf("%w: export %s has type %v -> %v, want %v -> %v", ErrModule, w.name, d.ParamTypes(), d.ResultTypes(), w.params, w.results)
		}
		switch w.name {
		case abi.ExportCtl:
			p.hasCtl = true
		case abi.ExportStop:
			p.hasStop = true
		}
	}
	if _, ok := p.compiled.ExportedMemories()["memory"]; !ok {
		return fmt.Errorf("%w: it exports no memory named \"memory\"", ErrModule)
	}
	return nil
}

// checkImports refuses imports the host does not provide, naming them,
// before instantiation would fail less clearly.
func checkImports(cm wazero.CompiledModule) error {
	for _, d := range cm.ImportedFunctions() {
		mod, name, _ := d.Import()
		switch mod {
		case wasi_snapshot_preview1.ModuleName:
		case abi.HostModule:
			if _, ok := hostFuncs[name]; !ok {
				return fmt.Errorf("%w: it imports %s.%s, which ABI %d does not have", ErrModule, mod, name, abi.Version)
			}
		default:
			return fmt.Errorf("%w: it imports %s.%s (only %s and WASI are provided)", ErrModule, mod, name, abi.HostModule)
		}
	}
	return nil
}

func sameTypes(a, b []api.ValueType) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Close closes the program and every instance of it.
func (p *Program) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	p.wd.stop()
	return p.rt.Close(ctx)
}

func (p *Program) nextName() (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return "", errors.New("wasm: the program is closed")
	}
	p.seq++
	return fmt.Sprintf("nke-%d", p.seq), nil
}

func randReader() *randSource { return &randSource{} }

// randSource feeds WASI's random_get from crypto/rand.
type randSource struct{}

func (*randSource) Read(b []byte) (int, error) { return rand.Read(b) }
