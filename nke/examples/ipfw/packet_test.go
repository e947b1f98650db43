package ipfw

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/mbuf"
)

// ext is an IPv6 extension header to put between the fixed header and
// the transport header.
type ext struct {
	kind    uint8  // ipv6HopByHop, ipv6Routing, ipv6DestOpts, ipv6Fragment
	fragOff uint16 // fragment offset in 8-byte units (ipv6Fragment)
}

// pkt describes a test packet.
type pkt struct {
	src, dst     string // addresses; their family is the packet's
	proto        uint8
	sport, dport uint16
	v4Frag       uint16 // IPv4 fragment offset, 8-byte units
	v4Opts       bool   // 4 bytes of IPv4 options (NOPs)
	exts         []ext
	short        int // cut the packet to this many bytes, if > 0
}

func (p pkt) v6() bool { return netip.MustParseAddr(p.src).Is6() }

// build returns the packet's bytes and the transport header's offset.
func (p pkt) build(t testing.TB) (b []byte, offset int) {
	t.Helper()
	var l4 []byte
	switch p.proto {
	case ProtoTCP:
		l4 = make([]byte, header.TCPMinimumSize)
		header.TCP(l4).Encode(&header.TCPFields{SrcPort: p.sport, DstPort: p.dport, SeqNum: 1, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagSyn, WindowSize: 65535})
	case ProtoUDP:
		l4 = make([]byte, header.UDPMinimumSize+4)
		header.UDP(l4).Encode(&header.UDPFields{SrcPort: p.sport, DstPort: p.dport, Length: uint16(len(l4))})
	case ProtoICMP:
		l4 = make([]byte, header.ICMPv4MinimumSize)
		header.ICMPv4(l4).SetType(header.ICMPv4Echo)
	case ProtoICMP6:
		l4 = make([]byte, header.ICMPv6MinimumSize)
		header.ICMPv6(l4).SetType(header.ICMPv6EchoRequest)
	default:
		l4 = make([]byte, 8)
	}
	src, dst := netip.MustParseAddr(p.src), netip.MustParseAddr(p.dst)
	if !p.v6() {
		hl := header.IPv4MinimumSize
		if p.v4Opts {
			hl += 4
		}
		b = make([]byte, hl+len(l4))
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(b)), TTL: 64, Protocol: p.proto, FragmentOffset: p.v4Frag * 8,
			SrcAddr: tcpip.AddrFrom4(src.As4()), DstAddr: tcpip.AddrFrom4(dst.As4()),
		})
		if p.v4Opts {
			ip.SetHeaderLength(uint8(hl))
			copy(b[20:24], []byte{1, 1, 1, 0})
		}
		ip.SetChecksum(^ip.CalculateChecksum())
		copy(b[hl:], l4)
		return p.cut(b), hl
	}
	var exts []byte
	next := func(i int) uint8 {
		if i+1 < len(p.exts) {
			return p.exts[i+1].kind
		}
		return p.proto
	}
	for i, e := range p.exts {
		switch e.kind {
		case ipv6Fragment:
			exts = append(exts, next(i), 0, byte(e.fragOff>>5), byte(e.fragOff<<3)|1, 0, 0, 0, 42)
		case ipv6Routing:
			// Type 0 with no segments left, then one address.
			exts = append(exts, next(i), 2, 0, 0, 0, 0, 0, 0)
			exts = append(exts, make([]byte, 16)...)
		default:
			// A PadN option filling the 8 bytes.
			exts = append(exts, next(i), 0, 1, 4, 0, 0, 0, 0)
		}
	}
	first := p.proto
	if len(p.exts) > 0 {
		first = p.exts[0].kind
	}
	b = make([]byte, header.IPv6MinimumSize+len(exts)+len(l4))
	header.IPv6(b).Encode(&header.IPv6Fields{
		PayloadLength: uint16(len(exts) + len(l4)), TransportProtocol: tcpip.TransportProtocolNumber(first), HopLimit: 64,
		SrcAddr: tcpip.AddrFrom16(src.As16()), DstAddr: tcpip.AddrFrom16(dst.As16()),
	})
	copy(b[40:], exts)
	copy(b[40+len(exts):], l4)
	return p.cut(b), 40 + len(exts)
}

func (p pkt) cut(b []byte) []byte {
	if p.short > 0 && p.short < len(b) {
		return b[:p.short]
	}
	return b
}

func newPool(t testing.TB) *mbuf.Pool {
	t.Helper()
	pool, err := mbuf.NewPool(dma.NewHeap(1<<20), "ipfw", 64, 2048, 128)
	if err != nil {
		t.Fatal(err)
	}
	return pool
}

// chain puts b in mbufs from pool: one buffer, or two split at split
// bytes when 0 < split < len(b). The caller frees it.
func chain(t testing.TB, pool *mbuf.Pool, b []byte, split int) *mbuf.Mbuf {
	t.Helper()
	if split <= 0 || split >= len(b) {
		split = len(b)
	}
	m := pool.Get()
	if m == nil {
		t.Fatal("pool empty")
	}
	d, ok := m.Append(split)
	if !ok {
		t.Fatalf("%d bytes do not fit a buffer", split)
	}
	copy(d, b[:split])
	if rest := b[split:]; len(rest) > 0 {
		n := pool.Get()
		d, _ := n.Append(len(rest))
		copy(d, rest)
		m.SetNext(n)
	}
	return m
}

// filter runs the packet through the firewall's filter of its family in
// direction dir (dirIn or dirOut).
func filter(fw *Firewall, m *mbuf.Mbuf, v6 bool, dir uint8, offset int, proto uint8) nke.Verdict {
	f := &Filter{fw: fw, v6: v6}
	if dir == dirIn {
		return f.FilterIPInput(&m, offset, proto)
	}
	return f.FilterIPOutput(&m)
}

// TestBuiltPackets checks the test packets with gvisor's own parsers, so
// that the firewall is not tested against its own misreading.
func TestBuiltPackets(t *testing.T) {
	for _, c := range verdictCases {
		if c.p.short > 0 || c.p.v4Frag > 0 {
			continue
		}
		b, off := c.p.build(t)
		if !c.p.v6() {
			ip := header.IPv4(b)
			if !ip.IsValid(len(b)) || ip.CalculateChecksum() != 0xffff || int(ip.HeaderLength()) != off || ip.Protocol() != c.p.proto {
				t.Errorf("%s: bad IPv4 packet % x", c.name, b)
			}
			continue
		}
		ip := header.IPv6(b)
		if !ip.IsValid(len(b)) {
			t.Errorf("%s: bad IPv6 packet", c.name)
			continue
		}
		it := header.MakeIPv6PayloadIterator(header.IPv6ExtensionHeaderIdentifier(ip.NextHeader()), buffer.MakeWithData(b[40:]))
		for {
			h, done, err := it.Next()
			if done || err != nil {
				t.Errorf("%s: no transport header: %v", c.name, err)
				break
			}
			if f, ok := h.(header.IPv6FragmentExtHdr); ok && f.FragmentOffset() != 0 {
				break
			}
			if raw, ok := h.(header.IPv6RawPayloadHeader); ok {
				if at := len(b) - int(raw.Buf.Size()); uint8(raw.Identifier) != c.p.proto || at != off {
					t.Errorf("%s: transport %d at %d, want %d at %d", c.name, raw.Identifier, at, c.p.proto, off)
				}
				raw.Buf.Release()
				break
			}
			h.Release()
		}
	}
}
