package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nke-harness/nke/kernel/ctlchan"
)

// resolver finds bundles by identifier in a list of directories.
type resolver struct {
	dirs  []string
	index map[string]*bundleInfo // identifier -> the first bundle with it
	bad   []string               // *.nke folders that do not read
}

// newResolver searches dirs in order, each once.
func newResolver(dirs []string) *resolver {
	r := &resolver{}
	seen := map[string]bool{}
	for _, d := range dirs {
		d = filepath.Clean(d)
		if !seen[d] {
			seen[d] = true
			r.dirs = append(r.dirs, d)
		}
	}
	return r
}

// find returns the bundle with identifier id, nil if none.
func (r *resolver) find(id string) (*bundleInfo, error) {
	if r.index == nil {
		r.index = map[string]*bundleInfo{}
		for _, d := range r.dirs {
			ents, err := os.ReadDir(d)
			if err != nil {
				return nil, usagef("dependency directory %s: %v", d, err)
			}
			for _, e := range ents {
				if !strings.HasSuffix(e.Name(), ".nke") {
					continue
				}
				p := filepath.Join(d, e.Name())
				if fi, err := os.Stat(p); err != nil || !fi.IsDir() {
					continue
				}
				b, err := readBundle(p)
				if err != nil {
					r.bad = append(r.bad, fmt.Sprintf("%s (%v)", p, err))
					continue
				}
				if r.index[b.ID] == nil {
					r.index[b.ID] = b
				}
			}
		}
	}
	return r.index[id], nil
}

// resolve returns what loading root takes: its dependencies (OSBundleLibraries
// that are not harness KPIs), theirs, in an order where each comes after
// what it needs, and root last.
func (r *resolver) resolve(root *bundleInfo) ([]*bundleInfo, error) {
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var order []*bundleInfo
	var visit func(b *bundleInfo, chain []string) error
	visit = func(b *bundleInfo, chain []string) error {
		chain = append(chain, b.ID)
		state[b.ID] = visiting
		for _, lib := range sortedKeys(b.Libraries) {
			if strings.HasPrefix(lib, kpiPrefix) {
				continue
			}
			if state[lib] == visiting {
				return usagef("dependency cycle: %s -> %s (OSBundleLibraries in their Info.plist): break the cycle", strings.Join(chain, " -> "), lib)
			}
			d, err := r.find(lib)
			if err != nil {
				return err
			}
			if lib == root.ID {
				d = root
			}
			want := b.Libraries[lib]
			if d == nil {
				return usagef("%s needs %s%s, which no bundle in %s has: pass -L DIR with the folder that holds it%s",
					strings.Join(chain, " -> "), lib, versionNote(want), strings.Join(r.dirs, ", "), r.unreadable())
			}
			if err := satisfies(d, want); err != nil {
				return usagef("%s needs %s version %s or later, but %v", strings.Join(chain, " -> "), lib, want, err)
			}
			if state[lib] == done {
				continue
			}
			if err := visit(d, chain); err != nil {
				return err
			}
		}
		state[b.ID] = done
		order = append(order, b)
		return nil
	}
	if err := visit(root, nil); err != nil {
		return nil, err
	}
	return order, nil
}

func versionNote(v string) string {
	if v == "" {
		return ""
	}
	return " (version " + v + " or later)"
}

func (r *resolver) unreadable() string {
	if len(r.bad) == 0 {
		return ""
	}
	return "; these bundles there do not read: " + strings.Join(r.bad, "; ")
}

// loaded is one line of load's output.
type loaded struct {
	ctlchan.LoadReply
	Dependency bool   `json:"dependency,omitempty"`
	Path       string `json:"path"`
}

