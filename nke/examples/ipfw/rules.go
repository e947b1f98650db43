package ipfw

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Action is what a rule does with a packet it matches.
type Action uint8

const (
	// Pass lets the packet through (nke.Continue).
	Pass Action = iota
	// Block drops it (nke.Drop).
	Block
)

func (a Action) String() string {
	if a == Block {
		return "block"
	}
	return "pass"
}

// Dir is the direction a rule applies to.
type Dir uint8

const (
	// InOut matches both directions (the default).
	InOut Dir = iota
	// In matches packets the guest receives.
	In
	// Out matches packets the guest sends.
	Out
)

func (d Dir) String() string {
	switch d {
	case In:
		return "in"
	case Out:
		return "out"
	}
	return "inout"
}

// IP protocol numbers with a name in the syntax.
const (
	ProtoICMP  = 1
	ProtoTCP   = 6
	ProtoUDP   = 17
	ProtoICMP6 = 58
)

// Endpoint is one side (from or to) of a rule. The zero value matches any
// address and any port.
type Endpoint struct {
	// Prefix is the address or prefix to match, masked; an invalid
	// (zero) Prefix matches any address of either family. An IPv4
	// prefix matches only IPv4 packets, an IPv6 one only IPv6 packets.
	Prefix netip.Prefix
	// HasPort restricts the port to PortLo..PortHi (inclusive); it
	// needs the rule's protocol to be TCP or UDP.
	HasPort        bool
	PortLo, PortHi uint16
}

// Rule is one line of a rule set. The zero Rule passes every packet.
type Rule struct {
	Action Action
	Dir    Dir
	// Proto is the IP protocol number to match (after any IPv6
	// extension headers), if HasProto.
	HasProto bool
	Proto    uint8
	From, To Endpoint
}

// Rules is a rule set: the first rule that matches a packet decides it;
// a packet no rule matches gets Default.
type Rules struct {
	Default Action
	List    []Rule
}

// Equal reports whether r and o are the same rule set.
func (r Rules) Equal(o Rules) bool {
	return r.Default == o.Default && slices.Equal(r.List, o.List)
}

