package guest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/nke-harness/nke/kernel/initproc"
	"github.com/nke-harness/nke/kernel/kevent"
	"github.com/nke-harness/nke/kernel/sockfilter"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/builtin"
	"github.com/nke-harness/nke/nke/bundle"
	"github.com/nke-harness/nke/nke/bundles"
	"github.com/nke-harness/nke/nke/loader"
	"github.com/nke-harness/nke/nke/loader/wasmbundle"
	"github.com/nke-harness/nke/nke/wasm"
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

// wasmConfig is how the guest runs WebAssembly NKEs. The budget per
// burst is 250 ms, not nke/wasm's 50: under TCG the guest's vCPUs share
// two host cores with QEMU's own threads, and a healthy module's first
// burst measured 57-66 ms of wall time when preempted (taken for a
// runaway). A runaway is still stopped within about 1.25 budgets, and
// only its own hook waits meanwhile.
var wasmConfig = wasm.Config{Budget: 250 * time.Millisecond}

// loaderEvents maps the loader's event kinds onto the kernel's.
var loaderEvents = map[string]kevent.Kind{
	"load": kevent.NKELoaded, "unload": kevent.NKEUnloaded, "replace": kevent.NKEReplaced,
	"load-failed": kevent.NKELoadFailed, "unload-failed": kevent.NKEUnloadFailed, "refused": kevent.CapabilityRefused,
}

// builtin finds a built-in implementation: builtin.Lookup, unless a test
// set builtins.
func (g *Guest) builtin(name string) (nke.Module, error) {
	if g.builtins != nil {
		return g.builtins(name)
	}
	return builtin.Lookup(name)
}

// newLoader makes the guest's loader: built-in NKEs and WebAssembly ones,
// each started with a kernel of its own, unloads refused while their
// control endpoints have clients.
func (g *Guest) newLoader(logf func(string, ...any)) (*loader.Loader, error) {
	return loader.New(loader.Config{
		Kernel: func(owner string) nke.Kernel {
			return &kernel{g: g, name: owner, owner: owner, logf: logf}
		},
		Builtin:     g.builtin,
		WebAssembly: wasmbundle.LoaderWithFaults(wasmConfig, g.wasmFault),
		Events: func(kind, id, msg string) {
			k, ok := loaderEvents[kind]
			if !ok {
				k = kevent.NKELoadFailed
				msg = kind + ": " + msg
			}
			g.events.Publish(kevent.Event{Kind: k, NKE: id, Detail: msg})
		},
		ControlClients: func(owner string) []string {
			var out []string
			for _, c := range g.ctl.Clients(owner) {
				out = append(out, c.String())
			}
			return out
		},
		DisconnectControl: func(owner string) {
			g.ctl.DisconnectOwner(owner, errors.New("its NKE was unloaded by force"))
		},
		Logf: logf,
	})
}

// wasmFault reports a WebAssembly NKE that trapped, ran away or misused
// the ABI (its filters are detached already: traffic goes on without it)
// and unloads its bundle, off the data path.
func (g *Guest) wasmFault(id string, f *wasm.Fault) {
	g.events.Publish(kevent.Event{Kind: kevent.Fault, NKE: id, Detail: f.Error() + " (unloading it)"})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := g.loader.Unload(ctx, id, true); err != nil && !errors.Is(err, loader.ErrNotLoaded) {
			initproc.Logf("%s faulted, and its unload failed: %v", id, err)
		}
	}()
}

// findBundle returns the bundle name names: a folder name
// ("IPFirewall.nke"), a bundle id ("com.example.ipfw") or a built-in's
// short name ("ipfw", as nke.load names them), from the image's bundle
// folder (bundles.ImageDir, WebAssembly modules built), else from those
// compiled in.
func findBundle(name string) (*bundle.Bundle, error) {
	all, errs := imageBundles()
	for _, match := range []func(*bundle.Bundle) bool{
		func(b *bundle.Bundle) bool { return b.Name == name || b.Manifest.ID == name },
		func(b *bundle.Bundle) bool { return b.Manifest.Harness.Builtin == name },
	} {
		for _, b := range all {
			if match(b) {
				return b, nil
			}
		}
	}
	names := make([]string, len(all))
	for i, b := range all {
		names[i] = b.Name
	}
	sort.Strings(names)
	err := fmt.Errorf("no bundle %q in the image (it has %s)", name, strings.Join(names, ", "))
	if errs != nil {
		err = fmt.Errorf("%w; unreadable: %w", err, errs)
	}
	return nil, err
}

