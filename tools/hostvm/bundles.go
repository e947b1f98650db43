package hostvm

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/nke-harness/nke/initramfs"
	"github.com/nke-harness/nke/nke/bundle"
	"github.com/nke-harness/nke/nke/bundles"
)

// BundleSource is the folder of bundles the image carries, relative to
// the module root.
const BundleSource = "nke/bundles"

// ImageBundles lists what the guest image needs for its NKEs: every
// bundle under modDir/nke/bundles at bundles.ImageDir, the WebAssembly
// modules their manifests name (built from bundles.WasmExamples, not
// committed), and prefs as the boot preference file.
func ImageBundles(modDir string, prefs []byte) ([]initramfs.File, []initramfs.WasmModule, error) {
	dirs, err := filepath.Glob(filepath.Join(modDir, BundleSource, "*.nke"))
	if err != nil {
		return nil, nil, err
	}
	sort.Strings(dirs)
	var files []initramfs.File
	var wasm []initramfs.WasmModule
	for _, d := range dirs {
		b, err := bundle.ReadDir(d)
		if err != nil {
			return nil, nil, err
		}
		base := path.Join(bundles.ImageDir, b.Name, "Contents")
		rels := make([]string, 0, len(b.Files))
		for rel := range b.Files {
			rels = append(rels, rel)
		}
		sort.Strings(rels)
		for _, rel := range rels {
			files = append(files, initramfs.File{Path: path.Join(base, rel), Data: b.Files[rel]})
		}
		if w := b.Manifest.Harness.WebAssembly; w != "" {
			rel := path.Join(bundle.WebAssemblyDir, w)
			if _, ok := b.Files[rel]; ok {
				continue // shipped in the bundle itself
			}
			main := path.Join(bundles.WasmExamples, strings.TrimSuffix(w, ".wasm"))
			if _, err := os.Stat(filepath.Join(modDir, main)); err != nil {
				return nil, nil, fmt.Errorf("bundle %s names the WebAssembly module %s: put it in %s, or its Go source in %s", b.Name, w,
					filepath.Join(d, "Contents", rel), main)
			}
			wasm = append(wasm, initramfs.WasmModule{Path: path.Join(base, rel), Main: "./" + main})
		}
	}
	files = append(files, initramfs.File{Path: bundles.ImageBootFile, Data: prefs})
	return files, wasm, nil
}

// BootPrefs is the boot preference file for `make run NKES=...`: the
// file NKES names, or a comma-separated list of its lines
// ("com.example.ipfw block in proto icmp,com.example.tcplog"); empty is
// the default file, modDir/nke/bundles/boot.nkes.
func BootPrefs(modDir, nkes string) ([]byte, error) {
	if strings.TrimSpace(nkes) == "" {
		return os.ReadFile(filepath.Join(modDir, BundleSource, bundles.BootFile))
	}
	if st, err := os.Stat(nkes); err == nil && !st.IsDir() {
		return os.ReadFile(nkes)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("NKES %s: %w", nkes, err)
	}
	var b strings.Builder
	b.WriteString("# from make run NKES=...\n")
	for _, l := range strings.Split(nkes, ",") {
		if l = strings.TrimSpace(l); l != "" {
			b.WriteString(l + "\n")
		}
	}
	return []byte(b.String()), nil
}