// String is the canonical text of the rule set, one rule a line, which
// Parse turns back into an equal Rules: "default block" first if the
// default is Block, then the rules in order.
func (r Rules) String() string {
	var b strings.Builder
	if r.Default == Block {
		b.WriteString("default block\n")
	}
	for _, x := range r.List {
		b.WriteString(x.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// String is the rule's canonical text: only the parts that restrict it.
func (r Rule) String() string {
	var b strings.Builder
	b.WriteString(r.Action.String())
	if r.Dir != InOut {
		b.WriteByte(' ')
		b.WriteString(r.Dir.String())
	}
	if r.HasProto {
		b.WriteString(" proto ")
		b.WriteString(protoName(r.Proto))
	}
	r.From.write(&b, " from")
	r.To.write(&b, " to")
	return b.String()
}

func (e Endpoint) write(b *strings.Builder, kw string) {
	if !e.Prefix.IsValid() && !e.HasPort {
		return
	}
	b.WriteString(kw)
	if p := e.Prefix; p.IsValid() {
		b.WriteByte(' ')
		if p.Bits() == p.Addr().BitLen() {
			b.WriteString(p.Addr().String())
		} else {
			b.WriteString(p.String())
		}
	}
	if e.HasPort {
		b.WriteString(" port ")
		b.WriteString(strconv.Itoa(int(e.PortLo)))
		if e.PortHi != e.PortLo {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(int(e.PortHi)))
		}
	}
}

func protoName(p uint8) string {
	switch p {
	case ProtoICMP:
		return "icmp"
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMP6:
		return "icmp6"
	}
	return strconv.Itoa(int(p))
}

// ErrSyntax is what every parse error wraps.
var ErrSyntax = errors.New("syntax error")

// ParseError says where a rule set's text is wrong.
type ParseError struct {
	// Rule is the statement's number (1-based, counting the non-empty
	// statements of the text, "default" ones included); Line is its
	// line (1-based).
	Rule, Line int
	// Token is the offending token: the one that is wrong, or the last
	// one of the statement when something is missing after it.
	Token string
	// Err wraps ErrSyntax with what was wanted.
	Err error
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("ipfw: rule %d (line %d): at %q: %v", e.Rule, e.Line, e.Token, e.Err)
}

func (e *ParseError) Unwrap() error { return e.Err }

// Parse reads a rule set. Statements are separated by newlines or ';'; a
// '#' starts a comment that runs to the end of the line (';' included).
//
//	text     = stmt { ( ";" | newline ) stmt }
//	stmt     = [ "default" action | rule ] [ "#" comment ]
//	rule     = action [ dir ] [ "proto" proto ] [ "from" endpoint ] [ "to" endpoint ]
//	action   = "pass" | "block"
//	dir      = "in" | "out" | "inout"                  (default inout)
//	proto    = "tcp" | "udp" | "icmp" | "icmp6" | 0..255
//	endpoint = host [ "port" ports ] | "port" ports
//	host     = "any" | address | address "/" bits      (masked)
//	ports    = 0..65535 [ "-" 0..65535 ]               (tcp and udp only)
//
// The parts of a rule come in this order, each at most once. A rule's
// addresses must be of one family; an address without /bits is a host
// (/32 or /128). proto is the protocol number after any IPv6 extension
// headers: icmp is 1 (ICMPv4), icmp6 is 58, and an IPv6 ICMP packet is
// icmp6 only. "default" may be given once. Keywords are lower case.
func Parse(text string) (Rules, error) {
	var rs Rules
	stmt, sawDefault := 0, false
	for lineNo, line := range strings.Split(text, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		for _, s := range strings.Split(line, ";") {
			toks := strings.Fields(s)
			if len(toks) == 0 {
				continue
			}
			stmt++
			p := parser{toks: toks}
			var err error
			if toks[0] == "default" {
				if sawDefault {
					p.fail("default given twice")
				} else {
					sawDefault = true
					rs.Default = p.defaultStmt()
				}
			} else {
				r := p.rule()
				if p.err == nil {
					rs.List = append(rs.List, r)
				}
			}
			if p.err != nil {
				err = &ParseError{Rule: stmt, Line: lineNo + 1, Token: p.errTok, Err: p.err}
				return Rules{}, err
			}
		}
	}
	return rs, nil
}

// parser reads one statement's tokens; the first error sticks.
type parser struct {
	toks   []string
	i      int
	err    error
	errTok string
}

// peek is the next token, "" at the end.
func (p *parser) peek() string {
	if p.i < len(p.toks) {
		return p.toks[p.i]
	}
	return ""
}

// next consumes a token; at the end it fails naming the last token.
func (p *parser) next(want string) string {
	if p.err != nil {
		return ""
	}
	if p.i == len(p.toks) {
		p.failAt(len(p.toks)-1, "want "+want+" after it")
		return ""
	}
	t := p.toks[p.i]
	p.i++
	return t
}

// fail records an error about the token just consumed (or the current
// one if none has been).
func (p *parser) fail(msg string) { p.failAt(max(p.i-1, 0), msg) }

func (p *parser) failAt(k int, msg string) {
	if p.err != nil {
		return
	}
	p.errTok = p.toks[k]
	p.err = fmt.Errorf("%w: %s", ErrSyntax, msg)
}

func (p *parser) action() Action {
	switch p.next("pass or block") {
	case "pass":
		return Pass
	case "block":
		return Block
	case "":
		return Pass
	}
	p.fail("want pass, block or default")
	return Pass
}

func (p *parser) defaultStmt() Action {
	p.next("default")
	a := p.action()
	if p.err == nil && p.i < len(p.toks) {
		p.i++
		p.fail("want nothing after default " + a.String())
	}
	return a
}

func (p *parser) rule() Rule {
	var r Rule
	r.Action = p.action()
	switch p.peek() {
	case "in":
		r.Dir = In
		p.i++
	case "out":
		r.Dir = Out
		p.i++
	case "inout":
		r.Dir = InOut
		p.i++
	}
	if p.peek() == "proto" {
		p.i++
		r.HasProto, r.Proto = true, p.proto()
	}
	if p.peek() == "from" {
		p.i++
		r.From = p.endpoint(r)
	}
	if p.peek() == "to" {
		p.i++
		r.To = p.endpoint(r)
	}
	if p.err == nil && p.i < len(p.toks) {
		p.i++
		p.fail("unexpected token: want in, out, inout, proto, from or to, in that order, each once")
	}
	if f, t := r.From.Prefix, r.To.Prefix; p.err == nil && f.IsValid() && t.IsValid() && f.Addr().Is4() != t.Addr().Is4() {
		p.failAt(slices.Index(p.toks, "to")+1, fmt.Sprintf("address family differs from %v's (from)", f))
	}
	return r
}

func (p *parser) proto() uint8 {
	t := p.next("tcp, udp, icmp, icmp6 or a protocol number")
	switch t {
	case "":
		return 0
	case "tcp":
		return ProtoTCP
	case "udp":
		return ProtoUDP
	case "icmp":
		return ProtoICMP
	case "icmp6":
		return ProtoICMP6
	}
	n, err := strconv.ParseUint(t, 10, 8)
	if err != nil {
		p.fail("want tcp, udp, icmp, icmp6 or a protocol number 0-255")
	}
	return uint8(n)
}

func (p *parser) endpoint(r Rule) Endpoint {
	var e Endpoint
	if p.peek() != "port" {
		t := p.next("any, an address or a prefix")
		switch {
		case t == "" || t == "any":
		case strings.Contains(t, "/"):
			pfx, err := netip.ParsePrefix(t)
			if err != nil {
				p.fail("want any, an address or a prefix (addr/bits)")
			}
			e.Prefix = pfx.Masked()
		default:
			a, err := netip.ParseAddr(t)
			if err != nil || a.Zone() != "" {
				p.fail("want any, an address (without a zone) or a prefix")
			} else {
				e.Prefix = netip.PrefixFrom(a, a.BitLen())
			}
		}
	}
	if p.err != nil || p.peek() != "port" {
		return e
	}
	p.i++
	if !r.HasProto || (r.Proto != ProtoTCP && r.Proto != ProtoUDP) {
		p.fail("port needs proto tcp or udp before it")
		return e
	}
	t := p.next("a port or a range N-M")
	if t == "" {
		return e
	}
	lo, hi, ok := strings.Cut(t, "-")
	l, err1 := strconv.ParseUint(lo, 10, 16)
	h, err2 := l, error(nil)
	if ok {
		h, err2 = strconv.ParseUint(hi, 10, 16)
	}
	if err1 != nil || err2 != nil || h < l {
		p.fail("want a port 0-65535 or a range N-M with N <= M")
		return e
	}
	e.HasPort, e.PortLo, e.PortHi = true, uint16(l), uint16(h)
	return e
}
