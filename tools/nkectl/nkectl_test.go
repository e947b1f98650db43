package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/nke-harness/nke/kernel/ctlchan"
	"github.com/nke-harness/nke/kernel/ctlchan/ctlchantest"
	"github.com/nke-harness/nke/nke/bundle"
)

func lines(s ...string) string { return strings.Join(s, "\n") + "\n" }

// tree is a directory of bundles with two levels of dependencies, one of
// them in a library directory of its own (-L):
//
//	com.t.app  -> com.t.mid (>= 1.0), com.t.lib (>= 2), a KPI
//	com.t.mid  -> com.t.base
//	com.t.lib  -> com.t.base (>= 1.0)   (in lib/)
//
// Loading app sends base, lib, mid (in identifier order where the
// dependencies leave a choice), then app.
type tree struct{ dir, lib, app string }

func newTree(t *testing.T) tree {
	d, lib := t.TempDir(), t.TempDir()
	tr := tree{dir: d, lib: lib}
	tr.app = writeBundle(t, d, "app", "com.t.app", "1.0", map[string]string{"com.t.mid": "1.0", "com.nke-harness.kpi.iface": "1.0", "com.t.lib": "2"})
	writeBundle(t, d, "mid", "com.t.mid", "1.1", map[string]string{"com.t.base": "1.0"})
	writeBundle(t, d, "base", "com.t.base", "1.0", nil)
	writeBundle(t, lib, "lib", "com.t.lib", "2.0", map[string]string{"com.t.base": "1.0"})
	os.WriteFile(filepath.Join(d, "README"), []byte("not a bundle"), 0o644)
	return tr
}

func (tr tree) clean(s string) string {
	return strings.NewReplacer(tr.lib, "$LIB", tr.dir, "$DIR").Replace(s)
}

func TestLoadDependencies(t *testing.T) {
	runtimeDir(t)
	v := startVM(t, "vm1", nil)
	tr := newTree(t)

	r := nkectl(t, "load", "-n", tr.app, "-L", tr.lib)
	if d := cmp.Diff(result{stdout: lines(
		"ORDER  ID          VERSION  PATH",
		"1      com.t.base  1.0      $DIR/base.nke (dependency)",
		"2      com.t.lib   2.0      $LIB/lib.nke (dependency)",
		"3      com.t.mid   1.1      $DIR/mid.nke (dependency)",
		"4      com.t.app   1.0      $DIR/app.nke",
	)}, result{tr.clean(r.stdout), r.stderr, r.code}, cmp.AllowUnexported(result{})); d != "" {
		t.Errorf("load -n (-want +got):\n%s", d)
	}
	if n := len(v.fake.ArchiveSizes()); n != 0 {
		t.Fatalf("load -n loaded %d bundles", n)
	}

	r = nkectl(t, "load", tr.app, "-L", tr.lib)
	want := lines(
		"INDEX  ID          VERSION  STATUS",
		"1      com.t.base  1.0      loaded (dependency)",
		"2      com.t.lib   2.0      loaded (dependency)",
		"3      com.t.mid   1.1      loaded (dependency)",
		"4      com.t.app   1.0      loaded",
	)
	if d := cmp.Diff(result{stdout: want}, r, cmp.AllowUnexported(result{})); d != "" {
		t.Errorf("load (-want +got):\n%s", d)
	}

	// Again: the dependencies are there, the bundle itself is refused.
	r = nkectl(t, "load", "--json", tr.app, "-L", tr.lib)
	var got []loaded
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("load --json: %v\n%s", err, r.stdout)
	}
	wantJSON := []loaded{
		{ctlchan.LoadReply{ID: "com.t.base", Version: "1.0", Index: 1, Already: true}, true, filepath.Join(tr.dir, "base.nke")},
		{ctlchan.LoadReply{ID: "com.t.lib", Version: "2.0", Index: 2, Already: true}, true, filepath.Join(tr.lib, "lib.nke")},
		{ctlchan.LoadReply{ID: "com.t.mid", Version: "1.1", Index: 3, Already: true}, true, filepath.Join(tr.dir, "mid.nke")},
	}
	if d := cmp.Diff(wantJSON, got); d != "" {
		t.Errorf("load --json again (-want +got):\n%s", d)
	}
	if r.code != exitFailed || !strings.Contains(r.stderr, "already loaded") || !strings.Contains(r.stderr, "nkectl replace") {
		t.Errorf("load again: exit %d, stderr %q; want 1 and advice", r.code, r.stderr)
	}
	// Each archive went once, in order; the chain is in load order.
	st, _ := v.fake.Stat(context.Background())
	if d := cmp.Diff([]ctlchan.Chain{{Hook: ctlchantest.Hook, Filters: []string{"com.t.base", "com.t.lib", "com.t.mid", "com.t.app"}}}, st.Chains); d != "" {
		t.Errorf("chains (-want +got):\n%s", d)
	}
	if n := len(v.fake.ArchiveSizes()); n != 4 {
		t.Errorf("%d archives loaded, want 4", n)
	}
}

func TestLoadResolveErrors(t *testing.T) {
	runtimeDir(t)
	v := startVM(t, "vm1", nil)
	d := t.TempDir()
	cycle := writeBundle(t, d, "a", "com.c.a", "1.0", map[string]string{"com.c.b": "1.0"})
	writeBundle(t, d, "b", "com.c.b", "1.0", map[string]string{"com.c.c": "1.0"})
	writeBundle(t, d, "c", "com.c.c", "1.0", map[string]string{"com.c.a": "1.0"})
	missing := writeBundle(t, d, "m", "com.c.m", "1.0", map[string]string{"com.c.n": "1.0"})
	writeBundle(t, d, "n", "com.c.n", "1.0", map[string]string{"com.c.gone": "2.0"})
	old := writeBundle(t, d, "o", "com.c.o", "1.0", map[string]string{"com.c.n": "1.10"})
	self := writeBundle(t, d, "s", "com.c.s", "1.0", map[string]string{"com.c.s": "1.0"})
	nolib := writeBundle(t, d, "p", "com.c.p", "1.0", map[string]string{"com.c.q": "1.0"})
	writeBundlePlist(t, d, "q", infoPlistCompat("com.c.q", "1.0", "", nil))
	newer := writeBundle(t, d, "r", "com.c.r", "1.0", map[string]string{"com.c.t": "1.0"})
	writeBundlePlist(t, d, "t", infoPlistCompat("com.c.t", "3.0", "2.0", nil))
	os.MkdirAll(filepath.Join(d, "broken.nke"), 0o755)
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"cycle", []string{"load", cycle}, "dependency cycle: com.c.a -> com.c.b -> com.c.c -> com.c.a"},
		{"self", []string{"load", self}, "cannot read the bundle $DIR/s.nke: s.nke/Contents/Info.plist: key OSBundleLibraries.com.c.s: the bundle depends on itself"},
		{"no library", []string{"load", nolib}, "com.c.p needs com.c.q version 1.0 or later, but $DIR/q.nke (version 1.0) has no OSBundleCompatibleVersion, so it is no library: add one to its Info.plist"},
		{"incompatible", []string{"load", newer}, "com.c.r needs com.c.t version 1.0 or later, but $DIR/t.nke (version 3.0) is compatible only back to 2.0 (its OSBundleCompatibleVersion)"},
		{"missing", []string{"load", missing}, "com.c.m -> com.c.n needs com.c.gone (version 2.0 or later), which no bundle in $DIR has: pass -L DIR with the folder that holds it; these bundles there do not read: $DIR/broken.nke (bundle: broken.nke: no Contents folder"},
		{"too old", []string{"load", old}, "com.c.o needs com.c.n version 1.10 or later, but $DIR/n.nke is version 1.0"},
		{"missing -L dir", []string{"load", missing, "-L", filepath.Join(d, "nowhere")}, "dependency directory $DIR/nowhere"},
		{"no bundle", []string{"load", filepath.Join(d, "none.nke")}, "cannot read the bundle $DIR/none.nke"},
		{"not a bundle", []string{"replace", filepath.Join(d, "broken.nke")}, "cannot read the bundle $DIR/broken.nke"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := nkectl(t, c.args...)
			stderr := strings.ReplaceAll(r.stderr, d, "$DIR")
			if r.code != exitUsage || !strings.Contains(stderr, c.want) || r.stdout != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit 2 and %q", r.code, r.stdout, stderr, c.want)
			}
		})
	}
	if n := len(v.fake.ArchiveSizes()); n != 0 {
		t.Errorf("%d bundles were loaded despite the errors", n)
	}
}

