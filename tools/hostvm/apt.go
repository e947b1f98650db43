package hostvm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// commander runs host tools (apt-get, apt-cache, dpkg-deb); tests swap
// in a fake that records calls.
type commander interface {
	// run streams the command's stdout and stderr to progress.
	run(ctx context.Context, dir string, progress io.Writer, name string, args ...string) error
	// output returns stdout; stderr goes into the error.
	output(ctx context.Context, name string, args ...string) ([]byte, error)
	lookPath(name string) (string, error)
}

type execCommander struct{}

// aptEnv keeps apt and dpkg from prompting: output goes to a log, not a
// terminal the user is watching for questions.
var aptEnv = []string{"DEBIAN_FRONTEND=noninteractive", "LC_ALL=C"}

func (execCommander) run(ctx context.Context, dir string, progress io.Writer, name string, args ...string) error {
	c := exec.CommandContext(ctx, name, args...)
	c.Dir = dir
	c.Env = append(os.Environ(), aptEnv...)
	c.Stdout, c.Stderr = progress, progress
	if err := c.Run(); err != nil {
		return fmt.Errorf("%s: %w", strings.Join(c.Args, " "), err)
	}
	return nil
}

func (execCommander) output(ctx context.Context, name string, args ...string) ([]byte, error) {
	c := exec.CommandContext(ctx, name, args...)
	c.Env = append(os.Environ(), aptEnv...)
	var stderr bytes.Buffer
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg != "" {
			return out, fmt.Errorf("%s: %w: %s", strings.Join(c.Args, " "), err, msg)
		}
		return out, fmt.Errorf("%s: %w", strings.Join(c.Args, " "), err)
	}
	return out, nil
}

func (execCommander) lookPath(name string) (string, error) { return exec.LookPath(name) }

// host is what the dependency code needs to know about this machine.
type host struct {
	cmd      commander
	root     bool   // may run apt-get install/update
	aptLists string // /var/lib/apt/lists
	// stat checks that a file exists; nil means os.Stat.
	stat func(string) (os.FileInfo, error)
}

func realHost() host {
	return host{cmd: execCommander{}, root: os.Geteuid() == 0, aptLists: "/var/lib/apt/lists"}
}

// hasApt reports whether this looks like a Debian-family host.
func (h host) hasApt() bool {
	_, err := h.cmd.lookPath("apt-get")
	return err == nil
}

// aptListsPresent reports whether apt has package lists at all; a fresh
// container has none and every install or lookup fails until an update.
func (h host) aptListsPresent() bool {
	m, _ := filepath.Glob(filepath.Join(h.aptLists, "*_Packages*"))
	return len(m) > 0
}

func (h host) aptUpdate(ctx context.Context, progress io.Writer) error {
	fmt.Fprintln(progress, "nke: apt-get update (refreshing package lists)")
	if err := h.cmd.run(ctx, "", progress, "apt-get", "update"); err != nil {
		return fmt.Errorf("refreshing package lists failed (network or apt sources?): %w", err)
	}
	return nil
}

// aptInstall installs pkgs with apt-get (root only): it refreshes the
// package lists first when there are none, and once more when an install
// from existing lists fails, since stale lists name .debs the mirror no
// longer has.
func (h host) aptInstall(ctx context.Context, progress io.Writer, pkgs ...string) error {
	updated := false
	if !h.aptListsPresent() {
		if err := h.aptUpdate(ctx, progress); err != nil {
			return err
		}
		updated = true
	}
	install := func() error {
		args := append([]string{"install", "-y", "--no-install-recommends"}, pkgs...)
		return h.cmd.run(ctx, "", progress, "apt-get", args...)
	}
	err := install()
	if err != nil && !updated {
		if err = h.aptUpdate(ctx, progress); err == nil {
			err = install()
		}
	}
	if err != nil {
		return fmt.Errorf("installing %s failed: %w", strings.Join(pkgs, " "), err)
	}
	return nil
}
