package guest

import (
	"fmt"

	"github.com/nke-harness/nke/kernel/initproc"
	"github.com/nke-harness/nke/nke"
)

// kernel is what the guest offers an NKE as it starts (nke.Kernel).
type kernel struct {
	g    *Guest
	name string
	logf func(string, ...any)
}

var _ nke.Kernel = (*kernel)(nil)

func (k *kernel) Links() []nke.Link { return []nke.Link{k.g.ifp} }

// IP is where IP filters attach.
func (k *kernel) IP() nke.IPHook { return k.g.ipHook() }

func (k *kernel) Logf(format string, args ...any) {
	k.logf("%s: %s", k.name, fmt.Sprintf(format, args...))
}

type startedNKE struct {
	mod  nke.Module
	args string
	stop func() error
}

// startNKEs starts the NKEs the command line names, in order. One that
// fails to start stops the boot: a test or a user asked for it, and a
// guest without it would pass traffic it was meant to filter.
func (g *Guest) startNKEs(logf func(string, ...any)) error {
	for _, l := range g.Settings.Load {
		stop, err := l.Module.Start(&kernel{g: g, name: l.Module.Name, logf: logf}, l.Args)
		if err != nil {
			g.stopNKEs()
			return fmt.Errorf("start NKE %s (%s): %w", l.Module.Name, l.Module.ID, err)
		}
		g.nkes = append(g.nkes, startedNKE{mod: l.Module, args: l.Args, stop: stop})
		logf("NKE %s started (%s): %s", l.Module.Name, l.Module.ID, l.Module.Doc)
	}
	return nil
}

// stopNKEs stops them, newest first.
func (g *Guest) stopNKEs() {
	for i := len(g.nkes) - 1; i >= 0; i-- {
		n := g.nkes[i]
		if err := n.stop(); err != nil {
			initproc.Logf("NKE %s: stop: %v", n.mod.Name, err)
		}
	}
	g.nkes = nil
}

// ipHook is where IP filters attach: the stack.
func (g *Guest) ipHook() nke.IPHook { return g.st }
