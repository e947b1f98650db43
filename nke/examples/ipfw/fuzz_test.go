package ipfw

import (
	"errors"
	"strings"
	"testing"

	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/mbuf"
)

// FuzzParse checks Parse never panics, that every error is a ParseError
// naming a token of the text, and that the canonical text of what parses
// parses back to equal rules and is a fixed point.
func FuzzParse(f *testing.F) {
	f.Add(example)
	f.Add(testRules)
	f.Add("default block\npass out # replies\npass in proto tcp from fe80::/10 to any port 22")
	f.Add("block from 10.0.0.0/33; block to port 80-")
	f.Fuzz(func(t *testing.T, text string) {
		r, err := Parse(text)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) || !errors.Is(err, ErrSyntax) {
				t.Fatalf("error %v is not a *ParseError wrapping ErrSyntax", err)
			}
			if pe.Rule < 1 || pe.Line < 1 || pe.Token == "" || !strings.Contains(text, pe.Token) {
				t.Fatalf("error %v names no token of the text", err)
			}
			return
		}
		s := r.String()
		back, err := Parse(s)
		if err != nil {
			t.Fatalf("canonical text %q does not parse: %v", s, err)
		}
		if !back.Equal(r) {
			t.Fatalf("canonical text %q parses to %v, want %v", s, back, r)
		}
		if s2 := back.String(); s2 != s {
			t.Fatalf("canonical text not a fixed point: %q then %q", s, s2)
		}
	})
}

// fuzzRuleset has rules on every field, so that a misread field shows as
// a different packet or rule.
var fuzzRuleset = compile(func() Rules {
	r, err := Parse(testRules + "pass proto udp from port 0-1023; block proto tcp from 0.0.0.0/1 port 1-2 to 128.0.0.0/1 port 3; block proto udp from 8000::/1 to ::/1 port 3-4")
	if err != nil {
		panic(err)
	}
	return r
}())

// FuzzMatch feeds random bytes to both families' input and output paths
// in four layouts of the same bytes: one buffer with zeros or ones around
// the data, and chains split at a random point. Nothing may panic, and the
// fields read and the rule matched must not depend on the layout: a read
// outside the packet's data (into headroom, tailroom or past a buffer's
// end) would show as a difference.
func FuzzMatch(f *testing.F) {
	for _, c := range verdictCases {
		b, off := c.p.build(f)
		f.Add(b, uint16(c.split), off, c.p.proto)
	}
	f.Add([]byte{0x45}, uint16(0), 20, uint8(6))
	f.Add([]byte{0x60, 0, 0, 0, 0, 8, 0, 64}, uint16(3), 40, uint8(17))
	pool, err := mbuf.NewPool(dma.NewHeap(32<<10), "fuzz", 8, 2048, 128)
	if err != nil {
		f.Fatal(err)
	}
	const max = 2048 - 128
	f.Fuzz(func(t *testing.T, data []byte, split uint16, offset int, proto uint8) {
		if len(data) > max {
			data = data[:max]
		}
		for _, v6 := range []bool{false, true} {
			for _, dir := range []uint8{dirIn, dirOut} {
				var first packet
				var firstRule int
				for layout := 0; layout < 4; layout++ {
					m := fuzzChain(t, pool, data, layout, int(split))
					var p packet
					if dir == dirIn {
						p.input(fuzzRuleset, m, v6, offset, proto)
					} else {
						p.output(fuzzRuleset, m, v6)
					}
					rule := fuzzRuleset.match(&p, dir)
					// And through the KPI, counters included.
					fw := &Firewall{}
					fw.set.Store(fuzzRuleset)
					filter(fw, m, v6, dir, offset, proto)
					m.Free()
					if layout == 0 {
						first, firstRule = p, rule
					} else if p != first || rule != firstRule {
						t.Fatalf("v6 %v dir %d layout %d: %+v rule %d; layout 0: %+v rule %d", v6, dir, layout, p, rule, first, firstRule)
					}
				}
			}
		}
		if pool.Avail() != pool.Cap() {
			t.Fatal("buffers leaked")
		}
	})
}

// fills are buffers' worth of each fill byte fuzzChain uses.
var fills = map[byte]*[4096]byte{0x00: new([4096]byte), 0xff: ones(0xff), 0xa5: ones(0xa5), 0x5a: ones(0x5a)}

func ones(b byte) *[4096]byte {
	var a [4096]byte
	for i := range a {
		a[i] = b
	}
	return &a
}

// fuzzChain lays data out in mbufs: 0 one buffer with zeros around the
// data, 1 with 0xff around it, 2 two buffers split at split (mod the
// length), 3 one byte, then split, then the rest.
func fuzzChain(t *testing.T, pool *mbuf.Pool, data []byte, layout, split int) *mbuf.Mbuf {
	put := func(b []byte, fill byte) *mbuf.Mbuf {
		m := pool.Get()
		raw := m.Raw()
		for i := 0; i < len(raw); i += copy(raw[i:], fills[fill][:]) {
		}
		d, ok := m.Append(len(b))
		if !ok {
			t.Fatalf("%d bytes do not fit", len(b))
		}
		copy(d, b)
		return m
	}
	switch {
	case layout == 0 || len(data) == 0:
		return put(data, 0x00)
	case layout == 1:
		return put(data, 0xff)
	}
	split %= len(data)
	if layout == 2 {
		m := put(data[:split], 0xa5)
		m.SetNext(put(data[split:], 0x5a))
		return m
	}
	m := put(data[:1], 0xff)
	rest := data[1:]
	split = min(split, len(rest))
	n := put(rest[:split], 0x00)
	n.SetNext(put(rest[split:], 0xff))
	m.SetNext(n)
	return m
}
