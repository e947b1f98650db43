package loader

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/bundle"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/nke/nketest"
)

// rig is a loader on nketest fakes: an IP hook, a socket hook, control
// endpoints, and built-in modules a test registers.
type rig struct {
	t        testing.TB
	ip       *nketest.IPHook
	sockets  *nketest.SocketHook
	controls *nketest.Controls
	kernel   *nketest.Kernel
	l        *Loader

	mu sync.Mutex
	// +checklocks:mu
	modules map[string]nke.Module
	// +checklocks:mu
	events []string
	// +checklocks:mu
	clients map[string][]*nketest.ControlClient
}

func newRig(t testing.TB, drain time.Duration) *rig {
	r := &rig{t: t, ip: &nketest.IPHook{}, sockets: &nketest.SocketHook{}, controls: &nketest.Controls{},
		modules: map[string]nke.Module{}, clients: map[string][]*nketest.ControlClient{}}
	r.kernel = &nketest.Kernel{IPHook: r.ip, SocketHook: r.sockets, Controls: r.controls}
	l, err := New(Config{
		Kernel: func(string) nke.Kernel { return r.kernel },
		Builtin: func(name string) (nke.Module, error) {
			r.mu.Lock()
			defer r.mu.Unlock()
			m, ok := r.modules[name]
			if !ok {
				return m, fmt.Errorf("no built-in %q", name)
			}
			return m, nil
		},
		Events: func(kind, id, msg string) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.events = append(r.events, kind+" "+id+": "+msg)
		},
		ControlClients: func(owner string) []string {
			r.mu.Lock()
			defer r.mu.Unlock()
			var out []string
			for _, c := range r.clients[owner] {
				out = append(out, fmt.Sprintf("unit %d", c.Unit))
			}
			return out
		},
		DisconnectControl: func(owner string) {
			r.mu.Lock()
			cl := r.clients[owner]
			delete(r.clients, owner)
			r.mu.Unlock()
			for _, c := range cl {
				c.Close()
			}
		},
		DrainTimeout: drain,
		Logf:         t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	r.l = l
	return r
}

func (r *rig) register(m nke.Module) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.modules[m.Name] = m
}

func (r *rig) connect(owner, endpoint string) *nketest.ControlClient {
	c, err := r.controls.Connect(endpoint)
	if err != nil {
		r.t.Fatal(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clients[owner] = append(r.clients[owner], c)
	return c
}

func (r *rig) eventsOf(kind string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		if len(e) > len(kind) && e[:len(kind)+1] == kind+" " {
			out = append(out, e)
		}
	}
	return out
}

func (r *rig) ids() []string {
	var out []string
	for _, row := range r.l.Stat() {
		out = append(out, row.ID+" "+row.Version)
	}
	return out
}

// send runs one packet through the IPv4 input filters attached, as the
// stack would, and returns the verdict.
func (r *rig) send(m *mbuf.Mbuf) nke.Verdict {
	for _, s := range r.ip.Attached() {
		if s.Family != nke.IPv4 {
			continue
		}
		f, ok := s.Filter.(nke.IPInputFilter)
		if !ok {
			r.t.Errorf("%s: the wrapper is not a per-packet input filter (%T)", s.Name, s.Filter)
			continue
		}
		if v := f.FilterIPInput(&m, 20, 6); v != nke.Continue {
			return v
		}
	}
	return nke.Continue
}

// mk makes a bundle without a plist.
func mk(id, version, compat, builtin string, libs map[string]string, caps ...string) *bundle.Bundle {
	if len(caps) == 0 {
		caps = []string{bundle.CapObserve}
	}
	slices.Sort(caps)
	return &bundle.Bundle{Name: id + ".nke", Manifest: &bundle.Manifest{
		ID: id, Version: version, Compatible: compat, Libraries: libs, File: id + ".nke/Contents/Info.plist",
		Harness: bundle.Harness{Layer: bundle.LayerIP, Capabilities: caps, Builtin: builtin},
	}}
}

// counter is an IP filter counting the packets it sees, with a verdict
// and an optional hook.
type counter struct {
	seen    atomic.Uint64
	verdict nke.Verdict
	replace bool
	hook    func()
	gone    atomic.Bool
	late    atomic.Uint64
}

func (c *counter) FilterIPInput(m **mbuf.Mbuf, _ int, _ uint8) nke.Verdict {
	if c.gone.Load() {
		c.late.Add(1)
	}
	c.seen.Add(1)
	if c.hook != nil {
		c.hook()
	}
	if c.replace {
		*m = &mbuf.Mbuf{}
	}
	return c.verdict
}

// ipModule is a built-in attaching c as an IPv4 filter; stop, if set,
// is its stop's result.
func ipModule(name, id string, c *counter, stop func() error) nke.Module {
	return nke.Module{Name: name, ID: id, Start: func(k nke.Kernel, _ string) (func() error, error) {
		a, err := k.IP().AttachIPFilter(nke.IPFilterSpec{Name: id, Family: nke.IPv4, Filter: c, Detached: func() { c.gone.Store(true) }})
		if err != nil {
			return nil, err
		}
		return func() error {
			if stop != nil {
				if err := stop(); err != nil {
					return err
				}
			}
			a.Detach()
			<-a.Done()
			return nil
		}, nil
	}}
}
