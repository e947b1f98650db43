// Package dma hands out memory a device can read and write directly: byte
// slices paired with the address the device uses for them. It is the
// substrate packets live in (nke/mbuf) and rings are laid in (virtio), and
// imports nothing else of the module.
//
// On the guest, memory comes from pinned 2 MiB hugetlbfs pages whose physical
// addresses are read from /proc/self/pagemap (kernel/hugepage, which hands
// its segments to an Arena). In tests it comes from ordinary Go memory with
// made-up addresses (NewHeap), which an in-process device model translates
// back with Heap.Slice.
package dma

import (
	"errors"
	"fmt"
	"sync"
)

// Block is a piece of DMA-able memory: Buf as the CPU sees it and Addr as
// the device sees Buf[0]. A Block is always physically contiguous.
type Block struct {
	Buf  []byte
	Addr uint64
}

// Allocator hands out DMA-able blocks. Blocks live as long as the allocator;
// there is no per-block free: pools built on top recycle them.
type Allocator interface {
	// Alloc returns a zeroed block of size bytes whose address is a
	// multiple of align (a power of two).
	Alloc(size, align int) (Block, error)
}

// ErrNoMemory reports that an allocator has no contiguous room left.
var ErrNoMemory = errors.New("dma: out of memory")

// Segment is one physically contiguous range an Arena carves blocks from.
type Segment struct {
	Mem  []byte
	Addr uint64
}

// Arena is a bump allocator over one or more contiguous segments. A block
// never straddles two segments, because their addresses need not be adjacent.
type Arena struct {
	mu sync.Mutex
	// +checklocks:mu
	segs []Segment
	// +checklocks:mu
	used []int // bytes used in each segment
}

// NewArena returns an arena over segs.
func NewArena(segs []Segment) *Arena {
	return &Arena{segs: segs, used: make([]int, len(segs))}
}

// Alloc implements Allocator.
func (a *Arena) Alloc(size, align int) (Block, error) {
	if size <= 0 || align <= 0 || align&(align-1) != 0 {
		return Block{}, fmt.Errorf("dma: alloc size %d align %d: invalid arguments", size, align)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, s := range a.segs {
		// Align the device address, which is what the device checks.
		start := a.used[i]
		if r := (s.Addr + uint64(start)) & uint64(align-1); r != 0 {
			start += align - int(r)
		}
		if start+size > len(s.Mem) {
			continue
		}
		a.used[i] = start + size
		b := s.Mem[start : start+size : start+size]
		clear(b)
		return Block{Buf: b, Addr: s.Addr + uint64(start)}, nil
	}
	return Block{}, fmt.Errorf("dma: alloc %d bytes: %w", size, ErrNoMemory)
}

// Retire empties the arena: every later Alloc fails with ErrNoMemory. The
// owner of the memory calls it before releasing the segments.
func (a *Arena) Retire() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.segs, a.used = nil, nil
}

// Free reports how many bytes are still unallocated in all segments
// (ignoring alignment losses).
func (a *Arena) Free() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for i, s := range a.segs {
		n += len(s.Mem) - a.used[i]
	}
	return n
}

// Heap is plain Go memory posing as DMA memory, for tests, fuzzing and
// benchmarks against an in-process device model. Addresses start at a
// non-zero base so that a zero address is always a bug.
type Heap struct {
	*Arena
	mem  []byte
	base uint64
}

// HeapBase is the device address of a Heap's first byte.
const HeapBase = 0x1000_0000

// NewHeap returns size bytes of plain memory as one segment.
func NewHeap(size int) *Heap {
	mem := make([]byte, size)
	return &Heap{Arena: NewArena([]Segment{{Mem: mem, Addr: HeapBase}}), mem: mem, base: HeapBase}
}

// Slice translates a device address range back to memory, as a device does
// when it follows a descriptor. It reports false when any byte of
// [addr, addr+n) is outside the heap.
func (h *Heap) Slice(addr uint64, n int) ([]byte, bool) {
	if n < 0 || addr < h.base {
		return nil, false
	}
	off := addr - h.base
	if off > uint64(len(h.mem)) || uint64(n) > uint64(len(h.mem))-off {
		return nil, false
	}
	return h.mem[off : off+uint64(n) : off+uint64(n)], true
}
