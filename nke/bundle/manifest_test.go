package bundle

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nke-harness/nke/nke"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestParseManifest(t *testing.T) {
	for _, c := range []struct {
		file string
		want *Manifest
	}{
		{"full.plist", &Manifest{
			ID: "com.example.ipfw", Version: "1.2.3", Compatible: "1.0",
			Libraries: map[string]string{"com.nke-harness.kpi.ip": "1.0", "com.example.tcplog": "1.0b2"},
			Harness: Harness{
				Layer:        LayerIP,
				Attach:       Attach{Families: []nke.IPFamily{nke.IPv4, nke.IPv6}},
				Priority:     -5,
				Before:       []string{"com.example.other"},
				After:        []string{},
				Capabilities: []string{CapDrop, CapObserve},
				Settings:     "block in proto icmp",
				Builtin:      "ipfw",
			},
			File: "full.plist",
		}},
		{"minimal.plist", &Manifest{
			ID: "com.example.min", Version: "1",
			Harness: Harness{Layer: LayerInterface, Capabilities: []string{CapObserve}, WebAssembly: "fw.wasm"},
			File:    "minimal.plist",
		}},
		{"socket.plist", &Manifest{
			ID: "com.example.sock", Version: "2.0fc1",
			Harness: Harness{
				Layer:        LayerSocket,
				Attach:       Attach{Families: []nke.IPFamily{nke.IPv4}, SocketType: nke.SockStream, SocketProtocol: 6, Programmatic: true},
				Capabilities: []string{CapDrop, CapInject, CapObserve},
				Builtin:      "contentfilter",
			},
			File: "socket.plist",
		}},
		{"protocol.plist", &Manifest{
			ID: "com.example.proto", Version: "1.0",
			Harness: Harness{
				Layer:        LayerProtocol,
				Attach:       Attach{Interface: "vt0", Demux: []nke.DemuxDesc{nke.EtherType(0x88b5), {Kind: nke.DemuxSNAP, Data: []byte{0, 0, 0, 8, 0}}}},
				Capabilities: []string{CapInject, CapObserve},
				Builtin:      "etherecho",
			},
			File: "protocol.plist",
		}},
	} {
		got, err := ParseManifest(c.file, readTestdata(t, c.file))
		if err != nil {
			t.Errorf("%s: %v", c.file, err)
			continue
		}
		if d := cmp.Diff(c.want, got); d != "" {
			t.Errorf("%s: -want +got:\n%s", c.file, d)
		}
	}
	m, _ := ParseManifest("full.plist", readTestdata(t, "full.plist"))
	if d := cmp.Diff([]string{"com.example.tcplog"}, m.Depends()); d != "" {
		t.Error(d)
	}
	if d := cmp.Diff([]string{"com.nke-harness.kpi.ip"}, m.KPIs()); d != "" {
		t.Error(d)
	}
	if !m.Harness.Can(CapDrop) || m.Harness.Can(CapModify) || m.Harness.Kind() != "builtin" {
		t.Errorf("Can/Kind wrong: %+v", m.Harness)
	}
	if d := cmp.Diff(nke.Order{Priority: -5, Before: []string{"com.example.other"}, After: []string{}}, m.Harness.Order()); d != "" {
		t.Error(d)
	}
}

