package vmtests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nke-harness/nke/kernel/ctlchan"
	"github.com/nke-harness/nke/kernel/guest"
	"github.com/nke-harness/nke/nke/bundle"
)

const (
	ipfwCtl   = "com.nke-harness.ipfw"
	tcplogCtl = "com.nke-harness.tcplog"
	echoRule  = "drop tcp dport 7"
)

// background runs nkectl until stopped, collecting its output; done is
// closed when it exits, err is then its Wait error.
type background struct {
	cmd  *exec.Cmd
	out  lockedBuf
	done chan struct{}
	err  error
}

func (g *ctlGuest) background(args ...string) *background {
	g.t.Helper()
	b := &background{out: lockedBuf{mu: &sync.Mutex{}, b: &bytes.Buffer{}}, done: make(chan struct{})}
	b.cmd = exec.Command(nkectlBinary(g.t), append([]string{"-s", g.sock}, args...)...)
	b.cmd.Stdout, b.cmd.Stderr = b.out, b.out
	if err := b.cmd.Start(); err != nil {
		g.t.Fatal(err)
	}
	go func() { b.err = b.cmd.Wait(); close(b.done) }()
	g.t.Cleanup(func() {
		b.cmd.Process.Kill()
		<-b.done
	})
	return b
}

// waitFor polls cond for up to d.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Load a bundle and its dependency, see them in stat and their effect on
// traffic, unload refused while a dependant or a control client exists,
// a forced unload, and traffic back to normal after the firewall goes.
func TestNkectlLoadUnload(t *testing.T) {
	g := bootCtlGuest(t, "nkectl-load")
	if ids := loaded(g.stat()); len(ids) != 0 {
		t.Fatalf("the default boot loaded %v", ids)
	}

	// ContentFilter needs TCPLogger: nkectl ships it first.
	out := g.must("load", filepath.Join(bundlesDir, "ContentFilter.nke"))
	t.Logf("nkectl load ContentFilter.nke:\n%s", out)
	st := g.stat()
	if d := cmp.Diff([]string{"com.example.tcplog", "com.example.contentfilter"}, loaded(st)); d != "" {
		t.Fatalf("loaded (-want +got):\n%s", d)
	}
	if !slices.Contains(st.NKEs[1].Depends, "com.example.tcplog") || st.NKEs[0].Refs != 1 {
		t.Errorf("stat: %+v", st.NKEs)
	}
	table := g.must("stat")
	t.Logf("nkectl stat:\n%s", table)
	for _, want := range []string{"com.example.tcplog", "com.example.contentfilter", "socket filters"} {
		if !strings.Contains(table, want) {
			t.Errorf("stat table lacks %q:\n%s", want, table)
		}
	}

	// The logger's effect: a record of the echo's bytes, streamed to a
	// control client.
	rec := g.background("ctl", tcplogCtl, "recv", "--count", "1")
	waitFor(t, "tcplog control client", 20*time.Second, func() bool {
		return g.stat().NKEs[0].Refs == 2 // contentfilter + the client
	})
	echoTCP(t, g.ports.Echo, randomBytes(64<<10))
	select {
	case <-rec.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("no tcplog record within 30 s: %s", rec.out)
	}
	if s := rec.out.String(); strings.Count(s, "65536") != 2 {
		t.Errorf("tcplog record does not count 65536 bytes each way: %s", s)
	} else {
		t.Logf("tcplog record over kernel control: %s", strings.TrimSpace(s))
	}

	// Refused while a dependant is loaded.
	_, errs, code := g.nkectl(nil, "unload", "com.example.tcplog")
	if code != 4 || !strings.Contains(errs, "com.example.contentfilter") {
		t.Errorf("unload with a dependant: exit %d, %q; want 4 naming it", code, errs)
	}
	g.must("unload", "com.example.contentfilter")
	// Refused while a control client is connected; then forced.
	cl := g.background("ctl", tcplogCtl, "recv")
	waitFor(t, "tcplog control client", 20*time.Second, func() bool { return g.stat().NKEs[0].Refs == 1 })
	_, errs, code = g.nkectl(nil, "unload", "com.example.tcplog")
	if code != 4 || !strings.Contains(errs, "unit") {
		t.Errorf("unload with a control client: exit %d, %q; want 4 naming the client", code, errs)
	}
	g.must("unload", "--force", "com.example.tcplog")
	select {
	case <-cl.done:
	case <-time.After(20 * time.Second):
		t.Error("the control client was not disconnected by the forced unload")
	}

	// The firewall: rules over kernel control, traffic blocked, then
	// back to normal once it is unloaded.
	g.must("load", filepath.Join(bundlesDir, "IPFirewall.nke"))
	if !echoWorks(g.ports.Echo, 10*time.Second) {
		t.Fatal("echo fails with the firewall loaded and no rule")
	}
	out = g.must("ctl", ipfwCtl, "add", echoRule)
	t.Logf("nkectl ctl %s add %q: %s", ipfwCtl, echoRule, out)
	if echoWorks(g.ports.Echo, 3*time.Second) {
		t.Error("echo answered through 'drop tcp dport 7'")
	}
	if n := g.stat().NKEs[0].Counters.Drop; n == 0 {
		t.Errorf("the firewall's drop counter is 0 after a blocked echo")
	}
	g.must("unload", "com.example.ipfw")
	if !echoWorks(g.ports.Echo, 10*time.Second) {
		t.Error("echo still fails after the firewall was unloaded")
	}
	if ids := loaded(g.stat()); len(ids) != 0 {
		t.Errorf("still loaded: %v", ids)
	}
}

