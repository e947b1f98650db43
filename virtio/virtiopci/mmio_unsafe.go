package virtiopci

import (
	"fmt"
	"unsafe"
)

// registers is a window onto one virtio structure (common, notify, ISR or
// device configuration). Accesses have exactly the given width: QEMU
// decodes common configuration registers by offset and width, and
// spec 4.1.3.1 requires naturally sized, aligned accesses.
//
// The Transport logic talks to this interface so that tests can put a
// fake device behind it; on a real device it is a *window.
type registers interface {
	Len() int
	Read8(off int) uint8
	Read16(off int) uint16
	Read32(off int) uint32
	Write8(off int, v uint8)
	Write16(off int, v uint16)
	Write32(off int, v uint32)
}

// window is a registers over memory: device memory mapped from a BAR, or
// (in tests) ordinary memory. mem is nil after the mapping goes away, so a
// late access panics instead of faulting.
type window struct {
	mem []byte
}

func (w *window) Len() int { return len(w.mem) }

// at returns the address of w.mem[off] after checking that a width-byte
// access there stays inside the window and is naturally aligned. Out of
// range offsets are programming errors (every offset is validated against
// the capability lengths first), hence the panic.
func (w *window) at(off, width int) unsafe.Pointer {
	if off < 0 || off > len(w.mem)-width {
		if w.mem == nil {
			panic("virtiopci: register access after Close")
		}
		panic(fmt.Sprintf("virtiopci: %d-byte register access at %#x outside %#x-byte window", width, off, len(w.mem)))
	}
	// Safe: off+width <= len(w.mem) was just checked, so the pointer and the
	// width bytes after it lie inside the live mapping (or Go slice).
	p := unsafe.Pointer(unsafe.SliceData(w.mem[off:]))
	if uintptr(p)&uintptr(width-1) != 0 {
		panic(fmt.Sprintf("virtiopci: misaligned %d-byte register access at %#x", width, off))
	}
	return p
}

// The accessors hand a checked pointer to mmioLoad*/mmioStore*, which the
// compiler cannot inline, merge or elide (assembly on amd64, go:noinline
// elsewhere): each call is exactly one access of the named width, in
// program order relative to other calls and to memory writes.

func (w *window) Read8(off int) uint8       { return mmioLoad8(w.at(off, 1)) }
func (w *window) Read16(off int) uint16     { return mmioLoad16(w.at(off, 2)) }
func (w *window) Read32(off int) uint32     { return mmioLoad32(w.at(off, 4)) }
func (w *window) Write8(off int, v uint8)   { mmioStore8(w.at(off, 1), v) }
func (w *window) Write16(off int, v uint16) { mmioStore16(w.at(off, 2), v) }
func (w *window) Write32(off int, v uint32) { mmioStore32(w.at(off, 4), v) }
