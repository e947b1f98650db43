package guest

import (
	"fmt"
	"strings"
	"sync"

	"github.com/nke-harness/nke/kernel/initproc"
	"github.com/nke-harness/nke/kernel/sockfilter"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/builtin"
)

// kernel is what the guest offers an NKE as it starts (nke.Kernel).
type kernel struct {
	g    *Guest
	name string
	logf func(string, ...any)
}

var _ nke.Kernel = (*kernel)(nil)

func (k *kernel) Links() []nke.Link { return []nke.Link{k.g.ifp} }

// IP is where IP filters attach: the stack.
func (k *kernel) IP() nke.IPHook { return k.g.st }

// Sockets is where socket filters register: the socket layer's registry.
func (k *kernel) Sockets() nke.SocketHook { return k.g.sockets }

func (k *kernel) Logf(format string, args ...any) {
	k.logf("%s: %s", k.name, fmt.Sprintf(format, args...))
}

type startedNKE struct {
	mod  nke.Module
	args string
	stop func() error
}

// nkeSet is the started NKEs, shared by boot, the console and the status
// page.
type nkeSet struct {
	mu sync.Mutex
	// +checklocks:mu
	list []startedNKE
}

// start starts m with args unless an NKE of that id runs already.
func (g *Guest) startNKE(m nke.Module, args string, logf func(string, ...any)) error {
	g.nkes.mu.Lock()
	defer g.nkes.mu.Unlock()
	for _, n := range g.nkes.list {
		if n.mod.ID == m.ID {
			return fmt.Errorf("NKE %s (%s) is running already", m.Name, m.ID)
		}
	}
	stop, err := m.Start(&kernel{g: g, name: m.Name, logf: logf}, args)
	if err != nil {
		return fmt.Errorf("start NKE %s (%s): %w", m.Name, m.ID, err)
	}
	g.nkes.list = append(g.nkes.list, startedNKE{mod: m, args: args, stop: stop})
	logf("NKE %s started (%s): %s", m.Name, m.ID, m.Doc)
	return nil
}

// startNKEs starts the NKEs the command line names, in order. One that
// fails to start stops the boot: a test or a user asked for it, and a
// guest without it would pass traffic it was meant to filter.
func (g *Guest) startNKEs(logf func(string, ...any)) error {
	for _, l := range g.Settings.Load {
		if err := g.startNKE(l.Module, l.Args, logf); err != nil {
			g.stopNKEs()
			return err
		}
	}
	return nil
}

// stopNKE stops the started NKE of that name or id. A stop that fails
// keeps it running (Apple: a failing stop keeps the kext loaded).
func (g *Guest) stopNKE(name string) error {
	g.nkes.mu.Lock()
	defer g.nkes.mu.Unlock()
	for i, n := range g.nkes.list {
		if n.mod.Name != name && n.mod.ID != name {
			continue
		}
		if err := n.stop(); err != nil {
			return fmt.Errorf("stop NKE %s: %w (still running)", n.mod.Name, err)
		}
		g.nkes.list = append(g.nkes.list[:i], g.nkes.list[i+1:]...)
		return nil
	}
	return fmt.Errorf("no NKE %q is running", name)
}

// stopNKEs stops them all, newest first.
func (g *Guest) stopNKEs() {
	g.nkes.mu.Lock()
	defer g.nkes.mu.Unlock()
	for i := len(g.nkes.list) - 1; i >= 0; i-- {
		n := g.nkes.list[i]
		if err := n.stop(); err != nil {
			initproc.Logf("NKE %s: stop: %v", n.mod.Name, err)
		}
	}
	g.nkes.list = nil
}

// started lists the running NKEs for the status page.
func (g *Guest) started() []StartedNKE {
	g.nkes.mu.Lock()
	defer g.nkes.mu.Unlock()
	var out []StartedNKE
	for _, n := range g.nkes.list {
		out = append(out, StartedNKE{Name: n.mod.Name, ID: n.mod.ID, Args: n.args})
	}
	return out
}

// nkeCommand is the console's `nke` command: list, start NAME [ARGS],
// stop NAME (until the loader and nkectl exist, how a test or a user
// loads and unloads a built-in NKE while the guest runs).
func (g *Guest) nkeCommand(args []string) {
	usage := "usage: nke list | nke start NAME [ARGS] | nke stop NAME"
	switch {
	case len(args) == 0 || args[0] == "list":
		var names []string
		for _, n := range g.started() {
			names = append(names, n.Name)
		}
		initproc.Logf("nke: running: %s; built in: %s", strings.Join(names, ", "), strings.Join(builtinNames(), ", "))
	case args[0] == "start" && len(args) >= 2:
		m, err := builtin.Lookup(args[1])
		if err == nil {
			err = g.startNKE(m, strings.Join(args[2:], " "), initproc.Logf)
		}
		if err != nil {
			initproc.Logf("nke: %v", err)
		}
	case args[0] == "stop" && len(args) == 2:
		if err := g.stopNKE(args[1]); err != nil {
			initproc.Logf("nke: %v", err)
			return
		}
		initproc.Logf("nke: %s stopped", args[1])
	default:
		initproc.Logf("nke: %s", usage)
	}
}

func builtinNames() []string {
	var out []string
	for _, m := range builtin.Modules {
		out = append(out, m.Name)
	}
	return out
}

var _ nke.SocketHook = (*sockfilter.Registry)(nil)