func TestStat(t *testing.T) {
	runtimeDir(t)
	v := startVM(t, "vm1", nil)
	r := nkectl(t, "stat")
	if d := cmp.Diff(result{stdout: lines("no NKEs loaded (nkectl load PATH.nke loads one)", "", "HOOK            CHAIN", "vtnet0 filters  (empty)")}, r, cmp.AllowUnexported(result{})); d != "" {
		t.Errorf("stat, empty (-want +got):\n%s", d)
	}
	tr := newTree(t)
	if r := nkectl(t, "load", tr.app, "-L", tr.lib); r.code != 0 {
		t.Fatalf("load: %+v", r)
	}
	r = nkectl(t, "stat")
	want := lines(
		"INDEX  REFS  ID          VERSION  KIND     LAYER      ATTACHMENT  ORDER   CONTINUE  SWALLOW  DROP  FAULTS  REFUSED  NS/PKT",
		"1      2     com.t.base  1.0      builtin  interface  vtnet0 all  1 of 4  90        0        10    0       0        12.5",
		"2      1     com.t.lib   2.0      builtin  interface  vtnet0 all  2 of 4  180       0        20    0       0        25.0",
		"3      1     com.t.mid   1.1      builtin  interface  vtnet0 all  3 of 4  270       0        30    0       0        37.5",
		"4      0     com.t.app   1.0      builtin  interface  vtnet0 all  4 of 4  360       0        40    0       0        50.0",
		"",
		"HOOK            CHAIN",
		"vtnet0 filters  com.t.base -> com.t.lib -> com.t.mid -> com.t.app",
	)
	if d := cmp.Diff(result{stdout: want}, r, cmp.AllowUnexported(result{})); d != "" {
		t.Errorf("stat (-want +got):\n%s", d)
	}
	r = nkectl(t, "--json", "stat")
	var got ctlchan.Stat
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || r.code != 0 {
		t.Fatalf("stat --json: exit %d, %v\n%s", r.code, err, r.stdout)
	}
	wantSt, _ := v.fake.Stat(context.Background())
	if d := cmp.Diff(wantSt, got); d != "" {
		t.Errorf("stat --json (-want +got):\n%s", d)
	}
	if !strings.Contains(r.stdout, "\n  \"nkes\": [\n") {
		t.Errorf("stat --json is not indented:\n%s", r.stdout)
	}

	// Some of them.
	r = nkectl(t, "stat", "com.t.app", "com.t.base")
	want = lines(
		"INDEX  REFS  ID          VERSION  KIND     LAYER      ATTACHMENT  ORDER   CONTINUE  SWALLOW  DROP  FAULTS  REFUSED  NS/PKT",
		"4      0     com.t.app   1.0      builtin  interface  vtnet0 all  4 of 4  360       0        40    0       0        50.0",
		"1      2     com.t.base  1.0      builtin  interface  vtnet0 all  1 of 4  90        0        10    0       0        12.5",
		"",
		"HOOK            CHAIN",
		"vtnet0 filters  com.t.base -> com.t.lib -> com.t.mid -> com.t.app",
	)
	if d := cmp.Diff(result{stdout: want}, r, cmp.AllowUnexported(result{})); d != "" {
		t.Errorf("stat IDs (-want +got):\n%s", d)
	}
	r = nkectl(t, "stat", "--json", "com.t.lib")
	got = ctlchan.Stat{}
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || len(got.NKEs) != 1 || got.NKEs[0].ID != "com.t.lib" || len(got.Chains) != 1 {
		t.Errorf("stat --json ID: %v, %+v", err, got)
	}
	if r := nkectl(t, "stat", "com.t.app", "com.t.none"); r.code != exitFailed || r.stdout != "" || r.stderr != "nkectl: stat: com.t.none is not loaded (nkectl stat lists what is)\n" {
		t.Errorf("stat of an NKE not loaded: %+v", r)
	}
}