func loadCmd() *command {
	var libs multiFlag
	var dry bool
	return &command{
		name: "load", args: "[-L DIR]... [-n] PATH.nke", summary: "load a bundle into the guest, dependencies first", min: 1, max: 1,
		help: `
Loads the bundle folder PATH.nke into the guest, the kextload of this
world. First come its dependencies: every OSBundleLibraries entry that is
not a harness KPI (com.nke-harness.kpi.*) is looked up by identifier
among the *.nke folders in PATH's directory, then in each -L DIR in
order (the first bundle with the identifier wins), with theirs, and so on;
each goes to the guest as a dependency (one already loaded is fine) in
an order where it comes after what it needs. A dependency that is
missing, too old, or part of a cycle is an error naming the chain (exit
2) and nothing is loaded. Prints each bundle's identifier, version and
index; a failure part way through prints what did load.`,
		example: `
$ nkectl load nke/bundles/ContentFilter.nke
INDEX  ID                         VERSION  STATUS
1      com.example.tcplog         1.0.0    loaded (dependency)
2      com.example.contentfilter  1.0.0    loaded
$ nkectl load -n -L ~/nkes build/App.nke      # resolve only: the order, the folders`,
		flags: func(fs *flag.FlagSet) {
			libs = nil
			fs.Var(&libs, "L", "also look for dependencies in `DIR` (repeatable)")
			fs.BoolVar(&dry, "dry-run", false, "resolve the dependencies and print the order; load nothing")
			fs.BoolVar(&dry, "n", false, "resolve the dependencies and print the order; load nothing")
		},
		run: func(c *cli, args []string) error { return c.load(args[0], libs, dry) },
	}
}

// multiFlag is a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func (c *cli) load(path string, libs []string, dry bool) error {
	root, err := readBundle(filepath.Clean(path))
	if err != nil {
		return usagef("load: cannot read the bundle %s: %v", path, err)
	}
	r := newResolver(append([]string{filepath.Dir(root.Path)}, libs...))
	order, err := r.resolve(root)
	if err != nil {
		return fmt.Errorf("load %s: %w", path, err)
	}
	archives := make([][]byte, len(order))
	for i, b := range order {
		if archives[i], err = pack(b); err != nil {
			return usagef("load: cannot pack %s: %v", b.Path, err)
		}
	}
	var out []loaded
	if dry {
		for i, b := range order {
			out = append(out, loaded{LoadReply: ctlchan.LoadReply{ID: b.ID, Version: b.Version}, Dependency: i < len(order)-1, Path: b.Path})
		}
		return c.printLoaded(out, true)
	}
	cl, err := c.connect()
	if err != nil {
		return err
	}
	for i, b := range order {
		dep := i < len(order)-1
		ctx, cancel := c.loadCtx()
		rep, err := cl.Load(ctx, ctlchan.LoadRequest{Name: filepath.Base(b.Path), Dependency: dep, Archive: archives[i]})
		cancel()
		if err != nil {
			if len(out) > 0 {
				c.printLoaded(out, false)
			}
			what := "load " + b.Path
			if dep {
				what = fmt.Sprintf("load %s (a dependency of %s)", b.Path, root.ID)
			}
			err = c.requestErr(what, err)
			if errors.Is(err, syscall.EEXIST) {
				err = fmt.Errorf("%w (nkectl replace swaps in a new version, nkectl unload %s removes it)", err, b.ID)
			}
			return err
		}
		out = append(out, loaded{LoadReply: rep, Dependency: dep, Path: b.Path})
	}
	return c.printLoaded(out, false)
}

func (c *cli) printLoaded(out []loaded, dry bool) error {
	if c.json {
		if out == nil {
			out = []loaded{}
		}
		return c.printJSON(out)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 8, 2, ' ', 0)
	if dry {
		fmt.Fprintln(tw, "ORDER\tID\tVERSION\tPATH")
		for i, l := range out {
			role := ""
			if l.Dependency {
				role = " (dependency)"
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s%s\n", i+1, l.ID, l.Version, l.Path, role)
		}
		return tw.Flush()
	}
	fmt.Fprintln(tw, "INDEX\tID\tVERSION\tSTATUS")
	for _, l := range out {
		status := "loaded"
		if l.Already {
			status = "already loaded"
		}
		if l.Dependency {
			status += " (dependency)"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", l.Index, l.ID, l.Version, status)
	}
	return tw.Flush()
}

func unloadCmd() *command {
	var force bool
	return &command{
		name: "unload", args: "[--force] ID", summary: "unload a bundle by identifier", min: 1, max: 1,
		help: `
Unloads the bundle ID (its CFBundleIdentifier, as nkectl stat lists it),
the kextunload of this world, once its in-flight packets and calls have
drained. While other loaded bundles depend on it or control clients are
connected to it, the guest refuses with EBUSY (exit 4): unload those
first, close the clients, or pass --force, which detaches them.`,
		example: `
$ nkectl unload com.example.tcplog
nkectl: unload com.example.tcplog: in use [EBUSY]: com.example.contentfilter depends on it; unload its dependants or close its control clients first, or pass --force
$ echo $?
4
$ nkectl unload --force com.example.tcplog
unloaded com.example.tcplog (drained in 1.5ms)
forced: detached com.example.contentfilter`,
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&force, "force", false, "unload even while in use: detach dependants and control clients")
		},
		run: func(c *cli, args []string) error { return c.unload(args[0], force) },
	}
}

