package bundle

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Limits on a bundle, on disk or in an archive.
const (
	// MaxSize bounds the bytes of all a bundle's files together.
	MaxSize = 8 << 20
	// MaxEntries bounds its files and folders.
	MaxEntries = 64
	// MaxPath bounds a path inside it (Name.nke/Contents/...).
	MaxPath = 256
)

// InfoPlist is the manifest's path under Contents/.
const InfoPlist = "Info.plist"

// WebAssemblyDir is the folder under Contents/ of WebAssembly modules.
const WebAssemblyDir = "WebAssembly"

// Bundle is an NKE bundle: Name.nke/Contents/...
type Bundle struct {
	// Name is the folder's name, "IPFirewall.nke".
	Name string
	// Manifest is Contents/Info.plist, parsed.
	Manifest *Manifest
	// Files are the files under Contents/ by their path there
	// ("Info.plist", "WebAssembly/fw.wasm"); Info.plist is among them.
	Files map[string][]byte
}

// ErrNoWebAssembly reports a WebAssembly bundle whose module file is not
// in the bundle.
var ErrNoWebAssembly = errors.New("bundle: the WebAssembly module is not in the bundle")

// WebAssemblyModule returns the bytes of the bundle's WebAssembly module,
// or an error wrapping ErrNoWebAssembly saying how to build it.
func (b *Bundle) WebAssemblyModule() ([]byte, error) {
	f := b.Manifest.Harness.WebAssembly
	if f == "" {
		return nil, fmt.Errorf("%s: not a WebAssembly NKE (NKEHarness.Builtin is %q)", b.Name, b.Manifest.Harness.Builtin)
	}
	data, ok := b.Files[WebAssemblyDir+"/"+f]
	if !ok {
		return nil, fmt.Errorf("%s: Contents/%s/%s: %w (build it with `make wasm` and copy out/wasm/%s there, or load the bundle from a folder or archive that holds it)",
			b.Name, WebAssemblyDir, f, ErrNoWebAssembly, f)
	}
	return data, nil
}

// AddWebAssemblyFrom puts the bundle's WebAssembly module into its files
// from fsys (a file of that name at fsys's top, as `make wasm` leaves
// them in out/wasm/) if the bundle does not hold it yet. For a built-in
// bundle it does nothing.
func (b *Bundle) AddWebAssemblyFrom(fsys fs.FS) error {
	f := b.Manifest.Harness.WebAssembly
	if f == "" {
		return nil
	}
	p := WebAssemblyDir + "/" + f
	if _, ok := b.Files[p]; ok {
		return nil
	}
	data, err := fs.ReadFile(fsys, f)
	if err != nil {
		return fmt.Errorf("%s: Contents/%s: %w (build it with `make wasm`)", b.Name, p, err)
	}
	total := len(data)
	for _, d := range b.Files {
		total += len(d)
	}
	if total > MaxSize || len(b.Files)+1 > MaxEntries {
		return fmt.Errorf("%s: with %s the bundle is over its limits (%d bytes, %d files)", b.Name, f, MaxSize, MaxEntries)
	}
	if b.Files == nil {
		b.Files = map[string][]byte{}
	}
	b.Files[p] = data
	return nil
}

func checkName(name string) error {
	if !strings.HasSuffix(name, ".nke") || len(name) <= len(".nke") || !validFileName(name) {
		return fmt.Errorf("bundle: folder %q: want a name ending in .nke, like IPFirewall.nke", name)
	}
	return nil
}

// checkRel checks a path under Contents/ from an archive or a folder.
func checkRel(where, rel string) error {
	if rel == "" || len(rel) > MaxPath || strings.HasPrefix(rel, "/") || strings.Contains(rel, "\\") || !fs.ValidPath(rel) {
		return fmt.Errorf("bundle: %s: path %q: want a relative path without . or .. parts", where, rel)
	}
	for i := 0; i < len(rel); i++ {
		if c := rel[i]; c < ' ' || c > '~' {
			return fmt.Errorf("bundle: %s: path %q: want printable ASCII", where, rel)
		}
	}
	return nil
}

// finish parses the manifest of a bundle whose files are read.
func finish(name string, files map[string][]byte) (*Bundle, error) {
	info, ok := files[InfoPlist]
	if !ok {
		return nil, fmt.Errorf("bundle: %s: no Contents/Info.plist (every bundle needs its manifest)", name)
	}
	m, err := ParseManifest(name+"/Contents/"+InfoPlist, info)
	if err != nil {
		return nil, err
	}
	return &Bundle{Name: name, Manifest: m, Files: files}, nil
}

// ReadDir reads a Name.nke folder on disk.
func ReadDir(dir string) (*Bundle, error) {
	dir = filepath.Clean(dir)
	return ReadFS(os.DirFS(filepath.Dir(dir)), filepath.Base(dir))
}

// ReadFS reads the bundle folder dir (Name.nke, a path in fsys) from
// fsys. Symbolic links and other non-regular files are refused; the
// limits of Unpack apply.
func ReadFS(fsys fs.FS, dir string) (*Bundle, error) {
	name := path.Base(dir)
	if err := checkName(name); err != nil {
		return nil, err
	}
	files := map[string][]byte{}
	total, entries := 0, 0
	contents := path.Join(dir, "Contents")
	if dir == "." {
		contents = "Contents"
	}
	err := fs.WalkDir(fsys, contents, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		entries++
		if entries > MaxEntries {
			return fmt.Errorf("bundle: %s: more than %d files and folders", name, MaxEntries)
		}
		if p == contents {
			return nil
		}
		rel := strings.TrimPrefix(p, contents+"/")
		if err := checkRel(name, rel); err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return nil
		case !d.Type().IsRegular():
			return fmt.Errorf("bundle: %s: Contents/%s is not a regular file (links and devices are refused)", name, rel)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if total+int(info.Size()) > MaxSize {
			return fmt.Errorf("bundle: %s: more than %d bytes", name, MaxSize)
		}
		data, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		if total += len(data); total > MaxSize {
			return fmt.Errorf("bundle: %s: more than %d bytes", name, MaxSize)
		}
		files[rel] = data
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) && len(files) == 0 {
		return nil, fmt.Errorf("bundle: %s: no Contents folder (want %s/Contents/Info.plist): %w", name, name, err)
	}
	if err != nil {
		return nil, err
	}
	return finish(name, files)
}