func TestUnloadReplace(t *testing.T) {
	runtimeDir(t)
	startVM(t, "vm1", nil)
	tr := newTree(t)
	if r := nkectl(t, "load", tr.app, "-L", tr.lib); r.code != 0 {
		t.Fatalf("load: %+v", r)
	}
	for _, c := range []struct {
		args   []string
		code   int
		stdout string
		stderr string // a part of it
	}{
		{[]string{"unload", "com.t.base"}, exitBusy, "", "unload com.t.base: in use [EBUSY]: unload com.t.base: com.t.lib, com.t.mid depend on it"},
		{[]string{"unload", "com.t.base"}, exitBusy, "", "; unload its dependants or close its control clients first, or pass --force\n"},
		{[]string{"unload", "com.t.nothing"}, exitFailed, "", "not loaded (see nkectl stat)"},
		{[]string{"unload", tr.app}, exitUsage, "", "unload takes an identifier, not a folder: nkectl unload com.t.app"},
		{[]string{"unload"}, exitUsage, "", "unload: missing arguments: usage: nkectl unload [--force] ID"},
		{[]string{"unload", "a", "b"}, exitUsage, "", `unexpected argument "b"`},
		{[]string{"unload", "com.t.app"}, 0, "unloaded com.t.app (drained in 1.5ms)\n", ""},
		{[]string{"unload", "--json", "com.t.mid"}, 0, `{
  "id": "com.t.mid",
  "drain_ns": 1500000
}
`, ""},
		{[]string{"unload", "com.t.base", "--force"}, 0, "unloaded com.t.base (drained in 1.5ms)\nforced: detached com.t.lib\n", ""},
		{[]string{"replace", filepath.Join(tr.dir, "mid.nke")}, exitFailed, "", "com.t.mid is not loaded: load it"},
		{[]string{"load", filepath.Join(tr.dir, "mid.nke")}, 0, "", ""},
		{[]string{"replace", "--handover", filepath.Join(tr.dir, "mid.nke")}, 0, "replaced com.t.mid 1.1 -> 1.1 in 40µs, state handed over\n", ""},
		{[]string{"replace", filepath.Join(tr.dir, "mid.nke"), "--json"}, 0, `{
  "id": "com.t.mid",
  "old_version": "1.1",
  "new_version": "1.1",
  "swap_ns": 40000
}
`, ""},
	} {
		r := nkectl(t, c.args...)
		if c.args[0] == "load" {
			r.stdout = ""
		}
		if r.code != c.code || r.stdout != c.stdout || !strings.Contains(r.stderr, c.stderr) || c.stderr == "" && r.stderr != "" {
			t.Errorf("nkectl %s: exit %d, stdout %q, stderr %q\nwant exit %d, stdout %q, stderr with %q",
				strings.Join(c.args, " "), r.code, r.stdout, r.stderr, c.code, c.stdout, c.stderr)
		}
	}
}

func TestCtl(t *testing.T) {
	runtimeDir(t)
	v := startVM(t, "vm1", nil)
	const ipfw = ctlchantest.CtlName
	for _, c := range []struct {
		stdin  string
		args   []string
		code   int
		stdout string
		stderr string // a part of it
	}{
		{"", []string{"ctl", ipfw, "send", "--count", "1", "--wait", "5s", "add drop tcp dport 23"}, 0, "rule 1: drop tcp dport 23\n", ""},
		{"add allow udp", []string{"ctl", ipfw, "send", "--count", "4", "--wait", "5s", "-", "list"}, 0, lines("rule 2: allow udp", "rule 1: drop tcp dport 23", "rule 2: allow udp", "2 rules"), ""},
		{"", []string{"ctl", ipfw, "send", "--count", "1", "list"}, 0, "rule 1: drop tcp dport 23\n", ""},
		{"", []string{"ctl", ipfw, "send", "--json", "--count", "3", "--wait", "5s", "list"}, 0, lines(
			`{"data":"cnVsZSAxOiBkcm9wIHRjcCBkcG9ydCAyMw==","text":"rule 1: drop tcp dport 23"}`,
			`{"data":"cnVsZSAyOiBhbGxvdyB1ZHA=","text":"rule 2: allow udp"}`,
			`{"data":"MiBydWxlcw==","text":"2 rules"}`), ""},
		{"", []string{"ctl", ipfw, "send", "bogus"}, exitFailed, "", `"bogus": want add RULE or list: invalid argument [EINVAL]`},
		{"", []string{"ctl", ipfw, "send"}, exitUsage, "", "send: what?"},
		{"", []string{"ctl", ipfw, "setopt", "1", "--hex", "0a0bff"}, 0, "", ""},
		{"", []string{"ctl", ipfw, "getopt", "1", "--hex"}, 0, "0a0bff\n", ""},
		{"", []string{"ctl", ipfw, "getopt", "1", "--hex", "--size", "2"}, 0, "0a0b\n", ""},
		{"", []string{"ctl", ipfw, "getopt", "1", "--json"}, 0, "{\n  \"opt\": 1,\n  \"data\": \"Cgv/\"\n}\n", ""},
		{"opt\x00 bytes", []string{"ctl", ipfw, "setopt", "0x1", "-", "--json"}, 0, "{\n  \"opt\": 1,\n  \"bytes\": 10\n}\n", ""},
		{"", []string{"ctl", ipfw, "getopt", "1"}, 0, "opt\x00 bytes\n", ""},
		{"", []string{"ctl", ipfw, "getopt", "7"}, exitFailed, "", "option 7: operation not supported [EOPNOTSUPP]"},
		{"", []string{"ctl", ipfw, "setopt", "2", "x"}, exitFailed, "", "[EOPNOTSUPP]"},
		{"", []string{"ctl", ipfw, "setopt", "one", "x"}, exitUsage, "", `option "one": want a number`},
		{"", []string{"ctl", ipfw, "setopt", "1", "--hex", "zz"}, exitUsage, "", "--hex value"},
		// Words that are no subcommand are one command for the NKE.
		{"", []string{"ctl", ipfw, "frob", "it"}, exitFailed, "", `"frob it": want add RULE or list`},
		{"", []string{"ctl", ipfw, "list", "--count", "1", "--wait", "5s"}, 0, "rule 1: drop tcp dport 23\n", ""},
		{"", []string{"ctl", "com.nobody", "send", "x"}, exitFailed, "", "connect com.nobody: no control endpoint by that name"},
		// Interactive: lines in, replies out as they come, a refused
		// line reported and counted.
		{"add a\n\nbad\nlist\n", []string{"ctl", ipfw, "--wait", "500ms"}, exitFailed, lines(
			"rule 3: a", "rule 1: drop tcp dport 23", "rule 2: allow udp", "rule 3: a", "3 rules"),
			"ctl com.nke-harness.ipfw: 1 of 3 messages were refused"},
		{"list\n", []string{"ctl", ipfw, "--hex", "--wait", "500ms"}, 0, lines(
			"72756c6520313a2064726f70207463702064706f7274203233", "72756c6520323a20616c6c6f7720756470", "72756c6520333a2061", "332072756c6573"),
			"connected to com.nke-harness.ipfw unit 1"},
		// The NKE closes the connection.
		{"close\n", []string{"ctl", ipfw}, 0, "", "com.nke-harness.ipfw closed the connection"},
	} {
		r := nkectlIn(t, c.stdin, c.args...)
		if r.code != c.code || r.stdout != c.stdout || !strings.Contains(r.stderr, c.stderr) {
			t.Errorf("nkectl %q <<< %q: exit %d, stdout %q, stderr %q\nwant exit %d, stdout %q, stderr with %q",
				c.args, c.stdin, r.code, r.stdout, r.stderr, c.code, c.stdout, c.stderr)
		}
	}
	if n := v.fake.CtlClients(); n != 0 {
		t.Errorf("%d control clients still connected", n)
	}
}

// greeter's control connections start with two messages, text and
// binary, then take whatever the fake's do.
type greeter struct{ *ctlchantest.Fake }

