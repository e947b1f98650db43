package bundle

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"
)

func testBundle(t testing.TB) *Bundle {
	t.Helper()
	files := map[string][]byte{
		InfoPlist:             readTestdata(t, "minimal.plist"),
		"WebAssembly/fw.wasm": []byte("\x00asm\x01\x00\x00\x00"),
		"Resources/README":    []byte("hello"),
	}
	b, err := finish("Min.nke", files)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPackUnpack(t *testing.T) {
	b := testBundle(t)
	a1, err := Pack(b)
	if err != nil {
		t.Fatal(err)
	}
	a2, err := Pack(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a1, a2) {
		t.Error("Pack is not deterministic")
	}
	got, err := Unpack(a1)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(b, got); d != "" {
		t.Errorf("round trip -want +got:\n%s", d)
	}
	wasm, err := got.WebAssemblyModule()
	if err != nil || string(wasm) != "\x00asm\x01\x00\x00\x00" {
		t.Errorf("WebAssemblyModule = %q, %v", wasm, err)
	}
	delete(got.Files, "WebAssembly/fw.wasm")
	if _, err := got.WebAssemblyModule(); !errors.Is(err, ErrNoWebAssembly) || !strings.Contains(err.Error(), "make wasm") {
		t.Errorf("WebAssemblyModule without the file: %v", err)
	}
	if err := os.WriteFile(filepath.Join(t.TempDir(), "x"), a1, 0o644); err != nil {
		t.Fatal(err)
	}
}

type entry struct {
	name string
	typ  byte
	body string
	link string
	size int64 // when not len(body)
}

func archive(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body)), Linkname: e.link}
		if e.typ == 0 {
			hdr.Typeflag = tar.TypeReg
		}
		if hdr.Typeflag != tar.TypeReg {
			hdr.Size = 0
		}
		if err := w.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Size > 0 {
			if _, err := w.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestUnpackHostile(t *testing.T) {
	info := string(readTestdata(t, "minimal.plist"))
	ok := entry{name: "A.nke/Contents/Info.plist", body: info}
	many := []entry{ok}
	for i := 0; i < MaxEntries; i++ {
		many = append(many, entry{name: "A.nke/Contents/f" + strings.Repeat("x", i%50) + string(rune('a'+i%26)) + string(rune('a'+i/26)), body: "x"})
	}
	for _, c := range []struct {
		name string
		data []byte
		want string
	}{
		{"empty", archive(t), "empty"},
		{"garbage", []byte("this is not a tar archive, not at all, no; " + strings.Repeat("z", 600)), "archive"},
		{"absolute", archive(t, entry{name: "/A.nke/Contents/Info.plist", body: info}), "relative path"},
		{"dotdot", archive(t, ok, entry{name: "A.nke/Contents/../../etc/passwd", body: "x"}), "relative path"},
		{"dot", archive(t, ok, entry{name: "A.nke/./Contents/x", body: "x"}), "relative path"},
		{"backslash", archive(t, ok, entry{name: "A.nke/Contents/a\\b", body: "x"}), "relative path"},
		{"symlink", archive(t, ok, entry{name: "A.nke/Contents/l", typ: tar.TypeSymlink, link: "/etc/passwd"}), "not a regular file"},
		{"hardlink", archive(t, ok, entry{name: "A.nke/Contents/l", typ: tar.TypeLink, link: "A.nke/Contents/Info.plist"}), "not a regular file"},
		{"device", archive(t, ok, entry{name: "A.nke/Contents/d", typ: tar.TypeChar}), "not a regular file"},
		{"two tops", archive(t, ok, entry{name: "B.nke/Contents/Info.plist", body: info}), "outside A.nke"},
		{"no .nke", archive(t, entry{name: "A/Contents/Info.plist", body: info}), "ending in .nke"},
		{"bare .nke", archive(t, entry{name: ".nke/Contents/Info.plist", body: info}), "ending in .nke"},
		{"outside contents", archive(t, ok, entry{name: "A.nke/evil", body: "x"}), "files go under A.nke/Contents/"},
		{"folder outside contents", archive(t, ok, entry{name: "A.nke/Other/", typ: tar.TypeDir}), "everything goes under"},
		{"twice", archive(t, ok, ok), "twice"},
		{"no manifest", archive(t, entry{name: "A.nke/Contents/x", body: "x"}), "no Contents/Info.plist"},
		{"bad manifest", archive(t, entry{name: "A.nke/Contents/Info.plist", body: "<plist><string>x</string></plist>"}), "top level is a string"},
		{"too many", archive(t, many...), "more than 64 entries"},
		{"too big", archive(t, ok, entry{name: "A.nke/Contents/big", body: strings.Repeat("x", MaxSize)}), "more than"},
		{"control char", archive(t, ok, entry{name: "A.nke/Contents/a\x01b", body: "x"}), "printable ASCII"},
	} {
		_, err := Unpack(c.data)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Unpack = %v, want an error containing %q", c.name, err, c.want)
		}
	}
	// Folders, "./" prefixes and a top "./" are fine (tar -C dir .).
	b, err := Unpack(archive(t, entry{name: "./", typ: tar.TypeDir}, entry{name: "./A.nke/", typ: tar.TypeDir},
		entry{name: "./A.nke/Contents/", typ: tar.TypeDir}, entry{name: "./A.nke/Contents/Info.plist", body: info}))
	if err != nil || b.Name != "A.nke" || b.Manifest.ID != "com.example.min" {
		t.Errorf("Unpack with folders = %+v, %v", b, err)
	}
}

func TestReadDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "Min.nke")
	want := testBundle(t)
	for p, data := range want.Files {
		full := filepath.Join(dir, "Contents", filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	want.Manifest.File = "Min.nke/Contents/Info.plist"
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("-want +got:\n%s", d)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "Contents", "link")); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadDir(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("ReadDir with a symlink: %v", err)
	}
	if _, err := ReadDir(filepath.Join(t.TempDir(), "Nope.nke")); err == nil || !strings.Contains(err.Error(), "no Contents folder") {
		t.Errorf("ReadDir of nothing: %v", err)
	}
	if _, err := ReadDir(t.TempDir()); err == nil || !strings.Contains(err.Error(), "ending in .nke") {
		t.Errorf("ReadDir of a folder not .nke: %v", err)
	}
}

func TestReadFS(t *testing.T) {
	info := readTestdata(t, "minimal.plist")
	fsys := fstest.MapFS{
		"b/Min.nke/Contents/Info.plist":          {Data: info},
		"b/Min.nke/Contents/WebAssembly/fw.wasm": {Data: []byte("w")},
		"b/Min.nke/NotContents":                  {Data: []byte("ignored")},
	}
	b, err := ReadFS(fsys, "b/Min.nke")
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(map[string][]byte{InfoPlist: info, "WebAssembly/fw.wasm": []byte("w")}, b.Files); d != "" {
		t.Error(d)
	}
	if b.Manifest.File != "Min.nke/Contents/Info.plist" {
		t.Errorf("File = %q", b.Manifest.File)
	}
	fsys["b/Min.nke/Contents/Info.plist"] = &fstest.MapFile{Data: []byte("<plist><dict/></plist>")}
	var me *ManifestError
	if _, err := ReadFS(fsys, "b/Min.nke"); !errors.As(err, &me) || me.Key != "CFBundleIdentifier" {
		t.Errorf("ReadFS with a broken manifest: %v", err)
	}
}

func TestAddWebAssemblyFrom(t *testing.T) {
	b := testBundle(t)
	delete(b.Files, "WebAssembly/fw.wasm")
	if err := b.AddWebAssemblyFrom(fstest.MapFS{}); err == nil || !strings.Contains(err.Error(), "make wasm") {
		t.Errorf("from an empty folder: %v", err)
	}
	if err := b.AddWebAssemblyFrom(fstest.MapFS{"fw.wasm": {Data: []byte("m")}}); err != nil {
		t.Fatal(err)
	}
	if got, err := b.WebAssemblyModule(); err != nil || string(got) != "m" {
		t.Errorf("module %q, %v", got, err)
	}
	// Already there: kept.
	if err := b.AddWebAssemblyFrom(fstest.MapFS{"fw.wasm": {Data: []byte("other")}}); err != nil || string(b.Files["WebAssembly/fw.wasm"]) != "m" {
		t.Errorf("replaced the module: %v", err)
	}
}
