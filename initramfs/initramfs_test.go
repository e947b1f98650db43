package initramfs

import (
	"context"
	"debug/elf"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/u-root/u-root/pkg/cpio"
)

// tinyMain writes a dependency-free main package in its own module.
func tinyMain(t *testing.T, msg string) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"go.mod":  "module tinyinit\n\ngo 1.22\n",
		"main.go": "package main\n\nimport \"os\"\n\nfunc main() { os.Stdout.WriteString(" + `"` + msg + `\n"` + ") }\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// member is what the tests compare of a cpio record.
type member struct {
	Name           string
	Mode           string // os.FileMode rendering of type and permissions
	Rmajor, Rminor uint64
	Data           string // contents, for small files
}

func readArchive(t *testing.T, path string) (map[string]member, []byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := cpio.ReadAllRecords(cpio.EOFReader{RecordReader: cpio.Newc.Reader(f)})
	if err != nil {
		t.Fatalf("reading %s back: %v", path, err)
	}
	got := map[string]member{}
	var init []byte
	for _, r := range recs {
		m := member{Name: r.Name, Mode: cpio.LSInfoFromRecord(r).Mode.String(), Rmajor: r.Rmajor, Rminor: r.Rminor}
		if r.Mode&cpio.S_IFMT == cpio.S_IFREG {
			b, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
			if err != nil {
				t.Fatal(err)
			}
			if r.Name == "init" {
				init = b
			} else {
				m.Data = string(b)
			}
		}
		got[r.Name] = m
	}
	return got, init
}

func TestBuildLayout(t *testing.T) {
	src := filepath.Join(t.TempDir(), "virtio.ko")
	if err := os.WriteFile(src, []byte("module"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "initramfs.cpio")
	img, err := Build(context.Background(), Config{
		Main:   tinyMain(t, "hello"),
		Output: out,
		Files: []File{
			{Path: "/lib/modules/6.1.0/kernel/virtio.ko", Source: src},
			{Path: "/lib/modules/6.1.0/modules.dep", Data: []byte("kernel/virtio.ko:\n")},
			{Path: "/etc/nke.conf", Data: []byte("x"), Mode: 0o600},
		},
	})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	if !img.Rebuilt || img.Path != out {
		t.Errorf("Build() = %+v, want a rebuilt image at %s", img, out)
	}
	got, init := readArchive(t, out)
	want := map[string]member{
		"dev":                                {Name: "dev", Mode: "drwxr-xr-x"},
		"dev/console":                        {Name: "dev/console", Mode: "Dcrw-------", Rmajor: 5, Rminor: 1},
		"dev/hugepages":                      {Name: "dev/hugepages", Mode: "drwxr-xr-x"},
		"etc":                                {Name: "etc", Mode: "drwxr-xr-x"},
		"etc/nke.conf":                       {Name: "etc/nke.conf", Mode: "-rw-------", Data: "x"},
		"init":                               {Name: "init", Mode: "-rwxr-xr-x"},
		"lib":                                {Name: "lib", Mode: "drwxr-xr-x"},
		"lib/modules":                        {Name: "lib/modules", Mode: "drwxr-xr-x"},
		"lib/modules/6.1.0":                  {Name: "lib/modules/6.1.0", Mode: "drwxr-xr-x"},
		"lib/modules/6.1.0/kernel":           {Name: "lib/modules/6.1.0/kernel", Mode: "drwxr-xr-x"},
		"lib/modules/6.1.0/kernel/virtio.ko": {Name: "lib/modules/6.1.0/kernel/virtio.ko", Mode: "-rw-------", Data: "module"},
		"lib/modules/6.1.0/modules.dep":      {Name: "lib/modules/6.1.0/modules.dep", Mode: "-rw-r--r--", Data: "kernel/virtio.ko:\n"},
		"proc":                               {Name: "proc", Mode: "dr-xr-xr-x"},
		"sys":                                {Name: "sys", Mode: "dr-xr-xr-x"},
		"tmp":                                {Name: "tmp", Mode: "dtrwxrwxrwx"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("archive members mismatch (-want +got):\n%s", diff)
	}

	// /init must be a static linux/amd64 executable: no interpreter.
	bin, err := elf.NewFile(strings.NewReader(string(init)))
	if err != nil {
		t.Fatalf("/init is not ELF: %v", err)
	}
	if bin.Machine != elf.EM_X86_64 || bin.Type != elf.ET_EXEC {
		t.Errorf("/init is %v %v, want a static x86-64 executable", bin.Machine, bin.Type)
	}
	for _, p := range bin.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("/init has a PT_INTERP: it is dynamically linked")
		}
	}
}

