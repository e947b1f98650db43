//go:build linux

package hugepage

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// remapSorted maps the pages of the hugetlbfs file fd a second time, into
// one fresh virtual range in ascending physical order: page order[k] (at
// file offset order[k]*pageSize) goes to slot k. The kernel hands out
// hugepages in descending physical order, so without this physically
// adjacent pages are never virtually adjacent and every dma.Segment is one
// page. It returns the new mapping and how to unmap it.
func remapSorted(fd, pageSize int, order []int) ([]byte, func() error, error) {
	ps := uintptr(pageSize)
	total := uintptr(len(order)) * ps
	// Reserve one extra page of address space so that a hugepage-aligned
	// start exists inside it: MAP_FIXED hugetlb mappings must be aligned.
	res, err := unix.MmapPtr(-1, 0, nil, total+ps, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, nil, fmt.Errorf("reserve %d bytes of address space: %w", total+ps, err)
	}
	pad := (ps - uintptr(res)%ps) % ps
	// Safe: pad < ps, so start and everything up to start+total lie inside
	// the reservation just made; none of it is Go heap memory.
	start := unsafe.Add(res, pad)
	for k, i := range order {
		// Safe: slot k is inside [start, start+total), see above. MAP_FIXED
		// replaces only our own PROT_NONE reservation there.
		slot := unsafe.Add(start, uintptr(k)*ps)
		got, err := unix.MmapPtr(fd, int64(i)*int64(ps), slot, ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_FIXED|unix.MAP_POPULATE)
		if err != nil || got != slot {
			unix.MunmapPtr(res, total+ps)
			return nil, nil, fmt.Errorf("map hugepage %d at slot %d: %v", i, k, err)
		}
	}
	// Give back the unaligned head and tail of the reservation.
	if pad > 0 {
		unix.MunmapPtr(res, pad)
	}
	if tail := ps - pad; tail > 0 {
		unix.MunmapPtr(unsafe.Add(start, total), tail)
	}
	// Safe: [start, start+total) is now one live shared mapping of the
	// file that stays until unmap runs; the GC never moves or frees it.
	mem := unsafe.Slice((*byte)(start), total)
	return mem, func() error { return unix.MunmapPtr(start, total) }, nil
}
