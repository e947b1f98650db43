package bundle

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// seeds are the testdata files with the given extension.
func seeds(f *testing.F, ext string) {
	names, err := filepath.Glob("testdata/*" + ext)
	if err != nil || len(names) == 0 {
		f.Fatalf("no testdata/*%s seeds: %v", ext, err)
	}
	for _, n := range names {
		data, err := os.ReadFile(n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
}

// Fuzz with -fuzzminimizetime=1s: minimizing a kilobyte manifest takes
// the default minute per new input.

// FuzzParseManifest: any input gives a manifest that passes its own
// checks or a *ManifestError, never a panic.
func FuzzParseManifest(f *testing.F) {
	seeds(f, ".plist")
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseManifest("f.plist", data)
		if err != nil {
			var me *ManifestError
			if !errors.As(err, &me) {
				t.Fatalf("error %v is not a *ManifestError", err)
			}
			return
		}
		if err := CheckVersion(m.Version); err != nil {
			t.Fatalf("accepted a bad version: %v", err)
		}
		if (m.Harness.Builtin == "") == (m.Harness.WebAssembly == "") {
			t.Fatalf("accepted Builtin %q and WebAssembly %q", m.Harness.Builtin, m.Harness.WebAssembly)
		}
		out, err := MarshalManifest(m)
		if err != nil {
			t.Fatalf("MarshalManifest: %v", err)
		}
		back, err := ParseManifest("f.plist", out)
		if err != nil {
			t.Fatalf("the marshalled manifest does not parse: %v\n%s", err, out)
		}
		if d := cmp.Diff(m, back, cmpopts.EquateEmpty()); d != "" {
			t.Fatalf("round trip -want +got:\n%s", d)
		}
	})
}

// FuzzUnpack: any archive gives a bundle within the limits or an error;
// what it gives packs and unpacks to the same bundle.
func FuzzUnpack(f *testing.F) {
	seeds(f, ".tar")
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := Unpack(data)
		if err != nil {
			return
		}
		total := 0
		for p, d := range b.Files {
			if err := checkRel(b.Name, p); err != nil {
				t.Fatal(err)
			}
			total += len(d)
		}
		if total > MaxSize || len(b.Files) > MaxEntries {
			t.Fatalf("%d files of %d bytes", len(b.Files), total)
		}
		a, err := Pack(b)
		if err != nil {
			t.Fatalf("Pack of an unpacked bundle: %v", err)
		}
		if _, err := Unpack(a); err != nil {
			t.Fatalf("Unpack of Pack: %v", err)
		}
	})
}
