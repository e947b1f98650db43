package hostvm

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestEnsureQEMU(t *testing.T) {
	installs := func(f *fakeCmd) func(string, []string) error {
		return func(string, []string) error {
			f.paths[qemuBinary] = true
			return nil
		}
	}
	for _, tc := range []struct {
		name      string
		root      bool
		lists     bool
		setup     func(*fakeCmd)
		wantPath  string
		wantErr   string
		wantCalls []string
	}{
		{
			name:     "on PATH",
			setup:    func(f *fakeCmd) { f.paths[qemuBinary] = true },
			wantPath: "/usr/bin/" + qemuBinary,
		},
		{
			name:    "missing, not root",
			wantErr: "sudo apt-get install --no-install-recommends qemu-system-x86",
		},
		{
			name:    "missing, no apt",
			root:    true,
			setup:   func(f *fakeCmd) { delete(f.paths, "apt-get") },
			wantErr: "install QEMU for x86_64 with your package manager, or set NKE_QEMU",
		},
		{
			name:  "root with lists installs",
			root:  true,
			lists: true,
			setup: func(f *fakeCmd) {
				f.runs["apt-get install"] = installs(f)
			},
			wantPath:  "/usr/bin/" + qemuBinary,
			wantCalls: []string{"apt-get install -y --no-install-recommends qemu-system-x86"},
		},
		{
			name: "root without lists updates first",
			root: true,
			setup: func(f *fakeCmd) {
				f.runs["apt-get update"] = func(string, []string) error { return nil }
				f.runs["apt-get install"] = installs(f)
			},
			wantPath:  "/usr/bin/" + qemuBinary,
			wantCalls: []string{"apt-get update", "apt-get install -y --no-install-recommends qemu-system-x86"},
		},
		{
			name:  "stale lists: install fails, update, retry",
			root:  true,
			lists: true,
			setup: func(f *fakeCmd) {
				f.runs["apt-get install"] = func(string, []string) error { return errors.New("404 Not Found") }
				f.runs["apt-get update"] = func(string, []string) error {
					f.runs["apt-get install"] = installs(f)
					return nil
				}
			},
			wantPath: "/usr/bin/" + qemuBinary,
			wantCalls: []string{
				"apt-get install -y --no-install-recommends qemu-system-x86",
				"apt-get update",
				"apt-get install -y --no-install-recommends qemu-system-x86",
			},
		},
		{
			name:    "install fails for good",
			root:    true,
			lists:   true,
			setup:   func(f *fakeCmd) { f.runs["apt-get update"] = func(string, []string) error { return nil } },
			wantErr: "installing qemu-system-x86 failed",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(EnvQEMU, "")
			fake := &fakeCmd{paths: map[string]bool{"apt-get": true}, runs: map[string]func(string, []string) error{}}
			if tc.setup != nil {
				tc.setup(fake)
			}
			lists := t.TempDir()
			if tc.lists {
				if err := os.WriteFile(filepath.Join(lists, "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4"), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			h := host{cmd: fake, root: tc.root, aptLists: lists}
			got, err := h.ensureQEMU(context.Background(), io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ensureQEMU() = %q, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.wantPath {
				t.Fatalf("ensureQEMU() = %q, %v; want %q", got, err, tc.wantPath)
			}
			if diff := cmp.Diff(tc.wantCalls, fake.calls); diff != "" {
				t.Errorf("commands run (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEnsureQEMUOverride(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "qemu")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	fake := &fakeCmd{paths: map[string]bool{"apt-get": true}}
	h := host{cmd: fake, root: true, aptLists: dir}

	t.Setenv(EnvQEMU, exe)
	if got, err := h.ensureQEMU(context.Background(), io.Discard); err != nil || got != exe {
		t.Fatalf("ensureQEMU() with %s=%s = %q, %v", EnvQEMU, exe, got, err)
	}
	// A wrong override is reported, never "fixed" by installing.
	t.Setenv(EnvQEMU, filepath.Join(dir, "nope"))
	_, err := h.ensureQEMU(context.Background(), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "NKE_QEMU") || len(fake.calls) != 0 {
		t.Fatalf("ensureQEMU() with a bad %s = %v (calls %q); want an error naming it and no apt", EnvQEMU, err, fake.calls)
	}
}
