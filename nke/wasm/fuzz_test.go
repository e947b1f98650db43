package wasm

import (
	"errors"
	"testing"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/nke/wasm/abi"
)

// fakeIP is an IP hook for the argument checks: hInject only queues.
type fakeIP struct{ nke.IPHook }

// FuzzHostArgs calls every host function with arbitrary arguments against
// a memory of arbitrary size: nothing may panic; a call fails with
// ErrHostArg exactly when a region it names is outside the memory (or a
// length over the function's bound); in-range calls return a result code
// of the ABI.
//
// +checklocksignore: the instance is the fuzz target's own.
func FuzzHostArgs(f *testing.F) {
	f.Add(uint8(0), uint32(65536), uint32(0), uint32(100), uint32(16), uint32(0), uint32(0))
	f.Add(uint8(1), uint32(65536), uint32(64), uint32(1), uint32(0), uint32(0), uint32(0))
	f.Add(uint8(3), uint32(4096), uint32(0), uint32(1), uint32(1), uint32(4090), uint32(8))
	f.Add(uint8(4), uint32(4096), uint32(0), uint32(1), uint32(1), uint32(0xffffffff), uint32(2))
	f.Add(uint8(5), uint32(4096), uint32(1), uint32(4000), uint32(96), uint32(0), uint32(0))
	f.Add(uint8(6), uint32(100), uint32(0), uint32(0xfffffff0), uint32(0x20), uint32(0), uint32(0))
	pool, err := mbuf.NewPool(dma.NewHeap(1<<20), "fuzz", 64, 2048, 128)
	if err != nil {
		f.Fatal(err)
	}
	tid, err := mbuf.TagID("com.nke-harness.fuzz")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, fn uint8, size, a, b, c, d, e uint32) {
		size %= 1 << 17
		mem := make([]byte, size)
		for k := range mem {
			mem[k] = byte(k)
		}
		if size > 64 {
			copy(mem, "com.nke-harness.fuzz")
		}
		i := &Instance{name: "fuzz", host: Host{Pool: pool, Control: func(uint32, []byte) error { return nil }}}
		m := pool.AllocPacket(60)
		defer m.Free()
		i.mu.Lock()
		defer i.mu.Unlock()
		i.cur.hasPkts, i.cur.n, i.cur.pk[0] = true, 1, m
		i.cur.b = &Binding{layer: LayerIP, ip: fakeIP{}}
		in := func(ptr, n uint32) bool { return uint64(ptr)+uint64(n) <= uint64(size) }
		var rc int32
		var err error
		wantFail := false
		switch fn % 7 {
		case 0:
			err = i.hLog(mem, a, b, c)
			wantFail = !in(b, c) || c > maxLogLen
		case 1:
			err = i.hCounterAdd(a, uint64(b))
			wantFail = a >= abi.MaxCounters
		case 2:
			rc, err = i.hTagID(mem, a, b)
			wantFail = b <= mbuf.MaxTagNameLen && !in(a, b)
		case 3:
			rc, err = i.hTagPut(mem, a, b%3+uint32(tid)-1, c, d, e)
			wantFail = !in(d, e)
		case 4:
			rc, err = i.hTagGet(mem, a, b%3+uint32(tid)-1, c, d, e)
			wantFail = !in(d, e)
		case 5:
			rc, err = i.hInject(mem, a%3, b, c)
			wantFail = !in(b, c)
		case 6:
			rc, err = i.hCtlSend(mem, a, b, c)
			wantFail = !in(b, c)
		}
		if wantFail != (err != nil) {
			t.Fatalf("fn %d size %d args %d %d %d %d %d: err %v, want failure %v", fn%7, size, a, b, c, d, e, err, wantFail)
		}
		if err != nil && !errors.Is(err, ErrHostArg) {
			t.Fatalf("error %v does not wrap ErrHostArg", err)
		}
		if rc > 0 && fn%7 != 2 && fn%7 != 4 || rc < abi.ErrRefused {
			t.Fatalf("fn %d: result %d outside the ABI's codes", fn%7, rc)
		}
		if m.Tags() > mbuf.TagSlots {
			t.Fatal("tag table overrun")
		}
		i.cur.reset() // frees queued injections
		if pool.InUse() != 1 {
			t.Fatalf("%d buffers in use, want the test packet's 1", pool.InUse())
		}
	})
}

// span is exact at the edges of the 32-bit space.
func TestSpan(t *testing.T) {
	for _, c := range []struct {
		size, ptr, n uint32
		ok           bool
	}{
		{100, 0, 100, true},
		{100, 100, 0, true},
		{100, 101, 0, false},
		{100, 1, 100, false},
		{1<<32 - 1, 1<<32 - 1, 0, true},
		{1<<32 - 1, 1<<32 - 1, 1, false},
		{100, 0xffffffff, 2, false}, // would wrap in 32 bits
	} {
		if _, ok := span(c.size, c.ptr, c.n); ok != c.ok {
			t.Errorf("span(%d, %#x, %d) = %v, want %v", c.size, c.ptr, c.n, ok, c.ok)
		}
	}
}
