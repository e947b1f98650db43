package main

import (
	"sync/atomic"
	"unsafe"
)

// word32 returns the 32-bit word at b[off:off+4] for atomic access. Safe:
// the caller passes a 4-aligned offset into a block of DMA memory that
// outlives the ring, and Go has no 16-bit atomics, so the {flags, idx}
// pair of a split ring is read and written as one aligned 32-bit word.
func word32(b []byte, off int) *uint32 {
	_ = b[off+3] // bounds check
	p := unsafe.Pointer(&b[off])
	if uintptr(p)%4 != 0 {
		panic("nkeselftest: misaligned ring word")
	}
	return (*uint32)(p)
}

// loadIdx reads the idx half of a ring's {flags, idx} word.
func loadIdx(b []byte) uint16 { return uint16(atomic.LoadUint32(word32(b, 0)) >> 16) }

// storeIdx publishes idx with flags, as one store (XCHG on amd64: a full
// fence, so descriptor and ring writes before it are visible first).
func storeIdx(b []byte, flags, idx uint16) {
	atomic.StoreUint32(word32(b, 0), uint32(idx)<<16|uint32(flags))
}