func (g greeter) CtlConnect(ctx context.Context, r ctlchan.CtlConnectRequest) (ctlchan.CtlConn, ctlchan.CtlConnectReply, error) {
	conn, rep, err := g.Fake.CtlConnect(ctx, r)
	if err != nil {
		return nil, rep, err
	}
	return &greeting{CtlConn: conn, queue: [][]byte{[]byte("hello\n"), {0, 1, 2, 0xff}}}, rep, nil
}

type greeting struct {
	ctlchan.CtlConn
	queue [][]byte
}

func (g *greeting) Recv(ctx context.Context) ([]byte, error) {
	if len(g.queue) > 0 {
		b := g.queue[0]
		g.queue = g.queue[1:]
		return b, nil
	}
	return g.CtlConn.Recv(ctx)
}

func TestCtlRecv(t *testing.T) {
	runtimeDir(t)
	startVM(t, "vm1", greeter{ctlchantest.New()})
	const ipfw = ctlchantest.CtlName
	for _, c := range []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{[]string{"ctl", ipfw, "recv"}, 0, "hello\n", ""},
		{[]string{"ctl", ipfw, "recv", "--count", "2", "--hex"}, 0, "68656c6c6f0a\n000102ff\n", ""},
		{[]string{"ctl", ipfw, "recv", "--count", "2", "--json"}, 0, lines(`{"data":"aGVsbG8K","text":"hello\n"}`, `{"data":"AAEC/w=="}`), ""},
		{[]string{"ctl", "--unit", "3", ipfw, "recv", "--count", "3", "--timeout", "1s"}, exitUnreachable, "hello\n\x00\x01\x02\xff\n", "--timeout 1s ran out"},
		{[]string{"ctl", ipfw, "recv", "extra"}, exitUsage, "", `unexpected argument "extra"`},
	} {
		r := nkectl(t, c.args...)
		if r.code != c.code || r.stdout != c.stdout || !strings.Contains(r.stderr, c.stderr) {
			t.Errorf("nkectl %q: exit %d, stdout %q, stderr %q\nwant exit %d, stdout %q, stderr with %q",
				c.args, r.code, r.stdout, r.stderr, c.code, c.stdout, c.stderr)
		}
	}
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// background runs nkectl on its own goroutine; the returned function
// waits for its result.
func background(ctx context.Context, args ...string) func() result {
	done := make(chan result, 1)
	go func() { done <- nkectlCtx(ctx, strings.NewReader(""), args...) }()
	return func() result {
		select {
		case r := <-done:
			return r
		case <-time.After(10 * time.Second):
			return result{stderr: "nkectl did not return", code: -1}
		}
	}
}

func TestEvents(t *testing.T) {
	runtimeDir(t)
	v := startVM(t, "vm1", nil)
	epoch := v.fake.Epoch
	emit := func() {
		v.fake.Emit(ctlchan.Event{Kind: "link-up", Message: "vtnet0 up", Fields: map[string]string{"ifname": "vtnet0"}})
		v.fake.Emit(ctlchan.Event{Time: epoch.Add(1250 * time.Millisecond), Kind: "fault", NKE: "com.t.fw", Message: "panic in filter", Fields: map[string]string{"hook": "vtnet0 filters", "seq": "7"}})
		v.fake.Emit(ctlchan.Event{Kind: "nke-loaded", NKE: "com.t.fw", Message: "loaded com.t.fw 2.1"})
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"events", "--count", "2"}, lines(
			"2026-12-02T09:00:00.000Z  link-up       -  vtnet0 up  ifname=vtnet0",
			`2026-12-02T09:00:01.250Z  fault         com.t.fw  panic in filter  hook="vtnet0 filters" seq=7`)},
		{[]string{"events", "--count", "1", "--kind", "nke-loaded", "--kind", "nke-unloaded"}, lines(
			"2026-12-02T09:00:00.000Z  nke-loaded    com.t.fw  loaded com.t.fw 2.1")},
		{[]string{"events", "--json", "--count", "2", "--kind", "fault", "--kind", "nke-loaded"}, lines(
			`{"time":"2026-12-02T09:00:01.25Z","kind":"fault","nke":"com.t.fw","message":"panic in filter","fields":{"hook":"vtnet0 filters","seq":"7"}}`,
			`{"time":"2026-12-02T09:00:00Z","kind":"nke-loaded","nke":"com.t.fw","message":"loaded com.t.fw 2.1"}`)},
	} {
		wait := background(context.Background(), c.args...)
		waitFor(t, "the events stream", func() bool { return v.fake.Subscribers() == 1 })
		emit()
		r := wait()
		if d := cmp.Diff(result{stdout: c.want}, r, cmp.AllowUnexported(result{})); d != "" {
			t.Errorf("nkectl %q (-want +got):\n%s", c.args, d)
		}
		waitFor(t, "the stream's end in the guest", func() bool { return v.fake.Subscribers() == 0 })
	}

	// Ctrl-C ends it cleanly.
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan int, 1)
	go func() { done <- exit(runWith(ctx, []string{"events"}, strings.NewReader(""), &out, &out), &out) }()
	waitFor(t, "the events stream", func() bool { return v.fake.Subscribers() == 1 })
	v.fake.Emit(ctlchan.Event{Kind: "link-down", Message: "vtnet0 down"})
	const line = "2026-12-02T09:00:00.000Z  link-down     -  vtnet0 down\n"
	waitFor(t, "the event", func() bool { return out.String() == line })
	cancel()
	if code := <-done; code != 0 || out.String() != line {
		t.Errorf("events, Ctrl-C: exit %d, %q", code, out.String())
	}
	waitFor(t, "the stream's end in the guest", func() bool { return v.fake.Subscribers() == 0 })

	// An explicit --timeout bounds the stream.
	if r := nkectl(t, "events", "--timeout", "100ms"); r.code != exitUnreachable || !strings.Contains(r.stderr, "events: --timeout 100ms ran out") {
		t.Errorf("events --timeout: %+v", r)
	}
}

// The guest going away in the middle of a stream is exit 3.
func TestGuestGoesAway(t *testing.T) {
	runtimeDir(t)
	v := startVM(t, "vm1", nil)
	wait := background(context.Background(), "events")
	waitFor(t, "the events stream", func() bool { return v.fake.Subscribers() == 1 })
	v.stop()
	r := wait()
	if r.code != exitUnreachable || !strings.Contains(r.stderr, "connection to the guest lost") || !strings.Contains(r.stderr, "did the VM stop?") {
		t.Errorf("events, the guest gone: %+v", r)
	}
	// And afterwards nothing is there to connect to.
	if r := nkectl(t, "stat"); r.code != exitUnreachable {
		t.Errorf("stat with the VM gone: %+v", r)
	}
}

func TestCapture(t *testing.T) {
	runtimeDir(t)
	startVM(t, "vm1", nil)
	hook := ctlchantest.Hook

	r := nkectl(t, "capture", "--after", "com.t.fw", "--count", "2", hook)
	want := lines(
		"09:00:00.000000  vtnet0 filters  in  com.t.fw  after: continue  43 bytes  10.0.2.2:12345 > 10.0.2.15:7 UDP",
		"09:00:00.001000  vtnet0 filters  in  com.t.fw  after: continue  43 bytes  10.0.2.2:12345 > 10.0.2.15:7 UDP")
	if d := cmp.Diff(result{stdout: want}, r, cmp.AllowUnexported(result{})); d != "" {
		t.Errorf("capture (-want +got):\n%s", d)
	}
	r = nkectl(t, "capture", hook, "--before", "com.t.fw", "--count", "1", "--json")
	if d := cmp.Diff(result{stdout: `{"time":"2026-12-02T09:00:00Z","hook":"vtnet0 filters","dir":"in","nke":"com.t.fw","point":"before","length":43,"captured":43,"summary":"10.0.2.2:12345 \u003e 10.0.2.15:7 UDP","comment":"vtnet0 filters in com.t.fw before"}` + "\n"}, r, cmp.AllowUnexported(result{})); d != "" {
		t.Errorf("capture --json (-want +got):\n%s", d)
	}

	// To a file, read back with pcapgo.
	file := filepath.Join(t.TempDir(), "in.pcapng")
	r = nkectl(t, "capture", "--after", "com.t.fw", "--count", "3", "-w", file, hook)
	if r.code != 0 || r.stdout != "" || !regexp.MustCompile(`^nkectl: 3 packets \(\d+ bytes of pcapng\) written to .*in.pcapng\n$`).MatchString(r.stderr) {
		t.Errorf("capture -w: %+v", r)
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, want := readPcapng(t, f), []string{
		"vtnet0 filters 0 vtnet0 filters in com.t.fw after: continue",
		"vtnet0 filters 1 vtnet0 filters in com.t.fw after: continue",
		"vtnet0 filters 2 vtnet0 filters in com.t.fw after: continue",
	}; !cmp.Equal(got, want) {
		t.Errorf("the file (-want +got):\n%s", cmp.Diff(want, got))
	}
	r = nkectl(t, "capture", "--count", "3", "-w", file, "--json", hook)
	fi, _ := os.Stat(file)
	if d := cmp.Diff(fmt.Sprintf("{\n  \"file\": %q,\n  \"packets\": 3,\n  \"bytes\": %d\n}\n", file, fi.Size()), r.stdout); d != "" || r.code != 0 {
		t.Errorf("capture -w --json: exit %d (-want +got):\n%s", r.code, d)
	}

	// To stdout.
	r = nkectl(t, "capture", "--count", "2", "-w", "-", hook)
	if got := readPcapng(t, strings.NewReader(r.stdout)); len(got) != 2 || r.code != 0 || r.stderr != "" {
		t.Errorf("capture -w -: exit %d, %q, stderr %q", r.code, got, r.stderr)
	}

	// Until Ctrl-C, the file complete.
	ctx, cancel := context.WithCancel(context.Background())
	wait := background(ctx, "capture", "-w", file, hook)
	waitFor(t, "packets", func() bool { fi, err := os.Stat(file); return err == nil && fi.Size() > 600 })
	cancel()
	if r := wait(); r.code != 0 || !strings.Contains(r.stderr, "packets") {
		t.Errorf("capture, Ctrl-C: %+v", r)
	}
	f2, _ := os.Open(file)
	defer f2.Close()
	if got := readPcapng(t, f2); len(got) < 3 {
		t.Errorf("capture until Ctrl-C: %d packets in the file", len(got))
	}

	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"capture", "nowhere", "--count", "1"}, exitFailed, `no hook "nowhere"`},
		{[]string{"capture", "--before", "a", "--after", "b", hook}, exitUsage, "--before or --after, not both"},
		{[]string{"capture"}, exitUsage, "missing arguments"},
		{[]string{"capture", "-w", filepath.Join(t.TempDir(), "no", "such", "dir"), hook}, exitUsage, "no such file or directory"},
	} {
		if r := nkectl(t, c.args...); r.code != c.code || !strings.Contains(r.stderr, c.want) {
			t.Errorf("nkectl %q: %+v, want exit %d and %q", c.args, r, c.code, c.want)
		}
	}
	// A capture the guest refused leaves no empty file.
	none := filepath.Join(t.TempDir(), "none.pcapng")
	if r := nkectl(t, "capture", "-w", none, "nowhere"); r.code != exitFailed {
		t.Errorf("capture -w at no hook: %+v", r)
	}
	if _, err := os.Stat(none); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("capture -w at no hook left %s: %v", none, err)
	}
}

// readPcapng returns "INTERFACE LASTBYTE COMMENT" for each packet.
func readPcapng(t *testing.T, r io.Reader) []string {
	t.Helper()
	ng, err := pcapgo.NewNgReader(r, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatalf("pcapng: %v", err)
	}
	var got []string
	for {
		data, ci, opts, err := ng.ReadPacketDataWithOptions()
		if err == io.EOF {
			return got
		}
		if err != nil {
			t.Fatalf("pcapng after %d packets: %v", len(got), err)
		}
		intf, _ := ng.Interface(ci.InterfaceIndex)
		got = append(got, fmt.Sprintf("%s %d %s", intf.Name, data[len(data)-1], strings.Join(opts.Comments, ";")))
	}
}

func TestPingVersion(t *testing.T) {
	runtimeDir(t)
	startVM(t, "vm1", nil)
	r := nkectl(t, "ping", "--count", "3", "--size", "100", "--interval", "1ms")
	if !regexp.MustCompile(`^(100 bytes from nke-harness guest \(protocol 1\): seq=\d time=\d+\.\d\dms\n){3}$`).MatchString(r.stdout) || r.code != 0 {
		t.Errorf("ping: %+v", r)
	}
	r = nkectl(t, "ping", "--json")
	var p pingResult
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil || p.Server != "nke-harness guest" || p.Protocol != 1 || p.Bytes != 32 || len(p.RTT) != 1 || p.RTT[0] <= 0 {
		t.Errorf("ping --json: %v, %+v", err, p)
	}
	if r := nkectl(t, "ping", "--count", "0"); r.code != exitUsage {
		t.Errorf("ping --count 0: %+v", r)
	}
	r = nkectl(t, "version")
	if !regexp.MustCompile(`^nkectl \S+, protocol 1\nguest: nke-harness guest, protocol 1\n$`).MatchString(r.stdout) || r.code != 0 {
		t.Errorf("version: %+v", r)
	}
	r = nkectl(t, "version", "--json")
	var vi versionInfo
	if err := json.Unmarshal([]byte(r.stdout), &vi); err != nil || vi.Client.Protocol != 1 || vi.Guest == nil || vi.Guest.Server != "nke-harness guest" {
		t.Errorf("version --json: %v, %s", err, r.stdout)
	}
	// Without a VM: --client works, the rest says so.
	runtimeDir(t)
	if r := nkectl(t, "version", "--client"); r.code != 0 || !strings.HasPrefix(r.stdout, "nkectl ") || strings.Contains(r.stdout, "guest") {
		t.Errorf("version --client without a VM: %+v", r)
	}
	if r := nkectl(t, "version"); r.code != exitUnreachable || !strings.HasPrefix(r.stdout, "nkectl ") {
		t.Errorf("version without a VM: %+v", r)
	}
}

