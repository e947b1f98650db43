package loader

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/bundle"
)

// Pref is one line of a boot preference file: a bundle to load at boot.
type Pref struct {
	// Line is its line number, for errors.
	Line int
	// Name is a bundle id ("com.example.ipfw") or folder name
	// ("IPFirewall.nke").
	Name string
	// Settings, when HasSettings, replace the manifest's.
	Settings    string
	HasSettings bool
}

// MaxPrefs bounds the lines a preference file names.
const MaxPrefs = 64

// ParsePrefs parses a boot preference file: one bundle per line, in load
// order, its name (a bundle id or Name.nke folder name) and optionally,
// after white space, the settings to start it with instead of the
// manifest's (the rest of the line). Blank lines and lines whose first
// non-blank character is '#' are ignored. A name twice is an error.
// Errors name the file and line.
func ParsePrefs(file string, data []byte) ([]Pref, error) {
	var out []Pref
	seen := map[string]int{}
	var errs []error
	for i, line := range strings.Split(string(data), "\n") {
		n := i + 1
		line = strings.TrimRight(line, "\r")
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		name, settings, has := strings.Cut(t, " ")
		if j := strings.IndexByte(name, '\t'); j >= 0 {
			name, settings, has = t[:j], t[j+1:], true
		}
		settings = strings.TrimSpace(settings)
		has = has && settings != ""
		bad := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("%s:%d: %s", file, n, fmt.Sprintf(format, args...)))
		}
		switch {
		case nke.CheckName(name) != nil:
			bad("%q is not a bundle id or Name.nke folder name", name)
			continue
		case strings.ContainsAny(name, "/\\"):
			bad("%q: name a bundle, not a path (com.example.ipfw or IPFirewall.nke)", name)
			continue
		case strings.HasPrefix(name, bundle.KPIPrefix):
			bad("%s is a KPI, always there; name bundles only", name)
			continue
		}
		if prev, ok := seen[name]; ok {
			bad("%s is named on line %d already", name, prev)
			continue
		}
		seen[name] = n
		for _, c := range settings {
			if c < ' ' && c != '\t' {
				bad("the settings contain a control character")
				break
			}
		}
		out = append(out, Pref{Line: n, Name: name, Settings: settings, HasSettings: has})
		if len(out) > MaxPrefs {
			bad("more than %d bundles", MaxPrefs)
			break
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// Boot loads prefs in order, each with find's bundle of that name, and
// reports every failure (the line, the name and why) joined; the others
// load. A bundle whose dependency failed fails too, naming it.
func (l *Loader) Boot(ctx context.Context, prefs []Pref, find func(name string) (*bundle.Bundle, error)) error {
	var errs []error
	for _, p := range prefs {
		b, err := find(p.Name)
		if err == nil {
			err = l.Load(ctx, b, Options{Settings: p.Settings, OverrideSettings: p.HasSettings})
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("boot line %d: %s: %w", p.Line, p.Name, err))
		}
	}
	return errors.Join(errs...)
}
