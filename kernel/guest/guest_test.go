package guest

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nke-harness/nke/nke/loader"
	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/virtionet"
)

func lookup(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestReadSettings(t *testing.T) {
	def := Settings{Addr: netip.MustParsePrefix("10.0.2.15/24"), Gateway: netip.MustParseAddr("10.0.2.2"), Hugepages: 16}
	cases := []struct {
		name string
		in   map[string]string
		want Settings
		err  string
	}{
		{"defaults", nil, def, ""},
		{"all set", map[string]string{
			"nke.ip": "192.168.7.2/16", "nke.gw": "none", "nke.hugepages": "8", "nke.rxq": "1024", "nke.txq": "512",
			"nke.refuse": "mrg_rxbuf, EVENT_IDX", "nke.pci": "0000:00:04.0", "nke.deep_sleep_us": "250",
			"nke.ring": "split",
		}, Settings{
			Addr: netip.MustParsePrefix("192.168.7.2/16"), Hugepages: 8, RxQueue: 1024, TxQueue: 512,
			Refuse: virtio.Features(0).With(virtionet.FMrgRxbuf).With(virtio.FEventIdx), PCI: "0000:00:04.0",
			DeepSleep: 250 * time.Microsecond, Ring: virtionet.RingSplit,
		}, ""},
		{"bad ring", map[string]string{"nke.ring": "round"}, Settings{}, "nke.ring"},
		{"ctl echo", map[string]string{"nke.ctl": "echo"}, func() Settings { s := def; s.Ctl = CtlEcho; return s }(), ""},
		{"ctl off", map[string]string{"nke.ctl": "off"}, func() Settings { s := def; s.Ctl = CtlOff; return s }(), ""},
		{"ctl auto", map[string]string{"nke.ctl": "auto"}, def, ""},
		{"bad ctl", map[string]string{"nke.ctl": "on"}, Settings{}, "nke.ctl"},
		{"bad ip", map[string]string{"nke.ip": "10.0.2.15"}, Settings{}, "nke.ip"},
		{"v6 gw", map[string]string{"nke.gw": "fe80::1"}, Settings{}, "nke.gw"},
		{"bad number", map[string]string{"nke.rxq": "-1"}, Settings{}, "nke.rxq"},
		{"huge number", map[string]string{"nke.hugepages": "99999"}, Settings{}, "nke.hugepages"},
		{"unknown feature", map[string]string{"nke.refuse": "WARP_DRIVE"}, Settings{}, "WARP_DRIVE"},
		{"NKE twice", map[string]string{"nke.load": "ethlog,ethlog"}, Settings{}, `nke.load: "ethlog": want distinct bundle names`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ReadSettings(lookup(c.in))
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want one naming %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(c.want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
				cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Fatalf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestReadSettingsLoad(t *testing.T) {
	got, err := ReadSettings(lookup(map[string]string{"nke.load": "etherecho,ethlog", "nke.ethlog": "print"}))
	if err != nil {
		t.Fatal(err)
	}
	want := []loader.Pref{{Line: 1, Name: "etherecho"}, {Line: 2, Name: "ethlog", Settings: "print", HasSettings: true}}
	if diff := cmp.Diff(want, got.Load); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// nke.load's names find bundles by built-in name, id and folder.
func TestFindBundle(t *testing.T) {
	for _, name := range []string{"ipfw", "com.example.ipfw", "IPFirewall.nke"} {
		b, err := findBundle(name)
		if err != nil || b.Manifest.ID != "com.example.ipfw" {
			t.Errorf("%s: %v, %v", name, b, err)
		}
	}
	if _, err := findBundle("warp"); err == nil || !strings.Contains(err.Error(), "IPFirewall.nke") {
		t.Errorf("an unknown bundle: %v, want an error listing those there are", err)
	}
}

func TestWriteText(t *testing.T) {
	var b strings.Builder
	writeText(&b, Status{Version: "nke-harness test", NIC: NICStatus{PCI: "0000:00:03.0", Features: []string{"VERSION_1", "MAC"},
		RxQueueSize: 256, TxQueueSize: 256}, Counters: Counters{RxPackets: 7, TxBytes: 99}})
	for _, want := range []string{"nke-harness test", "PCI 0000:00:03.0", "features   VERSION_1 MAC", "rx 256, tx 256", "rx              7", "JSON: /stats"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status text lacks %q:\n%s", want, b.String())
		}
	}
}
