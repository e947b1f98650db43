package wasm

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/examples/ipfw"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/nke/wasm/abi"
)

func TestCompileRefuses(t *testing.T) {
	module(t, "trap") // the toolchain is needed for nothing here, but keep the skip uniform
	for _, c := range []struct {
		name, code, want string
	}{
		{"garbage", "not wasm", "not an NKE module"},
		{"empty module", "\x00asm\x01\x00\x00\x00", "does not export nke_abi"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Compile(context.Background(), []byte(c.code), Config{})
			if !errors.Is(err, ErrModule) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Compile: %v, want ErrModule saying %q", err, c.want)
			}
		})
	}
	if _, err := Compile(context.Background(), module(t, "trap"), Config{Budget: time.Microsecond}); err == nil {
		t.Error("a budget of 1µs was accepted")
	}
}

func TestInitRefusesBadRules(t *testing.T) {
	p := compile(t, "wasmfw", Config{})
	var logs []string
	_, err := p.Instantiate(context.Background(), []byte("block sideways"), Host{Logf: func(f string, a ...any) {
		logs = append(logs, strings.TrimSpace(fmtS(f, a...)))
	}})
	if !errors.Is(err, ErrInit) {
		t.Fatalf("Instantiate with bad rules: %v, want ErrInit", err)
	}
	if !strings.Contains(strings.Join(logs, "\n"), "sideways") {
		t.Errorf("the module's log does not name the bad token: %q", logs)
	}
}

const fwRules = "block in proto tcp to port 23; block out proto udp to any port 7000-7010; block in from 192.0.2.0/24; block in proto tcp from fe80::5; pass in proto tcp from fe80::/10; block out proto icmp6"

// The wasm firewall decides exactly as its native twin, per packet and in
// bursts, on both families and directions.
func TestFirewallTwin(t *testing.T) {
	rules, err := ipfw.Parse(fwRules)
	if err != nil {
		t.Fatal(err)
	}
	native := ipfw.New(rules)
	p := compile(t, "wasmfw", Config{})
	inst := instantiate(t, p, fwRules, Host{})
	pool := testPool(t)
	a, b, tst := [4]byte{10, 0, 2, 2}, [4]byte{10, 0, 2, 15}, [4]byte{192, 0, 2, 9}
	type pk struct {
		v6   bool
		data []byte
		off  int
	}
	pkts := []pk{
		{false, ip4(6, a, b, 4000, 23, "x"), 20},
		{false, ip4(6, a, b, 4000, 80, "x"), 20},
		{false, ip4(17, a, b, 4000, 7005, "x"), 20},
		{false, ip4(17, a, b, 4000, 7011, "x"), 20},
		{false, ip4(1, tst, b, 0, 0, "x"), 20},
		{true, ip6(6, 5, 15, 1000, 22), 40},
		{true, ip6(6, 6, 15, 1000, 22), 40},
		{true, ip6(58, 6, 15, 0, 0), 40},
		{false, []byte{0x45, 0}, 20}, // cut short
	}
	for _, burst := range []bool{false, true} {
		for _, v6 := range []bool{false, true} {
			fam := nke.IPv4
			if v6 {
				fam = nke.IPv6
			}
			nf := native.Specs("n")[0].Filter
			if v6 {
				nf = native.Specs("n")[1].Filter
			}
			wf := inst.Bind(LayerIP, fam, burst).Filter()
			var ms []*mbuf.Mbuf
			var offs []int
			var protos []uint8
			for _, x := range pkts {
				if x.v6 == v6 {
					ms = append(ms, packet(t, pool, x.data))
					offs = append(offs, x.off)
					pr := uint8(0)
					if len(x.data) > 9 && !v6 {
						pr = x.data[9]
					} else if len(x.data) > 6 && v6 {
						pr = x.data[6]
					}
					protos = append(protos, pr)
				}
			}
			for _, out := range []bool{false, true} {
				want := make([]nke.Verdict, len(ms))
				got := make([]nke.Verdict, len(ms))
				for k, m := range ms {
					if out {
						want[k] = nf.(nke.IPOutputFilter).FilterIPOutput(&m)
					} else {
						want[k] = nf.(nke.IPInputFilter).FilterIPInput(&m, offs[k], protos[k])
					}
				}
				switch f := wf.(type) {
				case nke.IPInputBurstFilter:
					if out {
						f.(nke.IPOutputBurstFilter).FilterIPOutputBurst(ms, got)
					} else {
						f.FilterIPInputBurst(ms, offs, protos, got)
					}
				default:
					for k, m := range ms {
						if out {
							got[k] = f.(nke.IPOutputFilter).FilterIPOutput(&m)
						} else {
							got[k] = f.(nke.IPInputFilter).FilterIPInput(&m, offs[k], protos[k])
						}
					}
				}
				if d := cmp.Diff(want, got); d != "" {
					t.Errorf("burst %v v6 %v out %v: wasm verdicts differ from native (-native +wasm):\n%s", burst, v6, out, d)
				}
				drops := uint64(0)
				for _, v := range want {
					if v == nke.Drop {
						drops++
					}
				}
				_ = drops
			}
			mbuf.FreeBatch(ms)
		}
	}
	st := inst.Stats()
	if st.Packets == 0 || inst.Counter(0)+inst.Counter(1) != st.Packets || inst.Counter(1) != st.Verdicts[nke.Drop] {
		t.Errorf("counters: module passed %d dropped %d; host saw %+v", inst.Counter(0), inst.Counter(1), st)
	}
}

