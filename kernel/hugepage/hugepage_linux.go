package hugepage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/nke-harness/nke/nke/dma"

	"golang.org/x/sys/unix"
)

// Open maps at least size bytes (rounded up to whole hugepages)
// of pinned memory from the hugetlbfs mounted at dir and learns each
// page's physical address, so that a device can DMA into it.
//
// It creates and at once unlinks a file in dir (the pages go back to the
// pool when the mapping goes, even if the process dies), maps it
// MAP_SHARED|MAP_POPULATE, mlocks and touches every page, then reads the
// page frame numbers from /proc/self/pagemap, which needs root
// (CAP_SYS_ADMIN). Physically adjacent pages are merged into one dma.Segment.
func Open(dir string, size int) (*Memory, error) {
	fail := func(err error) (*Memory, error) {
		return nil, fmt.Errorf("hugepage: open %d bytes of hugepages in %s: %w", size, dir, err)
	}
	if size <= 0 {
		return fail(errors.New("size must be positive"))
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fail(fmt.Errorf("%w: %v (mount one: mount -t hugetlbfs -o pagesize=2M nodev %s)", ErrNoHugetlbfs, err, dir))
	}
	if uint32(st.Type) != unix.HUGETLBFS_MAGIC { // f_type is int32 on 32-bit targets
		return fail(fmt.Errorf("%w: %s is a filesystem of type %#x, not hugetlbfs (mount -t hugetlbfs -o pagesize=2M nodev %s)",
			ErrNoHugetlbfs, dir, st.Type, dir))
	}
	pageSize := int(st.Bsize)
	osPage := os.Getpagesize()
	if pageSize < osPage || pageSize&(pageSize-1) != 0 {
		return fail(fmt.Errorf("hugetlbfs reports page size %d", pageSize))
	}
	if uint64(size) > 1<<46 {
		return fail(errors.New("size too large"))
	}
	n := (size + pageSize - 1) / pageSize
	pool, poolDir, err := readPool(pageSize)
	if err != nil {
		return fail(fmt.Errorf("read hugepage pool: %w", err))
	}
	if err := pool.fits(n, pageSize, poolDir); err != nil {
		return fail(err)
	}

	f, err := os.CreateTemp(dir, "nke-dma-*")
	if err != nil {
		return fail(err)
	}
	defer f.Close() // the mapping keeps the file alive
	if err := os.Remove(f.Name()); err != nil {
		return fail(err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, n*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if errors.Is(err, unix.ENOMEM) {
		return fail(fmt.Errorf("%w: mmap of %d pages of %d kB: %v (another process took them?): raise /proc/sys/vm/nr_hugepages",
			ErrNoMemory, n, pageSize>>10, err))
	}
	if err != nil {
		return fail(fmt.Errorf("mmap: %w", err))
	}
	h := &Memory{mem: mem, unmap: func() error { return unix.Munmap(mem) }, pageSize: pageSize}
	if err := h.pin(osPage); err != nil {
		h.unmap()
		return fail(err)
	}
	if order, sorted := physOrder(h.phys); !sorted {
		// Lay the pages out again in physical order so that adjacent
		// frames merge into larger segments (see remapSorted).
		want := make([]uint64, len(order))
		for k, i := range order {
			want[k] = h.phys[i]
		}
		sortedMem, unmapSorted, err := remapSorted(int(f.Fd()), pageSize, order)
		h.unmap() // the file and the new mapping keep the pages
		if err != nil {
			return fail(err)
		}
		h.mem, h.unmap = sortedMem, unmapSorted
		if err := h.pin(osPage); err != nil {
			h.unmap()
			return fail(err)
		}
		if !slices.Equal(h.phys, want) {
			h.unmap()
			return fail(fmt.Errorf("%w: pages moved while remapping: physical addresses %#x, want %#x", ErrNoPhysAddr, h.phys, want))
		}
	}
	h.segs = mergeSegments(h.mem, pageSize, h.phys)
	h.Arena = dma.NewArena(h.segs)
	return h, nil
}

// pin locks and faults in every page, then records each hugepage's
// physical address from /proc/self/pagemap and checks that the pagemap
// agrees the page is one physically contiguous, aligned run.
func (h *Memory) pin(osPage int) error {
	if err := unix.Mlock(h.mem); err != nil {
		return fmt.Errorf("mlock: %w (needs root or a larger RLIMIT_MEMLOCK)", err)
	}
	// MAP_POPULATE and mlock fault the pages in; a write makes sure each
	// is backed and not a shared zero page.
	for off := 0; off < len(h.mem); off += h.pageSize {
		h.mem[off] = 0
	}
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoPhysAddr, err)
	}
	defer pm.Close()
	// One 8-byte entry per base page of the whole mapping, in one read.
	per := h.pageSize / osPage
	raw := make([]byte, len(h.mem)/osPage*8)
	if _, err := pm.ReadAt(raw, int64(addrOf(h.mem)/uintptr(osPage))*8); err != nil {
		return fmt.Errorf("%w: read /proc/self/pagemap: %v", ErrNoPhysAddr, err)
	}
	h.phys = make([]uint64, len(h.mem)/h.pageSize)
	for i := range h.phys {
		first := pagemapEntry(binary.LittleEndian.Uint64(raw[i*per*8:]))
		if !first.present() {
			return fmt.Errorf("%w: hugepage %d not present in pagemap (entry %#x) after mlock", ErrNoPhysAddr, i, uint64(first))
		}
		if first.pfn() == 0 {
			return fmt.Errorf("%w: /proc/self/pagemap shows page frame 0: reading frame numbers needs root (CAP_SYS_ADMIN)", ErrNoPhysAddr)
		}
		phys := first.pfn() * uint64(osPage)
		if phys%uint64(h.pageSize) != 0 {
			return fmt.Errorf("%w: hugepage %d at physical %#x is not %d-aligned", ErrNoPhysAddr, i, phys, h.pageSize)
		}
		for j := 1; j < per; j++ {
			e := pagemapEntry(binary.LittleEndian.Uint64(raw[(i*per+j)*8:]))
			if !e.present() || e.pfn() != first.pfn()+uint64(j) {
				return fmt.Errorf("%w: hugepage %d is not physically contiguous: base page %d has entry %#x, want frame %#x",
					ErrNoPhysAddr, i, j, uint64(e), first.pfn()+uint64(j))
			}
		}
		h.phys[i] = phys
	}
	return nil
}

// Close unmaps the memory; its pages return to the pool. Every Block
// handed out becomes invalid, so close only after the device is reset
// and nothing uses the blocks. Later Allocs fail with dma.ErrNoMemory.
func (h *Memory) Close() error {
	if h.mem == nil {
		return nil
	}
	h.Arena.Retire()
	err := h.unmap()
	h.mem, h.segs, h.phys = nil, nil, nil
	if err != nil {
		return fmt.Errorf("hugepage: unmap hugepages: %w", err)
	}
	return nil
}
