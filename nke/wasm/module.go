package wasm

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nke-harness/nke/nke"
)

// Spec is where Program.Module attaches a module: the loader maps a
// bundle's manifest onto it.
type Spec struct {
	// ID is the bundle identifier, also the filters' name.
	ID string
	// Name is the short name (nke.Module.Name); ID when empty.
	Name string
	// Doc is one line about the NKE.
	Doc string
	// Layer is LayerRaw, LayerInterface or LayerIP.
	Layer Layer
	// Families are the IP families of an IP filter (both when empty).
	Families []nke.IPFamily
	// Interface names the link of a raw or interface filter; empty
	// means every link.
	Interface string
	// Protocol is an interface filter's EtherType (0: all).
	Protocol uint16
	// Order places the filters among the others.
	Order nke.Order
	// Burst selects the burst form of the callbacks.
	Burst bool
	// Host is handed to the instance; Module sets Host.Name to ID and
	// wraps OnFault (the module detaches itself, then OnFault is told).
	Host Host
}

// Check validates the spec.
func (s Spec) Check() error {
	if err := nke.CheckName(s.ID); err != nil {
		return err
	}
	switch s.Layer {
	case LayerRaw, LayerInterface:
		if len(s.Families) != 0 {
			return fmt.Errorf("wasm NKE %s: families are for the IP layer, not %v", s.ID, s.Layer)
		}
	case LayerIP:
		for _, f := range s.Families {
			if f != nke.IPv4 && f != nke.IPv6 {
				return fmt.Errorf("wasm NKE %s: family %v: want IPv4 or IPv6", s.ID, f)
			}
		}
		if s.Interface != "" || s.Protocol != 0 {
			return fmt.Errorf("wasm NKE %s: an IP filter takes no interface or protocol", s.ID)
		}
	default:
		return fmt.Errorf("wasm NKE %s: layer %d: want raw, interface or ip (wasm NKEs cannot be protocols or socket filters in ABI 1)", s.ID, s.Layer)
	}
	if s.Protocol != 0 && s.Layer != LayerInterface {
		return fmt.Errorf("wasm NKE %s: a protocol selector is for interface filters", s.ID)
	}
	return nil
}

// Running is a started module, as Program.Module's Start leaves it; the
// loader reaches it through Program.Running (for kernel control,
// counters, the fault).
type Running struct {
	Inst     *Instance
	Bindings []*Binding

	mu sync.Mutex
	// +checklocks:mu
	atts nke.Detacher
}

// Module returns an nke.Module whose Start instantiates the program with
// its args as the settings and attaches it as spec says, and whose stop
// detaches it, waits for its calls to end and calls nke_stop. A fault
// detaches every filter of the instance (the one faulting is detached by
// its hook, reported as a panic) and then calls spec.Host.OnFault. started,
// if not nil, is given each Running once attached.
func (p *Program) Module(spec Spec, started func(*Running)) (nke.Module, error) {
	if err := spec.Check(); err != nil {
		return nke.Module{}, err
	}
	name := spec.Name
	if name == "" {
		name = spec.ID
	}
	return nke.Module{Name: name, ID: spec.ID, Doc: spec.Doc, Start: func(k nke.Kernel, args string) (func() error, error) {
		return p.start(spec, k, args, started)
	}}, nil
}

func (p *Program) start(spec Spec, k nke.Kernel, args string, started func(*Running)) (func() error, error) {
	run := &Running{}
	host := spec.Host
	host.Name = spec.ID
	if host.Logf == nil {
		host.Logf = k.Logf
	}
	onFault := spec.Host.OnFault
	host.OnFault = func(f *Fault) {
		// Called with the instance's lock held: detach without waiting.
		run.mu.Lock()
		for _, a := range run.atts {
			a.Detach()
		}
		run.mu.Unlock()
		k.Logf("%v: detached", f)
		if onFault != nil {
			onFault(f)
		}
	}
	inst, err := p.Instantiate(context.Background(), []byte(args), host)
	if err != nil {
		return nil, err
	}
	run.Inst = inst
	fail := func(err error) (func() error, error) {
		run.mu.Lock()
		d := run.atts
		run.atts = nil
		run.mu.Unlock()
		d.DetachAll()
		inst.Close()
		return nil, err
	}
	attach := func(b *Binding, a nke.Attachment, err error) error {
		if err != nil {
			return err
		}
		b.SetAttachment(a)
		run.mu.Lock()
		run.atts.Add(a)
		run.mu.Unlock()
		run.Bindings = append(run.Bindings, b)
		return nil
	}
	switch spec.Layer {
	case LayerIP:
		ip := k.IP()
		if ip == nil {
			return fail(fmt.Errorf("wasm NKE %s: the guest has no IP layer", spec.ID))
		}
		fams := spec.Families
		if len(fams) == 0 {
			fams = []nke.IPFamily{nke.IPv4, nke.IPv6}
		}
		for _, fam := range fams {
			b := inst.Bind(LayerIP, fam, spec.Burst).WithIPHook(ip)
			a, err := ip.AttachIPFilter(nke.IPFilterSpec{Name: spec.ID, Family: fam, Order: spec.Order, Filter: b.Filter()})
			if err := attach(b, a, err); err != nil {
				return fail(err)
			}
		}
	default:
		n := 0
		for _, l := range k.Links() {
			if spec.Interface != "" && l.Name() != spec.Interface {
				continue
			}
			n++
			b := inst.Bind(spec.Layer, 0, spec.Burst).WithLink(l)
			var a nke.Attachment
			var err error
			if spec.Layer == LayerRaw {
				a, err = l.AttachRawHook(nke.RawHookSpec{Name: spec.ID, Order: spec.Order, Filter: b.Filter()})
			} else {
				a, err = l.AttachFilter(nke.InterfaceFilterSpec{Name: spec.ID, Protocol: spec.Protocol, Order: spec.Order, Filter: b.Filter()})
			}
			if err := attach(b, a, err); err != nil {
				return fail(err)
			}
		}
		if n == 0 {
			return fail(fmt.Errorf("wasm NKE %s: no interface %q to attach to", spec.ID, spec.Interface))
		}
	}
	if f := inst.Fault(); f != nil {
		return fail(f) // faulted while attaching
	}
	if started != nil {
		started(run)
	}
	return func() error {
		run.mu.Lock()
		d := run.atts
		run.atts = nil
		run.mu.Unlock()
		d.DetachAll()
		err := inst.Close()
		if f := inst.Fault(); f != nil && errors.Is(err, f) {
			err = nil // its fault was reported when it happened
		}
		return err
	}, nil
}
