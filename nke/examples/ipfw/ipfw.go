// Package ipfw is an example IP filter NKE (Apple's ipf_addv4/ipf_addv6
// filters): a small stateless firewall for IPv4 and IPv6 that blocks or
// passes packets by direction, protocol, address prefix and port, first
// matching rule wins, with a configurable default.
//
// It demonstrates the IP filter KPI: one filter value per family
// implementing both FilterIPInput (data at the IP header, the transport
// header's offset and protocol handed in by the hook) and FilterIPOutput
// (a whole packet whose headers, IPv6 extension headers included, the
// filter parses itself); the burst form on a separate type (BurstSpecs);
// a data path that allocates nothing and reads headers from the first
// buffer in place, copying at most a few bytes onto the stack when a
// header straddles buffers; per-rule hit counters; and rules replaced
// atomically while traffic flows.
//
// Rules are text a user writes on a kernel command line or in a file
// (see Parse for the grammar):
//
//	block in proto tcp to port 9999; block in proto udp from 10.0.2.2 to any port 7000-7010
//	block out proto icmp6; pass in proto tcp from fe80::/10; block in from 192.0.2.0/24
//
// Attach it to the IP hook, one spec per family:
//
//	rules, err := ipfw.Parse(text)
//	...
//	fw := ipfw.New(rules)
//	for _, s := range fw.Specs("com.example.ipfw") {
//		if _, err := hook.AttachIPFilter(s); err != nil { ... } // hook is an nke.IPHook
//	}
//	...
//	fw.Replace(newRules) // from any goroutine
//	for _, s := range fw.Stats() { fmt.Println(s.Hits, s.Rule) }
//
// Matching is stateless: a "block in proto
// tcp to port 80" stops SYNs and everything else to port 80, and
// replies to the guest's own connections are matched like any packet. A
// rule with ports matches only TCP and UDP packets whose ports can be
// read: never a non-first fragment (the input hook sees reassembled
// packets and the output hook packets before fragmentation, so that is
// rare) nor a packet cut short inside its ports; likewise a rule on
// addresses never matches a packet shorter than the fixed IP header. A
// block verdict is nke.Drop (the hook frees the packet and counts the drop
// against the filter), a pass nke.Continue: the filters after this one
// still see the packet.
package ipfw

