package hugepage

import "unsafe"

// addrOf returns the virtual address of b[0] (b must be non-empty). Safe:
// the pointer is only turned into a number, never back into a pointer; the
// memory it names is an mmap that the GC never moves.
func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }
