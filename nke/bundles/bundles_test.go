package bundles

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nke-harness/nke/nke/builtin"
	"github.com/nke-harness/nke/nke/bundle"
)

// TestBundles: every embedded manifest parses; a built-in one names an
// existing built-in NKE with the same id; a WebAssembly one names a module
// make wasm builds; every bundle dependency is another bundle here whose
// version satisfies it.
func TestBundles(t *testing.T) {
	all, err := All()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) < 7 {
		t.Errorf("%d bundles, want every example (7)", len(all))
	}
	byID := map[string]*bundle.Bundle{}
	for _, b := range all {
		if byID[b.Manifest.ID] != nil {
			t.Errorf("%s: id %s twice", b.Name, b.Manifest.ID)
		}
		byID[b.Manifest.ID] = b
	}
	covered := map[string]bool{}
	for _, b := range all {
		h := b.Manifest.Harness
		switch {
		case h.Builtin != "":
			m, err := builtin.Lookup(h.Builtin)
			if err != nil {
				t.Errorf("%s: %v", b.Name, err)
				continue
			}
			if m.ID != b.Manifest.ID {
				t.Errorf("%s: CFBundleIdentifier %s, but built-in %s is %s", b.Name, b.Manifest.ID, h.Builtin, m.ID)
			}
			covered[m.Name] = true
		case h.WebAssembly != "":
			src := filepath.Join("..", "wasm", "examples", strings.TrimSuffix(h.WebAssembly, ".wasm"))
			if _, err := os.Stat(filepath.Join(src, "main.go")); err != nil {
				t.Errorf("%s: WebAssembly %s: no example %s that make wasm builds", b.Name, h.WebAssembly, src)
			}
			if _, ok := b.Files[bundle.WebAssemblyDir+"/"+h.WebAssembly]; !ok {
				if _, err := b.WebAssemblyModule(); !errors.Is(err, bundle.ErrNoWebAssembly) || !strings.Contains(err.Error(), "make wasm") {
					t.Errorf("%s: missing module: %v", b.Name, err)
				}
			}
		}
		for _, dep := range b.Manifest.Depends() {
			d := byID[dep]
			if d == nil {
				t.Errorf("%s: depends on %s, which is not a bundle here", b.Name, dep)
				continue
			}
			if !bundle.Satisfies(d.Manifest.Version, d.Manifest.Compatible, b.Manifest.Libraries[dep]) {
				t.Errorf("%s: wants %s %s, have %s (compatible %s)", b.Name, dep, b.Manifest.Libraries[dep], d.Manifest.Version, d.Manifest.Compatible)
			}
		}
	}
	for _, m := range builtin.Modules {
		if !covered[m.Name] {
			t.Errorf("built-in %s has no bundle", m.Name)
		}
	}
}

func TestFind(t *testing.T) {
	for _, name := range []string{"IPFirewall.nke", "com.example.ipfw"} {
		b, err := Find(name)
		if err != nil || b.Manifest.ID != "com.example.ipfw" {
			t.Errorf("Find(%q) = %v, %v", name, b, err)
		}
	}
	if _, err := Find("Nope.nke"); err == nil || !strings.Contains(err.Error(), "IPFirewall.nke") {
		t.Errorf("Find(Nope.nke) = %v", err)
	}
	if !strings.Contains(string(Boot()), "com.example") {
		t.Error("boot.nkes looks empty")
	}
}
