package virtiopci

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestWindowWidths(t *testing.T) {
	buf := make([]byte, 16)
	w := &window{mem: buf}
	w.Write32(0, 0x04030201)
	w.Write16(4, 0x0605)
	w.Write8(6, 0x07)
	w.Write8(7, 0x08)
	w.Write32(12, 0xddccbbaa)
	// Little-endian, and no access touches a byte outside its width.
	want := []byte{1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0xaa, 0xbb, 0xcc, 0xdd}
	if diff := cmp.Diff(want, buf); diff != "" {
		t.Fatalf("memory (-want +got):\n%s", diff)
	}
	if v := w.Read32(0); v != 0x04030201 {
		t.Errorf("Read32(0) = %#x", v)
	}
	if v := w.Read16(6); v != 0x0807 {
		t.Errorf("Read16(6) = %#x", v)
	}
	if v := w.Read8(13); v != 0xbb {
		t.Errorf("Read8(13) = %#x", v)
	}
	if w.Len() != 16 {
		t.Errorf("Len = %d", w.Len())
	}
}

func TestWindowPanics(t *testing.T) {
	mem := make([]byte, 16) // the allocator aligns 16-byte objects to 16
	for _, tc := range []struct {
		name string
		w    *window
		f    func(*window)
		msg  string
	}{
		{"past end", &window{mem: mem}, func(w *window) { w.Read32(13) }, "outside 0x10-byte window"},
		{"negative", &window{mem: mem}, func(w *window) { w.Write8(-1, 0) }, "outside"},
		{"misaligned 32", &window{mem: mem}, func(w *window) { w.Write32(2, 0) }, "misaligned 4-byte"},
		{"misaligned 16", &window{mem: mem}, func(w *window) { w.Read16(3) }, "misaligned 2-byte"},
		{"after close", &window{}, func(w *window) { w.Write16(0, 1) }, "after Close"},
	} {
		func() {
			defer func() {
				r := recover()
				if s, _ := r.(string); !strings.Contains(s, tc.msg) {
					t.Errorf("%s: panic %v, want %q", tc.name, r, tc.msg)
				}
			}()
			tc.f(tc.w)
		}()
	}
}
