package ipfw

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// testRules are the example's rules and a few more; tests name them by
// index (len = the default).
const testRules = example + `
block in from 2001:db8::/32                                       # 5
block out proto tcp from port 1000-1001 to 198.51.100.7 port 80   # 6
block out proto udp to 2001:db8::53 port 53                       # 7
block inout proto 132                                             # 8
`

const dflt = 9

type verdictCase struct {
	name  string
	dir   uint8
	p     pkt
	split int // split the chain after this many bytes, if > 0
	rule  int // the rule that decides, dflt for the default
	want  nke.Verdict
}

var verdictCases = []verdictCase{
	{"v4 tcp to 9999", dirIn, pkt{src: "10.0.2.2", dst: "10.0.2.15", proto: ProtoTCP, sport: 1234, dport: 9999}, 0, 0, nke.Drop},
	{"v6 tcp to 9999", dirIn, pkt{src: "2001:db8::1", dst: "2001:db8::15", proto: ProtoTCP, sport: 1234, dport: 9999}, 0, 0, nke.Drop},
	{"v4 tcp to 80", dirIn, pkt{src: "10.0.2.2", dst: "10.0.2.15", proto: ProtoTCP, sport: 1234, dport: 80}, 0, dflt, nke.Continue},
	{"v4 tcp to 9999 out", dirOut, pkt{src: "10.0.2.15", dst: "10.0.2.2", proto: ProtoTCP, sport: 1234, dport: 9999}, 0, dflt, nke.Continue},
	{"v4 tcp from 9999", dirIn, pkt{src: "10.0.2.2", dst: "10.0.2.15", proto: ProtoTCP, sport: 9999, dport: 1234}, 0, dflt, nke.Continue},
	{"v4 udp to 9999", dirIn, pkt{src: "10.0.2.3", dst: "10.0.2.15", proto: ProtoUDP, sport: 1, dport: 9999}, 0, dflt, nke.Continue},
	{"udp 7000", dirIn, pkt{src: "10.0.2.2", dst: "10.0.2.15", proto: ProtoUDP, sport: 5, dport: 7000}, 0, 1, nke.Drop},
	{"udp 7005", dirIn, pkt{src: "10.0.2.2", dst: "10.0.2.15", proto: ProtoUDP, sport: 5, dport: 7005}, 0, 1, nke.Drop},
	{"udp 7010", dirIn, pkt{src: "10.0.2.2", dst: "10.0.2.15", proto: ProtoUDP, sport: 5, dport: 7010}, 0, 1, nke.Drop},
	{"udp 7011", dirIn, pkt{src: "10.0.2.2", dst: "10.0.2.15", proto: ProtoUDP, sport: 5, dport: 7011}, 0, dflt, nke.Continue},
	{"udp 6999", dirIn, pkt{src: "10.0.2.2", dst: "10.0.2.15", proto: ProtoUDP, sport: 5, dport: 6999}, 0, dflt, nke.Continue},
	{"udp 7005 other host", dirIn, pkt{src: "10.0.2.3", dst: "10.0.2.15", proto: ProtoUDP, sport: 5, dport: 7005}, 0, dflt, nke.Continue},
	{"udp 7005 v6", dirIn, pkt{src: "fe80::2", dst: "fe80::15", proto: ProtoUDP, sport: 5, dport: 7005}, 0, dflt, nke.Continue},
	{"tcp 7005 from 10.0.2.2", dirIn, pkt{src: "10.0.2.2", dst: "10.0.2.15", proto: ProtoTCP, sport: 5, dport: 7005}, 0, dflt, nke.Continue},
	{"icmp6 out", dirOut, pkt{src: "fe80::15", dst: "fe80::2", proto: ProtoICMP6}, 0, 2, nke.Drop},
	{"icmp6 in", dirIn, pkt{src: "fe80::2", dst: "fe80::15", proto: ProtoICMP6}, 0, dflt, nke.Continue},
	{"icmp out", dirOut, pkt{src: "10.0.2.15", dst: "10.0.2.2", proto: ProtoICMP}, 0, dflt, nke.Continue},
	{"link-local tcp", dirIn, pkt{src: "fe80::2", dst: "fe80::15", proto: ProtoTCP, sport: 5, dport: 22}, 0, 3, nke.Continue},
	{"link-local tcp 9999: first match wins", dirIn, pkt{src: "fe80::2", dst: "fe80::15", proto: ProtoTCP, sport: 5, dport: 9999}, 0, 0, nke.Drop},
	{"test-net icmp", dirIn, pkt{src: "192.0.2.9", dst: "10.0.2.15", proto: ProtoICMP}, 0, 4, nke.Drop},
	{"test-net tcp", dirIn, pkt{src: "192.0.2.200", dst: "10.0.2.15", proto: ProtoTCP, sport: 5, dport: 22}, 0, 4, nke.Drop},
	{"test-net edge", dirIn, pkt{src: "192.0.3.0", dst: "10.0.2.15", proto: ProtoTCP, sport: 5, dport: 22}, 0, dflt, nke.Continue},
	{"test-net out", dirOut, pkt{src: "10.0.2.15", dst: "192.0.2.9", proto: ProtoICMP}, 0, dflt, nke.Continue},
	{"doc v6 in", dirIn, pkt{src: "2001:db8:ffff::1", dst: "fe80::15", proto: ProtoICMP6}, 0, 5, nke.Drop},
	{"doc v6 in to it", dirIn, pkt{src: "2001:db9::1", dst: "2001:db8::1", proto: ProtoICMP6}, 0, dflt, nke.Continue},
	{"v4-mapped is not v4", dirIn, pkt{src: "::ffff:192.0.2.9", dst: "fe80::15", proto: ProtoICMP6}, 0, dflt, nke.Continue},
	{"out tcp 1000 to 80", dirOut, pkt{src: "10.0.2.15", dst: "198.51.100.7", proto: ProtoTCP, sport: 1000, dport: 80}, 0, 6, nke.Drop},
	{"out tcp 1001 to 80", dirOut, pkt{src: "10.0.2.15", dst: "198.51.100.7", proto: ProtoTCP, sport: 1001, dport: 80}, 0, 6, nke.Drop},
	{"out tcp 1002 to 80", dirOut, pkt{src: "10.0.2.15", dst: "198.51.100.7", proto: ProtoTCP, sport: 1002, dport: 80}, 0, dflt, nke.Continue},
	{"out tcp 1000 to 81", dirOut, pkt{src: "10.0.2.15", dst: "198.51.100.7", proto: ProtoTCP, sport: 1000, dport: 81}, 0, dflt, nke.Continue},
	{"out tcp 1000 to .8", dirOut, pkt{src: "10.0.2.15", dst: "198.51.100.8", proto: ProtoTCP, sport: 1000, dport: 80}, 0, dflt, nke.Continue},
	{"out tcp with options", dirOut, pkt{src: "10.0.2.15", dst: "198.51.100.7", proto: ProtoTCP, sport: 1000, dport: 80, v4Opts: true}, 0, 6, nke.Drop},
	{"out tcp, ports in 2nd buffer", dirOut, pkt{src: "10.0.2.15", dst: "198.51.100.7", proto: ProtoTCP, sport: 1000, dport: 80}, 20, 6, nke.Drop},
	{"out tcp, ports straddle", dirOut, pkt{src: "10.0.2.15", dst: "198.51.100.7", proto: ProtoTCP, sport: 1000, dport: 80}, 22, 6, nke.Drop},
	{"out tcp, header straddles", dirOut, pkt{src: "10.0.2.15", dst: "198.51.100.7", proto: ProtoTCP, sport: 1000, dport: 80}, 7, 6, nke.Drop},
	{"out tcp, later fragment", dirOut, pkt{src: "10.0.2.15", dst: "198.51.100.7", proto: ProtoTCP, sport: 1000, dport: 80, v4Frag: 1}, 0, dflt, nke.Continue},
	{"out tcp, ports cut", dirOut, pkt{src: "10.0.2.15", dst: "198.51.100.7", proto: ProtoTCP, sport: 1000, dport: 80, short: 23}, 0, dflt, nke.Continue},
	{"in tcp, ports straddle", dirIn, pkt{src: "10.0.2.2", dst: "10.0.2.15", proto: ProtoTCP, sport: 1234, dport: 9999}, 23, 0, nke.Drop},
	{"in tcp, header straddles", dirIn, pkt{src: "192.0.2.1", dst: "10.0.2.15", proto: ProtoTCP, sport: 1234, dport: 22}, 13, 4, nke.Drop},
	{"in v6 tcp, ports in 2nd buffer", dirIn, pkt{src: "2001:db8::1", dst: "2001:db8::15", proto: ProtoTCP, sport: 1234, dport: 9999}, 41, 0, nke.Drop},
	{"out dns v6", dirOut, pkt{src: "2001:db8::15", dst: "2001:db8::53", proto: ProtoUDP, sport: 5353, dport: 53}, 0, 7, nke.Drop},
	{"out dns v6 ext", dirOut, pkt{src: "2001:db8::15", dst: "2001:db8::53", proto: ProtoUDP, sport: 5353, dport: 53,
		exts: []ext{{kind: ipv6HopByHop}, {kind: ipv6Routing}, {kind: ipv6DestOpts}, {kind: ipv6Fragment}}}, 0, 7, nke.Drop},
	{"out dns v6 ext, chained", dirOut, pkt{src: "2001:db8::15", dst: "2001:db8::53", proto: ProtoUDP, sport: 5353, dport: 53,
		exts: []ext{{kind: ipv6HopByHop}, {kind: ipv6Routing}, {kind: ipv6DestOpts}, {kind: ipv6Fragment}}}, 51, 7, nke.Drop},
	{"out dns v6, later fragment", dirOut, pkt{src: "2001:db8::15", dst: "2001:db8::53", proto: ProtoUDP, sport: 5353, dport: 53,
		exts: []ext{{kind: ipv6Fragment, fragOff: 1}}}, 0, dflt, nke.Continue},
	{"out dns v6, ext cut", dirOut, pkt{src: "2001:db8::15", dst: "2001:db8::53", proto: ProtoUDP, sport: 5353, dport: 53,
		exts: []ext{{kind: ipv6HopByHop}, {kind: ipv6DestOpts}}, short: 49}, 0, dflt, nke.Continue},
	{"out dns v6, ports cut", dirOut, pkt{src: "2001:db8::15", dst: "2001:db8::53", proto: ProtoUDP, sport: 5353, dport: 53, short: 42}, 0, dflt, nke.Continue},
	{"out icmp6 after ext", dirOut, pkt{src: "fe80::15", dst: "ff02::1", proto: ProtoICMP6, exts: []ext{{kind: ipv6HopByHop}}}, 0, 2, nke.Drop},
	{"sctp in v4", dirIn, pkt{src: "10.0.2.2", dst: "10.0.2.15", proto: 132}, 0, 8, nke.Drop},
	{"sctp out v6", dirOut, pkt{src: "fe80::15", dst: "fe80::2", proto: 132, exts: []ext{{kind: ipv6DestOpts}}}, 0, 8, nke.Drop},
	{"v4 header cut", dirOut, pkt{src: "192.0.2.1", dst: "10.0.2.15", proto: 132, short: 19}, 0, dflt, nke.Continue},
}

