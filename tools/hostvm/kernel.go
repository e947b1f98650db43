package hostvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// KernelMetaPackage is the Debian package whose dependency names the
// current cloud kernel (linux-image-<abi>-cloud-amd64). The cloud flavour
// boots fastest under TCG: LZ4-compressed, few built-in drivers, and
// virtio_pci/virtio_net as modules, so nothing claims our NIC.
const KernelMetaPackage = "linux-image-cloud-amd64"

// Kernel is a guest kernel ready for QEMU's -kernel.
type Kernel struct {
	Path string // bzImage
	// Root is the unpacked package tree (boot/, lib/modules/); empty
	// when the kernel came from $NKE_KERNEL without such a tree around it.
	Root string
	// Release is the kernel release ("6.1.0-56-cloud-amd64"), empty when
	// unknown.
	Release string
	// Package is the Debian package it was unpacked from, if any.
	Package string
}

// ModulesDir is Root/lib/modules/Release, or "" when there is none.
func (k Kernel) ModulesDir() string {
	if k.Root == "" || k.Release == "" {
		return ""
	}
	return filepath.Join(k.Root, "lib", "modules", k.Release)
}

// CacheDir is where downloads live, outside the repository: $NKE_CACHE,
// else $XDG_CACHE_HOME/nke-harness, else ~/.cache/nke-harness.
func CacheDir() (string, error) {
	if d := os.Getenv(EnvCache); d != "" {
		return filepath.Abs(d)
	}
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory (%v); set %s to a writable directory", err, EnvCache)
	}
	return filepath.Join(base, "nke-harness"), nil
}

// bzImage boot protocol: "HdrS" at 0x202 (Documentation/arch/x86/boot.rst).
const (
	bzImageMagicOffset = 0x202
	bzImageMagic       = "HdrS"
)

// ValidateKernel checks that path is a regular file with the x86 boot
// protocol header, i.e. something QEMU's -kernel can boot directly.
func ValidateKernel(path string) error {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("kernel %s does not exist", path)
		}
		return fmt.Errorf("kernel %s cannot be read: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("kernel %s cannot be read: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("kernel %s is a %s, not a bzImage file", path, fileKind(st.Mode()))
	}
	var magic [len(bzImageMagic)]byte
	if _, err := f.ReadAt(magic[:], bzImageMagicOffset); err != nil || string(magic[:]) != bzImageMagic {
		return fmt.Errorf("kernel %s is not a bzImage (no %q boot header at offset %#x; an uncompressed vmlinux, an initrd or a truncated file?)",
			path, bzImageMagic, bzImageMagicOffset)
	}
	return nil
}

func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeDevice != 0:
		return "device"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "special file"
}

// EnsureKernel returns the guest kernel: $NKE_KERNEL when set, else the
// current Debian cloud kernel from the cache, downloading and unpacking
// it on first use (apt-get download + dpkg-deb -x, output to progress).
// Once cached, it runs only apt-cache (local) and touches no network.
func EnsureKernel(ctx context.Context, progress io.Writer) (Kernel, error) {
	if p := os.Getenv(EnvKernel); p != "" {
		k, err := KernelFromPath(p)
		if err != nil {
			return Kernel{}, fmt.Errorf("%s: %w; fix it or unset %s to use the Debian cloud kernel", EnvKernel, err, EnvKernel)
		}
		return k, nil
	}
	dir, err := CacheDir()
	if err != nil {
		return Kernel{}, err
	}
	return kernelCache{host: realHost(), dir: dir, progress: progress}.ensure(ctx)
}

// KernelFromPath validates a user-supplied bzImage. When it sits at
// <root>/boot/vmlinuz-<release> next to <root>/lib/modules/<release>
// (an unpacked .deb, or / itself) Root and Release are filled in too.
func KernelFromPath(p string) (Kernel, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return Kernel{}, err
	}
	if err := ValidateKernel(abs); err != nil {
		return Kernel{}, err
	}
	k := Kernel{Path: abs}
	if rel, ok := strings.CutPrefix(filepath.Base(abs), "vmlinuz-"); ok && filepath.Base(filepath.Dir(abs)) == "boot" {
		root := filepath.Dir(filepath.Dir(abs))
		if st, err := os.Stat(filepath.Join(root, "lib", "modules", rel)); err == nil && st.IsDir() {
			k.Root, k.Release = root, rel
		}
	}
	return k, nil
}