// TestManifestErrors breaks full.plist (or minimal.plist) one way at a
// time; each must give a ManifestError naming the file, the key and the
// problem.
func TestManifestErrors(t *testing.T) {
	full := string(readTestdata(t, "full.plist"))
	minimal := string(readTestdata(t, "minimal.plist"))
	for _, c := range []struct {
		name     string
		base     string
		old, new string
		key      string
		problem  string
	}{
		{"no id", full, "<key>CFBundleIdentifier</key>\n\t<string>com.example.ipfw</string>", "", "CFBundleIdentifier", "missing"},
		{"id wrong type", full, "<string>com.example.ipfw</string>", "<integer>3</integer>", "CFBundleIdentifier", "is an integer, want a string"},
		{"id with space", full, "com.example.ipfw<", "com.example ipfw<", "CFBundleIdentifier", "reverse-DNS id"},
		{"id is a kpi", full, "com.example.ipfw<", "com.nke-harness.kpi.x<", "CFBundleIdentifier", "KPIs"},
		{"no version", full, "<key>CFBundleVersion</key>", "<key>CFBundleVersionX</key>", "CFBundleVersion", "missing"},
		{"bad version", full, "<string>1.2.3</string>", "<string>1.2.x</string>", "CFBundleVersion", `version "1.2.x"`},
		{"version too long", full, "<string>1.2.3</string>", "<string>1.2.3.4</string>", "CFBundleVersion", "at most three"},
		{"minor too big", full, "<string>1.2.3</string>", "<string>1.200.3</string>", "CFBundleVersion", "at most 99"},
		{"bad stage", full, "<string>1.2.3</string>", "<string>1.2.3d0</string>", "CFBundleVersion", "1 to 255"},
		{"compatible newer", full, "<string>1.0</string>\n\t<key>OSBundleLibraries", "<string>2.0</string>\n\t<key>OSBundleLibraries", "OSBundleCompatibleVersion", "newer than CFBundleVersion"},
		{"libraries array", full, "<key>OSBundleLibraries</key>\n\t<dict>", "<key>OSBundleLibraries</key>\n\t<array/><key>x</key><dict>", "OSBundleLibraries", "is an array, want a dict"},
		{"library version", full, "<string>1.0b2</string>", "<string>one</string>", "OSBundleLibraries.com.example.tcplog", "version"},
		{"library wrong type", full, "<string>1.0b2</string>", "<true/>", "OSBundleLibraries.com.example.tcplog", "is a boolean"},
		{"self dependency", full, "<key>com.example.tcplog</key>", "<key>com.example.ipfw</key>", "OSBundleLibraries.com.example.ipfw", "depends on itself"},
		{"no harness", full, "<key>NKEHarness</key>", "<key>Harness</key>", "NKEHarness", "missing"},
		{"harness wrong type", minimal, "<key>NKEHarness</key>\n\t<dict>", "<key>NKEHarness</key><string/><key>x</key>\n\t<dict>", "NKEHarness", "is a string, want a dict"},
		{"unknown harness key", full, "<key>Priority</key>", "<key>Priorty</key>", "NKEHarness.Priorty", "unknown key"},
		{"no layer", minimal, "<key>Layer</key><string>interface</string>", "", "NKEHarness.Layer", "missing"},
		{"unknown layer", full, "<string>ip</string>", "<string>link</string>", "NKEHarness.Layer", `"link": want one of raw, interface, protocol, ip, socket`},
		{"priority string", full, "<integer>-5</integer>", "<string>-5</string>", "NKEHarness.Priority", "is a string, want an integer"},
		{"priority range", full, "<integer>-5</integer>", "<integer>99999999</integer>", "NKEHarness.Priority", "out of range"},
		{"before not array", full, "<array><string>com.example.other</string></array>", "<string>com.example.other</string>", "NKEHarness.Before", "want an array of strings"},
		{"before entry", full, "<array><string>com.example.other</string></array>", "<array><integer>1</integer></array>", "NKEHarness.Before[0]", "is an integer"},
		{"no capabilities", minimal, "<key>Capabilities</key><array><string>observe</string></array>", "", "NKEHarness.Capabilities", "missing"},
		{"empty capabilities", minimal, "<array><string>observe</string></array>", "<array/>", "NKEHarness.Capabilities", "empty"},
		{"unknown capability", full, "<string>drop</string>", "<string>rewrite</string>", "NKEHarness.Capabilities[1]", `"rewrite": want one of observe, modify, drop, inject`},
		{"both", full, "<key>Builtin</key>", "<key>WebAssembly</key><string>x.wasm</string><key>Builtin</key>", "NKEHarness.Builtin", "both Builtin and WebAssembly"},
		{"neither", minimal, "<key>WebAssembly</key><string>fw.wasm</string>", "", "NKEHarness.Builtin", "missing: set Builtin"},
		{"empty builtin", full, "<string>ipfw</string>", "<string></string>", "NKEHarness.Builtin", "empty"},
		{"wasm path", minimal, "<string>fw.wasm</string>", "<string>../fw.wasm</string>", "NKEHarness.WebAssembly", "no folders"},
		{"wasm socket", minimal, "<string>interface</string>", "<string>socket</string>", "NKEHarness.Layer", "WebAssembly NKEs attach at raw, interface or ip"},
		{"attach key of other layer", full, "<key>Families</key>", "<key>EtherType</key><integer>2048</integer><key>Families</key>", "NKEHarness.Attach.EtherType", "not a key of a ip NKE's Attach"},
		{"bad family", full, "<string>inet6</string>", "<string>inet7</string>", "NKEHarness.Attach.Families[1]", "want inet or inet6"},
		{"family twice", full, "<string>inet6</string>", "<string>inet</string>", "NKEHarness.Attach.Families[1]", "named twice"},
		{"attach not dict", minimal, "<key>WebAssembly</key>", "<key>Attach</key><true/><key>WebAssembly</key>", "NKEHarness.Attach", "is a boolean, want a dict"},
		{"ethertype small", minimal, "<key>WebAssembly</key>", "<key>Attach</key><dict><key>EtherType</key><integer>100</integer></dict><key>WebAssembly</key>", "NKEHarness.Attach.EtherType", "not an EtherType"},
		{"not xml", "bplist00", "", "", "", "not an XML property list"},
		{"broken xml", "<?xml version=\"1.0\"?><plist><dict><key>a</key>", "", "", "", "not a valid XML property list"},
		{"top array", "<plist version=\"1.0\"><array/></plist>", "", "", "", "the top level is an array, want a dict"},
	} {
		data := c.base
		if c.old != "" {
			if !strings.Contains(data, c.old) {
				t.Errorf("%s: the test's old text is not in the base", c.name)
				continue
			}
			data = strings.Replace(data, c.old, c.new, 1)
		}
		_, err := ParseManifest("X.nke/Contents/Info.plist", []byte(data))
		var me *ManifestError
		if !errors.As(err, &me) {
			t.Errorf("%s: err = %v, want a *ManifestError", c.name, err)
			continue
		}
		if me.File != "X.nke/Contents/Info.plist" || me.Key != c.key || !strings.Contains(me.Problem, c.problem) {
			t.Errorf("%s: got %#v, want key %q and a problem containing %q", c.name, me, c.key, c.problem)
		}
		if s := err.Error(); strings.Contains(s, "\n") || !strings.HasPrefix(s, "X.nke/Contents/Info.plist: ") || !strings.Contains(s, c.key) {
			t.Errorf("%s: Error() = %q: want one line naming file and key", c.name, s)
		}
	}
}

