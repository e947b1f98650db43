package hostvm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nke-harness/nke/initramfs"
	"github.com/nke-harness/nke/nke/bundles"
)

func TestImageBundles(t *testing.T) {
	root, _ := filepath.Abs("../..")
	files, wasm, err := ImageBundles(root, []byte("com.example.ipfw\n"))
	if err != nil {
		t.Fatal(err)
	}
	byPath := map[string]initramfs.File{}
	for _, f := range files {
		byPath[f.Path] = f
	}
	fw := byPath["/lib/nke/IPFirewall.nke/Contents/Info.plist"]
	if !strings.Contains(string(fw.Data), "com.example.ipfw") {
		t.Errorf("the image lacks IPFirewall.nke's manifest: %q", fw.Data)
	}
	if p := byPath[bundles.ImageBootFile]; string(p.Data) != "com.example.ipfw\n" {
		t.Errorf("boot preferences %q", p.Data)
	}
	want := []initramfs.WasmModule{
		{Path: "/lib/nke/IPFirewallWasm.nke/Contents/WebAssembly/wasmfw.wasm", Main: "./nke/wasm/examples/wasmfw"},
		{Path: "/lib/nke/UDPDrop.nke/Contents/WebAssembly/udpdrop.wasm", Main: "./nke/wasm/examples/udpdrop"},
	}
	if d := cmp.Diff(want, wasm); d != "" {
		t.Errorf("wasm modules (-want +got):\n%s", d)
	}

	// A bundle naming a module nobody can build is refused, saying where
	// the module goes.
	dir := t.TempDir()
	b := filepath.Join(dir, BundleSource, "X.nke", "Contents")
	os.MkdirAll(b, 0o755)
	plist, _ := os.ReadFile(filepath.Join(root, BundleSource, "IPFirewallWasm.nke/Contents/Info.plist"))
	os.WriteFile(filepath.Join(b, "Info.plist"), plist, 0o644)
	if _, _, err := ImageBundles(dir, nil); err == nil || !strings.Contains(err.Error(), "put it in") {
		t.Errorf("a module without source: %v", err)
	}
}

func TestBootPrefs(t *testing.T) {
	root, _ := filepath.Abs("../..")
	def, err := BootPrefs(root, "")
	if err != nil || !strings.Contains(string(def), "#") {
		t.Fatalf("default: %q, %v", def, err)
	}
	got, err := BootPrefs(root, "com.example.ipfw block in proto icmp, com.example.tcplog,")
	if err != nil {
		t.Fatal(err)
	}
	if want := "# from make run NKES=...\ncom.example.ipfw block in proto icmp\ncom.example.tcplog\n"; string(got) != want {
		t.Errorf("list: %q, want %q", got, want)
	}
	f := filepath.Join(t.TempDir(), "my.nkes")
	os.WriteFile(f, []byte("com.example.ethlog\n"), 0o644)
	if got, err := BootPrefs(root, f); err != nil || string(got) != "com.example.ethlog\n" {
		t.Errorf("file: %q, %v", got, err)
	}
}
