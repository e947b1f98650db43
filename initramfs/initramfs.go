// Package initramfs builds the guest's initramfs: a newc cpio holding a
// statically linked Go program as /init, the mount points an init needs,
// and optional extra files such as kernel modules.
//
// Builds are incremental: `go build` reuses its cache, and the archive
// is rewritten only when the init binary or an extra file changed.
package initramfs

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/u-root/u-root/pkg/cpio"
)

const (
	// DefaultMain is the guest init's main package, relative to the
	// module root.
	DefaultMain = "./tools/nkeinit"
	// DefaultOutput is the archive path, relative to the module root.
	DefaultOutput = "out/initramfs.cpio"
)

// layoutVersion changes whenever the fixed layout below does, so old
// archives are not taken for up to date.
const layoutVersion = "nke-initramfs-1"

// File is an extra file for the archive, from Source or from Data.
type File struct {
	Path   string      // absolute guest path, e.g. "/lib/modules/modules.dep"
	Source string      // host file to copy; empty when Data is used
	Data   []byte      // contents, when there is no Source
	Mode   fs.FileMode // permission bits; 0 means Source's, or 0644 for Data
}

// Config says what to build.
type Config struct {
	// ModuleDir is the Go module `go build` runs in; "" means the module
	// holding the current directory.
	ModuleDir string
	// Main is the main package placed at /init: a directory (relative to
	// ModuleDir, or absolute; it may belong to another module) or an
	// import path; "" means DefaultMain.
	Main string
	// Output is the archive path; "" means DefaultOutput under ModuleDir.
	Output string
	// Files are extra files; their parent directories are added as
	// needed.
	Files []File
	// Wasm are WebAssembly NKE modules built from Go main packages with
	// the standard toolchain (GOOS=wasip1, -buildmode=c-shared) into the
	// archive: the bundles' Contents/WebAssembly files.
	Wasm []WasmModule
	// BuildFlags are extra `go build` flags, e.g. "-cover".
	BuildFlags []string
	// Progress receives one line per build; nil means none.
	Progress io.Writer
}

// WasmModule is a Go main package built as a WebAssembly module.
type WasmModule struct {
	Path string // absolute guest path
	Main string // the package, relative to ModuleDir ("./nke/wasm/examples/wasmfw")
}

// Image is a built archive.
type Image struct {
	Path    string        // the cpio
	Init    string        // the /init binary as built on the host
	Rebuilt bool          // false when the inputs were unchanged
	Took    time.Duration // go build plus archive writing
}

// Build compiles cfg.Main as a static linux/amd64 binary and writes the
// archive, unless it already holds exactly these inputs.
func Build(ctx context.Context, cfg Config) (Image, error) {
	start := time.Now()
	progress := cfg.Progress
	if progress == nil {
		progress = io.Discard
	}
	modDir, err := moduleDir(ctx, cfg.ModuleDir)
	if err != nil {
		return Image{}, err
	}
	main := cfg.Main
	if main == "" {
		main = DefaultMain
	}
	// A directory builds in place, so a main package in another module
	// (a throwaway init, a test's) works too; import paths build in modDir.
	buildDir, pkg := modDir, main
	if isLocalPath(main) || filepath.IsAbs(main) {
		dir := main
		if !filepath.IsAbs(dir) {
			dir = filepath.Join(modDir, dir)
		}
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return Image{}, fmt.Errorf("guest init package %s does not exist (looked in %s); write it or build another main package", main, dir)
		}
		buildDir, pkg = dir, "."
	}
	out := cfg.Output
	if out == "" {
		out = filepath.Join(modDir, DefaultOutput)
	}
	out, err = filepath.Abs(out)
	if err != nil {
		return Image{}, err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return Image{}, fmt.Errorf("creating the image directory: %w", err)
	}
	img := Image{Path: out, Init: out + ".init"}

	if err := goBuild(ctx, buildDir, pkg, img.Init, "auto", cfg.BuildFlags); err != nil {
		if !errors.Is(err, errNoVCSStatus) {
			return Image{}, err
		}
		// Typically a checkout owned by another user (root in a
		// container on a mounted workspace): git refuses to read it.
		fmt.Fprintf(progress, "nke: building the guest init without its VCS revision: git cannot read the repository's status (another user's checkout? git config --global --add safe.directory %s)\n", modDir)
		if err := goBuild(ctx, buildDir, pkg, img.Init, "false", cfg.BuildFlags); err != nil {
			return Image{}, err
		}
	}
	files := cfg.Files
	for _, w := range cfg.Wasm {
		if !isLocalPath(w.Main) {
			return Image{}, fmt.Errorf("initramfs: wasm module %s: want a package directory relative to the module (./...)", w.Main)
		}
		bin := out + ".wasm/" + filepath.Base(w.Main) + ".wasm"
		if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
			return Image{}, fmt.Errorf("creating the wasm build directory: %w", err)
		}
		if err := goBuildWasm(ctx, modDir, w.Main, bin); err != nil {
			return Image{}, err
		}
		files = append(files, File{Path: w.Path, Source: bin, Mode: 0o644})
	}
	entries, err := plan(img.Init, files)
	if err != nil {
		return Image{}, err
	}
	sum, err := digest(entries)
	if err != nil {
		return Image{}, err
	}
	stamp := out + ".sum"
	if old, err := os.ReadFile(stamp); err == nil && string(old) == sum {
		if _, err := os.Stat(out); err == nil {
			img.Took = time.Since(start)
			fmt.Fprintf(progress, "nke: image %s is up to date (%s; checked in %.2fs)\n", out, main, img.Took.Seconds())
			return img, nil
		}
	}
	if err := writeArchive(out, entries); err != nil {
		return Image{}, err
	}
	if err := os.WriteFile(stamp, []byte(sum), 0o644); err != nil {
		return Image{}, fmt.Errorf("recording the image's inputs: %w", err)
	}
	img.Rebuilt = true
	img.Took = time.Since(start)
	size := int64(0)
	if st, err := os.Stat(out); err == nil {
		size = st.Size()
	}
	fmt.Fprintf(progress, "nke: built image %s (%s as /init, %.1f MB) in %.2fs\n",
		out, main, float64(size)/1e6, img.Took.Seconds())
	return img, nil
}