func mustParse(t testing.TB, s string) Rules {
	t.Helper()
	r, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestVerdicts(t *testing.T) {
	pool := newPool(t)
	fw := New(mustParse(t, testRules))
	if n := len(fw.Stats()); n != dflt+1 {
		t.Fatalf("%d counters, want %d", n, dflt+1)
	}
	want := make([]uint64, dflt+1)
	for _, c := range verdictCases {
		b, off := c.p.build(t)
		m := chain(t, pool, b, c.split)
		before := fw.Stats()
		if v := filter(fw, m, c.p.v6(), c.dir, off, c.p.proto); v != c.want {
			t.Errorf("%s: verdict %v, want %v", c.name, v, c.want)
		}
		after := fw.Stats()
		for i := range after {
			if d := after[i].Hits - before[i].Hits; d != 0 && i != c.rule || d != 1 && i == c.rule {
				t.Errorf("%s: rule %d (%s) hit %d times", c.name, i, after[i].Rule, d)
			}
		}
		want[c.rule]++
		m.Free()
	}
	for i, s := range fw.Stats() {
		if s.Hits != want[i] {
			t.Errorf("rule %d (%s): %d hits, want %d", i, s.Rule, s.Hits, want[i])
		}
	}
	if s := fw.Stats(); s[0].Rule != "block in proto tcp to port 9999" || s[dflt].Rule != "default pass" {
		t.Errorf("stats names: %q, %q", s[0].Rule, s[dflt].Rule)
	}
	if pool.Avail() != pool.Cap() {
		t.Errorf("%d buffers leaked", pool.Cap()-pool.Avail())
	}
}

// TestBurst checks the burst form decides as the per-packet form does.
func TestBurst(t *testing.T) {
	pool := newPool(t)
	fw := New(mustParse(t, testRules))
	specs := fw.BurstSpecs("com.example.ipfw")
	for _, dir := range []uint8{dirIn, dirOut} {
		for fam, s := range specs {
			var pkts []*mbuf.Mbuf
			var offs []int
			var protos []uint8
			var want []nke.Verdict
			for _, c := range verdictCases {
				if c.dir != dir || c.p.v6() != (fam == 1) {
					continue
				}
				b, off := c.p.build(t)
				pkts = append(pkts, chain(t, pool, b, c.split))
				offs, protos, want = append(offs, off), append(protos, c.p.proto), append(want, c.want)
			}
			got := make([]nke.Verdict, len(pkts))
			if dir == dirIn {
				s.Filter.(nke.IPInputBurstFilter).FilterIPInputBurst(pkts, offs, protos, got)
			} else {
				s.Filter.(nke.IPOutputBurstFilter).FilterIPOutputBurst(pkts, got)
			}
			for i := range got {
				if got[i] != want[i] {
					t.Errorf("%v dir %d packet %d: %v, want %v", s.Family, dir, i, got[i], want[i])
				}
			}
			mbuf.FreeBatch(pkts)
		}
	}
}

func TestDefaultBlock(t *testing.T) {
	pool := newPool(t)
	fw := New(mustParse(t, "default block; pass out; pass in proto tcp from port 80"))
	for _, c := range []struct {
		dir  uint8
		p    pkt
		want nke.Verdict
	}{
		{dirOut, pkt{src: "10.0.2.15", dst: "10.0.2.2", proto: ProtoUDP, sport: 1, dport: 2}, nke.Continue},
		{dirIn, pkt{src: "10.0.2.2", dst: "10.0.2.15", proto: ProtoUDP, sport: 80, dport: 2}, nke.Drop},
		{dirIn, pkt{src: "fe80::2", dst: "fe80::15", proto: ProtoTCP, sport: 80, dport: 2}, nke.Continue},
		{dirIn, pkt{src: "fe80::2", dst: "fe80::15", proto: ProtoTCP, sport: 81, dport: 2}, nke.Drop},
	} {
		b, off := c.p.build(t)
		m := chain(t, pool, b, 0)
		if v := filter(fw, m, c.p.v6(), c.dir, off, c.p.proto); v != c.want {
			t.Errorf("%+v: %v, want %v", c.p, v, c.want)
		}
		m.Free()
	}
	if s := fw.Stats(); len(s) != 3 || s[2].Rule != "default block" || s[2].Hits != 2 {
		t.Errorf("stats %+v", s)
	}
}

func TestSpecs(t *testing.T) {
	fw := New(Rules{})
	for _, specs := range [][]nke.IPFilterSpec{fw.Specs("com.example.ipfw"), fw.BurstSpecs("com.example.ipfw")} {
		if len(specs) != 2 || specs[0].Family != nke.IPv4 || specs[1].Family != nke.IPv6 {
			t.Fatalf("specs %+v", specs)
		}
		for _, s := range specs {
			if err := s.Check(); err != nil {
				t.Error(err)
			}
		}
	}
	for _, s := range fw.Specs("x") {
		if _, ok := s.Filter.(nke.IPInputFilter); !ok {
			t.Error("no input filter")
		}
		if _, ok := s.Filter.(nke.IPOutputFilter); !ok {
			t.Error("no output filter")
		}
		if _, ok := s.Filter.(nke.IPInputBurstFilter); ok {
			t.Error("per-packet filter has the burst form: it would be called that way only")
		}
	}
}

// TestGoRules checks rules built in Go that Parse would refuse never
// match, and that New copies its rules.
func TestGoRules(t *testing.T) {
	pool := newPool(t)
	p := pkt{src: "10.0.2.2", dst: "10.0.2.15", proto: ProtoICMP}
	list := []Rule{
		{Action: Block, From: Endpoint{Prefix: mustParse(t, "pass from 10.0.0.0/8").List[0].From.Prefix}, To: Endpoint{Prefix: mustParse(t, "pass to ::/0").List[0].To.Prefix}},
		{Action: Block, HasProto: true, Proto: ProtoICMP, To: Endpoint{HasPort: true, PortLo: 0, PortHi: 65535}},
	}
	fw := New(Rules{List: list})
	list[0] = Rule{Action: Block}
	b, off := p.build(t)
	m := chain(t, pool, b, 0)
	defer m.Free()
	if v := filter(fw, m, false, dirIn, off, p.proto); v != nke.Continue {
		t.Errorf("verdict %v", v)
	}
	if got := fw.Rules().List[0]; got == list[0] {
		t.Error("New kept the caller's slice")
	}
}

func TestNoAllocs(t *testing.T) {
	pool := newPool(t)
	fw := New(mustParse(t, testRules))
	for _, c := range verdictCases {
		b, off := c.p.build(t)
		m := chain(t, pool, b, c.split)
		v6 := c.p.v6()
		if a := testing.AllocsPerRun(100, func() { filter(fw, m, v6, c.dir, off, c.p.proto) }); a != 0 {
			t.Errorf("%s: %v allocations", c.name, a)
		}
		m.Free()
	}
}

// TestReplace swaps rule sets while goroutines filter (run it with -race):
// the set last stored is in force, with fresh counters.
func TestReplace(t *testing.T) {
	pool := newPool(t)
	blockAll, passAll := mustParse(t, "block"), mustParse(t, "pass in proto udp; pass")
	fw := New(passAll)
	p := pkt{src: "10.0.2.2", dst: "10.0.2.15", proto: ProtoUDP, sport: 1, dport: 2}
	var stop atomic.Bool
	var wg sync.WaitGroup
	for g := 0; g < 2; g++ {
		b, off := p.build(t)
		m := chain(t, pool, b, 0)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer m.Free()
			for !stop.Load() {
				v := filter(fw, m, false, dirIn, off, p.proto)
				if v != nke.Drop && v != nke.Continue {
					panic(fmt.Sprint("verdict ", v))
				}
			}
		}()
	}
	for i := 0; i < 2000; i++ {
		_ = fw.Stats() // read while packets are counted
		if i%2 == 0 {
			fw.Replace(blockAll)
		} else {
			fw.Replace(passAll)
		}
	}
	stop.Store(true)
	wg.Wait()
	if !fw.Rules().Equal(passAll) {
		t.Errorf("rules in force: %v", fw.Rules())
	}
	if s := fw.Stats(); len(s) != 3 || s[1].Hits != 0 || s[2].Hits != 0 {
		t.Errorf("stats %+v: the udp rule decides every packet", s)
	}
}

