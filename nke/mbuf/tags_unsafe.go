package mbuf

import "unsafe"

// storePlain copies *v's bytes into b, and loadPlain copies them back.
//
// Why this is safe: callers pass only types plainType accepted (isPlain:
// numbers and arrays and structs of them; no pointers of any kind, no
// booleans), so the bytes carry no references the garbage collector must
// see and every bit pattern read back is a valid T, even after the tag's
// bytes were changed through TagFind. len(b) is unsafe.Sizeof(*v) as the
// callers check; copying bytes needs no alignment.
func storePlain[T any](b []byte, v *T) {
	copy(b, unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v)))
}

func loadPlain[T any](v *T, b []byte) {
	copy(unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v)), b)
}
