//go:build !amd64

package virtiopci

import "unsafe"

// Portable fallback: each helper is one load or store of the named width
// through an unsafe pointer. go:noinline keeps every call a separate access
// that the compiler cannot merge with a neighbour, drop, or move across
// other calls. Unlike amd64, weakly ordered CPUs would also need a fence
// before a doorbell write; the only other target this builds for is tests.
//
// Safe because callers pass a pointer from window.at: inside the mapping
// (or Go slice) and naturally aligned for the width.

//go:noinline
func mmioLoad8(p unsafe.Pointer) uint8 { return *(*uint8)(p) }

//go:noinline
func mmioLoad16(p unsafe.Pointer) uint16 { return *(*uint16)(p) }

//go:noinline
func mmioLoad32(p unsafe.Pointer) uint32 { return *(*uint32)(p) }

//go:noinline
func mmioStore8(p unsafe.Pointer, v uint8) { *(*uint8)(p) = v }

//go:noinline
func mmioStore16(p unsafe.Pointer, v uint16) { *(*uint16)(p) = v }

//go:noinline
func mmioStore32(p unsafe.Pointer, v uint32) { *(*uint32)(p) = v }
