//go:build amd64

package virtiopci

import "unsafe"

// Implemented in mmio_amd64.s as single MOVB/MOVW/MOVL instructions. Assembly
// functions are never inlined, so the compiler can neither drop, combine nor
// reorder the access across other memory operations. x86 keeps stores in
// order (TSO) and BAR mappings from sysfs are uncached, so no fence is needed
// for ordering against earlier writes to DMA memory.
//
// Callers pass a pointer from window.at: inside the mapping and aligned.

//go:noescape
func mmioLoad8(p unsafe.Pointer) uint8

//go:noescape
func mmioLoad16(p unsafe.Pointer) uint16

//go:noescape
func mmioLoad32(p unsafe.Pointer) uint32

//go:noescape
func mmioStore8(p unsafe.Pointer, v uint8)

//go:noescape
func mmioStore16(p unsafe.Pointer, v uint16)

//go:noescape
func mmioStore32(p unsafe.Pointer, v uint32)