// Finding the socket: none, several, -s, $NKECTL_SOCKET; a dead one.
func TestSocket(t *testing.T) {
	dir := runtimeDir(t)
	r := nkectl(t, "stat")
	if want := "nkectl: no running VM found in " + dir + "; start one with make run, or pass -s PATH\n"; r.code != exitUnreachable || r.stderr != want {
		t.Errorf("no VM: %+v, want exit 3 and %q", r, want)
	}
	v1 := startVM(t, "vm1", nil)
	if r := nkectl(t, "stat"); r.code != 0 {
		t.Errorf("one VM: %+v", r)
	}
	v2 := startVM(t, "vm2", nil)
	r = nkectl(t, "stat")
	if r.code != exitUsage || !strings.Contains(r.stderr, "2 VMs are running") || !strings.Contains(r.stderr, v1.sock) ||
		!strings.Contains(r.stderr, v2.sock) || !strings.Contains(r.stderr, "-s PATH") {
		t.Errorf("two VMs: %+v", r)
	}
	d := t.TempDir()
	b := writeBundle(t, d, "x", "com.t.x", "1.0", nil)
	for _, args := range [][]string{{"-s", v2.sock, "load", b}, {"load", "--socket", v2.sock, b}, {"load", b, "-s=" + v2.sock}} {
		if r := nkectl(t, args...); r.code != 0 && !strings.Contains(r.stderr, "already loaded") {
			t.Errorf("nkectl %q: %+v", args, r)
		}
	}
	if n1, n2 := len(v1.fake.ArchiveSizes()), len(v2.fake.ArchiveSizes()); n1 != 0 || n2 != 1 {
		t.Errorf("loads with -s: %d in vm1, %d in vm2; want 0, 1", n1, n2)
	}
	t.Setenv(ctlchan.EnvSocket, v1.sock)
	if r := nkectl(t, "load", b); r.code != 0 || len(v1.fake.ArchiveSizes()) != 1 {
		t.Errorf("load with $NKECTL_SOCKET: %+v", r)
	}
	t.Setenv(ctlchan.EnvSocket, filepath.Join(d, "gone.sock"))
	r = nkectl(t, "stat")
	if r.code != exitUnreachable || !strings.Contains(r.stderr, "cannot connect to "+filepath.Join(d, "gone.sock")+" ($NKECTL_SOCKET)") {
		t.Errorf("a dead socket: %+v", r)
	}
	if r := nkectl(t, "-s", filepath.Join(d, "gone.sock"), "ping"); r.code != exitUnreachable || !strings.Contains(r.stderr, "is the VM running?") {
		t.Errorf("a dead socket: %+v", r)
	}
}

// slow's Stat answers only when its request is cancelled.
type slow struct {
	*ctlchantest.Fake
	called chan struct{}
}

func (s slow) Stat(ctx context.Context) (ctlchan.Stat, error) {
	select {
	case s.called <- struct{}{}:
	default:
	}
	<-ctx.Done()
	return ctlchan.Stat{}, ctx.Err()
}

func TestTimeout(t *testing.T) {
	runtimeDir(t)
	s := slow{ctlchantest.New(), make(chan struct{}, 1)}
	startVM(t, "vm1", s)
	t0 := time.Now()
	r := nkectl(t, "--timeout", "150ms", "stat")
	if r.code != exitUnreachable || !strings.Contains(r.stderr, "stat: no answer from the guest within 150ms (raise --timeout)") {
		t.Errorf("stat, timed out: %+v", r)
	}
	if d := time.Since(t0); d > 3*time.Second {
		t.Errorf("the timeout took %v", d)
	}
	// Ctrl-C during a request.
	ctx, cancel := context.WithCancel(context.Background())
	<-s.called // the first stat's
	wait := background(ctx, "stat")
	<-s.called
	cancel()
	if r := wait(); r.code != exitFailed || !strings.Contains(r.stderr, "stat: interrupted") {
		t.Errorf("stat, Ctrl-C: %+v", r)
	}
}

