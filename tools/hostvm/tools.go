package hostvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Tool is a program or file on this host that a job needs, and the Debian
// package that provides it.
type Tool struct {
	Command string // a program looked up on PATH, or
	File    string // a file that must exist (headers, say)
	Package string // the Debian package that provides it
}

func (t Tool) String() string {
	if t.Command != "" {
		return t.Command
	}
	return t.File
}

// Tools is what one job needs from the host.
type Tools struct {
	Job  string // for messages: "go test -race"
	Why  string // why it needs them, for messages
	List []Tool
}

var (
	// RaceTools: the race detector builds with cgo, which needs a C
	// compiler, the C library's headers and its startup files. A fresh
	// Debian has neither, and go test -race then stops at "-race
	// requires cgo".
	RaceTools = Tools{
		Job: "go test -race",
		Why: "the race detector builds with cgo",
		List: []Tool{
			{Command: "gcc", Package: "gcc"},
			{File: "/usr/include/stdlib.h", Package: "libc6-dev"},
		},
	}
	// VMTestTools are the clients the VM tests run on the guest's wire,
	// inside a private network namespace, as a user would (QEMU itself
	// is EnsureQEMU's).
	VMTestTools = Tools{
		Job: "the VM tests",
		Why: "they build private network namespaces with taps and run clients in them",
		List: []Tool{
			{Command: "ip", Package: "iproute2"},
			{Command: "ping", Package: "iputils-ping"},
			{Command: "curl", Package: "curl"},
			{Command: "nc.openbsd", Package: "netcat-openbsd"},
			{Command: "tshark", Package: "tshark"},
		},
	}
)

// ErrToolsMissing is wrapped by EnsureTools' errors when it could not
// install what is missing.
var ErrToolsMissing = errors.New("host tools missing")

// toolsError is one sentence naming what is missing and what to run.
type toolsError string

func (e toolsError) Error() string { return string(e) }
func (e toolsError) Unwrap() error { return ErrToolsMissing }

func toolsErrorf(format string, a ...any) error { return toolsError(fmt.Sprintf(format, a...)) }

// EnsureTools checks that every tool in ts is present. When some are
// missing and this is a root shell on a Debian-family host it installs
// their packages with apt-get (output to progress); otherwise it returns
// an error wrapping ErrToolsMissing that names the command to run.
func EnsureTools(ctx context.Context, progress io.Writer, ts Tools) error {
	return realHost().ensureTools(ctx, progress, ts)
}

// MissingTools returns the tools of ts this host lacks.
func MissingTools(ts Tools) []Tool {
	return realHost().missing(ts)
}

func (h host) has(t Tool) bool {
	if t.Command != "" {
		_, err := h.cmd.lookPath(t.Command)
		return err == nil
	}
	stat := h.stat
	if stat == nil {
		stat = os.Stat
	}
	_, err := stat(t.File)
	return err == nil
}

func (h host) missing(ts Tools) []Tool {
	var m []Tool
	for _, t := range ts.List {
		if !h.has(t) {
			m = append(m, t)
		}
	}
	return m
}

func (h host) ensureTools(ctx context.Context, progress io.Writer, ts Tools) error {
	missing := h.missing(ts)
	if len(missing) == 0 {
		return nil
	}
	var names, pkgs []string
	seen := map[string]bool{}
	for _, t := range missing {
		names = append(names, t.String())
		if !seen[t.Package] {
			seen[t.Package] = true
			pkgs = append(pkgs, t.Package)
		}
	}
	what := fmt.Sprintf("%s missing for %s (%s)", strings.Join(names, ", "), ts.Job, ts.Why)
	switch {
	case !h.hasApt():
		return toolsErrorf("%s: install them with your package manager (Debian packages %s)", what, strings.Join(pkgs, " "))
	case !h.root:
		return toolsErrorf("%s: run `sudo apt-get install --no-install-recommends %s`, or run make as root, which installs them", what, strings.Join(pkgs, " "))
	}
	fmt.Fprintf(progress, "nke: %s; installing %s with apt-get\n", what, strings.Join(pkgs, " "))
	if err := h.aptInstall(ctx, progress, pkgs...); err != nil {
		return err
	}
	if still := h.missing(ts); len(still) > 0 {
		return toolsErrorf("apt-get installed %s but %s is still missing (not on PATH?)", strings.Join(pkgs, " "), still[0])
	}
	fmt.Fprintf(progress, "nke: installed %s\n", strings.Join(pkgs, " "))
	return nil
}
