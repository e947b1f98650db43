package vmtests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nke-harness/nke/kernel/ctlchan"
	"github.com/nke-harness/nke/tools/hostvm"
)

// The loader, nkectl and the control channel, driven as a user drives
// them: a guest booted with the control channel, hostvm.ServeControl on
// the host end (as nkevm run does), and the nkectl binary.

// nkectlBinary is the nkectl command, built once.
func nkectlBinary(t testing.TB) string { return hostTool(t, "nkectl") }

// ctlGuest is a guest with its control channel served on sock.
type ctlGuest struct {
	*vmGuest
	t     testing.TB
	ports userPorts
	sock  string
}

// bootCtlGuest boots on user networking with the control channel.
func bootCtlGuest(t testing.TB, name string, appendArgs ...string) *ctlGuest {
	t.Helper()
	requireVM(t)
	nkectlBinary(t)
	// A short directory: a unix socket's path holds 107 bytes.
	dir, err := os.MkdirTemp("", "nkevt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o700)
	qemuSock, sock := filepath.Join(dir, hostvm.ControlSocketName), filepath.Join(dir, ctlchan.SocketName)
	nic, ports := userNIC(t, hostvm.NIC{})
	ctlArgs, err := hostvm.ControlChannel{SocketPath: qemuSock}.Args()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	served := make(chan error, 1)
	g := startGuest(t, name, append(nic, ctlArgs...), appendArgs...)
	go func() {
		served <- hostvm.ServeControl(ctx, qemuSock, sock, t.Logf, func() { close(ready) })
	}()
	// Registered after startGuest's: runs before the guest powers off.
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil && !errors.Is(err, ctlchan.ErrUpstreamLost) {
			t.Errorf("control channel: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-served:
		t.Fatalf("control channel: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("control channel not ready in 30 s")
	}
	return &ctlGuest{vmGuest: g, t: t, ports: ports, sock: sock}
}

// nkectl runs nkectl against the guest and returns its stdout, stderr
// and exit code.
func (g *ctlGuest) nkectl(stdin io.Reader, args ...string) (string, string, int) {
	g.t.Helper()
	cmd := exec.Command(nkectlBinary(g.t), append([]string{"-s", g.sock}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			g.t.Fatalf("nkectl %s: %v", strings.Join(args, " "), err)
		}
		code = ee.ExitCode()
	}
	return out.String(), errb.String(), code
}

// must runs nkectl and fails the test unless it exits 0.
func (g *ctlGuest) must(args ...string) string {
	g.t.Helper()
	out, errs, code := g.nkectl(nil, args...)
	if code != 0 {
		g.t.Fatalf("nkectl %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

// stat is nkectl stat --json.
func (g *ctlGuest) stat() ctlchan.Stat {
	g.t.Helper()
	var st ctlchan.Stat
	if err := json.Unmarshal([]byte(g.must("--json", "stat")), &st); err != nil {
		g.t.Fatalf("nkectl stat --json: %v", err)
	}
	return st
}

// loaded lists the loaded bundles' ids.
func loaded(st ctlchan.Stat) []string {
	var ids []string
	for _, n := range st.NKEs {
		ids = append(ids, n.ID)
	}
	return ids
}

// echoWorks reports whether a TCP echo of a few bytes answers within d.
func echoWorks(port int, d time.Duration) bool {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), d)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(d))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return false
	}
	b := make([]byte, 5)
	_, err = io.ReadFull(c, b)
	return err == nil && string(b) == "ping\n"
}

// bundlesDir is the tree's bundle folder.
const bundlesDir = "../nke/bundles"

// copyBundle copies a bundle of the tree into dir, applying edit to its
// Info.plist, and returns the copy's path.
func copyBundle(t testing.TB, dir, name string, edit func(string) string) string {
	t.Helper()
	src := filepath.Join(bundlesDir, name)
	dst := filepath.Join(dir, name)
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if fi.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if fi.Name() == "Info.plist" && edit != nil {
			b = []byte(edit(string(b)))
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

var versionRE = regexp.MustCompile(`(<key>CFBundleVersion</key>\s*<string>)[^<]*(</string>)`)

// withVersion sets CFBundleVersion.
func withVersion(v string) func(string) string {
	return func(s string) string { return versionRE.ReplaceAllString(s, "${1}"+v+"${2}") }
}

// buildWasm builds a wasm example into a bundle's Contents/WebAssembly.
func buildWasm(t testing.TB, bundle, example, file string) {
	t.Helper()
	dir := filepath.Join(bundle, "Contents", "WebAssembly")
	os.MkdirAll(dir, 0o755)
	cmd := exec.Command("go", "build", "-buildvcs=false", "-buildmode=c-shared", "-o", filepath.Join(dir, file), "../nke/wasm/examples/"+example)
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", example, err, out)
	}
}
