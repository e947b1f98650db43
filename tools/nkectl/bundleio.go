package main

// What nkectl needs of a bundle on disk, from nke/bundle.

import (
	"fmt"

	"github.com/nke-harness/nke/nke/bundle"
)

// kpiPrefix marks OSBundleLibraries entries that are harness KPIs, not
// bundles to load.
const kpiPrefix = bundle.KPIPrefix

// bundleInfo is a bundle folder and its manifest.
type bundleInfo struct {
	Path       string
	ID         string
	Version    string
	Compatible string            // OSBundleCompatibleVersion
	Libraries  map[string]string // identifier -> minimum version
	b          *bundle.Bundle
}

// readBundle reads the bundle folder path (Name.nke).
func readBundle(path string) (*bundleInfo, error) {
	b, err := bundle.ReadDir(path)
	if err != nil {
		return nil, err
	}
	m := b.Manifest
	return &bundleInfo{Path: path, ID: m.ID, Version: m.Version, Compatible: m.Compatible, Libraries: m.Libraries, b: b}, nil
}

// pack is the archive LoadRequest.Archive carries.
func pack(b *bundleInfo) ([]byte, error) { return bundle.Pack(b.b) }

// satisfies says why d cannot serve a dependant asking for version want
// (Apple's rule: OSBundleCompatibleVersion <= want <= CFBundleVersion),
// nil if it can.
func satisfies(d *bundleInfo, want string) error {
	if bundle.Satisfies(d.Version, d.Compatible, want) {
		return nil
	}
	if d.Compatible == "" {
		return fmt.Errorf("%s (version %s) has no OSBundleCompatibleVersion, so it is no library: add one to its Info.plist", d.Path, d.Version)
	}
	c, err := bundle.CompareVersions(d.Version, want)
	switch {
	case err != nil:
		return fmt.Errorf("version %q: %v", want, err)
	case c < 0:
		return fmt.Errorf("%s is version %s: build a newer one or pass -L DIR with the folder that holds it", d.Path, d.Version)
	}
	return fmt.Errorf("%s (version %s) is compatible only back to %s (its OSBundleCompatibleVersion)", d.Path, d.Version, d.Compatible)
}