func TestHelp(t *testing.T) {
	runtimeDir(t)
	top := nkectl(t, "-h")
	if top.code != 0 || !strings.HasPrefix(top.stdout, "usage: nkectl [global flags] COMMAND") || top.stderr != "" {
		t.Errorf("nkectl -h: %+v", top)
	}
	if r := nkectl(t, "help"); r != top {
		t.Errorf("nkectl help differs from nkectl -h: %+v", r)
	}
	for _, cmd := range commands {
		if !strings.Contains(top.stdout, "\n  "+cmd.name+" ") {
			t.Errorf("nkectl -h does not list %s", cmd.name)
		}
		for _, args := range [][]string{{cmd.name, "-h"}, {cmd.name, "--help"}, {"help", cmd.name}} {
			r := nkectl(t, args...)
			if r.code != 0 || r.stderr != "" || !strings.HasPrefix(r.stdout, "usage: nkectl "+cmd.name+"\n") && !strings.HasPrefix(r.stdout, "usage: nkectl "+cmd.name+" ") {
				t.Errorf("nkectl %q: %+v", args, r)
				continue
			}
			for _, part := range []string{"\nglobal flags:\n", "--json", "-s, --socket PATH", "--timeout D", "\nexample:\n  $ nkectl " + cmd.name} {
				if !strings.Contains(r.stdout, part) {
					t.Errorf("nkectl %q lacks %q:\n%s", args, part, r.stdout)
				}
			}
		}
	}
	r := nkectl(t, "help", "capture")
	for _, part := range []string{"--before ID", "--after ID", "--count N", "-w, --write FILE"} {
		if !strings.Contains(r.stdout, part) {
			t.Errorf("nkectl help capture lacks %q:\n%s", part, r.stdout)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	runtimeDir(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "nkectl: no command given\n"},
		{[]string{"frob"}, `nkectl: unknown command "frob" (nkectl -h lists the commands)` + "\n"},
		{[]string{"--frob", "stat"}, "nkectl: flag provided but not defined: -frob (nkectl -h shows the usage)\n"},
		{[]string{"stat", "--frob"}, "nkectl: stat: flag provided but not defined: -frob (nkectl stat -h shows the usage)\n"},
		{[]string{"events", "--count", "x"}, `invalid value "x" for flag -count`},
		{[]string{"events", "--count", "-1"}, "--count wants 0 or more"},
		{[]string{"load"}, "load: missing arguments: usage: nkectl load [-L DIR]... [-n] PATH.nke"},
		{[]string{"ctl"}, "ctl: missing arguments"},
		{[]string{"help", "frob"}, `help: unknown command "frob"`},
		{[]string{"--timeout", "soon", "stat"}, `invalid value "soon" for flag -timeout`},
	} {
		r := nkectl(t, c.args...)
		if r.code != exitUsage || !strings.Contains(r.stderr, c.want) {
			t.Errorf("nkectl %q: %+v, want exit 2 and %q", c.args, r, c.want)
		}
	}
}

func TestExitCode(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{errors.New("anything"), 1},
		{&ctlchan.RemoteError{Op: "unload", Code: ctlchan.CodeBusy}, 4},
		{fmt.Errorf("wrapped: %w", &ctlchan.RemoteError{Code: ctlchan.CodeBusy}), 4},
		{&ctlchan.RemoteError{Code: ctlchan.CodeNotFound}, 1},
		{&ctlchan.RemoteError{Code: ctlchan.CodeTimeout}, 1}, // the guest's own bounded wait
		{&ctlchan.RemoteError{Code: ctlchan.CodeInvalid}, 1},
		{fmt.Errorf("stat: %w", ctlchan.ErrLost), 3},
		{ctlchan.ErrUpstreamLost, 3},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), 3},
		{usagef("bad"), 2},
		{(&cli{ctx: context.Background()}).requestErr("stat", &ctlchan.RemoteError{Op: "stat", Code: ctlchan.CodeFailed, Message: "the connection to the guest failed: write: broken pipe"}), 3},
		{(&cli{ctx: context.Background()}).requestErr("stat", &ctlchan.RemoteError{Op: "stat", Code: ctlchan.CodeUnreachable, Message: "the connection to the guest failed: write: broken pipe"}), 3},
		{(&cli{ctx: context.Background()}).requestErr("stat", &ctlchan.RemoteError{Op: "stat", Code: ctlchan.CodeFailed, Message: "stat failed"}), 1},
		{unreachable(errors.New("gone")), 3},
		{fmt.Errorf("x: %w", syscall.EBUSY), 4},
	} {
		if got := exitCode(c.err); got != c.want {
			t.Errorf("exitCode(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}

func TestParseInterleaved(t *testing.T) {
	for _, c := range []struct {
		args []string
		pos  []string
		libs []string
	}{
		{[]string{"a", "-L", "x", "b", "-L=y"}, []string{"a", "b"}, []string{"x", "y"}},
		{[]string{"-L", "x", "--", "-L", "-"}, []string{"-L", "-"}, []string{"x"}},
		{[]string{"send", "-"}, []string{"send", "-"}, nil},
	} {
		var libs multiFlag
		fs := newTestFlagSet(&libs)
		pos, err := parseInterleaved(fs, c.args)
		if err != nil || !cmp.Equal(pos, c.pos) || !cmp.Equal([]string(libs), c.libs) {
			t.Errorf("parseInterleaved(%q) = %q, libs %q, %v; want %q, %q", c.args, pos, libs, err, c.pos, c.libs)
		}
	}
}

// A socket that accepts and then says nothing, or hangs up: hello fails,
// exit 3.
func TestHelloFails(t *testing.T) {
	runtimeDir(t)
	d := t.TempDir()
	for _, c := range []struct {
		name  string
		serve func(net.Conn)
		want  string
	}{
		{"silent", func(c net.Conn) { io.Copy(io.Discard, c) }, "no hello from the guest within 200ms: is it still booting? (raise --timeout)"},
		{"hangs up", func(c net.Conn) { c.Close() }, "; is the VM running? start one with make run, or pass -s PATH"},
		{"wrong version", func(c net.Conn) {
			defer c.Close()
			f, _ := ctlchan.NewDecoder(c, 0).Next()
			p, _ := ctlchan.AppendMessage(nil, ctlchan.ErrorBody{Op: "hello", Code: ctlchan.CodeVersion, Message: "the guest speaks protocol version 2"}, nil)
			ctlchan.NewWriter(c).WriteFrame(&ctlchan.Frame{Type: ctlchan.TypeError, Flags: ctlchan.FlagReply, Request: f.Request, Payload: p})
			io.Copy(io.Discard, c)
		}, "the guest refused hello: the guest speaks protocol version 2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			sock := filepath.Join(d, strings.ReplaceAll(c.name, " ", "-")+".sock")
			ln, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				for {
					conn, err := ln.Accept()
					if err != nil {
						return
					}
					go c.serve(conn)
				}
			}()
			timeout := "5s"
			if c.name == "silent" {
				timeout = "200ms"
			}
			r := nkectl(t, "-s", sock, "--timeout", timeout, "stat")
			if r.code != exitUnreachable || !strings.Contains(r.stderr, c.want) || !strings.Contains(r.stderr, sock) {
				t.Errorf("%+v, want exit 3 and %q", r, c.want)
			}
		})
	}
}

// refuser's loader refuses one identifier.
type refuser struct {
	*ctlchantest.Fake
	id string
}

func (r refuser) Load(ctx context.Context, req ctlchan.LoadRequest) (ctlchan.LoadReply, error) {
	m, err := ctlchantest.ReadManifest(req.Archive)
	if err == nil && m.ID == r.id {
		return ctlchan.LoadReply{}, fmt.Errorf("load %s: signature check failed: %w", req.Name, syscall.EPERM)
	}
	return r.Fake.Load(ctx, req)
}

// A load refused part way prints what did load, then the error.
func TestLoadPartWay(t *testing.T) {
	runtimeDir(t)
	startVM(t, "vm1", refuser{ctlchantest.New(), "com.t.mid"})
	tr := newTree(t)
	r := nkectl(t, "load", tr.app, "-L", tr.lib)
	want := result{
		stdout: lines(
			"INDEX  ID          VERSION  STATUS",
			"1      com.t.base  1.0      loaded (dependency)",
			"2      com.t.lib   2.0      loaded (dependency)"),
		stderr: "nkectl: load $DIR/mid.nke (a dependency of com.t.app): load mid.nke: signature check failed: operation not permitted [EPERM]\n",
		code:   exitFailed,
	}
	r.stderr = tr.clean(r.stderr)
	if d := cmp.Diff(want, r, cmp.AllowUnexported(result{})); d != "" {
		t.Errorf("load refused part way (-want +got):\n%s", d)
	}
}

// Interactive ctl: replies print as they come, before stdin ends; Ctrl-C
// ends the session cleanly and disconnects.
func TestCtlInteractiveInterrupt(t *testing.T) {
	runtimeDir(t)
	v := startVM(t, "vm1", nil)
	pr, pw := io.Pipe()
	defer pw.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- exit(runWith(ctx, []string{"ctl", ctlchantest.CtlName}, pr, &out, io.Discard), io.Discard)
	}()
	io.WriteString(pw, "add one\n")
	waitFor(t, "the reply", func() bool { return out.String() == "rule 1: one\n" })
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("interactive ctl, Ctrl-C: exit %d", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("interactive ctl did not end on Ctrl-C")
	}
	waitFor(t, "the disconnect", func() bool { return v.fake.CtlClients() == 0 })
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestDescribePacket(t *testing.T) {
	eth := ctlchantest.CapturePacket(5)
	ts := time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
	ci := gopacket.CaptureInfo{Timestamp: ts, Length: len(eth), CaptureLength: len(eth)}
	for _, c := range []struct {
		name    string
		data    []byte
		intf    pcapgo.NgInterface
		comment string
		want    packet
	}{
		{"after", eth, pcapgo.NgInterface{Name: "vtnet0 filters", LinkType: layers.LinkTypeEthernet}, "vtnet0 filters out com.x.fw after: drop",
			packet{Hook: "vtnet0 filters", Dir: "out", NKE: "com.x.fw", Point: "after", Verdict: "drop", Summary: "10.0.2.2:12345 > 10.0.2.15:7 UDP"}},
		{"raw IP", eth[14:], pcapgo.NgInterface{Name: "ipv4 (IP)", LinkType: layers.LinkTypeRaw}, "ipv4 in com.x.ipf before",
			packet{Hook: "ipv4", Dir: "in", NKE: "com.x.ipf", Point: "before", Summary: "10.0.2.2:12345 > 10.0.2.15:7 UDP"}},
		{"a comment of another shape", []byte{1, 2, 3}, pcapgo.NgInterface{Name: "x", LinkType: layers.LinkTypeEthernet}, "something else",
			packet{Hook: "x", Summary: "DecodeFailure"}},
	} {
		c.want.Time, c.want.Length, c.want.Captured, c.want.Comment = ts, len(eth), len(eth), c.comment
		got := describePacket(c.data, ci, c.intf, c.comment)
		if d := cmp.Diff(c.want, got); d != "" {
			t.Errorf("%s (-want +got):\n%s", c.name, d)
		}
	}
	if got, want := formatPacket(packet{Time: ts, Comment: "something else", Length: 3, Summary: "DecodeFailure"}), "09:00:00.000000  something else  3 bytes  DecodeFailure"; got != want {
		t.Errorf("formatPacket = %q, want %q", got, want)
	}
}

func TestFormatEvent(t *testing.T) {
	ts := time.Date(2026, 12, 2, 9, 0, 0, 5e6, time.FixedZone("CET", 3600))
	got := formatEvent(ctlchan.Event{Time: ts, Kind: "ctl-disconnect", NKE: "com.x", Message: "client gone",
		Fields: map[string]string{"unit": "3", "why": "forced unload", "empty": "", "quote": `a"b`}})
	want := `2026-12-02T08:00:00.005Z  ctl-disconnect  com.x  client gone  empty="" quote="a\"b" unit=3 why="forced unload"`
	if got != want {
		t.Errorf("formatEvent:\n got %s\nwant %s", got, want)
	}
}

// The repository's own bundles: ContentFilter needs TCPLogger, beside it.
func TestRepositoryBundles(t *testing.T) {
	runtimeDir(t)
	v := startVM(t, "vm1", nil)
	dir := filepath.Join("..", "..", "nke", "bundles")
	r := nkectl(t, "load", filepath.Join(dir, "ContentFilter.nke"))
	want := lines(
		"INDEX  ID                         VERSION  STATUS",
		"1      com.example.tcplog         1.0.0    loaded (dependency)",
		"2      com.example.contentfilter  1.0.0    loaded")
	if d := cmp.Diff(result{stdout: want}, r, cmp.AllowUnexported(result{})); d != "" {
		t.Errorf("load ContentFilter.nke (-want +got):\n%s", d)
	}
	// What went is bundle.Pack's archive, which the guest unpacks.
	b, err := bundle.ReadDir(filepath.Join(dir, "TCPLogger.nke"))
	if err != nil {
		t.Fatal(err)
	}
	archive, err := bundle.Pack(b)
	if err != nil {
		t.Fatal(err)
	}
	if got := v.fake.ArchiveSizes(); len(got) != 2 || got[0] != len(archive) {
		t.Errorf("archive sizes %v, want TCPLogger's first, %d bytes", got, len(archive))
	}
	if _, err := bundle.Unpack(archive); err != nil {
		t.Errorf("the archive does not unpack: %v", err)
	}
}

// After --json, errors are JSON too, with the guest's code and the exit
// code.
func TestJSONErrors(t *testing.T) {
	runtimeDir(t)
	startVM(t, "vm1", nil)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--json", "unload", "com.t.none"}, `{"error":"unload com.t.none: unload com.t.none: not loaded (see nkectl stat): no such file or directory [ENOENT]","code":"ENOENT","exit":1}`},
		{[]string{"ping", "--json", "extra"}, `{"error":"ping: unexpected argument \"extra\": usage: nkectl ping [--count N] [--size BYTES] (nkectl ping -h)","exit":2}`},
		{[]string{"--json", "-s", "/nonexistent.sock", "ping"}, `{"error":"cannot connect to /nonexistent.sock (-s): dial unix /nonexistent.sock: connect: no such file or directory; is the VM running? start one with make run, or pass -s PATH","exit":3}`},
	} {
		r := nkectl(t, c.args...)
		if r.stderr != c.want+"\n" || r.stdout != "" {
			t.Errorf("nkectl %q: stdout %q, stderr\n%s\nwant\n%s", c.args, r.stdout, r.stderr, c.want)
		}
	}
}

