package main

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nke-harness/nke/tools/hostvm"
)

func TestShellQuote(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/usr/bin/qemu-system-x86_64", "/usr/bin/qemu-system-x86_64"},
		{"virtio-net-pci,netdev=n0,romfile=", "virtio-net-pci,netdev=n0,romfile="},
		{"console=ttyS0 quiet", "'console=ttyS0 quiet'"},
		{"it's", `'it'\''s'`},
		{"", "''"},
	} {
		if got := shellQuote(tc.in); got != tc.want {
			t.Errorf("shellQuote(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		args    []string
		want    flags
		wantErr string
	}{
		{
			name: "defaults",
			want: flags{init: "./tools/nkeinit", accel: "auto", cpus: hostvm.DefaultCPUs, memMB: hostvm.DefaultMemoryMB,
				httpPort: 8080, echoPort: 7007},
		},
		{
			name: "env, then flags win",
			env:  map[string]string{hostvm.EnvHTTPPort: "9000", hostvm.EnvEchoPort: "9007", hostvm.EnvAppend: "loglevel=7"},
			args: []string{"-http-port", "9100", "-smp", "1", "--", "-v", "x"},
			want: flags{init: "./tools/nkeinit", accel: "auto", cpus: 1, memMB: hostvm.DefaultMemoryMB,
				httpPort: 9100, echoPort: 9007, append: "loglevel=7", initArgs: []string{"-v", "x"}},
		},
		{name: "stray argument", args: []string{"extra"}, wantErr: `unexpected argument "extra"`},
		{name: "bad port env", env: map[string]string{hostvm.EnvEchoPort: "x"}, wantErr: "NKE_ECHO_PORT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{hostvm.EnvHTTPPort, hostvm.EnvEchoPort, hostvm.EnvAppend} {
				t.Setenv(k, tc.env[k])
			}
			var f flags
			fs := newFlagSet(&f)
			fs.SetOutput(&strings.Builder{})
			err := parse(fs, &f, tc.args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parse(%q) = %v, want an error containing %q", tc.args, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parse(%q) = %v", tc.args, err)
			}
			if diff := cmp.Diff(tc.want, f, cmp.AllowUnexported(flags{})); diff != "" {
				t.Errorf("parse(%q) mismatch (-want +got):\n%s", tc.args, diff)
			}
		})
	}
}

func TestCmdDepsArgs(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{nil, "want one tool set, race or vmtest"},
		{[]string{"race", "vmtest"}, "want one tool set"},
		{[]string{"qemu"}, `unknown tool set "qemu"`},
	} {
		if err := cmdDeps(context.Background(), tc.args); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("cmdDeps(%q) = %v, want an error containing %q", tc.args, err, tc.wantErr)
		}
	}
	for name, ts := range toolSets {
		if len(ts.List) == 0 {
			t.Errorf("tool set %s is empty", name)
		}
	}
}
