package wasmbundle

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/builtin"
	"github.com/nke-harness/nke/nke/bundle"
	"github.com/nke-harness/nke/nke/bundles"
	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/loader"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/nke/nketest"
	"github.com/nke-harness/nke/nke/wasm"
	"github.com/nke-harness/nke/nke/wasm/wasmtest"
)

var ctx = context.Background()

// wasmfw returns the IPFirewallWasm bundle with its module built, or
// skips without a toolchain.
func wasmfw(t *testing.T) *bundle.Bundle {
	b, err := bundles.Find("IPFirewallWasm.nke")
	if err != nil {
		t.Fatal(err)
	}
	paths, err := wasmtest.Build(t.TempDir(), "github.com/nke-harness/nke/nke/wasm/examples/wasmfw")
	if errors.Is(err, wasmtest.ErrNoToolchain) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	code, err := os.ReadFile(paths["wasmfw"])
	if err != nil {
		t.Fatal(err)
	}
	b.Files[bundle.WebAssemblyDir+"/wasmfw.wasm"] = code
	return b
}

func ip4(dport uint16) []byte {
	b := make([]byte, 28)
	b[0], b[8], b[9] = 0x45, 64, 6
	b[3] = 28
	copy(b[12:], []byte{10, 0, 2, 2})
	copy(b[16:], []byte{10, 0, 2, 15})
	b[20], b[21], b[22], b[23] = 0x0f, 0xa0, byte(dport>>8), byte(dport)
	return b
}

func TestWasmBundle(t *testing.T) {
	b := wasmfw(t)
	ip := &nketest.IPHook{}
	ctls := &nketest.Controls{}
	k := &nketest.Kernel{IPHook: ip, Controls: ctls}
	var clients []*nketest.ControlClient
	l, err := loader.New(loader.Config{
		Kernel:         func(string) nke.Kernel { return k },
		Builtin:        builtin.Lookup,
		WebAssembly:    Loader(wasm.Config{}),
		ControlClients: func(string) []string { return make([]string, len(clients)) },
		Logf:           t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Load(ctx, b, loader.Options{Settings: "block in proto tcp to port 23", OverrideSettings: true}); err != nil {
		t.Fatal(err)
	}
	pool, err := mbuf.NewPool(dma.NewHeap(1<<20), "wasmbundle-test", 64, 2048, 128)
	if err != nil {
		t.Fatal(err)
	}
	run := func(port uint16) nke.Verdict {
		m := pool.AllocPacket(28)
		m.CopyBack(0, ip4(port))
		defer m.Free()
		for _, s := range ip.Attached() {
			if s.Family != nke.IPv4 {
				continue
			}
			f := s.Filter.(nke.IPInputBurstFilter)
			v := []nke.Verdict{nke.Continue}
			f.FilterIPInputBurst([]*mbuf.Mbuf{m}, []int{20}, []uint8{6}, v)
			return v[0]
		}
		t.Fatal("no IPv4 filter attached")
		return 0
	}
	if v23, v80 := run(23), run(80); v23 != nke.Drop || v80 != nke.Continue {
		t.Errorf("port 23: %v, port 80: %v; want drop, continue", v23, v80)
	}
	c, err := ctls.Connect("com.example.wasmfw")
	if err != nil {
		t.Fatal(err)
	}
	clients = append(clients, c)
	if err := c.Send("stats"); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.Recv(), ""); !strings.Contains(got, "1 hits: block in proto tcp to port 23") {
		t.Errorf("stats reply %q", got)
	}
	// The native twin's commands, by the same code.
	if err := c.Send("add drop tcp dport 80"); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.Recv(), ""); got != "ok 2: block proto tcp to port 80" {
		t.Errorf("add reply %q", got)
	}
	if v := run(80); v != nke.Drop {
		t.Errorf("port 80 after add: %v, want drop", v)
	}
	if _, err := l.Unload(ctx, "com.example.wasmfw", false); !errors.Is(err, nke.ErrBusy) {
		t.Errorf("unload with a client: %v", err)
	}
	c.Close()
	clients = nil
	if _, err := l.Unload(ctx, "com.example.wasmfw", false); err != nil {
		t.Fatal(err)
	}
	if len(ip.Attached()) != 0 || ctls.Registered("com.example.wasmfw") {
		t.Error("left attached or registered")
	}

	// Observe-only, its drops are refused and counted.
	obs := *b.Manifest
	obs.Harness.Capabilities = []string{bundle.CapObserve}
	b2 := &bundle.Bundle{Name: b.Name, Manifest: &obs, Files: b.Files}
	if err := l.Load(ctx, b2, loader.Options{Settings: "block in proto tcp to port 23", OverrideSettings: true}); err != nil {
		t.Fatal(err)
	}
	if v := run(23); v != nke.Continue {
		t.Errorf("observe-only wasm firewall: verdict %v", v)
	}
	if rows := l.Stat(); len(rows) != 1 || rows[0].Refused != 1 || rows[0].Kind != "wasm" {
		t.Errorf("Stat %+v", rows)
	}
	if err := l.UnloadAll(ctx); err != nil {
		t.Fatal(err)
	}
	if pool.InUse() != 0 {
		t.Errorf("%d buffers leaked", pool.InUse())
	}
}

