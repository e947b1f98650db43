//go:build wasip1

package sdk

import "unsafe"

// strPtr and bytesPtr give the linear-memory address of a string's or a
// slice's bytes for a host call. Safe: on wasm a pointer is the address
// in linear memory, Go's collector does not move objects, and the value
// stays alive across the (synchronous) host call because the caller
// still holds s or b; the host reads only len bytes from it.
func strPtr(s string) int32 {
	if len(s) == 0 {
		return 0
	}
	return int32(uintptr(unsafe.Pointer(unsafe.StringData(s))))
}

func bytesPtr(b []byte) int32 {
	if len(b) == 0 {
		return 0
	}
	return int32(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
}