// bootPrefs are the boot preference file's lines (bundles.ImageBootFile,
// else the compiled-in default) followed by the kernel command line's
// nke.load ones.
func (g *Guest) bootPrefs() ([]loader.Pref, error) {
	file := bundles.ImageBootFile
	data, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		file, data, err = "boot.nkes (built in)", bundles.Boot(), nil
	}
	if err != nil {
		return nil, err
	}
	prefs, err := loader.ParsePrefs(file, data)
	if err != nil {
		return nil, err
	}
	return append(prefs, g.Settings.Load...), nil
}

// bootNKEs loads the boot preferences' NKEs in order. One that fails
// stops the boot: a test or a user asked for it, and a guest without it
// would pass traffic it was meant to filter.
func (g *Guest) bootNKEs() error {
	prefs, err := g.bootPrefs()
	if err != nil {
		return fmt.Errorf("boot preferences: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := g.loader.Boot(ctx, prefs, findBundle); err != nil {
		g.unloadAll()
		return err
	}
	return nil
}

// unloadAll unloads every NKE, newest first, dependants before what they
// depend on, control clients disconnected.
func (g *Guest) unloadAll() {
	if g.loader == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := g.loader.UnloadAll(ctx); err != nil {
		initproc.Logf("unloading the NKEs: %v", err)
	}
}

// started lists the loaded NKEs for the status page.
func (g *Guest) started() []StartedNKE {
	if g.loader == nil {
		return nil
	}
	var out []StartedNKE
	for _, r := range g.loader.Stat() {
		out = append(out, StartedNKE{Name: r.Bundle, ID: r.ID, Version: r.Version, Args: r.Settings})
	}
	return out
}

// resolveLoaded maps a console name (id, folder or built-in short name)
// to a loaded bundle's id.
func (g *Guest) resolveLoaded(name string) string {
	for _, r := range g.loader.Stat() {
		if r.ID == name || r.Bundle == name {
			return r.ID
		}
	}
	if b, err := findBundle(name); err == nil {
		return b.Manifest.ID
	}
	return name
}

// nkeCommand is the console's `nke` command: list, load NAME [SETTINGS],
// unload NAME [force] (start and stop are the old names), for a user at
// the console; nkectl does the same over the control channel.
func (g *Guest) nkeCommand(args []string) {
	usage := "usage: nke list | nke load NAME [SETTINGS] | nke unload NAME [force]"
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	switch {
	case len(args) == 0 || args[0] == "list":
		var names []string
		for _, n := range g.started() {
			names = append(names, n.ID)
		}
		var avail []string
		all, _ := imageBundles()
		for _, b := range all {
			avail = append(avail, b.Name)
		}
		initproc.Logf("nke: loaded: %s; in the image: %s", strings.Join(names, ", "), strings.Join(avail, ", "))
	case (args[0] == "load" || args[0] == "start") && len(args) >= 2:
		b, err := findBundle(args[1])
		if err == nil {
			opts := loader.Options{}
			if len(args) > 2 {
				opts = loader.Options{Settings: strings.Join(args[2:], " "), OverrideSettings: true}
			}
			err = g.loader.Load(ctx, b, opts)
		}
		if err != nil {
			initproc.Logf("nke: %v", err)
		}
	case (args[0] == "unload" || args[0] == "stop") && (len(args) == 2 || len(args) == 3 && args[2] == "force"):
		if _, err := g.loader.Unload(ctx, g.resolveLoaded(args[1]), len(args) == 3); err != nil {
			initproc.Logf("nke: %v", err)
			return
		}
		initproc.Logf("nke: %s unloaded", args[1])
	default:
		initproc.Logf("nke: %s", usage)
	}
}

// imageBundles are the bundles the image carries (the compiled-in ones
// if it carries none), and what made others unreadable.
func imageBundles() ([]*bundle.Bundle, error) {
	dirs, _ := filepath.Glob(filepath.Join(bundles.ImageDir, "*.nke"))
	if len(dirs) == 0 {
		return bundles.All()
	}
	var out []*bundle.Bundle
	var errs []error
	for _, d := range dirs {
		b, err := bundle.ReadDir(d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, b)
	}
	return out, errors.Join(errs...)
}

var _ nke.SocketHook = (*sockfilter.Registry)(nil)
