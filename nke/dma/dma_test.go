package dma

import (
	"errors"
	"testing"
)

func TestArenaAlignAndSegments(t *testing.T) {
	a := NewArena([]Segment{
		{Mem: make([]byte, 100), Addr: 0x1003},
		{Mem: make([]byte, 4096), Addr: 0x8000},
	})
	b, err := a.Alloc(10, 16)
	if err != nil {
		t.Fatal(err)
	}
	if b.Addr%16 != 0 || b.Addr != 0x1010 || len(b.Buf) != 10 {
		t.Fatalf("first block at %#x len %d, want 0x1010 len 10", b.Addr, len(b.Buf))
	}
	// Too big for what is left of segment 0: must come from segment 1.
	b, err = a.Alloc(200, 4)
	if err != nil {
		t.Fatal(err)
	}
	if b.Addr != 0x8000 {
		t.Fatalf("block at %#x, want 0x8000", b.Addr)
	}
	if _, err := a.Alloc(5000, 1); !errors.Is(err, ErrNoMemory) {
		t.Fatalf("oversize alloc: got %v, want ErrNoMemory", err)
	}
	for _, bad := range [][2]int{{0, 1}, {1, 3}, {-1, 1}, {1, 0}} {
		if _, err := a.Alloc(bad[0], bad[1]); err == nil {
			t.Errorf("Alloc(%d, %d) succeeded", bad[0], bad[1])
		}
	}
}

func TestArenaZeroes(t *testing.T) {
	mem := make([]byte, 64)
	for i := range mem {
		mem[i] = 0xff
	}
	a := NewArena([]Segment{{Mem: mem, Addr: 0x1000}})
	b, err := a.Alloc(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range b.Buf {
		if c != 0 {
			t.Fatalf("byte %d = %#x, want 0", i, c)
		}
	}
}

func TestHeapSlice(t *testing.T) {
	h := NewHeap(4096)
	b, err := h.Alloc(100, 64)
	if err != nil {
		t.Fatal(err)
	}
	b.Buf[3] = 42
	s, ok := h.Slice(b.Addr+3, 1)
	if !ok || s[0] != 42 {
		t.Fatalf("Slice did not find the block's byte")
	}
	for _, c := range []struct {
		addr uint64
		n    int
	}{
		{0, 1}, {HeapBase - 1, 1}, {HeapBase + 4096, 1}, {HeapBase + 4000, 97},
		{HeapBase, -1}, {^uint64(0), 2}, {HeapBase + 1, int(^uint(0) >> 1)},
	} {
		if _, ok := h.Slice(c.addr, c.n); ok {
			t.Errorf("Slice(%#x, %d) succeeded outside the heap", c.addr, c.n)
		}
	}
	if _, ok := h.Slice(HeapBase+4096, 0); !ok {
		t.Errorf("empty slice at the end should be valid")
	}
}