func TestWasmBundleWithoutModule(t *testing.T) {
	b, err := bundles.Find("IPFirewallWasm.nke")
	if err != nil {
		t.Fatal(err)
	}
	delete(b.Files, bundle.WebAssemblyDir+"/wasmfw.wasm")
	l, err := loader.New(loader.Config{Kernel: func(string) nke.Kernel { return &nketest.Kernel{} }, WebAssembly: Loader(wasm.Config{})})
	if err != nil {
		t.Fatal(err)
	}
	err = l.Load(ctx, b, loader.Options{})
	if !errors.Is(err, bundle.ErrNoWebAssembly) || !strings.Contains(err.Error(), "make wasm") {
		t.Errorf("Load without the module: %v", err)
	}
}

func TestSpec(t *testing.T) {
	m := &bundle.Manifest{ID: "com.x", File: "X.nke/Contents/Info.plist", Harness: bundle.Harness{Layer: bundle.LayerSocket}}
	if _, err := Spec(m); err == nil || !strings.Contains(err.Error(), "raw, interface or ip") {
		t.Errorf("socket layer: %v", err)
	}
	m.Harness.Layer = bundle.LayerInterface
	m.Harness.Attach = bundle.Attach{Interface: "vt0", EtherType: 0x0800}
	s, err := Spec(m)
	if err != nil || s.Layer != wasm.LayerInterface || s.Interface != "vt0" || s.Protocol != 0x0800 {
		t.Errorf("Spec = %+v, %v", s, err)
	}
}