// BenchmarkMatch is the cost of one packet through the per-packet filter
// with n rules, every one looked at: n-1 that miss (a TCP port, a prefix
// of the packet's family, both directions), then the one that decides.
func BenchmarkMatch(b *testing.B) {
	pool := newPool(b)
	for _, n := range []int{1, 16} {
		for _, fam := range []string{"v4", "v6"} {
			p := pkt{src: "10.0.2.2", dst: "10.0.2.15", proto: ProtoTCP, sport: 40000, dport: 22}
			last := "pass proto tcp from 10.0.2.0/24 to 10.0.2.15 port 22"
			miss := "block from 192.0.%d.0/24"
			if fam == "v6" {
				p.src, p.dst = "fe80::2", "fe80::15"
				last = "pass proto tcp from fe80::/64 to fe80::15 port 22"
				miss = "block from 2001:db8:%d::/48"
			}
			var text string
			for i := 0; i < n-1; i++ {
				if i%2 == 0 {
					text += fmt.Sprintf("block proto tcp to port %d\n", 10000+i)
				} else {
					text += fmt.Sprintf(miss+"\n", i)
				}
			}
			fw := New(mustParse(b, text+last))
			bs, off := p.build(b)
			m := chain(b, pool, bs, 0)
			for _, dir := range []uint8{dirIn, dirOut} {
				name := fmt.Sprintf("rules=%d/%s/%s", n, fam, map[uint8]string{dirIn: "in", dirOut: "out"}[dir])
				b.Run(name, func(b *testing.B) {
					b.ReportAllocs()
					for b.Loop() {
						filter(fw, m, fam == "v6", dir, off, p.proto)
					}
					if s := fw.Stats(); s[n-1].Hits == 0 || s[n].Hits != 0 {
						b.Fatalf("the last rule did not decide: %+v", s)
					}
				})
			}
			m.Free()
		}
	}
}
