package main

// What nkectl needs of a bundle on disk. TEMPORARY: until nke/bundle
// (branch loader) is merged, a minimal reader of Name.nke/Contents/
// Info.plist and a tar packer; then readBundle is bundle.ReadDir and
// pack is bundle.Pack.

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"howett.net/plist"
)

// kpiPrefix marks OSBundleLibraries entries that are harness KPIs, not
// bundles to load.
const kpiPrefix = "com.nke-harness.kpi."

// bundleInfo is a bundle folder and its manifest.
type bundleInfo struct {
	Path      string
	ID        string
	Version   string
	Libraries map[string]string // identifier -> minimum version
}

type manifest struct {
	ID        string            `plist:"CFBundleIdentifier"`
	Version   string            `plist:"CFBundleVersion"`
	Libraries map[string]string `plist:"OSBundleLibraries"`
}

// readBundle reads the bundle folder path (Name.nke).
func readBundle(path string) (*bundleInfo, error) {
	b, err := os.ReadFile(filepath.Join(path, "Contents", "Info.plist"))
	if err != nil {
		return nil, err
	}
	var m manifest
	if _, err := plist.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: Contents/Info.plist: %v", path, err)
	}
	if m.ID == "" || m.Version == "" {
		return nil, fmt.Errorf("%s: Contents/Info.plist: CFBundleIdentifier and CFBundleVersion are required", path)
	}
	return &bundleInfo{Path: path, ID: m.ID, Version: m.Version, Libraries: m.Libraries}, nil
}

// pack is the archive LoadRequest.Archive carries: a tar of the folder.
func pack(b *bundleInfo) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	base := filepath.Base(b.Path)
	err := filepath.WalkDir(b.Path, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(b.Path, p)
		if err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: base + "/" + filepath.ToSlash(rel), Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// satisfies says why d cannot serve a dependant asking for version want,
// nil if it can.
func satisfies(d *bundleInfo, want string) error {
	if compareVersions(d.Version, want) < 0 {
		return fmt.Errorf("%s is version %s: build a newer one or pass -L DIR with the folder that holds it", d.Path, d.Version)
	}
	return nil
}

// compareVersions compares dotted versions numerically (1.10 > 1.9).
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < max(len(as), len(bs)); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	return 0
}
