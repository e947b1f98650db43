package hostvm

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestValidateKernel(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "vmlinuz")
	writeBzImage(t, good)
	wrongMagic := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(wrongMagic, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("HdrS"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path, wantErr string
	}{
		{"bzImage", good, ""},
		{"missing", filepath.Join(dir, "nope"), "does not exist"},
		{"directory", dir, "is a directory, not a bzImage"},
		{"wrong magic", wrongMagic, `not a bzImage (no "HdrS" boot header at offset 0x202`},
		{"truncated", short, "not a bzImage"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateKernel(tc.path)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("ValidateKernel(%s) = %v, want nil", tc.path, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), tc.path) {
				t.Fatalf("ValidateKernel(%s) = %v, want an error naming the file and containing %q", tc.path, err, tc.wantErr)
			}
		})
	}
}

func TestEnsureKernelOverride(t *testing.T) {
	root := t.TempDir()
	vmlinuz := filepath.Join(root, "boot", "vmlinuz-6.1.0-9-cloud-amd64")
	writeBzImage(t, vmlinuz)
	if err := os.MkdirAll(filepath.Join(root, "lib", "modules", "6.1.0-9-cloud-amd64"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvKernel, vmlinuz)
	got, err := EnsureKernel(context.Background(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := Kernel{Path: vmlinuz, Root: root, Release: "6.1.0-9-cloud-amd64"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("EnsureKernel with %s mismatch (-want +got):\n%s", EnvKernel, diff)
	}
	if m := got.ModulesDir(); m != filepath.Join(root, "lib/modules/6.1.0-9-cloud-amd64") {
		t.Errorf("ModulesDir() = %q", m)
	}

	t.Setenv(EnvKernel, filepath.Join(root, "missing"))
	_, err = EnsureKernel(context.Background(), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "does not exist") || !strings.Contains(err.Error(), "unset NKE_KERNEL") {
		t.Fatalf("EnsureKernel with a missing %s = %v, want an error saying what to do", EnvKernel, err)
	}
}

func TestParseKernelDepends(t *testing.T) {
	for _, tc := range []struct{ name, out, want string }{
		{"bookworm", "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n", "linux-image-6.1.0-56-cloud-amd64"},
		{"first of several", "x\n  Depends: <linux-image-virtual>\n  Depends: linux-image-6.12.9-cloud-amd64\n  Depends: linux-image-6.1.0-1-cloud-amd64\n", "linux-image-6.12.9-cloud-amd64"},
		{"no lists", "", ""},
		{"other deps only", "x\n  Depends: initramfs-tools\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := parseKernelDepends([]byte(tc.out)); got != tc.want {
				t.Fatalf("parseKernelDepends() = %q, want %q", got, tc.want)
			}
		})
	}
}

const testPkg = "linux-image-6.1.0-56-cloud-amd64"

// debianFake answers like a Debian host whose lists name testPkg; its
// dpkg-deb "unpacks" a fake kernel tree.
func debianFake(t *testing.T) *fakeCmd {
	return &fakeCmd{
		paths: map[string]bool{"apt-get": true, "apt-cache": true, "dpkg-deb": true},
		outputs: map[string]string{
			"apt-cache depends " + KernelMetaPackage: KernelMetaPackage + "\n  Depends: " + testPkg + "\n",
		},
		runs: map[string]func(string, []string) error{
			"apt-get download": func(dir string, args []string) error {
				return os.WriteFile(filepath.Join(dir, args[1]+"_6.1.192-2_amd64.deb"), []byte("deb"), 0o644)
			},
			"dpkg-deb -x": func(_ string, args []string) error {
				dest := args[2]
				writeBzImage(t, filepath.Join(dest, "boot", "vmlinuz-6.1.0-56-cloud-amd64"))
				return os.MkdirAll(filepath.Join(dest, "lib", "modules", "6.1.0-56-cloud-amd64", "kernel"), 0o755)
			},
		},
	}
}

func TestKernelCacheDownloadThenHit(t *testing.T) {
	cache := t.TempDir()
	fake := debianFake(t)
	c := kernelCache{host: host{cmd: fake, root: false, aptLists: t.TempDir()}, dir: cache, progress: io.Discard}

	first, err := c.ensure(context.Background())
	if err != nil {
		t.Fatalf("first ensure: %v", err)
	}
	root := filepath.Join(cache, "kernels", testPkg)
	want := Kernel{
		Path:    filepath.Join(root, "boot", "vmlinuz-6.1.0-56-cloud-amd64"),
		Root:    root,
		Release: "6.1.0-56-cloud-amd64",
		Package: testPkg,
	}
	if diff := cmp.Diff(want, first); diff != "" {
		t.Errorf("first ensure mismatch (-want +got):\n%s", diff)
	}
	if st, err := os.Stat(first.ModulesDir()); err != nil || !st.IsDir() {
		t.Errorf("ModulesDir %s: %v", first.ModulesDir(), err)
	}

	fake.calls = nil
	second, err := c.ensure(context.Background())
	if err != nil {
		t.Fatalf("second ensure: %v", err)
	}
	if diff := cmp.Diff(first, second); diff != "" {
		t.Errorf("cached kernel differs (-first +second):\n%s", diff)
	}
	// Only the local apt-cache lookup; no apt-get, no dpkg-deb.
	if diff := cmp.Diff([]string{"apt-cache depends " + KernelMetaPackage}, fake.calls); diff != "" {
		t.Errorf("a cache hit ran commands (-want +got):\n%s", diff)
	}
	if left, _ := filepath.Glob(filepath.Join(cache, "kernels", ".unpack-*")); len(left) != 0 {
		t.Errorf("temporary unpack dirs left behind: %v", left)
	}
}

func TestKernelCacheOfflineUsesNewest(t *testing.T) {
	cache := t.TempDir()
	writeBzImage(t, filepath.Join(cache, "kernels", testPkg, "boot", "vmlinuz-6.1.0-56-cloud-amd64"))
	fake := debianFake(t)
	fake.outputs = nil // apt-cache fails: no lists
	c := kernelCache{host: host{cmd: fake, aptLists: t.TempDir()}, dir: cache, progress: io.Discard}
	k, err := c.ensure(context.Background())
	if err != nil {
		t.Fatalf("ensure without apt lists but with a cached kernel: %v", err)
	}
	if k.Package != testPkg {
		t.Errorf("ensure picked %q, want the cached %q", k.Package, testPkg)
	}
	for _, call := range fake.calls {
		if strings.HasPrefix(call, "apt-get") {
			t.Errorf("offline fallback ran %q", call)
		}
	}
}

func TestKernelCacheBrokenEntryIsRefetched(t *testing.T) {
	cache := t.TempDir()
	broken := filepath.Join(cache, "kernels", testPkg, "boot", "vmlinuz-6.1.0-56-cloud-amd64")
	if err := os.MkdirAll(filepath.Dir(broken), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(broken, []byte("not a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	fake := debianFake(t)
	c := kernelCache{host: host{cmd: fake, aptLists: t.TempDir()}, dir: cache, progress: io.Discard}
	k, err := c.ensure(context.Background())
	if err != nil {
		t.Fatalf("ensure over a broken cache entry: %v", err)
	}
	if err := ValidateKernel(k.Path); err != nil {
		t.Fatalf("refetched kernel invalid: %v", err)
	}
}

func TestKernelCacheErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		edit    func(*fakeCmd, *host)
		wantErr string
	}{
		{
			name:    "no apt at all",
			edit:    func(f *fakeCmd, h *host) { f.paths = nil },
			wantErr: "set NKE_KERNEL to an x86_64 bzImage",
		},
		{
			name:    "no lists, not root",
			edit:    func(f *fakeCmd, h *host) { f.outputs = nil },
			wantErr: "sudo apt-get update",
		},
		{
			name: "download fails, not root",
			edit: func(f *fakeCmd, h *host) {
				delete(f.runs, "apt-get download")
			},
			wantErr: "downloading kernel package " + testPkg + " failed",
		},
		{
			name: "package without a kernel",
			edit: func(f *fakeCmd, h *host) {
				f.runs["dpkg-deb -x"] = func(string, []string) error { return nil }
			},
			wantErr: "holds no usable kernel",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := debianFake(t)
			h := host{cmd: fake, aptLists: t.TempDir()}
			tc.edit(fake, &h)
			c := kernelCache{host: h, dir: t.TempDir(), progress: io.Discard}
			_, err := c.ensure(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("ensure() = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestKernelCacheRootUpdatesLists(t *testing.T) {
	fake := debianFake(t)
	lists := fake.outputs
	fake.outputs = nil
	fake.runs["apt-get update"] = func(string, []string) error {
		fake.outputs = lists // the update brings the lists
		return nil
	}
	c := kernelCache{host: host{cmd: fake, root: true, aptLists: t.TempDir()}, dir: t.TempDir(), progress: io.Discard}
	if _, err := c.ensure(context.Background()); err != nil {
		t.Fatalf("ensure as root without lists: %v", err)
	}
	if len(fake.calls) < 3 || fake.calls[1] != "apt-get update" {
		t.Errorf("calls = %q, want apt-get update after the failed lookup", fake.calls)
	}
}

func TestCacheDir(t *testing.T) {
	t.Setenv(EnvCache, "/var/tmp/nke")
	if d, err := CacheDir(); err != nil || d != "/var/tmp/nke" {
		t.Errorf("CacheDir() with %s = %q, %v", EnvCache, d, err)
	}
	t.Setenv(EnvCache, "")
	t.Setenv("XDG_CACHE_HOME", "/xdg")
	if d, err := CacheDir(); err != nil || d != "/xdg/nke-harness" {
		t.Errorf("CacheDir() with XDG_CACHE_HOME = %q, %v", d, err)
	}
}

func TestKernelCacheRootRetriesStaleDownload(t *testing.T) {
	fake := debianFake(t)
	download := fake.runs["apt-get download"]
	fake.runs["apt-get download"] = func(string, []string) error { return os.ErrNotExist } // 404: stale lists
	fake.runs["apt-get update"] = func(string, []string) error {
		fake.runs["apt-get download"] = download
		return nil
	}
	c := kernelCache{host: host{cmd: fake, root: true, aptLists: t.TempDir()}, dir: t.TempDir(), progress: io.Discard}
	if _, err := c.ensure(context.Background()); err != nil {
		t.Fatalf("ensure with stale lists as root: %v", err)
	}
	want := []string{
		"apt-cache depends " + KernelMetaPackage,
		"apt-get download " + testPkg,
		"apt-get update",
		"apt-cache depends " + KernelMetaPackage,
		"apt-get download " + testPkg,
	}
	var got []string
	for _, c := range fake.calls {
		if !strings.HasPrefix(c, "dpkg-deb") {
			got = append(got, c)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("commands (-want +got):\n%s", diff)
	}
}
