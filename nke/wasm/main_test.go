package wasm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/nke/wasm/wasmtest"
)

// modules are the example and test modules, built once by TestMain.
var (
	modules  map[string][]byte
	buildErr error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "nke-wasm-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	paths, err := wasmtest.Build(dir,
		"github.com/nke-harness/nke/nke/wasm/examples/wasmfw",
		"github.com/nke-harness/nke/nke/wasm/examples/trap",
		"github.com/nke-harness/nke/nke/wasm/examples/loop",
		"github.com/nke-harness/nke/nke/wasm/internal/abuse")
	if err == nil {
		modules = map[string][]byte{}
		for name, p := range paths {
			b, rerr := os.ReadFile(p)
			if rerr != nil {
				err = rerr
				break
			}
			modules[name] = b
		}
	}
	buildErr = err
	if err != nil && !errors.Is(err, wasmtest.ErrNoToolchain) {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// module returns a built module, skipping the test without a toolchain.
func module(tb testing.TB, name string) []byte {
	tb.Helper()
	if buildErr != nil {
		tb.Skipf("skipped: %v", buildErr)
	}
	return modules[name]
}

func compile(tb testing.TB, name string, cfg Config) *Program {
	tb.Helper()
	p, err := Compile(context.Background(), module(tb, name), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close(context.Background()) })
	return p
}

func instantiate(tb testing.TB, p *Program, settings string, h Host) *Instance {
	tb.Helper()
	i, err := p.Instantiate(context.Background(), []byte(settings), h)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { i.Close() })
	return i
}

func testPool(tb testing.TB) *mbuf.Pool {
	tb.Helper()
	p, err := mbuf.NewPool(dma.NewHeap(1<<20), "wasm-test", 256, 2048, 128)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if p.InUse() != 0 {
			tb.Errorf("%d packet buffers leaked", p.InUse())
		}
	})
	return p
}

func packet(tb testing.TB, pool *mbuf.Pool, b []byte) *mbuf.Mbuf {
	tb.Helper()
	m := pool.AllocPacket(len(b))
	if m == nil {
		tb.Fatal("pool empty")
	}
	m.CopyBack(0, b)
	return m
}

// ip4 builds an IPv4 packet: proto, addresses, ports, payload.
func ip4(proto uint8, src, dst [4]byte, sport, dport uint16, payload string) []byte {
	b := make([]byte, 20+8+len(payload))
	b[0], b[8], b[9] = 0x45, 64, proto
	le := len(b)
	b[2], b[3] = byte(le>>8), byte(le)
	copy(b[12:], src[:])
	copy(b[16:], dst[:])
	b[20], b[21], b[22], b[23] = byte(sport>>8), byte(sport), byte(dport>>8), byte(dport)
	copy(b[28:], payload)
	return b
}

// ip6 builds an IPv6 packet with the given next header and ports.
func ip6(proto uint8, src, dst byte, sport, dport uint16) []byte {
	b := make([]byte, 40+8)
	b[0], b[5], b[6], b[7] = 0x60, 8, proto, 64
	b[8], b[9], b[23] = 0xfe, 0x80, src
	b[24], b[25], b[39] = 0xfe, 0x80, dst
	b[40], b[41], b[42], b[43] = byte(sport>>8), byte(sport), byte(dport>>8), byte(dport)
	return b
}

func sprintf(f string, a ...any) string { return fmt.Sprintf(f, a...) }