// Kernel control: rules replaced at run time, stats replied.
func TestFirewallControl(t *testing.T) {
	p := compile(t, "wasmfw", Config{})
	var mu sync.Mutex
	var replies []string
	inst := instantiate(t, p, "", Host{Control: func(conn uint32, data []byte) error {
		mu.Lock()
		replies = append(replies, string(data))
		mu.Unlock()
		return nil
	}})
	pool := testPool(t)
	f := inst.Bind(LayerIP, nke.IPv4, false).Filter().(nke.IPInputFilter)
	m := packet(t, pool, ip4(6, [4]byte{1, 2, 3, 4}, [4]byte{10, 0, 2, 15}, 1, 23, ""))
	defer m.Free()
	if v := f.FilterIPInput(&m, 20, 6); v != nke.Continue {
		t.Fatalf("no rules: %v", v)
	}
	for _, msg := range []string{"rules block in proto tcp to port 23", "rules block sideways", "stats", "frob"} {
		if err := inst.Control(7, abi.CtlSend, []byte(msg)); err != nil {
			t.Fatalf("Control %q: %v", msg, err)
		}
	}
	if v := f.FilterIPInput(&m, 20, 6); v != nke.Drop {
		t.Fatalf("after the rules were replaced: %v, want drop", v)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(replies) != 4 || replies[0] != "ok" || !strings.HasPrefix(replies[1], "error:") ||
		!strings.Contains(replies[2], "0 hits: block in proto tcp to port 23") || !strings.Contains(replies[3], "unknown command") {
		t.Errorf("replies %q", replies)
	}
}

// callIP calls an IP input filter and returns what it panicked with.
func callIP(f any, m *mbuf.Mbuf) (v nke.Verdict, panicked any) {
	defer func() { panicked = recover() }()
	return f.(nke.IPInputFilter).FilterIPInput(&m, 20, 6), nil
}

func TestTrapFaults(t *testing.T) {
	p := compile(t, "trap", Config{})
	var faults []*Fault
	var logs []string
	inst := instantiate(t, p, "2", Host{Name: "com.example.trap",
		OnFault: func(f *Fault) { faults = append(faults, f) },
		Logf:    func(f string, a ...any) { logs = append(logs, fmtS(f, a...)) }})
	pool := testPool(t)
	f := inst.Bind(LayerIP, nke.IPv4, false).Filter()
	m := packet(t, pool, ip4(6, [4]byte{1, 2, 3, 4}, [4]byte{5, 6, 7, 8}, 1, 2, ""))
	defer m.Free()
	for k := 0; k < 2; k++ {
		if v, pv := callIP(f, m); pv != nil || v != nke.Continue {
			t.Fatalf("packet %d: %v, panic %v", k, v, pv)
		}
	}
	_, pv := callIP(f, m)
	fault, ok := pv.(*Fault)
	if !ok || !errors.Is(fault, ErrTrap) || fault.Name != "com.example.trap" || fault.Hook != abi.HookIP4In {
		t.Fatalf("third packet: panicked with %v, want a *Fault wrapping ErrTrap", pv)
	}
	if _, pv2 := callIP(f, m); pv2 != pv {
		t.Errorf("a call after the fault panicked with %v, want the same fault", pv2)
	}
	if len(faults) != 1 || faults[0] != fault {
		t.Errorf("OnFault got %v, want the fault once", faults)
	}
	if !strings.Contains(strings.Join(logs, "\n"), "told to trap") {
		t.Errorf("the module's panic message is not in the log: %q", logs)
	}
	if err := inst.Close(); err != nil {
		t.Errorf("Close after a fault: %v", err)
	}
}

// A runaway module is stopped within the bound, and another instance of
// the same program (another NKE) runs meanwhile.
func TestRunawayStopped(t *testing.T) {
	const budget = 20 * time.Millisecond
	p := compile(t, "loop", Config{Budget: budget})
	pool := testPool(t)
	loop := instantiate(t, p, "", Host{})
	other := instantiate(t, p, "1000000", Host{})
	m := packet(t, pool, ip4(6, [4]byte{1, 2, 3, 4}, [4]byte{5, 6, 7, 8}, 1, 2, ""))
	defer m.Free()
	fo := other.Bind(LayerIP, nke.IPv4, false).Filter()
	done := make(chan struct{})
	var others int
	go func() {
		defer close(done)
		for k := 0; k < 3; k++ {
			if _, pv := callIP(fo, m); pv != nil {
				t.Errorf("the other instance panicked: %v", pv)
			}
			others++
		}
	}()
	t0 := time.Now()
	_, pv := callIP(loop.Bind(LayerIP, nke.IPv4, false).Filter(), m)
	el := time.Since(t0)
	<-done
	fault, ok := pv.(*Fault)
	if !ok || !errors.Is(fault, ErrRunaway) {
		t.Fatalf("the looping module: %v, want a *Fault wrapping ErrRunaway", pv)
	}
	// The watchdog looks every budget/4: budget to 1.25 budget, plus
	// the exit; allow scheduling noise on a loaded machine.
	if el < budget || el > budget*5/4+slack {
		t.Errorf("stopped after %v, want %v to %v (+%v)", el, budget, budget*5/4, slack)
	}
	t.Logf("runaway stopped after %v (budget %v; fault says %v)", el, budget, fault.Elapsed)
	if others != 3 {
		t.Errorf("the other instance ran %d calls, want 3", others)
	}
}

// Every host function refuses a pointer or length outside the module's
// memory by faulting the module, and answers in-range calls.
func TestHostArgsEndToEnd(t *testing.T) {
	p := compile(t, "abuse", Config{})
	pool := testPool(t)
	const big = "0x7ffffff0"
	for _, c := range []struct {
		settings string
		fault    bool
		result   int64 // counter 0 - 1000, when it does not fault
	}{
		{"log 0 " + big + " 64", true, 0},
		{"log 0 1024 8192", true, 0}, // longer than a log line may be
		{"log 0 1024 16", false, 0},
		{"counter_add 64 1", true, 0},
		{"tag_id " + big + " 8", true, 0},
		{"tag_put 0 1 1 " + big + " 4", true, 0},
		{"tag_put 9 1 1 1024 4", false, abi.ErrNoPacket},
		{"tag_get 0 1 1 1024 " + big, true, 0},
		{"tag_get 0 99999 1 1024 4", false, abi.ErrNoTag},
		{"inject 1 " + big + " 100", true, 0},
		{"inject 1 1024 100", false, abi.ErrNotHere}, // no hook to inject into
		{"ctl_send 1 -1 1", true, 0},
		{"ctl_send 1 1024 1", false, abi.ErrNotHere},
		{"verdict 9", true, 0},
	} {
		t.Run(c.settings, func(t *testing.T) {
			var faults int
			inst := instantiate(t, p, c.settings, Host{OnFault: func(*Fault) { faults++ }})
			m := packet(t, pool, ip4(6, [4]byte{1, 2, 3, 4}, [4]byte{5, 6, 7, 8}, 1, 2, ""))
			defer m.Free()
			_, pv := callIP(inst.Bind(LayerIP, nke.IPv4, false).Filter(), m)
			if c.fault {
				f, ok := pv.(*Fault)
				if !ok || faults != 1 {
					t.Fatalf("panicked with %v, %d faults; want one *Fault", pv, faults)
				}
				want := ErrHostArg
				if strings.HasPrefix(c.settings, "verdict") {
					want = ErrBadResult
				}
				if !errors.Is(f, want) {
					t.Fatalf("fault %v, want %v", f, want)
				}
				return
			}
			if pv != nil {
				t.Fatalf("panicked: %v", pv)
			}
			if got := int64(inst.Counter(0)) - 1000; got != c.result {
				t.Errorf("result %d, want %d", got, c.result)
			}
		})
	}
}

func fmtS(f string, a ...any) string { return strings.TrimSpace(sprintf(f, a...)) }
