package guest

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/nke-harness/nke/kernel/initproc"
	"github.com/nke-harness/nke/kernel/kevent"
	"github.com/nke-harness/nke/kernel/sockfilter"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/builtin"
)

// kernel is what the guest offers an NKE as it starts (nke.Kernel), one
// per NKE: owner is its bundle id, which its control endpoints carry.
type kernel struct {
	g     *Guest
	name  string
	owner string
	logf  func(string, ...any)
}

var _ nke.Kernel = (*kernel)(nil)

func (k *kernel) Links() []nke.Link { return []nke.Link{k.g.ifp} }

// IP is where IP filters attach: the stack.
func (k *kernel) IP() nke.IPHook { return k.g.st }

// Sockets is where socket filters register: the socket layer's registry.
func (k *kernel) Sockets() nke.SocketHook { return k.g.sockets }

// Control is where the NKE's control endpoints register, as its own.
func (k *kernel) Control() nke.ControlHook { return k.g.ctl.Hook(k.owner) }

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
	stop, err := m.Start(&kernel{g: g, name: m.Name, owner: m.ID, logf: logf}, args)
	if err != nil {
		// A failed start attached nothing; endpoints it left are removed.
		g.ctl.RemoveOwner(m.ID)
		return fmt.Errorf("start NKE %s (%s): %w", m.Name, m.ID, err)
	}
	g.nkes.list = append(g.nkes.list, startedNKE{mod: m, args: args, stop: stop})
	logf("NKE %s started (%s): %s", m.Name, m.ID, m.Doc)
	g.events.Publish(kevent.Event{Kind: kevent.NKELoaded, NKE: m.ID, Detail: m.Name})
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

// stopNKE stops the started NKE of that name or id. It is refused while
// control clients are connected to the NKE's endpoints (kern_ctl's
// EBUSY) unless force, which disconnects them first. A stop that fails
// keeps it running (Apple: a failing stop keeps the kext loaded).
func (g *Guest) stopNKE(name string, force bool) error {
	g.nkes.mu.Lock()
	defer g.nkes.mu.Unlock()
	for i, n := range g.nkes.list {
		if n.mod.Name != name && n.mod.ID != name {
			continue
		}
		if err := g.unloadControls(n.mod.ID, force); err != nil {
			return fmt.Errorf("stop NKE %s: %w (still running)", n.mod.Name, err)
		}
		if err := n.stop(); err != nil {
			g.ctl.SetRefusing(n.mod.ID, false)
			return fmt.Errorf("stop NKE %s: %w (still running)", n.mod.Name, err)
		}
		g.afterStop(n.mod)
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
		if err := g.unloadControls(n.mod.ID, true); err == nil {
			if err := n.stop(); err != nil {
				initproc.Logf("NKE %s: stop: %v", n.mod.Name, err)
			}
		}
		g.afterStop(n.mod)
	}
	g.nkes.list = nil
}

// unloadControls refuses an unload while clients are connected to the
// NKE's control endpoints, naming them, or with force disconnects them;
// either way new clients are refused until afterStop (or, if the stop
// fails, SetRefusing off).
func (g *Guest) unloadControls(owner string, force bool) error {
	g.ctl.SetRefusing(owner, true)
	if cl := g.ctl.Clients(owner); len(cl) > 0 {
		if !force {
			g.ctl.SetRefusing(owner, false)
			names := make([]string, len(cl))
			for i, c := range cl {
				names[i] = c.String()
			}
			return fmt.Errorf("%w: %s (disconnect them, or force the unload)", nke.ErrBusy, strings.Join(names, ", "))
		}
		g.ctl.DisconnectOwner(owner, errors.New("its NKE was unloaded by force"))
	}
	return nil
}

// afterStop removes the endpoints a stopped NKE left registered and
// publishes the unload.
func (g *Guest) afterStop(m nke.Module) {
	if left := g.ctl.RemoveOwner(m.ID); len(left) > 0 {
		initproc.Logf("NKE %s: stopped with control endpoints registered: %s (removed)", m.Name, strings.Join(left, ", "))
	}
	g.ctl.SetRefusing(m.ID, false)
	g.events.Publish(kevent.Event{Kind: kevent.NKEUnloaded, NKE: m.ID, Detail: m.Name})
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
	usage := "usage: nke list | nke start NAME [ARGS] | nke stop NAME [force]"
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
	case args[0] == "stop" && (len(args) == 2 || len(args) == 3 && args[2] == "force"):
		if err := g.stopNKE(args[1], len(args) == 3); err != nil {
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
