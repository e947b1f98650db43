package wasm

import (
	"context"
	"testing"
	"time"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/examples/ipfw"
	"github.com/nke-harness/nke/nke/mbuf"
)

const benchRules = "block in proto tcp to port 23; block in proto udp to any port 7000-7010; block in from 192.0.2.0/24; pass in proto tcp from fe80::/10; block in proto tcp from 10.9.0.0/16 to any port 9999"

// burst32 is 32 IPv4 TCP packets of 1500 bytes, 1 in 8 to port 23.
func burst32(tb testing.TB, pool *mbuf.Pool) ([]*mbuf.Mbuf, []int, []uint8) {
	ms := make([]*mbuf.Mbuf, 32)
	offs := make([]int, 32)
	protos := make([]uint8, 32)
	for k := range ms {
		port := uint16(80)
		if k%8 == 0 {
			port = 23
		}
		b := ip4(6, [4]byte{10, 0, 2, 2}, [4]byte{10, 0, 2, 15}, 40000, port, string(make([]byte, 1500-28)))
		ms[k], offs[k], protos[k] = packet(tb, pool, b), 20, 6
	}
	return ms, offs, protos
}

func firewalls(tb testing.TB, unguarded bool) (native, wasm nke.IPInputBurstFilter) {
	rules, err := ipfw.Parse(benchRules)
	if err != nil {
		tb.Fatal(err)
	}
	native = ipfw.New(rules).BurstSpecs("n")[0].Filter.(nke.IPInputBurstFilter)
	// A generous budget: a benchmark on a loaded machine is no runaway.
	p := compile(tb, "wasmfw", Config{Budget: 5 * time.Second, Unguarded: unguarded})
	inst := instantiate(tb, p, benchRules, Host{})
	wasm = inst.Bind(LayerIP, nke.IPv4, true).Filter().(nke.IPInputBurstFilter)
	return native, wasm
}

// The wasm firewall's burst allocates only what wazero's termination
// support does per call (CloseModuleOnCanceledOrTimeout starts a watcher
// goroutine: its channel, closure and deferred cancel, and the goroutine
// itself when the runtime has no exited one to reuse, which depends on
// whether the previous call's watcher has been scheduled yet). Our side
// adds nothing: without termination checks the burst allocates nothing.
func TestBurstAllocs(t *testing.T) {
	pool := testPool(t)
	native, wasm := firewalls(t, false)
	_, unguarded := firewalls(t, true)
	ms, offs, protos := burst32(t, pool)
	defer mbuf.FreeBatch(ms)
	v := make([]nke.Verdict, 32)
	if n := testing.AllocsPerRun(200, func() { native.FilterIPInputBurst(ms, offs, protos, v) }); n != 0 {
		t.Errorf("native: %v allocations per burst", n)
	}
	if n := testing.AllocsPerRun(200, func() { unguarded.FilterIPInputBurst(ms, offs, protos, v) }); n != 0 {
		t.Errorf("wasm without termination checks: %v allocations per burst, want 0 (the host side allocates)", n)
	}
	n := testing.AllocsPerRun(200, func() { wasm.FilterIPInputBurst(ms, offs, protos, v) })
	t.Logf("wasm: %v allocations per burst of 32", n)
	if n > wazeroCallAllocs+1 {
		t.Errorf("wasm: %v allocations per burst, want at most %d (wazero's watcher per call, and its goroutine)", n, wazeroCallAllocs+1)
	}
	for k, x := range v {
		if want := nke.Continue; k%8 == 0 && x != nke.Drop || k%8 != 0 && x != want {
			t.Fatalf("packet %d: %v", k, x)
		}
	}
}

// wazeroCallAllocs is what one wazero call with CloseOnContextDone
// allocates when a finished goroutine can be reused (measured with
// v1.12.0: the watcher's channel, its goroutine closure and the deferred
// cancel).
const wazeroCallAllocs = 3

func BenchmarkFirewallBurst32(b *testing.B) {
	pool := testPool(b)
	native, wasm := firewalls(b, false)
	_, unguarded := firewalls(b, true)
	ms, offs, protos := burst32(b, pool)
	defer mbuf.FreeBatch(ms)
	v := make([]nke.Verdict, 32)
	for _, c := range []struct {
		name string
		f    nke.IPInputBurstFilter
	}{{"native", native}, {"wasm", wasm}, {"wasm-unguarded", unguarded}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c.f.FilterIPInputBurst(ms, offs, protos, v)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/32, "ns/pkt")
		})
	}
}

func BenchmarkCompile(b *testing.B) {
	code := module(b, "wasmfw")
	b.ReportAllocs()
	for b.Loop() {
		p, err := Compile(context.Background(), code, Config{})
		if err != nil {
			b.Fatal(err)
		}
		p.Close(context.Background())
	}
}

// A module doing nothing: the cost of the ABI itself (copy, call,
// descriptors, verdicts).
func BenchmarkEmptyBurst32(b *testing.B) {
	pool := testPool(b)
	ms, offs, protos := burst32(b, pool)
	defer mbuf.FreeBatch(ms)
	v := make([]nke.Verdict, 32)
	for _, unguarded := range []bool{false, true} {
		p := compile(b, "trap", Config{Budget: 5 * time.Second, Unguarded: unguarded})
		f := instantiate(b, p, "2000000000", Host{}).Bind(LayerIP, nke.IPv4, true).Filter().(nke.IPInputBurstFilter)
		name := "guarded"
		if unguarded {
			name = "unguarded"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				f.FilterIPInputBurst(ms, offs, protos, v)
			}
		})
	}
}

func BenchmarkInstantiate(b *testing.B) {
	p := compile(b, "wasmfw", Config{})
	b.ReportAllocs()
	for b.Loop() {
		i, err := p.Instantiate(context.Background(), []byte(benchRules), Host{})
		if err != nil {
			b.Fatal(err)
		}
		i.Close()
	}
}
