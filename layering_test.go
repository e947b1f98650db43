// Package layering_test keeps the module's import rules: which trees may
// depend on which. The layers, bottom up:
//
//	nke/dma, nke/mbuf   the substrate: DMA memory and packets. Nothing else.
//	nke/...             the KPI NKE authors import, and NKEs: only nke/...
//	virtio/...          drivers and the device model: the substrate only
//	kernel/...          the guest runtime, which implements the hook points
//	initramfs, tools/...  host side and the guest's main
//	vmtests             tests that boot the image
//
// Only what a package's own (non-test) code pulls in counts: tests may
// use a lower layer's test rig from a higher one. The test-support
// packages (nke/frametest, kernel/kerneltest) sit in their layers for what
// they may import, but no other package's own code may import them:
// production code never links a test rig.
package layering_test

import (
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/nke-harness/nke/"

// layers says, for each tree (the longest matching prefix wins), which
// trees of the module its packages may depend on, directly or not.
var layers = []struct {
	tree string
	may  []string
}{
	{"nke/dma", nil},
	{"nke/mbuf", []string{"nke/dma"}},
	{"nke", []string{"nke"}},
	{"virtio", []string{"virtio", "nke/dma", "nke/mbuf"}},
	{"kernel", []string{"kernel", "virtio", "nke"}},
	{"initramfs", nil},
	{"tools", []string{"tools", "kernel", "virtio", "nke", "initramfs"}},
	{"vmtests", []string{"vmtests", "tools", "kernel", "virtio", "nke", "initramfs"}},
}

// testSupport are packages for tests only: a package outside this list
// that depends on one of them is refused, wherever its layer would allow
// it. They may use each other (the rig speaks in frametest's frames).
var testSupport = []string{"nke/frametest", "nke/mbuf/mbuftest", "nke/nketest", "nke/wasm/wasmtest", "kernel/kerneltest", "kernel/ctlchan/ctlchantest"}

// allowed reports whether the package p (in a layer with rules may) may
// depend on dp.
func allowed(p string, may []string, dp string) bool {
	if slices.ContainsFunc(testSupport, func(s string) bool { return under(dp, s) }) &&
		!slices.ContainsFunc(testSupport, func(s string) bool { return under(p, s) }) {
		return false
	}
	return slices.ContainsFunc(may, func(m string) bool { return under(dp, m) })
}

// under reports whether the module-relative path p is tree or below it.
func under(p, tree string) bool { return p == tree || strings.HasPrefix(p, tree+"/") }

func layerOf(p string) (tree string, may []string, ok bool) {
	best := -1
	for i, l := range layers {
		if under(p, l.tree) && (best < 0 || len(l.tree) > len(layers[best].tree)) {
			best = i
		}
	}
	if best < 0 {
		return "", nil, false
	}
	return layers[best].tree, layers[best].may, true
}

func TestLayering(t *testing.T) {
	out, err := exec.Command("go", "list", "-json=ImportPath,Deps", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := 0
	for dec.More() {
		var pkg struct {
			ImportPath string
			Deps       []string
		}
		if err := dec.Decode(&pkg); err != nil {
			t.Fatal(err)
		}
		p, ok := strings.CutPrefix(pkg.ImportPath, module)
		if !ok {
			continue // the module root's own test package
		}
		seen++
		tree, may, ok := layerOf(p)
		if !ok {
			t.Errorf("%s is in no layer: add its tree to layers", p)
			continue
		}
		for _, d := range pkg.Deps {
			dp, ok := strings.CutPrefix(d, module)
			if !ok || under(dp, tree) && allowed(p, []string{tree}, dp) {
				continue
			}
			if !allowed(p, may, dp) {
				t.Errorf("%s (layer %s) depends on %s: allowed are %v, never the test support %v", p, tree, dp, may, testSupport)
			}
		}
	}
	if seen < 10 {
		t.Fatalf("go list found %d packages of the module: the test is not looking at the tree", seen)
	}
}

// The rules can fail: a package of each layer that reached above itself
// would be caught.
func TestLayeringRules(t *testing.T) {
	for _, c := range []struct {
		pkg, dep string
		ok       bool
	}{
		{"nke/mbuf", "nke/dma", true},
		{"nke/mbuf", "kernel/ifnet", false},
		{"nke/dma", "nke/mbuf", false},
		{"nke/examples/ethlog", "nke/mbuf", true},
		{"nke/examples/ethlog", "kernel/ifnet", false},
		{"nke", "virtio/virtionet", false},
		{"virtio/virtionet", "nke/mbuf", true},
		{"virtio/virtionet", "nke", false},
		{"virtio/virtionet", "kernel/ifnet", false},
		{"kernel/ifnet", "nke", true},
		{"initramfs", "kernel/guest", false},
		// Test support: in its layer for its own imports, never imported
		// by production code, even from a layer above.
		{"kernel/kerneltest", "kernel/netstack", true},
		{"kernel/kerneltest", "virtio/devmodel", true},
		{"kernel/kerneltest", "nke/frametest", true},
		{"kernel/guest", "kernel/kerneltest", false},
		// Its subpackages (the conformance suite) are test support too.
		{"kernel/kerneltest/conformance", "kernel/kerneltest", true},
		{"kernel/kerneltest/conformance", "nke/frametest", true},
		{"kernel/guest", "kernel/kerneltest/conformance", false},
		{"nke/examples/ipfw", "kernel/kerneltest/conformance", false},
		{"kernel/services", "kernel/kerneltest", false},
		// The socket layer sits on netstack, below the services; the
		// KPI and the drivers never reach up to it.
		{"kernel/socket", "kernel/netstack", true},
		{"kernel/services", "kernel/socket", true},
		{"kernel/socket", "kernel/kerneltest", false},
		{"nke", "kernel/socket", false},
		{"nke/examples/ipfw", "kernel/socket", false},
		{"virtio/virtionet", "kernel/socket", false},
		{"tools/nkeinit", "kernel/kerneltest", false},
		{"nke/frametest", "nke", true},
		{"nke/frametest", "kernel/ifnet", false},
		{"nke/frametest", "virtio/devmodel", false},
		{"nke/examples/ethlog", "nke/frametest", false},
		{"kernel/ifnet", "nke/frametest", false},
		{"vmtests", "nke/frametest", false},
	} {
		_, may, ok := layerOf(c.pkg)
		got := ok && allowed(c.pkg, may, c.dep)
		if got != c.ok {
			t.Errorf("%s -> %s: allowed %v, want %v", c.pkg, c.dep, got, c.ok)
		}
	}
}
