package hostvm

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestEnsureTools(t *testing.T) {
	ts := Tools{Job: "go test -race", Why: "cgo", List: []Tool{
		{Command: "gcc", Package: "gcc"},
		{File: "/usr/include/stdlib.h", Package: "libc6-dev"},
		{Command: "g++", Package: "gcc"}, // same package twice: installed once
	}}
	const install = "apt-get install -y --no-install-recommends gcc libc6-dev"
	for _, tc := range []struct {
		name      string
		root      bool
		lists     bool
		setup     func(f *fakeCmd, files map[string]bool)
		wantErr   string
		wantCalls []string
	}{
		{
			name: "all present",
			setup: func(f *fakeCmd, files map[string]bool) {
				f.paths["gcc"], f.paths["g++"], files["/usr/include/stdlib.h"] = true, true, true
			},
		},
		{
			name:    "missing, not root",
			setup:   func(f *fakeCmd, files map[string]bool) { f.paths["gcc"] = true },
			wantErr: "/usr/include/stdlib.h, g++ missing for go test -race (cgo): run `sudo apt-get install --no-install-recommends libc6-dev gcc`",
		},
		{
			name:    "missing, no apt",
			root:    true,
			setup:   func(f *fakeCmd, files map[string]bool) { delete(f.paths, "apt-get") },
			wantErr: "install them with your package manager (Debian packages gcc libc6-dev)",
		},
		{
			name:  "root installs each package once",
			root:  true,
			lists: true,
			setup: func(f *fakeCmd, files map[string]bool) {
				f.runs["apt-get install"] = func(string, []string) error {
					f.paths["gcc"], f.paths["g++"], files["/usr/include/stdlib.h"] = true, true, true
					return nil
				}
			},
			wantCalls: []string{install},
		},
		{
			name: "root without lists updates first",
			root: true,
			setup: func(f *fakeCmd, files map[string]bool) {
				f.runs["apt-get update"] = func(string, []string) error { return nil }
				f.runs["apt-get install"] = func(string, []string) error {
					f.paths["gcc"], f.paths["g++"], files["/usr/include/stdlib.h"] = true, true, true
					return nil
				}
			},
			wantCalls: []string{"apt-get update", install},
		},
		{
			name:  "installed but still missing",
			root:  true,
			lists: true,
			setup: func(f *fakeCmd, files map[string]bool) {
				f.runs["apt-get install"] = func(string, []string) error { return nil }
			},
			wantErr:   "apt-get installed gcc libc6-dev but gcc is still missing",
			wantCalls: []string{install},
		},
		{
			name:  "install fails for good",
			root:  true,
			lists: true,
			setup: func(f *fakeCmd, files map[string]bool) {
				f.runs["apt-get update"] = func(string, []string) error { return nil }
			},
			wantErr: "installing gcc libc6-dev failed",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := &fakeCmd{paths: map[string]bool{"apt-get": true}, runs: map[string]func(string, []string) error{}}
			files := map[string]bool{}
			if tc.setup != nil {
				tc.setup(fake, files)
			}
			lists := t.TempDir()
			if tc.lists {
				if err := os.WriteFile(filepath.Join(lists, "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4"), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			h := host{cmd: fake, root: tc.root, aptLists: lists, stat: func(p string) (os.FileInfo, error) {
				if files[p] {
					return nil, nil
				}
				return nil, fs.ErrNotExist
			}}
			err := h.ensureTools(context.Background(), io.Discard, ts)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ensureTools() = %v; want an error containing %q", err, tc.wantErr)
				}
				if !strings.Contains(tc.wantErr, "failed") && !errors.Is(err, ErrToolsMissing) {
					t.Errorf("ensureTools() = %v, not an ErrToolsMissing", err)
				}
			} else if err != nil {
				t.Fatalf("ensureTools() = %v", err)
			}
			if tc.wantCalls != nil {
				if diff := cmp.Diff(tc.wantCalls, fake.calls); diff != "" {
					t.Errorf("commands run (-want +got):\n%s", diff)
				}
			} else if tc.wantErr == "" && len(fake.calls) != 0 {
				t.Errorf("ran %q with everything present", fake.calls)
			}
		})
	}
}

// TestToolSets: every tool names one package and exactly one of Command
// and File, absolute for files.
func TestToolSets(t *testing.T) {
	for _, ts := range []Tools{RaceTools, VMTestTools} {
		if ts.Job == "" || ts.Why == "" || len(ts.List) == 0 {
			t.Errorf("tool set %+v: Job, Why and List must be set", ts)
		}
		for _, tool := range ts.List {
			if (tool.Command == "") == (tool.File == "") || tool.Package == "" || (tool.File != "" && !filepath.IsAbs(tool.File)) {
				t.Errorf("%s: tool %+v: want a package and exactly one of Command and an absolute File", ts.Job, tool)
			}
		}
	}
}
