package hugepage

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nke-harness/nke/nke/dma"

	"github.com/google/go-cmp/cmp"
)

func TestPagemapEntry(t *testing.T) {
	for _, tc := range []struct {
		e       uint64
		present bool
		pfn     uint64
	}{
		{0, false, 0},
		{1<<63 | 0x12345, true, 0x12345},
		{1 << 63, true, 0},                                   // present, PFN hidden (not root)
		{1<<63 | 1<<62 | 5, false, 5},                        // swapped
		{1<<63 | 1<<61 | 1<<56 | 1<<55 | 0x200, true, 0x200}, // flag bits are not PFN bits
		{1<<63 | (1<<55 - 1), true, 1<<55 - 1},
		{0x12345, false, 0x12345},
	} {
		e := pagemapEntry(tc.e)
		if e.present() != tc.present || e.pfn() != tc.pfn {
			t.Errorf("entry %#x: present %v pfn %#x, want %v %#x", tc.e, e.present(), e.pfn(), tc.present, tc.pfn)
		}
	}
}

// seg describes a dma.Segment by position so that cmp compares layouts, not
// bytes.
type seg struct {
	Off, Len int
	Addr     uint64
}

func describe(mem []byte, segs []dma.Segment) []seg {
	var out []seg
	for _, s := range segs {
		out = append(out, seg{int(addrOf(s.Mem) - addrOf(mem)), len(s.Mem), s.Addr})
	}
	return out
}

