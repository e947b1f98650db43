package conformance_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/nke-harness/nke/kernel/kerneltest/conformance"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/wasm"
	"github.com/nke-harness/nke/nke/wasm/abi"
	"github.com/nke-harness/nke/nke/wasm/wasmtest"
)

// The wasm backend passes the suite: every rule on every layer wasm NKEs
// support (raw, interface in/out, IP in/out for IPv4 and IPv6; all the
// suite has), per-packet and burst.
func TestWasm(t *testing.T) {
	paths, err := wasmtest.Build(t.TempDir(), "github.com/nke-harness/nke/kernel/kerneltest/conformance/wasmconf")
	if errors.Is(err, wasmtest.ErrNoToolchain) {
		t.Skipf("skipped: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	code, err := readFile(paths["wasmconf"])
	if err != nil {
		t.Fatal(err)
	}
	p, err := wasm.Compile(context.Background(), code, wasm.Config{})
	if err != nil {
		t.Fatal(err)
	}
	impl := &wasmImpl{t: t, prog: p}
	t.Cleanup(func() { p.Close(context.Background()) })
	conformance.Run(t, impl)
}

// wasmImpl is the wasm backend of conformance.Impl: one instance of the
// wasmconf module per filter, the Behaviour's declarative part in its
// settings, the Go part (Record, OnCall, Keep, Self) on the host side.
type wasmImpl struct {
	t    *testing.T
	prog *wasm.Program
	mu   sync.Mutex
	live []*wasmFilter
}

func (*wasmImpl) Name() string { return "wasm" }

func (w *wasmImpl) InterfaceFilter(name string, b conformance.Behaviour) any {
	return w.filter(name, b, wasm.LayerInterface, 0)
}

func (w *wasmImpl) IPFilter(name string, b conformance.Behaviour) any {
	return w.filter(name, b, wasm.LayerIP, 0)
}

func (w *wasmImpl) RawHook(name string, b conformance.Behaviour) any {
	return w.filter(name, b, wasm.LayerRaw, 0)
}

// wasmFilter is one filter's host side.
type wasmFilter struct {
	name string
	b    conformance.Behaviour
	inst *wasm.Instance
	mu   sync.Mutex
	last map[byte]conformance.Call // the last call per marker, for Kept
}

func settings(b conformance.Behaviour) string {
	var f []string
	if len(b.Verdicts) > 0 {
		var pairs []string
		for m, v := range b.Verdicts {
			code := abi.VerdictContinue
			switch v {
			case nke.Drop:
				code = abi.VerdictDrop
			case nke.Swallow:
				code = abi.VerdictSwallow
			}
			pairs = append(pairs, fmt.Sprintf("%d:%d", m, code))
		}
		slices.Sort(pairs)
		f = append(f, "v="+strings.Join(pairs, ","))
	}
	if b.PanicOn != 0 {
		f = append(f, fmt.Sprintf("panic=%d", b.PanicOn))
	}
	if b.PutTag {
		f = append(f, "tag")
	}
	if b.PassMine {
		f = append(f, "mine")
	}
	if b.PassInjected {
		f = append(f, "injected")
	}
	return strings.Join(f, " ")
}

var dirs = map[byte]conformance.Dir{
	abi.HookRaw: conformance.Raw, abi.HookIfIn: conformance.In, abi.HookIfOut: conformance.Out,
	abi.HookIP4In: conformance.In, abi.HookIP4Out: conformance.Out, abi.HookIP6In: conformance.In, abi.HookIP6Out: conformance.Out,
}

func (w *wasmImpl) filter(name string, b conformance.Behaviour, l wasm.Layer, _ int) any {
	w.sweep()
	f := &wasmFilter{name: name, b: b, last: map[byte]conformance.Call{}}
	host := wasm.Host{Name: name,
		Logf: func(format string, args ...any) {},
		Control: func(_ uint32, rep []byte) error {
			if len(rep) != 4 {
				return fmt.Errorf("report of %d bytes", len(rep))
			}
			c := conformance.Call{Filter: name, Dir: dirs[rep[0]], Marker: rep[1],
				Mine: rep[2]&1 != 0, Injected: rep[2]&2 != 0, Tagged: rep[2]&4 != 0}
			f.mu.Lock()
			f.last[c.Marker] = c
			f.mu.Unlock()
			if b.Record != nil {
				b.Record.Add(c)
			}
			if b.OnCall != nil {
				b.OnCall(c)
			}
			return nil
		},
		Swallowed: func(s wasm.Swallowed) {
			if b.Keep == nil {
				s.M.Free()
				return
			}
			marker, _ := conformance.MarkerOf(bytesOf(s))
			f.mu.Lock()
			c := f.last[marker]
			f.mu.Unlock()
			k := conformance.Kept{Call: c, M: s.M}
			if s.Frame != nil {
				k.Frame = append([]byte(nil), s.Frame...)
			}
			b.Keep(k)
		},
	}
	inst, err := w.prog.Instantiate(context.Background(), []byte(settings(b)), host)
	if err != nil {
		w.t.Fatalf("wasm backend: instantiate %s: %v", name, err)
	}
	f.inst = inst
	w.mu.Lock()
	w.live = append(w.live, f)
	w.mu.Unlock()
	// Family 0: the suite attaches the value to either family.
	return bind(inst, l, 0, b).Filter()
}

func bind(inst *wasm.Instance, l wasm.Layer, fam nke.IPFamily, b conformance.Behaviour) *wasm.Binding {
	x := inst.Bind(l, fam, b.Burst)
	if b.Self != nil {
		x.WithSelf(b.Self)
	}
	return x
}

// sweep closes the instances of filters whose attachment is gone, so a
// suite of hundreds of filters does not keep hundreds of memories.
func (w *wasmImpl) sweep() {
	w.mu.Lock()
	defer w.mu.Unlock()
	keep := w.live[:0]
	for _, f := range w.live {
		if f.b.Self != nil {
			if a := f.b.Self(); a != nil {
				select {
				case <-a.Done():
					f.inst.Close()
					continue
				default:
				}
			}
		}
		keep = append(keep, f)
	}
	w.live = keep
}

func bytesOf(s wasm.Swallowed) []byte {
	b := make([]byte, s.M.PktLen())
	s.M.CopyOut(b)
	return b
}

func readFile(p string) ([]byte, error) { return os.ReadFile(p) }