// kernelCache keeps unpacked kernel packages in dir/kernels/<package>.
// A directory there is complete by construction: it is unpacked under a
// temporary name and renamed into place.
type kernelCache struct {
	host
	dir      string
	progress io.Writer
}

func (c kernelCache) kernelsDir() string { return filepath.Join(c.dir, "kernels") }

func (c kernelCache) ensure(ctx context.Context) (Kernel, error) {
	pkg, err := c.resolve(ctx)
	if err != nil {
		if k, ok := c.newestCached(); ok {
			fmt.Fprintf(c.progress, "nke: cannot resolve the current cloud kernel (%v); using cached %s\n", err, k.Package)
			return k, nil
		}
		if !c.hasApt() {
			return Kernel{}, fmt.Errorf("no guest kernel: this host has no apt to fetch Debian's %s; set %s to an x86_64 bzImage", KernelMetaPackage, EnvKernel)
		}
		if !c.root {
			return Kernel{}, fmt.Errorf("no guest kernel: %v; run `sudo apt-get update` and retry, or set %s to a bzImage", err, EnvKernel)
		}
		if err := c.aptUpdate(ctx, c.progress); err != nil {
			return Kernel{}, err
		}
		if pkg, err = c.resolve(ctx); err != nil {
			return Kernel{}, fmt.Errorf("no guest kernel: %v even after apt-get update (not a Debian host?); set %s to a bzImage", err, EnvKernel)
		}
	}
	if k, err := c.cached(pkg); err == nil {
		return k, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(c.progress, "nke: discarding broken cached kernel: %v\n", err)
		if err := os.RemoveAll(filepath.Join(c.kernelsDir(), pkg)); err != nil {
			return Kernel{}, fmt.Errorf("removing broken cached kernel: %w", err)
		}
	}
	k, err := c.download(ctx, pkg)
	if err != nil && c.root {
		// Stale lists name a .deb the mirror has dropped.
		fmt.Fprintf(c.progress, "nke: %v; refreshing package lists and retrying\n", err)
		k, err = c.refreshAndDownload(ctx)
	}
	if err != nil {
		return Kernel{}, fmt.Errorf("%w; check network access to the Debian mirror, or set %s to a bzImage", err, EnvKernel)
	}
	return k, nil
}

func (c kernelCache) refreshAndDownload(ctx context.Context) (Kernel, error) {
	if err := c.aptUpdate(ctx, c.progress); err != nil {
		return Kernel{}, err
	}
	pkg, err := c.resolve(ctx)
	if err != nil {
		return Kernel{}, err
	}
	if k, err := c.cached(pkg); err == nil {
		return k, nil
	}
	return c.download(ctx, pkg)
}

// resolve asks apt-cache (local package lists, no network) which
// versioned package the meta package currently depends on.
func (c kernelCache) resolve(ctx context.Context) (string, error) {
	if _, err := c.cmd.lookPath("apt-cache"); err != nil {
		return "", fmt.Errorf("apt-cache not found: %w", err)
	}
	out, err := c.cmd.output(ctx, "apt-cache", "depends", KernelMetaPackage)
	if err != nil {
		return "", err
	}
	if pkg := parseKernelDepends(out); pkg != "" {
		return pkg, nil
	}
	return "", fmt.Errorf("`apt-cache depends %s` names no linux-image package (missing package lists?)", KernelMetaPackage)
}

// parseKernelDepends picks the first real linux-image-* dependency out of
// `apt-cache depends` output ("  Depends: linux-image-6.1.0-56-cloud-amd64").
func parseKernelDepends(out []byte) string {
	for _, line := range strings.Split(string(out), "\n") {
		dep, ok := strings.CutPrefix(strings.TrimSpace(line), "Depends:")
		if !ok {
			continue
		}
		dep = strings.TrimSpace(dep)
		if strings.HasPrefix(dep, "linux-image-") && !strings.ContainsAny(dep, " <>/") {
			return dep
		}
	}
	return ""
}

// cached returns the unpacked pkg; an fs.ErrNotExist error means it was
// never fetched, any other error that the cached copy is broken.
func (c kernelCache) cached(pkg string) (Kernel, error) {
	root := filepath.Join(c.kernelsDir(), pkg)
	if _, err := os.Stat(root); err != nil {
		return Kernel{}, err
	}
	return kernelInTree(root, pkg)
}

