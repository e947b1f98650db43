// Package wasmbundle makes nke.Modules of WebAssembly bundles for the
// loader (loader.Config.WebAssembly): it compiles the bundle's module
// with nke/wasm and maps the manifest (layer, families, interface,
// EtherType, order) onto a wasm.Spec. A module that exports nke_ctl gets
// a kernel-control endpoint named after the bundle id.
package wasmbundle

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/bundle"
	"github.com/nke-harness/nke/nke/wasm"
	"github.com/nke-harness/nke/nke/wasm/abi"
)

// Loader returns a loader.Config.WebAssembly function compiling modules
// with cfg.
func Loader(cfg wasm.Config) func(b *bundle.Bundle, file string) (nke.Module, error) {
	return LoaderWithFaults(cfg, nil)
}

// LoaderWithFaults is Loader telling onFault (if not nil) of a module
// that trapped, ran away or misused the ABI, once its filters are
// detached: the guest unloads the bundle (a faulted module does nothing
// more) and reports it. onFault runs on the data path: it must not
// block.
func LoaderWithFaults(cfg wasm.Config, onFault func(id string, f *wasm.Fault)) func(b *bundle.Bundle, file string) (nke.Module, error) {
	return func(b *bundle.Bundle, file string) (nke.Module, error) { return module(b, file, cfg, onFault) }
}

// Spec maps a manifest onto where nke/wasm attaches the module.
func Spec(m *bundle.Manifest) (wasm.Spec, error) {
	h := m.Harness
	s := wasm.Spec{ID: m.ID, Order: h.Order(), Burst: true, Interface: h.Attach.Interface, Protocol: h.Attach.EtherType}
	switch h.Layer {
	case bundle.LayerRaw:
		s.Layer = wasm.LayerRaw
	case bundle.LayerInterface:
		s.Layer = wasm.LayerInterface
	case bundle.LayerIP:
		s.Layer = wasm.LayerIP
		s.Families = h.Attach.Families
	default:
		return s, fmt.Errorf("%s: layer %s: WebAssembly NKEs attach at raw, interface or ip", m.File, h.Layer)
	}
	return s, s.Check()
}

// Module compiles b's WebAssembly file and returns it as a module.
func Module(b *bundle.Bundle, file string, cfg wasm.Config) (nke.Module, error) {
	return module(b, file, cfg, nil)
}

func module(b *bundle.Bundle, file string, cfg wasm.Config, onFault func(string, *wasm.Fault)) (nke.Module, error) {
	code, err := b.WebAssemblyModule()
	if err != nil {
		return nke.Module{}, err
	}
	if file != b.Manifest.Harness.WebAssembly {
		return nke.Module{}, fmt.Errorf("%s: asked for %s, the manifest names %s", b.Name, file, b.Manifest.Harness.WebAssembly)
	}
	spec, err := Spec(b.Manifest)
	if err != nil {
		return nke.Module{}, err
	}
	if onFault != nil {
		id := b.Manifest.ID
		spec.Host.OnFault = func(f *wasm.Fault) { onFault(id, f) }
	}
	name := strings.TrimSuffix(b.Name, ".nke")
	return nke.Module{Name: name, ID: b.Manifest.ID, Doc: "WebAssembly NKE " + file,
		Start: func(k nke.Kernel, args string) (func() error, error) {
			return start(k, args, code, spec, cfg)
		}}, nil
}

func start(k nke.Kernel, args string, code []byte, spec wasm.Spec, cfg wasm.Config) (func() error, error) {
	ctx := context.Background()
	p, err := wasm.Compile(ctx, code, cfg)
	if err != nil {
		return nil, err
	}
	// Control replies go to the endpoint, registered once the instance
	// runs.
	var mu sync.Mutex
	var ctl nke.Control
	spec.Host.Control = func(conn uint32, data []byte) error {
		mu.Lock()
		c := ctl
		mu.Unlock()
		if c == nil {
			return nke.ErrNoUnit
		}
		return c.Enqueue(conn, data)
	}
	var run *wasm.Running
	m, err := p.Module(spec, func(r *wasm.Running) { run = r })
	if err != nil {
		p.Close(ctx)
		return nil, err
	}
	stop, err := m.Start(k, args)
	if err != nil {
		p.Close(ctx)
		return nil, err
	}
	if h := k.Control(); h != nil && run != nil {
		inst := run.Inst
		c, err := h.RegisterControl(nke.ControlSpec{Name: spec.ID,
			Connect: func(unit uint32) (any, error) {
				err := inst.Control(unit, abi.CtlConnect, nil)
				return nil, err
			},
			Disconnect: func(unit uint32, _ any) { inst.Control(unit, abi.CtlDisconnect, nil) },
			Send: func(unit uint32, _ any, data []byte) error {
				return inst.Control(unit, abi.CtlSend, data)
			},
		})
		if err != nil && !errors.Is(err, nke.ErrControlExists) {
			stop()
			p.Close(ctx)
			return nil, err
		}
		mu.Lock()
		ctl = c
		mu.Unlock()
	}
	return func() error {
		mu.Lock()
		c := ctl
		mu.Unlock()
		if c != nil {
			if err := c.Deregister(); err != nil {
				return err // clients connected: stays loaded
			}
		}
		err := stop()
		return errors.Join(err, p.Close(ctx))
	}, nil
}
