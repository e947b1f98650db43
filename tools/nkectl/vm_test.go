package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nke-harness/nke/kernel/ctlchan"
	"github.com/nke-harness/nke/kernel/ctlchan/ctlchantest"
)

// The tests drive nkectl as a user would, against what a VM serves: the
// guest's ctlchan server (a ctlchantest.Fake behind it) on one end of a
// byte stream standing for the virtio console, the host's multiplexer on
// the other, listening on the VM's unix socket in a runtime directory.

// runtimeDir points nkectl at an empty runtime directory of its own.
func runtimeDir(t *testing.T) string {
	t.Helper()
	d := filepath.Join(t.TempDir(), "run")
	t.Setenv(ctlchan.EnvRuntimeDir, d)
	t.Setenv(ctlchan.EnvSocket, "")
	return d
}

type vm struct {
	sock string
	fake *ctlchantest.Fake
	stop func() // the guest goes away
}

// startVM runs VM name serving b (nil: a new Fake) in the runtime
// directory.
func startVM(t *testing.T, name string, b ctlchan.Backend) *vm {
	t.Helper()
	v := &vm{}
	if b == nil {
		v.fake = ctlchantest.New()
		b = v.fake
	} else if f, ok := b.(*ctlchantest.Fake); ok {
		v.fake = f
	}
	dir, err := ctlchan.MakeVMDir(name)
	if err != nil {
		t.Fatal(err)
	}
	v.sock = filepath.Join(dir, ctlchan.SocketName)
	ln, err := ctlchan.ListenUnix(v.sock)
	if err != nil {
		t.Fatal(err)
	}
	g, h := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); ctlchan.Serve(ctx, g, b) }()
	m := ctlchan.NewMux(h)
	go func() { defer wg.Done(); m.Serve(ctx, ln) }()
	var once sync.Once
	v.stop = func() { once.Do(func() { g.Close(); h.Close(); cancel(); wg.Wait() }) }
	t.Cleanup(v.stop)
	return v
}

type result struct {
	stdout, stderr string
	code           int
}

// nkectl runs nkectl with args and an empty stdin.
func nkectl(t *testing.T, args ...string) result {
	t.Helper()
	return nkectlIn(t, "", args...)
}

func nkectlIn(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return nkectlCtx(ctx, strings.NewReader(stdin), args...)
}

// nkectlCtx runs nkectl until it returns; ending ctx is Ctrl-C.
func nkectlCtx(ctx context.Context, stdin io.Reader, args ...string) result {
	var out, errb bytes.Buffer
	code := exit(runWith(ctx, args, stdin, &out, &errb), &errb)
	return result{out.String(), errb.String(), code}
}

// infoPlist is a bundle's manifest as one on disk is written: a library
// (compatible back to 1.0) attached at the interface layer, built in.
func infoPlist(id, version string, libs map[string]string) []byte {
	return infoPlistCompat(id, version, "1.0", libs)
}

// infoPlistCompat is infoPlist with an OSBundleCompatibleVersion ("":
// none, not a library).
func infoPlistCompat(id, version, compat string, libs map[string]string) []byte {
	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>CFBundleIdentifier</key>
	<string>` + id + `</string>
	<key>CFBundleVersion</key>
	<string>` + version + `</string>
`)
	if compat != "" {
		b.WriteString("\t<key>OSBundleCompatibleVersion</key>\n\t<string>" + compat + "</string>\n")
	}
	b.WriteString(`	<key>OSBundleLibraries</key>
	<dict>
`)
	for _, k := range sortedKeys(libs) {
		b.WriteString("\t\t<key>" + k + "</key>\n\t\t<string>" + libs[k] + "</string>\n")
	}
	b.WriteString(`	</dict>
	<key>NKEHarness</key>
	<dict>
		<key>Layer</key>
		<string>interface</string>
		<key>Capabilities</key>
		<array>
			<string>observe</string>
		</array>
		<key>Builtin</key>
		<string>ethlog</string>
	</dict>
</dict>
</plist>
`)
	return []byte(b.String())
}

// writeBundle writes dir/name.nke with an Info.plist (XML, as a bundle
// on disk has it) and a binary, and returns its path.
func writeBundle(t *testing.T, dir, name, id, version string, libs map[string]string) string {
	t.Helper()
	return writeBundlePlist(t, dir, name, infoPlist(id, version, libs))
}

func writeBundlePlist(t *testing.T, dir, name string, plist []byte) string {
	t.Helper()
	p := filepath.Join(dir, name+".nke")
	if err := os.MkdirAll(filepath.Join(p, "Contents", "MacOS"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p, "Contents", "Info.plist"), plist, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p, "Contents", "MacOS", name), []byte("\x00asm"+name), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func newTestFlagSet(libs *multiFlag) *flag.FlagSet {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Var(libs, "L", "")
	return fs
}
