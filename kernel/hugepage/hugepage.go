package hugepage

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/nke-harness/nke/nke/dma"
)

// Errors from Open. Each message says what to change.
var (
	// ErrNotSupported reports a platform without hugetlbfs and pagemap.
	ErrNotSupported = errors.New("hugepage: hugepage DMA memory needs Linux")
	// ErrNoHugetlbfs reports that the directory is not a hugetlbfs mount.
	ErrNoHugetlbfs = errors.New("hugepage: hugetlbfs not mounted")
	// ErrNoMemory reports that the kernel's hugepage pool is too small.
	ErrNoMemory = errors.New("hugepage: not enough free hugepages")
	// ErrNoPhysAddr reports that /proc/self/pagemap hid physical frame
	// numbers, which it does without CAP_SYS_ADMIN.
	ErrNoPhysAddr = errors.New("hugepage: physical addresses unavailable")
)

// DefaultDir is where PID 1 mounts hugetlbfs (see kernel/initproc).
const DefaultDir = "/dev/hugepages"

// Memory is pinned hugetlbfs memory with known physical addresses,
// carved up by its embedded Arena. Blocks from it are valid until Close.
type Memory struct {
	*dma.Arena
	mem      []byte       // the whole mapping
	unmap    func() error // releases mem
	pageSize int          // hugepage size
	phys     []uint64     // physical address of each hugepage
	segs     []dma.Segment
}

// PageSize is the hugepage size in bytes.
func (h *Memory) PageSize() int { return h.pageSize }

// Segments returns the physically contiguous runs of the mapping, in
// virtual address order.
func (h *Memory) Segments() []dma.Segment { return append([]dma.Segment(nil), h.segs...) }

// Virt2Phys returns the physical (device) address of b[0], which must lie
// inside the mapping; it reports false otherwise. It uses the page table
// read at open time, so it is cheap.
func (h *Memory) Virt2Phys(b []byte) (uint64, bool) {
	if len(b) == 0 || len(h.mem) == 0 {
		return 0, false
	}
	off := addrOf(b) - addrOf(h.mem)
	if addrOf(b) < addrOf(h.mem) || off >= uintptr(len(h.mem)) {
		return 0, false
	}
	return h.phys[off/uintptr(h.pageSize)] + uint64(off%uintptr(h.pageSize)), true
}

// pagemapEntry is one 64-bit entry of /proc/PID/pagemap
// (Documentation/admin-guide/mm/pagemap.rst).
type pagemapEntry uint64

const (
	pagemapPresent = 1 << 63
	pagemapSwapped = 1 << 62
	pagemapPFNMask = 1<<55 - 1 // bits 0-54
)

func (e pagemapEntry) present() bool { return e&pagemapPresent != 0 && e&pagemapSwapped == 0 }

// pfn is the page frame number; 0 when the reader lacks CAP_SYS_ADMIN.
func (e pagemapEntry) pfn() uint64 { return uint64(e) & pagemapPFNMask }

// physOrder returns the page indices sorted by physical address, and
// whether they already were.
func physOrder(phys []uint64) ([]int, bool) {
	order := make([]int, len(phys))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(phys[a], phys[b]) })
	return order, slices.IsSorted(phys)
}

// mergeSegments turns a mapping of hugepages, whose i-th page sits at
// physical address phys[i], into the fewest Segments: consecutive pages
// that are also physically adjacent share one.
func mergeSegments(mem []byte, pageSize int, phys []uint64) []dma.Segment {
	var segs []dma.Segment
	start := 0
	for i := 1; i <= len(phys); i++ {
		if i < len(phys) && phys[i] == phys[i-1]+uint64(pageSize) {
			continue
		}
		lo, hi := start*pageSize, i*pageSize
		segs = append(segs, dma.Segment{Mem: mem[lo:hi:hi], Addr: phys[start]})
		start = i
	}
	return segs
}

// hugepagesSysDir holds the per-size hugepage pool counters.
var hugepagesSysDir = "/sys/kernel/mm/hugepages"

// poolCounts are a hugepage pool's counters.
type poolCounts struct {
	Total, Free, Reserved int
}

// readPool reads the pool counters for pages of pageSize bytes.
func readPool(pageSize int) (poolCounts, string, error) {
	dir := filepath.Join(hugepagesSysDir, fmt.Sprintf("hugepages-%dkB", pageSize>>10))
	var c poolCounts
	for _, f := range []struct {
		name string
		dst  *int
	}{{"nr_hugepages", &c.Total}, {"free_hugepages", &c.Free}, {"resv_hugepages", &c.Reserved}} {
		b, err := os.ReadFile(filepath.Join(dir, f.name))
		if err != nil {
			return c, dir, err
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || n < 0 {
			return c, dir, fmt.Errorf("%s/%s: %q is not a count", dir, f.name, strings.TrimSpace(string(b)))
		}
		*f.dst = n
	}
	if c.Free > c.Total || c.Reserved > c.Free {
		return c, dir, fmt.Errorf("%s: inconsistent counts %+v", dir, c)
	}
	return c, dir, nil
}

// available is how many pages a new mapping can still reserve.
func (c poolCounts) available() int { return c.Free - c.Reserved }

// fits checks that n pages can be reserved, and otherwise says by how much
// nr_hugepages must grow.
func (c poolCounts) fits(n, pageSize int, poolDir string) error {
	if c.available() >= n {
		return nil
	}
	return fmt.Errorf("%w: need %d pages of %d kB, %d free (nr_hugepages %d, %d reserved by others): "+
		"raise /proc/sys/vm/nr_hugepages (or %s/nr_hugepages) to at least %d",
		ErrNoMemory, n, pageSize>>10, c.available(), c.Total, c.Reserved, poolDir, c.Total+n-c.available())
}
