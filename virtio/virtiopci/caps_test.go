package virtiopci

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nke-harness/nke/virtio"
)

// loadConfig reads a configuration space dumped from a VM
// (/sys/bus/pci/devices/0000:00:03.0/config) and stored as hex.
func loadConfig(t testing.TB, name string) []byte {
	t.Helper()
	h, err := os.ReadFile("testdata/" + name + ".config.hex")
	if err != nil {
		t.Fatal(err)
	}
	b, err := hex.DecodeString(strings.TrimSpace(string(h)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The QEMU 7.2 virtio-net layout: every structure in BAR4, 4 KiB apart,
// listed last-to-first after the MSI-X capability.
var qemuCaps = []Cap{
	{Pos: 0x84, Type: CfgPCI},
	{Pos: 0x70, Type: CfgNotify, Bar: 4, Offset: 0x3000, Length: 0x1000, NotifyOffMultiplier: 4},
	{Pos: 0x60, Type: CfgDevice, Bar: 4, Offset: 0x2000, Length: 0x1000},
	{Pos: 0x50, Type: CfgISR, Bar: 4, Offset: 0x1000, Length: 0x1000},
	{Pos: 0x40, Type: CfgCommon, Bar: 4, Offset: 0x0000, Length: 0x1000},
}

func TestParseCapsQEMU(t *testing.T) {
	for _, name := range []string{"qemu-7.2-virtio-net-modern", "qemu-7.2-virtio-net-transitional"} {
		cs, err := ParseCaps(loadConfig(t, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if diff := cmp.Diff(&Caps{All: qemuCaps}, cs); diff != "" {
			t.Errorf("%s: caps (-want +got):\n%s", name, diff)
		}
		c, ok := cs.First(CfgCommon, nil)
		if !ok || c.Pos != 0x40 {
			t.Errorf("%s: First(common) = %v, %v", name, c, ok)
		}
	}
}

// cfgSpace builds a configuration space with a capability list.
type cfgSpace []byte

func newCfg() cfgSpace {
	c := make(cfgSpace, 256)
	binary.LittleEndian.PutUint16(c[0:], VendorVirtio)
	binary.LittleEndian.PutUint16(c[2:], DeviceNetModern)
	binary.LittleEndian.PutUint16(c[pciStatus:], pciStatusCapList)
	return c
}

// vcap writes a virtio capability at pos pointing to next.
func (c cfgSpace) vcap(pos, next, clen int, typ CfgType, bar uint8, off, length uint32) cfgSpace {
	c[pos], c[pos+1], c[pos+2], c[pos+3], c[pos+4] = pciCapIDVendor, byte(next), byte(clen), byte(typ), bar
	binary.LittleEndian.PutUint32(c[pos+8:], off)
	binary.LittleEndian.PutUint32(c[pos+12:], length)
	return c
}

func (c cfgSpace) mult(pos int, m uint32) cfgSpace {
	binary.LittleEndian.PutUint32(c[pos+16:], m)
	return c
}

func (c cfgSpace) set(off int, b ...byte) cfgSpace {
	copy(c[off:], b)
	return c
}

// good is a minimal valid list: common 0x40 -> notify 0x50 -> ISR 0x68.
func good() cfgSpace {
	return newCfg().set(pciCapPtr, 0x40).
		vcap(0x40, 0x50, 16, CfgCommon, 0, 0, 0x38).
		vcap(0x50, 0x68, 20, CfgNotify, 0, 0x1000, 0x100).mult(0x50, 4).
		vcap(0x68, 0, 16, CfgISR, 0, 0x2000, 1)
}

var goodCaps = []Cap{
	{Pos: 0x40, Type: CfgCommon, Offset: 0, Length: 0x38},
	{Pos: 0x50, Type: CfgNotify, Offset: 0x1000, Length: 0x100, NotifyOffMultiplier: 4},
	{Pos: 0x68, Type: CfgISR, Offset: 0x2000, Length: 1},
}

func TestParseCaps(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     []byte
		want    *Caps
		wantErr error
		errHas  string
	}{
		{name: "minimal", cfg: good(), want: &Caps{All: goodCaps}},
		{name: "pointer low bits masked", cfg: good().set(pciCapPtr, 0x43), want: &Caps{All: goodCaps}},
		{
			name: "other capabilities are skipped",
			cfg:  good().set(pciCapPtr, 0xa0).set(0xa0, 0x11, 0x40, 3),
			want: &Caps{All: goodCaps},
		},
		{
			name: "reserved cfg_type ignored silently",
			cfg:  good().vcap(0x68, 0x80, 16, CfgISR, 0, 0x2000, 1).vcap(0x80, 0, 16, 8, 0, 0, 0x1000),
			want: &Caps{All: goodCaps},
		},
		{
			name: "reserved BAR ignored, later instance used",
			cfg: good().vcap(0x68, 0x80, 16, CfgISR, 6, 0x2000, 1).
				vcap(0x80, 0, 16, CfgISR, 2, 0x10, 1),
			want: &Caps{
				All:     append(goodCaps[:2:2], Cap{Pos: 0x80, Type: CfgISR, Bar: 2, Offset: 0x10, Length: 1}),
				Ignored: []string{"cap at 0x68: isr names reserved BAR 6"},
			},
		},
		{
			name: "virtio 1.2 common length and device cfg",
			cfg: good().vcap(0x40, 0x50, 16, CfgCommon, 0, 0, 0x3c).
				vcap(0x68, 0x80, 16, CfgISR, 0, 0x2000, 1).vcap(0x80, 0, 16, CfgDevice, 1, 0x100, 0),
			want: &Caps{All: []Cap{
				{Pos: 0x40, Type: CfgCommon, Length: 0x3c}, goodCaps[1], goodCaps[2],
				{Pos: 0x80, Type: CfgDevice, Bar: 1, Offset: 0x100},
			}},
		},
		{
			name: "multiplier 0 is allowed",
			cfg:  good().mult(0x50, 0),
			want: &Caps{All: []Cap{goodCaps[0], {Pos: 0x50, Type: CfgNotify, Offset: 0x1000, Length: 0x100}, goodCaps[2]}},
		},
		{name: "short config space", cfg: good()[:0x3f], wantErr: ErrBadCaps, errHas: "63 bytes"},
		{name: "bridge header", cfg: good().set(pciHeaderType, 0x81), wantErr: ErrBadCaps, errHas: "header type 1"},
		{name: "no capability list", cfg: good().set(pciStatus, 0), wantErr: virtio.ErrNotSupported, errHas: "legacy virtio"},
		{name: "only non-virtio caps", cfg: newCfg().set(pciCapPtr, 0x40).set(0x40, 0x11, 0, 3), wantErr: ErrLegacy},
		{name: "empty list", cfg: newCfg(), wantErr: ErrLegacy},
		{name: "pointer into header", cfg: good().set(0x69, 0x3c), wantErr: ErrBadCaps, errHas: "pointer 0x3c"},
		{name: "pointer past short config", cfg: good()[:0x68], wantErr: ErrBadCaps, errHas: "pointer 0x68"},
		{name: "pointer 0xff is masked to a harmless 0xfc", cfg: good().set(0x69, 0xff), want: &Caps{All: goodCaps}},
		{name: "self loop", cfg: good().set(0x41, 0x40), wantErr: ErrBadCaps, errHas: "loops back to 0x40"},
		{name: "long loop", cfg: good().set(0x69, 0x40), wantErr: ErrBadCaps, errHas: "loops"},
		{name: "cap_len past the end", cfg: good().vcap(0x68, 0, 16, CfgISR, 0, 0, 1).set(0xf0, 0x09, 0, 0x20).set(0x69, 0xf0), wantErr: ErrBadCaps, errHas: "past the end"},
		{name: "vendor cap in last two bytes", cfg: good().set(0x69, 0xfc).set(0xfc, 0x09, 0, 8, 0), wantErr: ErrBadCaps, errHas: "past the end"},
		{name: "missing ISR", cfg: good().set(0x51, 0), wantErr: ErrBadCaps, errHas: "no usable isr capability"},
		{name: "missing all", cfg: newCfg().set(pciCapPtr, 0x40).vcap(0x40, 0, 16, CfgDevice, 0, 0, 8), wantErr: ErrBadCaps, errHas: "no usable common, notify, isr"},
		{name: "cap_len too short", cfg: good().vcap(0x68, 0, 12, CfgISR, 0, 0x2000, 1), wantErr: ErrBadCaps, errHas: "cap_len 12 shorter"},
		{name: "reserved BAR only", cfg: good().vcap(0x40, 0x50, 16, CfgCommon, 7, 0, 0x38), wantErr: ErrBadCaps, errHas: "reserved BAR 7"},
		{name: "bar 0xff", cfg: good().vcap(0x50, 0x68, 20, CfgNotify, 0xff, 0, 2), wantErr: ErrBadCaps, errHas: "reserved BAR 255"},
		{name: "offset+length overflows", cfg: good().vcap(0x40, 0x50, 16, CfgCommon, 0, 0xffff_f000, 0x1001), wantErr: ErrBadCaps, errHas: "overflows 32 bits"},
		{name: "common too short (0x34)", cfg: good().vcap(0x40, 0x50, 16, CfgCommon, 0, 0, 0x34), wantErr: ErrBadCaps, errHas: "common length 0x34 below the 0x38"},
		{name: "common misaligned", cfg: good().vcap(0x40, 0x50, 16, CfgCommon, 0, 2, 0x38), wantErr: ErrBadCaps, errHas: "not 4-byte aligned"},
		{name: "notify without multiplier", cfg: good().vcap(0x50, 0x68, 16, CfgNotify, 0, 0x1000, 2), wantErr: ErrBadCaps, errHas: "no notify_off_multiplier"},
		{name: "notify multiplier odd", cfg: good().mult(0x50, 3), wantErr: ErrBadCaps, errHas: "multiplier 3"},
		{name: "notify multiplier 1", cfg: good().mult(0x50, 1), wantErr: ErrBadCaps, errHas: "multiplier 1"},
		{name: "notify multiplier 6", cfg: good().mult(0x50, 6), wantErr: ErrBadCaps, errHas: "multiplier 6"},
		{name: "notify length 1", cfg: good().vcap(0x50, 0x68, 20, CfgNotify, 0, 0x1000, 1), wantErr: ErrBadCaps, errHas: "notify length 0x1"},
		{name: "notify misaligned", cfg: good().vcap(0x50, 0x68, 20, CfgNotify, 0, 0x1001, 2), wantErr: ErrBadCaps, errHas: "2-byte aligned"},
		{name: "isr empty", cfg: good().vcap(0x68, 0, 16, CfgISR, 0, 0x2000, 0), wantErr: ErrBadCaps, errHas: "isr length 0x0"},
		{
			name:    "pci-cfg too short is ignored, still missing isr",
			cfg:     good().vcap(0x68, 0, 16, CfgPCI, 0, 0, 0),
			wantErr: ErrBadCaps, errHas: "pci-cfg cap_len 16 < 20",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseCaps(tc.cfg)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("err = %v, want %v containing %q", err, tc.wantErr, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("caps (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLegacyErrorIsNotSupported(t *testing.T) {
	_, err := ParseCaps(good().set(pciStatus, 0))
	if !errors.Is(err, ErrLegacy) || !errors.Is(err, virtio.ErrNotSupported) {
		t.Fatalf("err = %v, want ErrLegacy wrapping virtio.ErrNotSupported", err)
	}
	if !strings.Contains(err.Error(), "VIRTIO_F_VERSION_1") {
		t.Errorf("error %q does not name VIRTIO_F_VERSION_1", err)
	}
}

// FuzzParseCaps checks that no input crashes the walk and that whatever it
// accepts satisfies the rules Open and Transport rely on.
func FuzzParseCaps(f *testing.F) {
	f.Add([]byte(good()))
	f.Add([]byte(good()[:0x70]))
	f.Fuzz(func(t *testing.T, cfg []byte) {
		cs, err := ParseCaps(cfg)
		if err != nil {
			if cs != nil {
				t.Fatal("caps returned with an error")
			}
			if !errors.Is(err, ErrBadCaps) && !errors.Is(err, virtio.ErrNotSupported) {
				t.Fatalf("error %v wraps neither ErrBadCaps nor ErrNotSupported", err)
			}
			return
		}
		seen := map[CfgType]bool{}
		for _, c := range cs.All {
			if int(c.Pos) < pciHeaderLen || int(c.Pos)+capLen > len(cfg) || cfg[c.Pos] != pciCapIDVendor {
				t.Fatalf("%v: not a vendor capability inside config space", c)
			}
			seen[c.Type] = true
			if c.Type == CfgPCI {
				continue
			}
			if c.Bar > 5 || uint64(c.Offset)+uint64(c.Length) > 1<<32 {
				t.Fatalf("%v: bad BAR or range accepted", c)
			}
			switch c.Type {
			case CfgCommon:
				if c.Length < commonLen10 || c.Offset%4 != 0 {
					t.Fatalf("%v: short or misaligned common accepted", c)
				}
			case CfgNotify:
				m := c.NotifyOffMultiplier
				if c.Length < 2 || c.Offset%2 != 0 || m == 1 || m&(m-1) != 0 {
					t.Fatalf("%v: bad notify accepted", c)
				}
			case CfgISR:
				if c.Length < 1 {
					t.Fatalf("%v: empty ISR accepted", c)
				}
			}
		}
		if !seen[CfgCommon] || !seen[CfgNotify] || !seen[CfgISR] {
			t.Fatalf("accepted without common, notify and ISR: %v", cs.All)
		}
	})
}