// Pack writes the bundle as a tar archive of Name.nke/Contents/...: the
// same bundle gives the same bytes (files sorted, fixed modes and times,
// folders implied). Info.plist must be among the files.
func Pack(b *Bundle) ([]byte, error) {
	if err := checkName(b.Name); err != nil {
		return nil, err
	}
	if _, ok := b.Files[InfoPlist]; !ok {
		return nil, fmt.Errorf("bundle: %s: no Info.plist among the files", b.Name)
	}
	if len(b.Files) > MaxEntries {
		return nil, fmt.Errorf("bundle: %s: %d files, at most %d", b.Name, len(b.Files), MaxEntries)
	}
	paths := make([]string, 0, len(b.Files))
	total := 0
	for p, data := range b.Files {
		if err := checkRel(b.Name, p); err != nil {
			return nil, err
		}
		total += len(data)
		paths = append(paths, p)
	}
	if total > MaxSize {
		return nil, fmt.Errorf("bundle: %s: %d bytes, at most %d", b.Name, total, MaxSize)
	}
	sort.Strings(paths)
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	for _, p := range paths {
		data := b.Files[p]
		hdr := &tar.Header{
			Typeflag: tar.TypeReg,
			Name:     b.Name + "/Contents/" + p,
			Mode:     0o644,
			Size:     int64(len(data)),
			ModTime:  time.Unix(0, 0),
			Format:   tar.FormatPAX,
		}
		if err := w.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := w.Write(data); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// MaxArchive bounds an archive Unpack takes: the contents plus tar's
// headers and padding.
const MaxArchive = MaxSize + (MaxEntries+2)*3*1024

// Unpack reads an archive Pack wrote, or one made with tar from a bundle
// folder, as hostile input: at most MaxArchive bytes, MaxEntries entries
// and MaxSize bytes of files; only regular files and folders (no links,
// devices or absolute paths, no . or .. parts); everything under one
// top folder Name.nke, files only under Name.nke/Contents/; no path twice;
// Contents/Info.plist required.
func Unpack(archive []byte) (*Bundle, error) {
	if len(archive) > MaxArchive {
		return nil, fmt.Errorf("bundle: archive of %d bytes, at most %d", len(archive), MaxArchive)
	}
	r := tar.NewReader(bytes.NewReader(archive))
	var name string
	files := map[string][]byte{}
	total := 0
	for n := 0; ; n++ {
		hdr, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("bundle: archive: %w", err)
		}
		if n >= MaxEntries {
			return nil, fmt.Errorf("bundle: archive: more than %d entries", MaxEntries)
		}
		p := strings.TrimSuffix(strings.TrimPrefix(hdr.Name, "./"), "/")
		if p == "" || p == "." {
			continue // "./" of a tar made with tar -C dir .
		}
		if len(p) > MaxPath || strings.HasPrefix(p, "/") || strings.Contains(p, "\\") || !fs.ValidPath(p) {
			return nil, fmt.Errorf("bundle: archive: entry %q: want a relative path without . or .. parts", hdr.Name)
		}
		top, rest, _ := strings.Cut(p, "/")
		if name == "" {
			if err := checkName(top); err != nil {
				return nil, fmt.Errorf("bundle: archive: entry %q: the archive holds one folder Name.nke: %w", hdr.Name, err)
			}
			name = top
		} else if top != name {
			return nil, fmt.Errorf("bundle: archive: entry %q is outside %s (an archive holds one bundle)", hdr.Name, name)
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if rest != "" && rest != "Contents" && !strings.HasPrefix(rest, "Contents/") {
				return nil, fmt.Errorf("bundle: archive: folder %q: everything goes under %s/Contents/", hdr.Name, name)
			}
			continue
		case tar.TypeReg:
		default:
			return nil, fmt.Errorf("bundle: archive: entry %q is not a regular file or folder (type %q; links and devices are refused)", hdr.Name, hdr.Typeflag)
		}
		rel, ok := strings.CutPrefix(rest, "Contents/")
		if !ok {
			return nil, fmt.Errorf("bundle: archive: file %q: files go under %s/Contents/", hdr.Name, name)
		}
		if err := checkRel(name, rel); err != nil {
			return nil, err
		}
		if _, dup := files[rel]; dup {
			return nil, fmt.Errorf("bundle: archive: %s/Contents/%s twice", name, rel)
		}
		if hdr.Size < 0 || hdr.Size > int64(MaxSize-total) {
			return nil, fmt.Errorf("bundle: archive: more than %d bytes of files", MaxSize)
		}
		data := make([]byte, hdr.Size)
		if _, err := io.ReadFull(r, data); err != nil {
			return nil, fmt.Errorf("bundle: archive: %s: %w", hdr.Name, err)
		}
		total += len(data)
		files[rel] = data
	}
	if name == "" {
		return nil, errors.New("bundle: archive: empty (want Name.nke/Contents/Info.plist)")
	}
	return finish(name, files)
}