func TestBuildIncremental(t *testing.T) {
	main := tinyMain(t, "v1")
	extra := filepath.Join(t.TempDir(), "extra")
	if err := os.WriteFile(extra, []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Main: main, Output: filepath.Join(t.TempDir(), "i.cpio"), Files: []File{{Path: "/extra", Source: extra}}}
	build := func(step string) (Image, os.FileInfo) {
		t.Helper()
		img, err := Build(context.Background(), cfg)
		if err != nil {
			t.Fatalf("%s: Build: %v", step, err)
		}
		st, err := os.Stat(img.Path)
		if err != nil {
			t.Fatal(err)
		}
		return img, st
	}

	_, st1 := build("first")
	img, st2 := build("unchanged")
	if img.Rebuilt || !st2.ModTime().Equal(st1.ModTime()) {
		t.Errorf("unchanged inputs rewrote the archive (Rebuilt=%v)", img.Rebuilt)
	}
	t.Logf("no-op rebuild took %v", img.Took)

	if err := os.WriteFile(extra, []byte("b"), 0o644); err != nil {
		t.Fatal(err)
	}
	if img, _ := build("extra changed"); !img.Rebuilt {
		t.Error("a changed extra file did not rebuild the archive")
	}
	if got, _ := readArchive(t, cfg.Output); got["extra"].Data != "b" {
		t.Errorf("/extra = %q after the change, want %q", got["extra"].Data, "b")
	}

	if err := os.WriteFile(filepath.Join(main, "main.go"), []byte("package main\n\nfunc main() { println(\"v2\") }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img, _ = build("code changed")
	if !img.Rebuilt {
		t.Error("a code change did not rebuild the archive")
	}
	t.Logf("rebuild after a code change took %v", img.Took)

	cfg.Files = nil
	if img, _ := build("extra dropped"); !img.Rebuilt {
		t.Error("dropping an extra file did not rebuild the archive")
	}
}

func TestBuildErrors(t *testing.T) {
	main := tinyMain(t, "x")
	out := filepath.Join(t.TempDir(), "i.cpio")
	broken := t.TempDir()
	if err := os.WriteFile(filepath.Join(broken, "go.mod"), []byte("module broken\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(broken, "main.go"), []byte("package main\nfunc main() { undefined() }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"missing main", Config{Main: filepath.Join(main, "nope"), Output: out}, "does not exist"},
		{"compile error", Config{Main: broken, Output: out}, "undefined: undefined"},
		{"relative guest path", Config{Main: main, Output: out, Files: []File{{Path: "etc/x", Data: []byte{}}}}, "must be absolute"},
		{"no contents", Config{Main: main, Output: out, Files: []File{{Path: "/x"}}}, "exactly one of Source and Data"},
		{"both contents", Config{Main: main, Output: out, Files: []File{{Path: "/x", Source: "/etc/hostname", Data: []byte{}}}}, "exactly one of Source and Data"},
		{"shadows init", Config{Main: main, Output: out, Files: []File{{Path: "/init", Data: []byte{}}}}, "/init is listed twice"},
		{"file under file", Config{Main: main, Output: out, Files: []File{{Path: "/init/x", Data: []byte{}}}}, "/init is needed both as a directory and as a file"},
		{"missing source", Config{Main: main, Output: out, Files: []File{{Path: "/x", Source: "/nonexistent/file"}}}, "/nonexistent/file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Build(context.Background(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Build() = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

// TestBuildWithoutVCSStatus: when git cannot report the status of the
// repository around the init (another user's checkout, here a broken
// .git), the image still builds, without the revision, and says why.
func TestBuildWithoutVCSStatus(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("needs git: without it go build omits the VCS stamp silently")
	}
	main := tinyMain(t, "hello")
	if err := os.Mkdir(filepath.Join(main, ".git"), 0o755); err != nil {
		t.Fatal(err)
	}
	var progress strings.Builder
	img, err := Build(context.Background(), Config{Main: main, Output: filepath.Join(t.TempDir(), "i.cpio"), Progress: &progress})
	if err != nil {
		t.Fatalf("Build in a repository git cannot read: %v", err)
	}
	if !strings.Contains(progress.String(), "without its VCS revision") || !strings.Contains(progress.String(), "safe.directory") {
		t.Errorf("progress does not say the revision is missing and how to fix it:\n%s", progress.String())
	}
	if _, err := os.Stat(img.Path); err != nil {
		t.Errorf("no archive: %v", err)
	}
}

func TestBuildWasm(t *testing.T) {
	out := filepath.Join(t.TempDir(), "initramfs.cpio")
	const guest = "/lib/nke/Trap.nke/Contents/WebAssembly/trap.wasm"
	_, err := Build(context.Background(), Config{Main: tinyMain(t, "hello"), Output: out,
		Wasm: []WasmModule{{Path: guest, Main: "./nke/wasm/examples/trap"}}})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	got, _ := readArchive(t, out)
	m, ok := got[strings.TrimPrefix(guest, "/")]
	if !ok {
		t.Fatalf("no %s in the archive", guest)
	}
	if !strings.HasPrefix(m.Data, "\x00asm") || m.Mode != "-rw-r--r--" {
		t.Errorf("%s: mode %s, starts % x; want a WebAssembly module, 0644", guest, m.Mode, m.Data[:min(8, len(m.Data))])
	}
	if _, err := Build(context.Background(), Config{Main: tinyMain(t, "hello"), Output: out,
		Wasm: []WasmModule{{Path: guest, Main: "github.com/x/y"}}}); err == nil || !strings.Contains(err.Error(), "relative to the module") {
		t.Errorf("an import path as a wasm module: %v", err)
	}
}