// run is what main calls: the process's stdin and signals.
func TestRun(t *testing.T) {
	var out, errb strings.Builder
	if err := run([]string{"version", "--client", "--json"}, &out, &errb); err != nil || !strings.Contains(out.String(), `"protocol": 1`) {
		t.Errorf("run version --client --json: %v, %q, %q", err, out.String(), errb.String())
	}
}

// deaf's event stream does not end when cancelled, until released.
type deaf struct {
	*ctlchantest.Fake
	called, release chan struct{}
}

func (d deaf) Events(ctx context.Context, send func(ctlchan.Event) error) error {
	d.called <- struct{}{}
	<-d.release
	return nil
}

// A guest that does not confirm the end of a cancelled stream is hung up
// on: Ctrl-C still ends nkectl, exit 3.
func TestStreamEndNotConfirmed(t *testing.T) {
	runtimeDir(t)
	d := deaf{ctlchantest.New(), make(chan struct{}, 1), make(chan struct{})}
	startVM(t, "vm1", d)
	t.Cleanup(func() { close(d.release) })
	defer func(g time.Duration) { endGrace = g }(endGrace)
	endGrace = 200 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	wait := background(ctx, "events")
	<-d.called
	cancel()
	if r := wait(); r.code != exitUnreachable || !strings.Contains(r.stderr, "the guest did not confirm its end within 200ms") {
		t.Errorf("events, Ctrl-C, a deaf guest: %+v", r)
	}
}
