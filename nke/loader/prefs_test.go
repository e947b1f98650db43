package loader

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/builtin"
	"github.com/nke-harness/nke/nke/bundle"
	"github.com/nke-harness/nke/nke/bundles"
	"github.com/nke-harness/nke/nke/nketest"
)

func TestParsePrefs(t *testing.T) {
	got, err := ParsePrefs("boot.nkes", []byte("# boot\n\ncom.example.ethlog\n  IPFirewall.nke   block in proto icmp  \r\ncom.example.tcplog\t# not a comment\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Pref{
		{Line: 3, Name: "com.example.ethlog"},
		{Line: 4, Name: "IPFirewall.nke", Settings: "block in proto icmp", HasSettings: true},
		{Line: 5, Name: "com.example.tcplog", Settings: "# not a comment", HasSettings: true},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("-want +got:\n%s", d)
	}
	for _, c := range []struct{ in, want string }{
		{"a b\n\ncom.x\ncom.x\n", "boot.nkes:4: com.x is named on line 3 already"},
		{"\n/etc/x.nke\n", "boot.nkes:2: \"/etc/x.nke\": name a bundle, not a path"},
		{"com.nke-harness.kpi.ip\n", "boot.nkes:1: com.nke-harness.kpi.ip is a KPI"},
		{"com.x set\x01tings\n", "boot.nkes:1: the settings contain a control character"},
		{"\xff\xfe\n", "boot.nkes:1: \"\\xff\\xfe\" is not a bundle id"},
		{strings.Repeat("x", 200) + "\n", "boot.nkes:1: "},
	} {
		if _, err := ParsePrefs("boot.nkes", []byte(c.in)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParsePrefs(%q) = %v, want %q", c.in, err, c.want)
		}
	}
	// Every bad line is reported.
	_, err = ParsePrefs("p", []byte("a/b\nok\nc/d\n"))
	if err == nil || !strings.Contains(err.Error(), "p:1:") || !strings.Contains(err.Error(), "p:3:") {
		t.Errorf("two bad lines: %v", err)
	}
}

// builtinRig is a loader on fakes whose built-ins are nke/builtin's.
func builtinRig(t *testing.T) (*Loader, *nketest.Kernel) {
	k := &nketest.Kernel{IPHook: &nketest.IPHook{}, SocketHook: &nketest.SocketHook{}, Controls: &nketest.Controls{}}
	l, err := New(Config{Kernel: func(string) nke.Kernel { return k }, Builtin: builtin.Lookup, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	return l, k
}

// TestDefaultBoot: the embedded boot.nkes parses and, like the guest's
// default nke.load (none), loads nothing.
func TestDefaultBoot(t *testing.T) {
	prefs, err := ParsePrefs(bundles.BootFile, bundles.Boot())
	if err != nil {
		t.Fatal(err)
	}
	if len(prefs) != 0 {
		t.Errorf("the default boot loads %v; the guest's default loads nothing", prefs)
	}
	l, _ := builtinRig(t)
	if err := l.Boot(ctx, prefs, bundles.Find); err != nil || len(l.Stat()) != 0 {
		t.Errorf("Boot = %v, %d loaded", err, len(l.Stat()))
	}
}

// TestBootReportsEveryFailure loads the example bundles from a
// preference file with mistakes in it.
func TestBootReportsEveryFailure(t *testing.T) {
	prefs, err := ParsePrefs("boot.nkes", []byte(`
com.example.contentfilter
IPFirewall.nke block in proto icmp
Nope.nke
com.example.tcplog
IPFirewallWasm.nke
com.example.ethlog
IPFirewall.nke.bad frobnicate
`))
	if err != nil {
		t.Fatal(err)
	}
	l, k := builtinRig(t)
	err = l.Boot(ctx, prefs, bundles.Find)
	for _, want := range []string{
		"boot line 2: com.example.contentfilter: loader: unresolved dependency: com.example.contentfilter -> com.example.tcplog",
		"boot line 4: Nope.nke: no bundle \"Nope.nke\"",
		"boot line 6: IPFirewallWasm.nke: loader: start failed: com.example.wasmfw is a WebAssembly NKE and this loader has no WebAssembly runtime",
		"boot line 8: IPFirewall.nke.bad: no bundle",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Boot error %v\nwant it to contain %q", err, want)
		}
	}
	var ids []string
	for _, r := range l.Stat() {
		ids = append(ids, r.ID+" "+r.Settings)
	}
	if d := cmp.Diff([]string{"com.example.ipfw block in proto icmp", "com.example.tcplog ", "com.example.ethlog "}, ids); d != "" {
		t.Errorf("loaded -want +got:\n%s", d)
	}
	if len(k.IPHook.(*nketest.IPHook).Attached()) != 2 {
		t.Errorf("ipfw attached %d IP filters, want 2", len(k.IPHook.(*nketest.IPHook).Attached()))
	}
	if err := l.UnloadAll(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestExampleBundles loads every built-in example bundle together on the
// fakes and unloads them again.
func TestExampleBundles(t *testing.T) {
	all, err := bundles.All()
	if err != nil {
		t.Fatal(err)
	}
	var bs []*bundle.Bundle
	for _, b := range all {
		if b.Manifest.Harness.Builtin != "" {
			bs = append(bs, b)
		}
	}
	l, k := builtinRig(t)
	if err := l.LoadSet(ctx, bs); err != nil {
		t.Fatal(err)
	}
	if len(l.Stat()) != len(bs) {
		t.Fatalf("%d loaded of %d", len(l.Stat()), len(bs))
	}
	var b strings.Builder
	l.WriteTable(&b)
	t.Logf("\n%s", b.String())
	if _, err := l.Unload(ctx, "com.example.tcplog", false); !errors.Is(err, ErrInUse) {
		t.Errorf("tcplog unloaded under contentfilter: %v", err)
	}
	if err := l.UnloadAll(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(k.SocketHook.(*nketest.SocketHook).Registered()); n != 0 {
		t.Errorf("%d socket filters left", n)
	}
}
