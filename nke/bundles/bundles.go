// Package bundles holds the example NKEs as bundles in the tree
// (Name.nke/Contents/Info.plist), embedded so that the guest image
// carries them, and the default boot preference file boot.nkes.
//
// A WebAssembly bundle commits only its Info.plist: its module is build
// output. `make wasm` builds it into out/wasm/; copied into
// Name.nke/Contents/WebAssembly/ before the guest is built it is embedded
// too, and without it loading the bundle fails with
// bundle.ErrNoWebAssembly saying so.
package bundles

import (
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strings"

	"github.com/nke-harness/nke/nke/bundle"
)

// FS holds the bundle folders (Name.nke/...) and boot.nkes.
//
//go:embed *.nke boot.nkes
var FS embed.FS

// BootFile is the name of the default boot preference file in FS.
const BootFile = "boot.nkes"

// Boot returns the default boot preference file's text.
func Boot() []byte {
	data, err := FS.ReadFile(BootFile)
	if err != nil {
		panic(err) // embedded: cannot fail
	}
	return data
}

// All reads every embedded bundle, sorted by folder name.
func All() ([]*bundle.Bundle, error) {
	dirs, err := fs.Glob(FS, "*.nke")
	if err != nil {
		return nil, err
	}
	sort.Strings(dirs)
	var out []*bundle.Bundle
	for _, d := range dirs {
		b, err := bundle.ReadFS(FS, d)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

// Find returns the embedded bundle whose folder name ("IPFirewall.nke")
// or CFBundleIdentifier ("com.example.ipfw") is name.
func Find(name string) (*bundle.Bundle, error) {
	all, err := All()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, b := range all {
		if b.Name == name || b.Manifest.ID == name {
			return b, nil
		}
		names = append(names, b.Name)
	}
	return nil, fmt.Errorf("no bundle %q in the image (there are: %s)", name, strings.Join(names, ", "))
}