import (
	"encoding/binary"
	"sync"
	"sync/atomic"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Firewall is the filter. Its callbacks may run on several goroutines at
// once; Replace and Stats may be called from any goroutine.
type Firewall struct {
	set  atomic.Pointer[ruleset]
	edit sync.Mutex // serialises Edit's read-modify-write
}

// RuleStats is one rule's counter.
type RuleStats struct {
	Rule string // the rule's canonical text
	Hits uint64 // packets it decided
}

// New returns a firewall enforcing rules. Rules built in Go rather than by
// Parse are taken as they are: a rule that cannot match (addresses of two
// families, ports without TCP or UDP) never matches.
func New(rules Rules) *Firewall {
	fw := &Firewall{}
	fw.Replace(rules)
	return fw
}

// Replace swaps in a new rule set; every packet is judged wholly by the
// old or wholly by the new one. The new set's counters start at zero.
func (fw *Firewall) Replace(rules Rules) { fw.set.Store(compile(rules)) }

// Rules returns the rule set in force.
func (fw *Firewall) Rules() Rules {
	rs := fw.set.Load()
	return Rules{Default: rs.src.Default, List: append([]Rule(nil), rs.src.List...)}
}

// Stats returns the hit counters of the rule set in force, one per rule
// in order, and last one for the default ("default pass" or "default
// block") counting the packets no rule matched.
func (fw *Firewall) Stats() []RuleStats {
	rs := fw.set.Load()
	out := make([]RuleStats, 0, len(rs.hits))
	for i, r := range rs.src.List {
		out = append(out, RuleStats{Rule: r.String(), Hits: rs.hits[i].n.Load()})
	}
	return append(out, RuleStats{Rule: "default " + rs.src.Default.String(), Hits: rs.hits[len(rs.src.List)].n.Load()})
}

// Specs returns the specs to attach the firewall with: IPv4 and IPv6,
// both directions, per-packet callbacks.
func (fw *Firewall) Specs(name string) []nke.IPFilterSpec {
	return []nke.IPFilterSpec{
		{Name: name, Family: nke.IPv4, Filter: &Filter{fw: fw}},
		{Name: name, Family: nke.IPv6, Filter: &Filter{fw: fw, v6: true}},
	}
}

// BurstSpecs is Specs with the burst callbacks: the rule set is loaded
// once per burst.
func (fw *Firewall) BurstSpecs(name string) []nke.IPFilterSpec {
	return []nke.IPFilterSpec{
		{Name: name, Family: nke.IPv4, Filter: &BurstFilter{fw: fw}},
		{Name: name, Family: nke.IPv6, Filter: &BurstFilter{fw: fw, v6: true}},
	}
}

// Filter is the per-packet filter of one family, as Specs returns it.
type Filter struct {
	fw *Firewall
	v6 bool
}

// FilterIPInput implements nke.IPInputFilter.
func (f *Filter) FilterIPInput(m **mbuf.Mbuf, offset int, proto uint8) nke.Verdict {
	rs := f.fw.set.Load()
	var p packet
	p.input(rs, *m, f.v6, offset, proto)
	return rs.decide(&p, dirIn)
}

// FilterIPOutput implements nke.IPOutputFilter.
func (f *Filter) FilterIPOutput(m **mbuf.Mbuf) nke.Verdict {
	rs := f.fw.set.Load()
	var p packet
	p.output(rs, *m, f.v6)
	return rs.decide(&p, dirOut)
}

// BurstFilter is the burst filter of one family, as BurstSpecs returns
// it.
type BurstFilter struct {
	fw *Firewall
	v6 bool
}

// FilterIPInputBurst implements nke.IPInputBurstFilter.
func (f *BurstFilter) FilterIPInputBurst(pkts []*mbuf.Mbuf, offsets []int, protos []uint8, verdicts []nke.Verdict) {
	rs := f.fw.set.Load()
	for i, m := range pkts {
		var p packet
		p.input(rs, m, f.v6, offsets[i], protos[i])
		verdicts[i] = rs.decide(&p, dirIn)
	}
}

// FilterIPOutputBurst implements nke.IPOutputBurstFilter.
func (f *BurstFilter) FilterIPOutputBurst(pkts []*mbuf.Mbuf, verdicts []nke.Verdict) {
	rs := f.fw.set.Load()
	for i, m := range pkts {
		var p packet
		p.output(rs, m, f.v6)
		verdicts[i] = rs.decide(&p, dirOut)
	}
}

// Bits of a compiled rule's direction and family masks.
const (
	dirIn  = 1
	dirOut = 2
	famV4  = 1
	famV6  = 2
)

// addr is an address as two big-endian halves; an IPv4 address sits in
// the top 32 bits of hi.
type addr struct{ hi, lo uint64 }

// prefix is a compiled Endpoint.Prefix.
type prefix struct {
	on        bool
	net, mask addr
}

func (x *prefix) contains(a addr) bool {
	return a.hi&x.mask.hi == x.net.hi && a.lo&x.mask.lo == x.net.lo
}

type ports struct {
	on     bool
	lo, hi uint16
}

func (x ports) contains(p uint16) bool { return p >= x.lo && p <= x.hi }

// crule is a compiled Rule.
type crule struct {
	block    bool
	dirs     uint8 // dirIn|dirOut
	fams     uint8 // famV4|famV6; 0 never matches
	anyProto bool
	proto    uint8
	src, dst prefix
	sp, dp   ports
}

// counter is a hit counter on a cache line of its own.
type counter struct {
	n atomic.Uint64
	_ [56]byte
}

// ruleset is an immutable compiled rule set and its counters.
type ruleset struct {
	src       Rules
	rules     []crule
	hits      []counter // one per rule, then the default's
	block     bool      // default
	needPorts bool      // some rule looks at ports
}

func compile(r Rules) *ruleset {
	rs := &ruleset{
		src:   Rules{Default: r.Default, List: append([]Rule(nil), r.List...)},
		rules: make([]crule, len(r.List)),
		hits:  make([]counter, len(r.List)+1),
		block: r.Default == Block,
	}
	for i, x := range r.List {
		c := &rs.rules[i]
		c.block = x.Action == Block
		switch x.Dir {
		case In:
			c.dirs = dirIn
		case Out:
			c.dirs = dirOut
		default:
			c.dirs = dirIn | dirOut
		}
		c.fams = famV4 | famV6
		c.anyProto, c.proto = !x.HasProto, x.Proto
		c.src = compilePrefix(x.From, &c.fams)
		c.dst = compilePrefix(x.To, &c.fams)
		c.sp = ports{x.From.HasPort, x.From.PortLo, x.From.PortHi}
		c.dp = ports{x.To.HasPort, x.To.PortLo, x.To.PortHi}
		if c.sp.on || c.dp.on {
			rs.needPorts = true
			if !x.HasProto || (x.Proto != ProtoTCP && x.Proto != ProtoUDP) {
				c.fams = 0
			}
		}
	}
	return rs
}

func compilePrefix(e Endpoint, fams *uint8) prefix {
	p := e.Prefix
	if !p.IsValid() {
		return prefix{}
	}
	p = p.Masked()
	x, bits := prefix{on: true}, p.Bits()
	if p.Addr().Is4() {
		*fams &= famV4
		b := p.Addr().As4()
		x.net.hi = uint64(binary.BigEndian.Uint32(b[:])) << 32
		if bits > 0 {
			x.mask.hi = ^uint64(0) << (64 - bits)
		}
		return x
	}
	*fams &= famV6
	b := p.Addr().As16()
	x.net = addr{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
	switch {
	case bits == 0:
	case bits <= 64:
		x.mask.hi = ^uint64(0) << (64 - bits)
	default:
		x.mask.hi = ^uint64(0)
		x.mask.lo = ^uint64(0) << (128 - bits)
	}
	return x
}

// packet is what matching needs of a packet; the flags say which fields
// could be read.
type packet struct {
	fam          uint8
	addrs        bool // src and dst are set
	hasProto     bool
	hasPorts     bool
	proto        uint8
	src, dst     addr
	sport, dport uint16
}

// match returns the index of the first rule matching p in direction dir,
// or len(rs.rules) for the default.
func (rs *ruleset) match(p *packet, dir uint8) int {
	for i := range rs.rules {
		r := &rs.rules[i]
		if r.dirs&dir == 0 || r.fams&p.fam == 0 {
			continue
		}
		if !r.anyProto && (!p.hasProto || r.proto != p.proto) {
			continue
		}
		if (r.src.on || r.dst.on) && !p.addrs {
			continue
		}
		if r.src.on && !r.src.contains(p.src) || r.dst.on && !r.dst.contains(p.dst) {
			continue
		}
		if (r.sp.on || r.dp.on) && !p.hasPorts {
			continue
		}
		if r.sp.on && !r.sp.contains(p.sport) || r.dp.on && !r.dp.contains(p.dport) {
			continue
		}
		return i
	}
	return len(rs.rules)
}

// decide matches p, counts the hit and returns the verdict.
func (rs *ruleset) decide(p *packet, dir uint8) nke.Verdict {
	i := rs.match(p, dir)
	rs.hits[i].n.Add(1)
	block := rs.block
	if i < len(rs.rules) {
		block = rs.rules[i].block
	}
	if block {
		return nke.Drop
	}
	return nke.Continue
}

// IPv6 extension headers walked on output.
const (
	ipv6HopByHop = 0
	ipv6Routing  = 43
	ipv6Fragment = 44
	ipv6DestOpts = 60
)

// fixedHeader reads the fixed IP header (20 or 40 bytes) of m: from the first
// buffer in place, or copied into buf when the first buffer holds less.
// ok is false when the packet is shorter than that.
func fixedHeader(m *mbuf.Mbuf, n int, buf *[40]byte) (h []byte, ok bool) {
	if d := m.Bytes(); len(d) >= n {
		return d[:n:n], true
	}
	k := m.CopyOut(buf[:n])
	return buf[:k:k], k == n
}

// peek copies len(dst) bytes of the packet from byte off into dst,
// reporting false when the packet ends first.
func peek(m *mbuf.Mbuf, off int, dst []byte) bool {
	if off < 0 {
		return false
	}
	for b := m; b != nil; b = b.Next() {
		d := b.Bytes()
		if off >= len(d) {
			off -= len(d)
			continue
		}
		k := copy(dst, d[off:])
		if k < len(dst) && b.Next() != nil {
			k += b.Next().CopyOut(dst[k:])
		}
		return k == len(dst)
	}
	return false
}

// addresses reads the fixed header's addresses.
func (p *packet) addresses(h []byte, v6 bool) {
	if v6 {
		p.fam = famV6
		if len(h) < 40 {
			return
		}
		p.src = addr{binary.BigEndian.Uint64(h[8:16]), binary.BigEndian.Uint64(h[16:24])}
		p.dst = addr{binary.BigEndian.Uint64(h[24:32]), binary.BigEndian.Uint64(h[32:40])}
	} else {
		p.fam = famV4
		if len(h) < 20 {
			return
		}
		p.src.hi = uint64(binary.BigEndian.Uint32(h[12:16])) << 32
		p.dst.hi = uint64(binary.BigEndian.Uint32(h[16:20])) << 32
	}
	p.addrs = true
}

// v4Later reports whether an IPv4 header is a non-first fragment's.
func v4Later(h []byte) bool { return binary.BigEndian.Uint16(h[6:8])&0x1fff != 0 }

// input fills p from a received packet, with the hook's transport offset
// and protocol.
func (p *packet) input(rs *ruleset, m *mbuf.Mbuf, v6 bool, offset int, proto uint8) {
	var buf [40]byte
	n := 20
	if v6 {
		n = 40
	}
	h, ok := fixedHeader(m, n, &buf)
	p.addresses(h, v6)
	p.hasProto, p.proto = true, proto
	if ok && !v6 && v4Later(h) {
		return
	}
	p.transport(rs, m, offset)
}

// output fills p from a packet being sent, parsing its headers.
func (p *packet) output(rs *ruleset, m *mbuf.Mbuf, v6 bool) {
	var buf [40]byte
	if !v6 {
		h, ok := fixedHeader(m, 20, &buf)
		p.addresses(h, false)
		if !ok {
			return
		}
		p.hasProto, p.proto = true, h[9]
		ihl := int(h[0]&0xf) * 4
		if ihl < 20 || v4Later(h) {
			return
		}
		p.transport(rs, m, ihl)
		return
	}
	h, ok := fixedHeader(m, 40, &buf)
	p.addresses(h, true)
	if !ok {
		return
	}
	nh, off := h[6], 40
	for {
		switch nh {
		case ipv6HopByHop, ipv6Routing, ipv6DestOpts:
			var e [2]byte
			if !peek(m, off, e[:]) {
				// Cut short inside the chain: the protocol is
				// the header that could not be read.
				p.hasProto, p.proto = true, nh
				return
			}
			nh, off = e[0], off+(int(e[1])+1)*8
			continue
		case ipv6Fragment:
			var e [4]byte
			if !peek(m, off, e[:]) {
				p.hasProto, p.proto = true, nh
				return
			}
			nh, off = e[0], off+8
			if binary.BigEndian.Uint16(e[2:4])&^7 != 0 {
				p.hasProto, p.proto = true, nh // a later fragment: no ports
				return
			}
			continue
		}
		break
	}
	p.hasProto, p.proto = true, nh
	p.transport(rs, m, off)
}

// transport reads the ports of a TCP or UDP packet at offset off, when
// some rule wants them.
func (p *packet) transport(rs *ruleset, m *mbuf.Mbuf, off int) {
	if !rs.needPorts || (p.proto != ProtoTCP && p.proto != ProtoUDP) || off < 0 {
		return
	}
	var b [4]byte
	if d := m.Bytes(); off <= len(d)-4 {
		copy(b[:], d[off:off+4])
	} else if !peek(m, off, b[:]) {
		return
	}
	p.sport = binary.BigEndian.Uint16(b[0:2])
	p.dport = binary.BigEndian.Uint16(b[2:4])
	p.hasPorts = true
}

// Edit changes the rule set in force: edit gets a copy of it and returns
// the new one, or an error to change nothing. Edits are serialised; the
// new set is swapped in at once (a burst is judged wholly by the old or
// the new set). A rule the new set keeps keeps its hit count; the hits
// the old set counts between the copy and the swap are lost.
func (fw *Firewall) Edit(edit func(Rules) (Rules, error)) error {
	fw.edit.Lock()
	defer fw.edit.Unlock()
	old := fw.set.Load()
	next, err := edit(Rules{Default: old.src.Default, List: append([]Rule(nil), old.src.List...)})
	if err != nil {
		return err
	}
	rs := compile(next)
	kept := make(map[Rule][]int, len(old.src.List)) // rule -> its indexes in old, in order
	for j, o := range old.src.List {
		kept[o] = append(kept[o], j)
	}
	for i, r := range rs.src.List {
		if js := kept[r]; len(js) > 0 {
			rs.hits[i].n.Store(old.hits[js[0]].n.Load())
			kept[r] = js[1:]
		}
	}
	if rs.src.Default == old.src.Default {
		rs.hits[len(rs.src.List)].n.Store(old.hits[len(old.src.List)].n.Load())
	}
	fw.set.Store(rs)
	return nil
}