func (c *cli) unload(id string, force bool) error {
	if strings.HasSuffix(id, ".nke") || strings.ContainsRune(id, os.PathSeparator) {
		if b, err := readBundle(id); err == nil {
			return usagef("unload takes an identifier, not a folder: nkectl unload %s", b.ID)
		}
		return usagef("unload takes a bundle identifier (as nkectl stat lists them), not %q", id)
	}
	cl, err := c.connect()
	if err != nil {
		return err
	}
	ctx, cancel := c.requestCtx()
	defer cancel()
	rep, err := cl.Unload(ctx, ctlchan.UnloadRequest{ID: id, Force: force})
	if err != nil {
		var re *ctlchan.RemoteError
		if errors.As(err, &re) && re.Code == ctlchan.CodeBusy {
			return &exitError{exitBusy, fmt.Errorf("unload %s: in use [EBUSY]: %s; unload its dependants or close its control clients first, or pass --force", id, re.Message)}
		}
		return c.requestErr("unload "+id, err)
	}
	if c.json {
		return c.printJSON(rep)
	}
	fmt.Fprintf(c.stdout, "unloaded %s (drained in %v)\n", rep.ID, rep.Drain)
	if rep.Forced || len(rep.Detached) > 0 {
		fmt.Fprintf(c.stdout, "forced: detached %s\n", orNone(rep.Detached))
	}
	return nil
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "nothing"
	}
	return strings.Join(s, ", ")
}

func replaceCmd() *command {
	var handover bool
	return &command{
		name: "replace", args: "[--handover] PATH.nke", summary: "swap a loaded bundle for a new version of it", min: 1, max: 1,
		help: `
Replaces the loaded bundle with PATH.nke's identifier by PATH.nke, at
once: packets meet either the old or the new version, none is lost.
With --handover the old instance hands its state to the new one.`,
		example: `
$ nkectl replace --handover build/IPFirewall.nke
replaced com.example.ipfw 1.0.0 -> 1.1.0 in 40µs, state handed over`,
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&handover, "handover", false, "hand the old instance's state to the new one")
		},
		run: func(c *cli, args []string) error { return c.replace(args[0], handover) },
	}
}

func (c *cli) replace(path string, handover bool) error {
	b, err := readBundle(filepath.Clean(path))
	if err != nil {
		return usagef("replace: cannot read the bundle %s: %v", path, err)
	}
	archive, err := pack(b)
	if err != nil {
		return usagef("replace: cannot pack %s: %v", path, err)
	}
	cl, err := c.connect()
	if err != nil {
		return err
	}
	ctx, cancel := c.loadCtx()
	defer cancel()
	rep, err := cl.Replace(ctx, ctlchan.ReplaceRequest{Name: filepath.Base(b.Path), Handover: handover, Archive: archive})
	if err != nil {
		return c.requestErr("replace "+b.ID, err)
	}
	if c.json {
		return c.printJSON(rep)
	}
	how := ""
	if rep.HandedOver {
		how = ", state handed over"
	} else if handover {
		how = ", state NOT handed over"
	}
	fmt.Fprintf(c.stdout, "replaced %s %s -> %s in %v%s\n", rep.ID, rep.OldVersion, rep.NewVersion, rep.Swap.Round(time.Microsecond), how)
	return nil
}
