package ipfw

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/nke/nketest"
)

func TestExpandShort(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"drop tcp dport 23", "block proto tcp to port 23"},
		{"allow in udp sport 53", "pass in proto udp from port 53"},
		{"drop tcp dport 2 sport 1", "block proto tcp from port 1 to port 2"},
		{"drop in tcp from 10.0.0.0/8 dport 22", "block in proto tcp from 10.0.0.0/8 to port 22"},
		{"block in proto tcp to port 23", "block in proto tcp to port 23"},
		{"drop icmp6", "block proto icmp6"},
		{"drop tcp to 10.0.0.1 dport 22", ""},
		{"drop tcp dport", ""},
	} {
		got, err := expandShort(tc.in)
		if tc.want == "" {
			if !errors.Is(err, ErrCommand) {
				t.Errorf("%q: %q, %v; want ErrCommand", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestCommands(t *testing.T) {
	fw := New(mustParse(t, "block in proto udp to port 9"))
	type step struct{ Cmd, Reply, Err string }
	steps := []step{
		{"add drop tcp dport 23", "ok 2: block proto tcp to port 23", ""},
		{"  add   pass out  ", "ok 3: pass out", ""},
		{"list", "1 0 block in proto udp to port 9\n2 0 block proto tcp to port 23\n3 0 pass out\n- 0 default pass", ""},
		{"del 1", "ok deleted 1: block in proto udp to port 9", ""},
		{"del 3", "", "ipfw: bad command: no rule 3 (there are 2)"},
		{"del x", "", "ipfw: bad command: del takes a rule number from list, like: del 2"},
		{"add", "", "ipfw: bad command: add needs a rule, like: add block in proto tcp to port 23"},
		{"add block; pass", "", "ipfw: bad command: add takes one rule (use default to set the default)"},
		{"add drop tcp dport 99999", "", `ipfw: rule 1 (line 1): at "99999": syntax error: want a port 0-65535 or a range N-M with N <= M`},
		{"default drop", "ok default block", ""},
		{"default maybe", "", "ipfw: bad command: default pass or default block"},
		{"list", "1 0 block proto tcp to port 23\n2 0 pass out\n- 0 default block", ""},
		{"flush", "ok flushed 2 rules", ""},
		{"list", "- 0 default block", ""},
		{"", "", "ipfw: bad command: empty command; try help"},
		{"frobnicate", "", `ipfw: bad command: unknown command "frobnicate"; try help`},
	}
	var got []step
	for _, s := range steps {
		reply, err := fw.Command(s.Cmd)
		g := step{Cmd: s.Cmd, Reply: reply}
		if err != nil {
			g.Err = err.Error()
		}
		got = append(got, g)
	}
	if d := cmp.Diff(steps, got); d != "" {
		t.Errorf("commands (-want +got):\n%s", d)
	}
	if h, err := fw.Command("help"); err != nil || !strings.Contains(h, "dport P") {
		t.Errorf("help: %q, %v", h, err)
	}
}

// tcp23 is a received TCP segment to port 23.
func tcp23(t *testing.T, pool *mbuf.Pool) (*mbuf.Mbuf, int) {
	b, off := pkt{src: "10.0.2.2", dst: "10.0.2.15", proto: ProtoTCP, sport: 1234, dport: 23}.build(t)
	return chain(t, pool, b, 0), off
}

// Rules added and deleted through commands decide the next packet; a
// rule an edit keeps keeps its hits.
func TestCommandsTakeEffect(t *testing.T) {
	pool := newPool(t)
	fw := New(Rules{})
	verdict := func() nke.Verdict {
		m, off := tcp23(t, pool)
		defer m.Free()
		return filter(fw, m, false, dirIn, off, ProtoTCP)
	}
	if v := verdict(); v != nke.Continue {
		t.Fatalf("no rules: %v", v)
	}
	for _, c := range []string{"add drop udp", "add drop tcp dport 23"} {
		if _, err := fw.Command(c); err != nil {
			t.Fatal(err)
		}
	}
	if v := verdict(); v != nke.Drop {
		t.Fatalf("after add drop tcp dport 23: %v", v)
	}
	verdict()
	if _, err := fw.Command("del 1"); err != nil {
		t.Fatal(err)
	}
	if l, _ := fw.Command("list"); l != "1 2 block proto tcp to port 23\n- 1 default pass" {
		t.Errorf("list after del 1: %q (want rule 2's hits kept as rule 1's)", l)
	}
	if _, err := fw.Command("del 1"); err != nil {
		t.Fatal(err)
	}
	if v := verdict(); v != nke.Continue {
		t.Fatalf("after del: %v", v)
	}
}

// Edits racing with bursts: every burst is judged wholly by one rule set
// (all dropped or none), with -race watching the swap.
func TestEditsBetweenBursts(t *testing.T) {
	pool := newPool(t)
	fw := New(Rules{})
	bf := &BurstFilter{fw: fw}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if i%2 == 0 {
				fw.Command("add drop tcp dport 23")
			} else {
				fw.Command("flush")
			}
		}
	}()
	const n = 8
	pkts, offs, protos := make([]*mbuf.Mbuf, n), make([]int, n), make([]uint8, n)
	for i := range pkts {
		pkts[i], offs[i] = tcp23(t, pool)
		protos[i] = ProtoTCP
	}
	verdicts := make([]nke.Verdict, n)
	for range 2000 {
		bf.FilterIPInputBurst(pkts, offs, protos, verdicts)
		for _, v := range verdicts[1:] {
			if v != verdicts[0] {
				t.Fatalf("a burst judged by two rule sets: %v", verdicts)
			}
		}
	}
	close(stop)
	wg.Wait()
	for _, m := range pkts {
		m.Free()
	}
}

// The module takes its rules from its args and then from control
// clients; its stop is refused while one is connected.
func TestModuleControl(t *testing.T) {
	ip := &nketest.IPHook{}
	k := &nketest.Kernel{IPHook: ip, Controls: &nketest.Controls{}}
	stop, err := Module.Start(k, "block in proto udp to port 9")
	if err != nil {
		t.Fatal(err)
	}
	if n := len(ip.Attached()); n != 2 {
		t.Fatalf("%d IP filters attached, want 2", n)
	}
	c, err := k.Controls.Connect(ControlName)
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"add drop tcp dport 23", "list", "bogus"} {
		if err := c.Send(cmd); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"ok 2: block proto tcp to port 23",
		"1 0 block in proto udp to port 9\n2 0 block proto tcp to port 23\n- 0 default pass",
		`error: ipfw: bad command: unknown command "bogus"; try help`}
	if d := cmp.Diff(want, c.Recv()); d != "" {
		t.Errorf("replies (-want +got):\n%s", d)
	}
	// The rule is in force on the attached filter.
	pool := newPool(t)
	m, off := tcp23(t, pool)
	defer m.Free()
	if v := ip.Attached()[0].Filter.(nke.IPInputBurstFilter); v == nil {
		t.Fatal("not the burst form")
	}
	verdicts := make([]nke.Verdict, 1)
	ip.Attached()[0].Filter.(nke.IPInputBurstFilter).FilterIPInputBurst([]*mbuf.Mbuf{m}, []int{off}, []uint8{ProtoTCP}, verdicts)
	if verdicts[0] != nke.Drop {
		t.Errorf("tcp 23 after the add: %v, want drop", verdicts[0])
	}
	if err := stop(); !errors.Is(err, nke.ErrBusy) {
		t.Fatalf("stop with a client: %v, want ErrBusy", err)
	}
	if len(ip.Attached()) != 2 {
		t.Fatal("a refused stop detached the filters")
	}
	c.Close()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if len(ip.Attached()) != 0 || k.Controls.Registered(ControlName) {
		t.Error("stop left filters or the endpoint")
	}
	if logs := strings.Join(k.Logs(), "\n"); !strings.Contains(logs, "1 hits: block proto tcp to port 23") {
		t.Errorf("stop's log lacks the hit count:\n%s", logs)
	}
}

// A reply that does not fit the client's queue fails the Send; the
// command was done.
func TestReplyFlowControl(t *testing.T) {
	hook := &nketest.Controls{}
	fw := New(Rules{})
	ctl, err := fw.ServeControl(hook, ControlName)
	if err != nil {
		t.Fatal(err)
	}
	_ = ctl
	c, _ := hook.Connect(ControlName)
	var err2 error
	for i := 0; i < 10000 && err2 == nil; i++ {
		err2 = c.Send("help")
	}
	if !errors.Is(err2, nke.ErrNoBufs) {
		t.Fatalf("sends never filled the queue: %v", err2)
	}
	c.Recv()
	if err := c.Send("flush"); err != nil {
		t.Errorf("send after reading: %v", err)
	}
}

// FuzzCommand: no command panics, every error is ErrCommand or a
// ParseError, and an add that succeeds shows up in list.
func FuzzCommand(f *testing.F) {
	for _, s := range []string{"add drop tcp dport 23", "del 1", "list", "flush", "default block",
		"add pass in udp sport 53", "add block from ::1 dport 1-2", "del -1", "add drop tcp sport"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cmd string) {
		fw := New(mustParse(t, "block in proto udp to port 9"))
		reply, err := fw.Command(cmd)
		if err != nil {
			var pe *ParseError
			if !errors.Is(err, ErrCommand) && !errors.As(err, &pe) {
				t.Fatalf("%q: error %v is neither ErrCommand nor a ParseError", cmd, err)
			}
			return
		}
		if strings.HasPrefix(strings.TrimSpace(cmd), "add") {
			rule := strings.TrimPrefix(reply, "ok 2: ")
			if l, _ := fw.Command("list"); !strings.Contains(l, "2 0 "+rule+"\n") {
				t.Fatalf("%q: added %q, list says %q", cmd, rule, l)
			}
		}
	})
}