// ModuleDir resolves the directory `go build` runs in: dir, or the root
// of the Go module holding the current directory when dir is "".
func ModuleDir(ctx context.Context, dir string) (string, error) { return moduleDir(ctx, dir) }

func moduleDir(ctx context.Context, dir string) (string, error) {
	if dir != "" {
		return filepath.Abs(dir)
	}
	c := exec.CommandContext(ctx, "go", "env", "GOMOD")
	b, err := c.Output()
	if err != nil {
		return "", fmt.Errorf("finding the Go module (go env GOMOD): %w; is the go command on PATH?", err)
	}
	gomod := strings.TrimSpace(string(b))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside a Go module; run from the repository or set Config.ModuleDir")
	}
	return filepath.Dir(gomod), nil
}

func isLocalPath(pkg string) bool {
	return pkg == "." || pkg == ".." || strings.HasPrefix(pkg, "./") || strings.HasPrefix(pkg, "../")
}

// goBuild links a static linux/amd64 binary. -trimpath and stripped
// symbols keep the output identical across rebuilds of the same source,
// which is what lets Build skip rewriting the archive. The VCS stamp stays
// (explicitly, whatever GOFLAGS says): the guest reports its revision, and
// it only changes with the source.
func goBuild(ctx context.Context, dir, main, out, buildvcs string, extra []string) error {
	args := []string{"build", "-trimpath", "-buildvcs=" + buildvcs, "-ldflags=-s -w"}
	args = append(args, extra...)
	args = append(args, "-o", out, main)
	c := exec.CommandContext(ctx, "go", args...)
	c.Dir = dir
	c.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	var stderr bytes.Buffer
	c.Stdout, c.Stderr = &stderr, &stderr
	if err := c.Run(); err != nil {
		if buildvcs != "false" && strings.Contains(stderr.String(), "error obtaining VCS status") {
			err = fmt.Errorf("%w: %v", errNoVCSStatus, err)
		}
		return fmt.Errorf("building the guest init failed (go %s, in %s): %w\n%s",
			strings.Join(args, " "), dir, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// goBuildWasm builds a WebAssembly NKE module as make wasm does.
func goBuildWasm(ctx context.Context, dir, main, out string) error {
	args := []string{"build", "-trimpath", "-buildvcs=false", "-buildmode=c-shared", "-o", out, main}
	c := exec.CommandContext(ctx, "go", args...)
	c.Dir = dir
	c.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
	var stderr bytes.Buffer
	c.Stdout, c.Stderr = &stderr, &stderr
	if err := c.Run(); err != nil {
		return fmt.Errorf("building the wasm module %s failed (GOOS=wasip1 GOARCH=wasm go %s, in %s): %w\n%s",
			main, strings.Join(args, " "), dir, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// errNoVCSStatus: go build could not stamp the VCS revision because git
// failed (go says "error obtaining VCS status").
var errNoVCSStatus = errors.New("go build cannot read the VCS status")

// entry is one archive member before it is written.
type entry struct {
	name   string // relative, no leading slash (cpio convention)
	mode   uint64 // cpio mode: type and permission bits
	rmajor uint64 // character devices only
	rminor uint64
	source string // host file, for regular files
	data   []byte // contents, when source is empty
}

// fixedDirs are the mount points and scratch space an init expects.
var fixedDirs = []struct {
	name string
	perm uint64
}{
	{"dev", 0o755},
	{"dev/hugepages", 0o755},
	{"proc", 0o555},
	{"sys", 0o555},
	{"tmp", 0o1777},
}

// plan lists every member, sorted so that parents precede children.
func plan(initBin string, files []File) ([]entry, error) {
	byName := map[string]entry{}
	add := func(e entry) error {
		if old, ok := byName[e.name]; ok {
			switch oldDir, newDir := isDir(old), isDir(e); {
			case oldDir && newDir:
				return nil
			case oldDir != newDir:
				return fmt.Errorf("initramfs: /%s is needed both as a directory and as a file", e.name)
			}
			return fmt.Errorf("initramfs: /%s is listed twice", e.name)
		}
		byName[e.name] = e
		return nil
	}
	for _, d := range fixedDirs {
		if err := add(entry{name: d.name, mode: cpio.S_IFDIR | d.perm}); err != nil {
			return nil, err
		}
	}
	// The kernel opens /dev/console for init's stdio before devtmpfs is
	// mounted; most kernels carry a built-in one, this covers the rest.
	if err := add(entry{name: "dev/console", mode: cpio.S_IFCHR | 0o600, rmajor: 5, rminor: 1}); err != nil {
		return nil, err
	}
	if err := add(entry{name: "init", mode: cpio.S_IFREG | 0o755, source: initBin}); err != nil {
		return nil, err
	}
	for _, f := range files {
		name, err := guestName(f.Path)
		if err != nil {
			return nil, err
		}
		if (f.Source == "") == (f.Data == nil) {
			return nil, fmt.Errorf("initramfs file %s: set exactly one of Source and Data", f.Path)
		}
		perm := uint64(f.Mode.Perm())
		if f.Source != "" {
			st, err := os.Stat(f.Source)
			if err != nil {
				return nil, fmt.Errorf("initramfs file %s: %w", f.Path, err)
			}
			if !st.Mode().IsRegular() {
				return nil, fmt.Errorf("initramfs file %s: source %s is not a regular file", f.Path, f.Source)
			}
			if perm == 0 {
				perm = uint64(st.Mode().Perm())
			}
		} else if perm == 0 {
			perm = 0o644
		}
		for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
			if err := add(entry{name: dir, mode: cpio.S_IFDIR | 0o755}); err != nil {
				return nil, err
			}
		}
		if err := add(entry{name: name, mode: cpio.S_IFREG | perm, source: f.Source, data: f.Data}); err != nil {
			return nil, err
		}
	}
	entries := make([]entry, 0, len(byName))
	for _, e := range byName {
		entries = append(entries, e)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	return entries, nil
}

func isDir(e entry) bool { return e.mode&cpio.S_IFMT == cpio.S_IFDIR }

// guestName turns an absolute guest path into a cpio member name.
func guestName(p string) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("initramfs file %q: the guest path must be absolute", p)
	}
	name := strings.TrimPrefix(path.Clean(p), "/")
	if name == "" {
		return "", fmt.Errorf("initramfs file %q: not a file path", p)
	}
	return name, nil
}

// digest hashes every member's metadata and contents.
func digest(entries []entry) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n", layoutVersion)
	for _, e := range entries {
		fmt.Fprintf(h, "%s %o %d %d\n", e.name, e.mode, e.rmajor, e.rminor)
		if e.mode&cpio.S_IFMT != cpio.S_IFREG {
			continue
		}
		if e.source == "" {
			fmt.Fprintf(h, "%d\n", len(e.data))
			h.Write(e.data)
			continue
		}
		f, err := os.Open(e.source)
		if err != nil {
			return "", fmt.Errorf("initramfs: reading /%s: %w", e.name, err)
		}
		fh := sha256.New()
		_, err = io.Copy(fh, f)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("initramfs: reading /%s from %s: %w", e.name, e.source, err)
		}
		fmt.Fprintf(h, "%x\n", fh.Sum(nil))
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// writeArchive writes the cpio next to out and renames it into place,
// so QEMU never reads a half-written image.
func writeArchive(out string, entries []entry) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*")
	if err != nil {
		return fmt.Errorf("writing the image: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	w := cpio.Newc.Writer(bw)
	for i, e := range entries {
		info := cpio.Info{
			Ino:    uint64(i + 1), // distinct: the unpacker hard-links equal inodes
			Mode:   e.mode,
			NLink:  1,
			Rmajor: e.rmajor,
			Rminor: e.rminor,
			Name:   e.name,
		}
		var rec cpio.Record
		switch {
		case isDir(e):
			info.NLink = 2
			rec = cpio.Record{Info: info}
		case e.mode&cpio.S_IFMT != cpio.S_IFREG:
			rec = cpio.Record{Info: info}
		case e.source == "":
			rec = cpio.StaticRecord(e.data, info)
		default:
			f, err := os.Open(e.source)
			if err != nil {
				return fmt.Errorf("initramfs: reading /%s: %w", e.name, err)
			}
			st, err := f.Stat()
			if err != nil {
				f.Close()
				return err
			}
			info.FileSize = uint64(st.Size())
			rec = cpio.Record{ReaderAt: f, Info: info} // the writer closes f
		}
		if err := w.WriteRecord(rec); err != nil {
			return fmt.Errorf("initramfs: writing /%s: %w", e.name, err)
		}
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("writing the image: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing the image: %w", err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("writing the image: %w", err)
	}
	return nil
}