func TestCompareVersions(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"1.0", "1.0.0", 0},
		{"1", "1.0.0", 0},
		{"1.0.1", "1.0", 1},
		{"1.9", "1.10", -1},
		{"2.0", "10.0", -1},
		{"1.0d1", "1.0a1", -1},
		{"1.0a1", "1.0b1", -1},
		{"1.0b1", "1.0fc1", -1},
		{"1.0fc1", "1.0", -1},
		{"1.0b2", "1.0b10", -1},
		{"1.0.0b255", "1.0.0", -1},
		{"9999.99.99", "9999.99.98", 1},
	} {
		got, err := CompareVersions(c.a, c.b)
		if err != nil || got != c.want {
			t.Errorf("CompareVersions(%q, %q) = %d, %v, want %d", c.a, c.b, got, err, c.want)
		}
		if rev, _ := CompareVersions(c.b, c.a); rev != -c.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", c.b, c.a, rev, -c.want)
		}
	}
	for _, bad := range []string{"", "1.", ".1", "1..2", "a", "1.0e1", "1.0d", "1.0d256", "1.0d+1", "10000", "1.100", "1.2.3.4", "-1", "1.0 ", "1.0fc", "1.0b1a1"} {
		if _, err := CompareVersions(bad, "1.0"); err == nil {
			t.Errorf("CompareVersions(%q) accepted", bad)
		}
	}
}

func TestSatisfies(t *testing.T) {
	for _, c := range []struct {
		have, compat, want string
		ok                 bool
	}{
		{"1.2", "1.0", "1.1", true},
		{"1.2", "1.0", "1.0", true},
		{"1.2", "1.0", "1.2", true},
		{"1.2", "1.0", "1.3", false},    // too old
		{"2.0", "2.0", "1.5", false},    // broke compatibility
		{"1.2", "", "1.2", false},       // not a library
		{"1.2", "1.0", "x", false},      // malformed
		{"1.0", "1.0b1", "1.0b2", true}, // stages
	} {
		if got := Satisfies(c.have, c.compat, c.want); got != c.ok {
			t.Errorf("Satisfies(%q, %q, %q) = %v", c.have, c.compat, c.want, got)
		}
	}
}

func TestMarshalManifest(t *testing.T) {
	for _, f := range []string{"full.plist", "minimal.plist", "socket.plist", "protocol.plist"} {
		m, err := ParseManifest(f, readTestdata(t, f))
		if err != nil {
			t.Fatal(err)
		}
		data, err := MarshalManifest(m)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseManifest(f, data)
		if err != nil {
			t.Fatalf("%s: %v\n%s", f, err, data)
		}
		if d := cmp.Diff(m, back); d != "" {
			t.Errorf("%s: round trip -want +got:\n%s", f, d)
		}
	}
}