// newestCached is the most recently unpacked kernel, for hosts that can
// no longer run apt-cache (lists wiped) but fetched one before.
func (c kernelCache) newestCached() (Kernel, bool) {
	entries, err := os.ReadDir(c.kernelsDir())
	if err != nil {
		return Kernel{}, false
	}
	type cand struct {
		k     Kernel
		mtime int64
	}
	var cands []cand
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		k, err := c.cached(e.Name())
		if err != nil {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		cands = append(cands, cand{k, info.ModTime().UnixNano()})
	}
	if len(cands) == 0 {
		return Kernel{}, false
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].mtime > cands[j].mtime })
	return cands[0].k, true
}

// kernelInTree finds the single boot/vmlinuz-* of an unpacked package.
func kernelInTree(root, pkg string) (Kernel, error) {
	m, err := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if err != nil {
		return Kernel{}, err
	}
	if len(m) != 1 {
		return Kernel{}, fmt.Errorf("%s: want exactly one boot/vmlinuz-*, found %d", root, len(m))
	}
	if err := ValidateKernel(m[0]); err != nil {
		return Kernel{}, err
	}
	return Kernel{
		Path:    m[0],
		Root:    root,
		Release: strings.TrimPrefix(filepath.Base(m[0]), "vmlinuz-"),
		Package: pkg,
	}, nil
}

func (c kernelCache) download(ctx context.Context, pkg string) (Kernel, error) {
	for _, tool := range []string{"apt-get", "dpkg-deb"} {
		if _, err := c.cmd.lookPath(tool); err != nil {
			return Kernel{}, fmt.Errorf("fetching %s needs %s: %w", pkg, tool, err)
		}
	}
	if err := os.MkdirAll(c.kernelsDir(), 0o755); err != nil {
		return Kernel{}, fmt.Errorf("creating kernel cache: %w (set %s to a writable directory)", err, EnvCache)
	}
	// Download under the system temp dir: as root, apt drops to the _apt
	// user, which can traverse /tmp but usually not ~/.cache.
	dl, err := os.MkdirTemp("", "nke-kernel-")
	if err != nil {
		return Kernel{}, err
	}
	defer os.RemoveAll(dl)
	if c.root {
		chownToApt(dl)
	}
	fmt.Fprintf(c.progress, "nke: downloading %s (about 27 MB)\n", pkg)
	if err := c.cmd.run(ctx, dl, c.progress, "apt-get", "download", pkg); err != nil {
		return Kernel{}, fmt.Errorf("downloading kernel package %s failed: %w", pkg, err)
	}
	debs, _ := filepath.Glob(filepath.Join(dl, "*.deb"))
	if len(debs) != 1 {
		return Kernel{}, fmt.Errorf("apt-get download %s left %d .deb files in %s, want 1", pkg, len(debs), dl)
	}

	tmp, err := os.MkdirTemp(c.kernelsDir(), ".unpack-")
	if err != nil {
		return Kernel{}, err
	}
	defer os.RemoveAll(tmp) // no-op after the rename
	fmt.Fprintf(c.progress, "nke: unpacking %s into %s\n", filepath.Base(debs[0]), c.kernelsDir())
	if err := c.cmd.run(ctx, "", c.progress, "dpkg-deb", "-x", debs[0], tmp); err != nil {
		return Kernel{}, fmt.Errorf("unpacking %s failed: %w", debs[0], err)
	}
	if _, err := kernelInTree(tmp, pkg); err != nil {
		return Kernel{}, fmt.Errorf("package %s holds no usable kernel: %w", pkg, err)
	}
	final := filepath.Join(c.kernelsDir(), pkg)
	if err := os.Rename(tmp, final); err != nil {
		// Another process may have finished the same download first.
		if k, cerr := c.cached(pkg); cerr == nil {
			return k, nil
		}
		return Kernel{}, fmt.Errorf("moving unpacked kernel into the cache: %w", err)
	}
	k, err := kernelInTree(final, pkg)
	if err == nil {
		fmt.Fprintf(c.progress, "nke: cached kernel %s\n", k.Path)
	}
	return k, err
}

// chownToApt hands dir to apt's sandbox user so `apt-get download` as
// root does not fall back to an unsandboxed download with a warning.
// Failure only brings the warning back.
func chownToApt(dir string) {
	u, err := user.Lookup("_apt")
	if err != nil {
		return
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return
	}
	_ = os.Chown(dir, uid, -1)
}
