package virtiopci

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The "resource" file of QEMU 7.2's transitional virtio-net-pci: I/O BAR0
// (legacy), MSI-X in BAR1, modern structures in 64-bit prefetchable BAR4.
const qemuResource = `0x000000000000c000 0x000000000000c01f 0x0000000000040101
0x00000000febf1000 0x00000000febf1fff 0x0000000000040200
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000fe000000 0x00000000fe003fff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
`

func TestParseResources(t *testing.T) {
	bars, err := parseResources([]byte(qemuResource))
	if err != nil {
		t.Fatal(err)
	}
	want := [6]barInfo{
		{0xc000, 0xc01f, 0x40101},
		{0xfebf1000, 0xfebf1fff, 0x40200},
		{}, {},
		{0xfe000000, 0xfe003fff, 0x14220c},
		{},
	}
	if diff := cmp.Diff(want, bars); diff != "" {
		t.Fatalf("bars (-want +got):\n%s", diff)
	}
	for i, w := range []struct {
		size uint64
		mem  bool
		kind string
	}{{0x20, false, "I/O"}, {0x1000, true, "memory"}, {0, false, "unimplemented"}, {0, false, "unimplemented"}, {0x4000, true, "memory"}, {0, false, "unimplemented"}} {
		if b := bars[i]; b.Size() != w.size || b.isMem() != w.mem || b.kind() != w.kind {
			t.Errorf("BAR%d: size %#x mem %v kind %s, want %#x %v %s", i, b.Size(), b.isMem(), b.kind(), w.size, w.mem, w.kind)
		}
	}
}

func TestParseResourcesErrors(t *testing.T) {
	lines := strings.Split(qemuResource, "\n")
	for _, tc := range []struct {
		name, in, errHas string
	}{
		{"short", strings.Join(lines[:4], "\n"), "4 lines"},
		{"fields", strings.Replace(qemuResource, " 0x0000000000040101", "", 1), "want 3 fields"},
		{"not hex", strings.Replace(qemuResource, "0x000000000000c000", "0x00000000000zc000", 1), "not 0x-prefixed hex"},
		{"no prefix", strings.Replace(qemuResource, "0x000000000000c000", "000000000000c000", 1), "not 0x-prefixed hex"},
		{"backwards", strings.Replace(qemuResource, "0x000000000000c01f", "0x000000000000b01f", 1), "before start"},
	} {
		if _, err := parseResources([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.errHas) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.errHas)
		}
	}
}