// A replace during a 16 MiB TCP echo: the hash is intact and the new
// version is in place. A broken manifest is refused, saying why.
func TestNkectlReplaceAndBrokenManifest(t *testing.T) {
	g := bootCtlGuest(t, "nkectl-replace")
	dir := t.TempDir()
	g.must("load", filepath.Join(bundlesDir, "IPFirewall.nke"))
	g.must("ctl", ipfwCtl, "add", "drop udp dport 9")
	v2 := copyBundle(t, dir, "IPFirewall.nke", withVersion("1.0.1"))
	done := make(chan struct{})
	go func() {
		defer close(done)
		echoTCP(t, g.ports.Echo, randomBytes(16<<20))
	}()
	time.Sleep(time.Second) // the echo is under way
	out := g.must("replace", v2)
	t.Logf("nkectl replace: %s", out)
	<-done
	if st := g.stat(); len(st.NKEs) != 1 || st.NKEs[0].Version != "1.0.1" {
		t.Errorf("after replace: %+v", st.NKEs)
	}

	broken := copyBundle(t, dir, "EtherEcho.nke", func(s string) string {
		return strings.Replace(s, "<key>CFBundleIdentifier</key>", "<key>CFBundleIdentifierX</key>", 1)
	})
	_, errs, code := g.nkectl(nil, "load", broken)
	if code != 2 || !strings.Contains(errs, "Info.plist") || !strings.Contains(errs, "CFBundleIdentifier") {
		t.Errorf("broken manifest: exit %d, %q; want 2 naming the file and the key", code, errs)
	}
	t.Logf("broken manifest: %s", strings.TrimSpace(errs))

	// The guest refuses one too, should a client skip nkectl's check.
	b, err := bundle.ReadDir(filepath.Join(bundlesDir, "EtherEcho.nke"))
	if err != nil {
		t.Fatal(err)
	}
	b.Files[bundle.InfoPlist] = []byte(strings.Replace(string(b.Files[bundle.InfoPlist]), "<key>CFBundleVersion</key>", "<key>CFBundleVersionX</key>", 1))
	archive, err := bundle.Pack(b)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, _, err := ctlchan.Dial(ctx, g.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Load(ctx, ctlchan.LoadRequest{Name: b.Name, Archive: archive})
	if ctlchan.CodeOf(err) != ctlchan.CodeInvalid || !strings.Contains(fmt.Sprint(err), "CFBundleVersion") {
		t.Errorf("the guest on a broken manifest: %v, want EINVAL naming CFBundleVersion", err)
	}
	t.Logf("the guest on a broken manifest: %v", err)
	if ids := loaded(g.stat()); len(ids) != 1 {
		t.Errorf("loaded after the refusals: %v", ids)
	}
}

// The wasm firewall loaded at run time does what its native twin does;
// a trapping and a looping wasm NKE are each unloaded while TCP echo
// goes on.
func TestNkectlWasm(t *testing.T) {
	dir := t.TempDir()
	fw := copyBundle(t, dir, "IPFirewallWasm.nke", nil)
	buildWasm(t, fw, "wasmfw", "wasmfw.wasm")
	mk := func(name, id, example string) string {
		p := copyBundle(t, t.TempDir(), "IPFirewallWasm.nke", func(s string) string {
			s = strings.Replace(s, "com.example.wasmfw", id, 1)
			return strings.Replace(s, "<string>wasmfw.wasm</string>", "<string>"+example+".wasm</string>", 1)
		})
		np := filepath.Join(dir, name)
		if err := os.Rename(p, np); err != nil {
			t.Fatal(err)
		}
		buildWasm(t, np, example, example+".wasm")
		return np
	}
	// Built before the VM boots: building under TCG's CPU load is slow.
	trap := mk("Trap.nke", "com.example.trap", "trap")
	loop := mk("Loop.nke", "com.example.loop", "loop")

	g := bootCtlGuest(t, "nkectl-wasm")
	// The same probes through the native firewall and the wasm one.
	probe := func(ctlName string) [2]bool {
		g.must("ctl", ctlName, "add", echoRule)
		r := [2]bool{echoWorks(g.ports.Echo, 3*time.Second), httpWorks(g.ports.HTTP)}
		return r
	}
	g.must("load", filepath.Join(bundlesDir, "IPFirewall.nke"))
	native := probe(ipfwCtl)
	g.must("unload", "com.example.ipfw")
	g.must("load", fw)
	wasm := probe("com.example.wasmfw")
	if native != [2]bool{false, true} || wasm != native {
		t.Errorf("echo, http through the native firewall %v, through the wasm one %v; want [false true] both", native, wasm)
	}
	if st := g.stat(); len(st.NKEs) != 1 || st.NKEs[0].Kind != "wasm" || st.NKEs[0].Counters.Drop == 0 {
		t.Errorf("stat of the wasm firewall: %+v", st.NKEs)
	}
	g.must("unload", "com.example.wasmfw")

	events := g.background("--json", "events")
	for _, b := range []struct{ path, id string }{{trap, "com.example.trap"}, {loop, "com.example.loop"}} {
		g.must("load", b.path)
		// Traffic makes it fault; echo goes on, and it is unloaded.
		for i := 0; i < 3; i++ {
			echoWorks(g.ports.Echo, 5*time.Second)
		}
		waitFor(t, b.id+" unloaded after its fault", 60*time.Second, func() bool { return len(g.stat().NKEs) == 0 })
		echoTCP(t, g.ports.Echo, randomBytes(256<<10))
	}
	waitFor(t, "fault events", 10*time.Second, func() bool {
		s := events.out.String()
		return strings.Count(s, `"fault"`) >= 2
	})
	var kinds []string
	sc := bufio.NewScanner(strings.NewReader(events.out.String()))
	for sc.Scan() {
		var e ctlchan.Event
		if json.Unmarshal(sc.Bytes(), &e) == nil && (e.Kind == "fault" || e.Kind == "nke-unloaded") {
			kinds = append(kinds, e.Kind+" "+e.NKE)
		}
	}
	for _, want := range []string{"fault com.example.trap", "nke-unloaded com.example.trap", "fault com.example.loop", "nke-unloaded com.example.loop"} {
		if !slices.Contains(kinds, want) {
			t.Errorf("events lack %q: %v", want, kinds)
		}
	}
}

func httpWorks(port int) bool {
	c := exec.Command("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", fmt.Sprintf("http://127.0.0.1:%d/", port))
	out, err := c.Output()
	return err == nil && string(out) == "200"
}

// The control channel answers while the firewall drops everything, and
// a capture at the IP hook shows the drops with the NKE and verdict in
// each packet's comment, as tshark reads them.
func TestNkectlOutOfBandAndCapture(t *testing.T) {
	g := bootCtlGuest(t, "nkectl-capture")
	g.must("load", filepath.Join(bundlesDir, "IPFirewall.nke"))
	file := filepath.Join(t.TempDir(), "drops.pcapng")
	capt := g.background("capture", "inet filters", "--after", "com.example.ipfw", "--count", "3", "-w", file)
	time.Sleep(2 * time.Second) // the capture is installed
	g.must("ctl", ipfwCtl, "add", "drop")
	for i := 0; i < 3; i++ {
		if echoWorks(g.ports.Echo, 2*time.Second) {
			t.Error("echo answered with every packet dropped")
		}
	}
	// Out of band: nkectl still gets answers.
	if out := g.must("ping"); out == "" {
		t.Error("nkectl ping printed nothing")
	}
	st := g.stat()
	if len(st.NKEs) != 1 || st.NKEs[0].Counters.Drop == 0 {
		t.Errorf("stat while everything is dropped: %+v", st.NKEs)
	}
	select {
	case <-capt.done:
		if capt.err != nil {
			t.Fatalf("nkectl capture: %v\n%s", capt.err, capt.out)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("capture did not end after 3 packets: %s", capt.out)
	}
	ts := exec.Command("tshark", "-r", file, "-T", "fields", "-e", "frame.comment", "-e", "ip.src", "-e", "ip.dst")
	var tsErr bytes.Buffer
	ts.Stderr = &tsErr
	out, err := ts.Output()
	if err != nil {
		t.Fatalf("tshark -r: %v\n%s%s", err, out, tsErr.String())
	}
	t.Logf("tshark -r %s:\n%s", filepath.Base(file), out)
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 3 {
		t.Fatalf("tshark read %d packets, want 3:\n%s", len(lines), out)
	}
	for _, l := range lines {
		if !strings.Contains(l, "com.example.ipfw after: drop") || !strings.Contains(l, "10.0.2.15") {
			t.Errorf("tshark: %q, want a drop by com.example.ipfw to or from the guest", l)
		}
	}
	g.must("ctl", ipfwCtl, "flush")
	if !echoWorks(g.ports.Echo, 10*time.Second) {
		t.Error("echo fails after the rules were flushed")
	}
}

// 200 load/unload cycles under traffic: no failed request, no buffer
// leaked.
func TestNkectlLoadCycles(t *testing.T) {
	g := bootCtlGuest(t, "nkectl-cycles")
	before := stats(t, g.ports.HTTP).Pool
	stop := make(chan struct{})
	var echoes, failed int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if echoWorks(g.ports.Echo, 10*time.Second) {
				echoes++
			} else {
				failed++
			}
		}
	}()
	cycles := 200
	start := time.Now()
	for i := 0; i < cycles; i++ {
		if _, errs, code := g.nkectl(nil, "load", filepath.Join(bundlesDir, "EthernetLogger.nke")); code != 0 {
			t.Fatalf("cycle %d: load: exit %d: %s", i, code, errs)
		}
		if _, errs, code := g.nkectl(nil, "unload", "com.example.ethlog"); code != 0 {
			t.Fatalf("cycle %d: unload: exit %d: %s", i, code, errs)
		}
	}
	took := time.Since(start)
	close(stop)
	wg.Wait()
	t.Logf("%d load/unload cycles in %v (%v a cycle, two nkectl runs each); %d echoes during them, %d failed",
		cycles, took.Round(time.Millisecond), (took / time.Duration(cycles)).Round(time.Millisecond), echoes, failed)
	if failed > 0 || echoes == 0 {
		t.Errorf("%d of %d echoes failed during the cycles", failed, echoes+failed)
	}
	// Buffers in flight come home: the one carrying a /stats answer is
	// in use as the counts are read, so read until they are back.
	var after guest.PoolStatus
	deadline := time.Now().Add(15 * time.Second)
	for {
		after = stats(t, g.ports.HTTP).Pool
		if after.Free >= before.Free && after.RxFree >= before.RxFree-before.RxBuffers/8 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("buffers leaked: before %+v, after %+v", before, after)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("packet buffers before %+v, after %+v", before, after)
}