// A module that traps is reported to LoaderWithFaults' callback with its
// bundle's id once its filters are detached; the callback can unload it.
func TestFaultReported(t *testing.T) {
	fw, err := bundles.Find("IPFirewallWasm.nke")
	if err != nil {
		t.Fatal(err)
	}
	paths, err := wasmtest.Build(t.TempDir(), "github.com/nke-harness/nke/nke/wasm/examples/trap")
	if errors.Is(err, wasmtest.ErrNoToolchain) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	code, err := os.ReadFile(paths["trap"])
	if err != nil {
		t.Fatal(err)
	}
	m := *fw.Manifest
	m.ID, m.Harness.WebAssembly = "com.example.trap", "trap.wasm"
	b := &bundle.Bundle{Name: "Trap.nke", Manifest: &m, Files: map[string][]byte{bundle.WebAssemblyDir + "/trap.wasm": code}}
	ip := &nketest.IPHook{}
	k := &nketest.Kernel{IPHook: ip, Controls: &nketest.Controls{}}
	faults := make(chan string, 1)
	var l *loader.Loader
	l, err = loader.New(loader.Config{
		Kernel:  func(string) nke.Kernel { return k },
		Builtin: builtin.Lookup,
		WebAssembly: LoaderWithFaults(wasm.Config{}, func(id string, f *wasm.Fault) {
			if f.Kind != wasm.FaultTrap {
				t.Errorf("fault %v, want a trap", f)
			}
			go func() {
				_, err := l.Unload(ctx, id, true)
				if err != nil {
					t.Error(err)
				}
				faults <- id
			}()
		}),
		Logf: t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Load(ctx, b, loader.Options{}); err != nil {
		t.Fatal(err)
	}
	pool, err := mbuf.NewPool(dma.NewHeap(1<<20), "wasmbundle-fault", 8, 2048, 128)
	if err != nil {
		t.Fatal(err)
	}
	pkt := pool.AllocPacket(28)
	pkt.CopyBack(0, ip4(80))
	defer pkt.Free()
	for _, s := range ip.Attached() {
		if s.Family == nke.IPv4 {
			func() {
				defer func() { recover() }() // the hook's fault policy
				s.Filter.(nke.IPInputBurstFilter).FilterIPInputBurst([]*mbuf.Mbuf{pkt}, []int{20}, []uint8{6}, []nke.Verdict{nke.Continue})
			}()
			break
		}
	}
	select {
	case id := <-faults:
		if id != "com.example.trap" {
			t.Errorf("fault reported for %q", id)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the trap was never reported")
	}
	if rows := l.Stat(); len(rows) != 0 || len(ip.Attached()) != 0 {
		t.Errorf("after the fault: loaded %+v, attached %d", rows, len(ip.Attached()))
	}
}

// The walkthrough's NKE, as its bundle says: UDP to port 9 dropped and
// counted, the rest passed.
func TestUDPDropBundle(t *testing.T) {
	b, err := bundles.Find("UDPDrop.nke")
	if err != nil {
		t.Fatal(err)
	}
	paths, err := wasmtest.Build(t.TempDir(), "github.com/nke-harness/nke/nke/wasm/examples/udpdrop")
	if errors.Is(err, wasmtest.ErrNoToolchain) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	code, err := os.ReadFile(paths["udpdrop"])
	if err != nil {
		t.Fatal(err)
	}
	b.Files[bundle.WebAssemblyDir+"/udpdrop.wasm"] = code
	ip := &nketest.IPHook{}
	l, err := loader.New(loader.Config{Kernel: func(string) nke.Kernel { return &nketest.Kernel{IPHook: ip} },
		Builtin: builtin.Lookup, WebAssembly: Loader(wasm.Config{}), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Load(ctx, b, loader.Options{}); err != nil {
		t.Fatal(err)
	}
	pool, err := mbuf.NewPool(dma.NewHeap(1<<20), "udpdrop", 8, 2048, 128)
	if err != nil {
		t.Fatal(err)
	}
	run := func(proto uint8, port uint16) nke.Verdict {
		pkt := ip4(port)
		pkt[9] = proto
		m := pool.AllocPacket(len(pkt))
		m.CopyBack(0, pkt)
		defer m.Free()
		v := []nke.Verdict{nke.Continue}
		for _, s := range ip.Attached() {
			s.Filter.(nke.IPInputBurstFilter).FilterIPInputBurst([]*mbuf.Mbuf{m}, []int{20}, []uint8{proto}, v)
		}
		return v[0]
	}
	if got := [3]nke.Verdict{run(17, 9), run(17, 53), run(6, 9)}; got != [3]nke.Verdict{nke.Drop, nke.Continue, nke.Continue} {
		t.Errorf("udp 9, udp 53, tcp 9: %v", got)
	}
	if err := l.UnloadAll(ctx); err != nil {
		t.Fatal(err)
	}
}