func TestMergeSegments(t *testing.T) {
	const ps = 2 << 20
	for _, tc := range []struct {
		name string
		phys []uint64
		want []seg
	}{
		{"one page", []uint64{0x4000_0000}, []seg{{0, ps, 0x4000_0000}}},
		{"adjacent", []uint64{0x4000_0000, 0x4020_0000, 0x4040_0000}, []seg{{0, 3 * ps, 0x4000_0000}}},
		{"descending is not adjacent", []uint64{0x4020_0000, 0x4000_0000}, []seg{{0, ps, 0x4020_0000}, {ps, ps, 0x4000_0000}}},
		{
			"gap in the middle",
			[]uint64{0x100_0000, 0x120_0000, 0x800_0000, 0x820_0000, 0x200_0000},
			[]seg{{0, 2 * ps, 0x100_0000}, {2 * ps, 2 * ps, 0x800_0000}, {4 * ps, ps, 0x200_0000}},
		},
		{"none", nil, nil},
	} {
		mem := make([]byte, len(tc.phys)*ps+1)[:len(tc.phys)*ps]
		got := mergeSegments(mem, ps, tc.phys)
		if diff := cmp.Diff(tc.want, describe(mem, got)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
		for _, s := range got {
			if cap(s.Mem) != len(s.Mem) {
				t.Errorf("%s: segment capacity %d exceeds length %d", tc.name, cap(s.Mem), len(s.Mem))
			}
		}
	}
}

func TestVirt2Phys(t *testing.T) {
	const ps = 4096
	mem := make([]byte, 3*ps)
	h := &Memory{mem: mem, pageSize: ps, phys: []uint64{0x10000, 0x11000, 0x90000}}
	for _, tc := range []struct {
		b    []byte
		want uint64
		ok   bool
	}{
		{mem, 0x10000, true},
		{mem[5:], 0x10005, true},
		{mem[ps+17 : ps+18], 0x11011, true},
		{mem[3*ps-1:], 0x90fff, true},
		{mem[3*ps:], 0, false},
		{make([]byte, 8), 0, false},
		{nil, 0, false},
	} {
		got, ok := h.Virt2Phys(tc.b)
		if got != tc.want || ok != tc.ok {
			t.Errorf("Virt2Phys(+%d) = %#x, %v; want %#x, %v", len(mem)-len(tc.b), got, ok, tc.want, tc.ok)
		}
	}
}

func fakePool(t *testing.T, total, free, resv string) {
	t.Helper()
	dir := t.TempDir()
	old := hugepagesSysDir
	hugepagesSysDir = dir
	t.Cleanup(func() { hugepagesSysDir = old })
	p := filepath.Join(dir, "hugepages-2048kB")
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"nr_hugepages": total, "free_hugepages": free, "resv_hugepages": resv} {
		if err := os.WriteFile(filepath.Join(p, name), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReadPool(t *testing.T) {
	fakePool(t, "16", "10", "2")
	c, dir, err := readPool(2 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(poolCounts{Total: 16, Free: 10, Reserved: 2}, c); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	if err := c.fits(8, 2<<20, dir); err != nil {
		t.Errorf("8 of 8 available: %v", err)
	}
	err = c.fits(9, 2<<20, dir)
	if !errors.Is(err, ErrNoMemory) {
		t.Fatalf("err = %v, want ErrNoMemory", err)
	}
	for _, s := range []string{"need 9 pages of 2048 kB, 8 free", "nr_hugepages 16", "2 reserved", "/proc/sys/vm/nr_hugepages", "to at least 17"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q lacks %q", err, s)
		}
	}
	if _, _, err := readPool(1 << 30); err == nil {
		t.Errorf("missing 1 GiB pool: no error")
	}
	for _, bad := range [][3]string{{"x", "1", "0"}, {"4", "-1", "0"}, {"4", "5", "0"}, {"4", "2", "3"}} {
		fakePool(t, bad[0], bad[1], bad[2])
		if _, _, err := readPool(2 << 20); err == nil {
			t.Errorf("counts %v: no error", bad)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	for _, tc := range []struct {
		dir   string
		size  int
		errIs error
	}{
		{t.TempDir(), 1 << 21, ErrNoHugetlbfs},
		{filepath.Join(t.TempDir(), "missing"), 1 << 21, ErrNoHugetlbfs},
		{DefaultDir, 0, nil},
	} {
		_, err := Open(tc.dir, tc.size)
		if err == nil {
			t.Errorf("Open(%s, %d) succeeded", tc.dir, tc.size)
			continue
		}
		if errors.Is(err, ErrNotSupported) {
			t.Skip("no hugepage support on this platform")
		}
		if tc.errIs != nil && !errors.Is(err, tc.errIs) {
			t.Errorf("Open(%s): err = %v, want %v", tc.dir, err, tc.errIs)
		}
		if tc.errIs == ErrNoHugetlbfs && !strings.Contains(err.Error(), "mount -t hugetlbfs") {
			t.Errorf("error %q does not say how to mount hugetlbfs", err)
		}
	}
}

// TestOpenLive runs against a real hugetlbfs when the machine has
// one with free pages and the test runs as root; in the guest every VM test
// depends on it (kernel/guest maps its DMA memory with it).
func TestOpenLive(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for pagemap frame numbers")
	}
	c, dir, err := readPool(2 << 20)
	if err != nil || c.available() < 2 {
		t.Skipf("no free 2 MiB hugepages (%+v, %v)", c, err)
	}
	h, err := Open(DefaultDir, 3<<20)
	if errors.Is(err, ErrNoHugetlbfs) {
		t.Skipf("hugetlbfs not mounted at %s", DefaultDir)
	}
	if err != nil {
		t.Fatalf("%v (pool %s)", err, dir)
	}
	defer h.Close()
	if h.PageSize() != 2<<20 || h.Free() != 4<<20 {
		t.Errorf("page size %d, free %d", h.PageSize(), h.Free())
	}
	for _, s := range h.Segments() {
		if s.Addr == 0 || s.Addr%(2<<20) != 0 {
			t.Errorf("segment at physical %#x", s.Addr)
		}
	}
	b, err := h.Alloc(100, 64)
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := h.Virt2Phys(b.Buf); !ok || p != b.Addr {
		t.Errorf("Virt2Phys = %#x, %v; block at %#x", p, ok, b.Addr)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Alloc(1, 1); !errors.Is(err, dma.ErrNoMemory) {
		t.Errorf("Alloc after Close: %v", err)
	}
}

func TestPhysOrder(t *testing.T) {
	for _, tc := range []struct {
		phys   []uint64
		order  []int
		sorted bool
	}{
		{[]uint64{0x600000, 0x400000, 0x200000}, []int{2, 1, 0}, false},
		{[]uint64{0x200000, 0x400000}, []int{0, 1}, true},
		{[]uint64{0x800000, 0x200000, 0x400000, 0x1000000}, []int{1, 2, 0, 3}, false},
		{nil, []int{}, true},
	} {
		order, sorted := physOrder(tc.phys)
		if diff := cmp.Diff(tc.order, order); diff != "" || sorted != tc.sorted {
			t.Errorf("physOrder(%#x) = %v, %v; want %v, %v", tc.phys, order, sorted, tc.order, tc.sorted)
		}
	}
}
