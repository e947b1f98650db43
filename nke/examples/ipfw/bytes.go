package ipfw

import (
	"encoding/binary"

	"github.com/nke-harness/nke/nke"
)

// The firewall over contiguous bytes instead of an mbuf chain: what its
// WebAssembly twin (nke/wasm/examples/wasmfw) calls on the copy of a
// packet the host hands it. Same parsing, same rules, same counters as
// FilterIPInput and FilterIPOutput (TestBytesMatchMbuf holds them equal).
// A packet cut short here is judged like an mbuf packet that ends there.

// DecideInput judges a received packet: b starts at the IP header, offset
// and proto are the hook's.
func (fw *Firewall) DecideInput(b []byte, v6 bool, offset int, proto uint8) nke.Verdict {
	rs := fw.set.Load()
	var p packet
	n := 20
	if v6 {
		n = 40
	}
	h := b[:min(n, len(b))]
	p.addresses(h, v6)
	p.hasProto, p.proto = true, proto
	if len(h) == n && !v6 && v4Later(h) {
		return rs.decide(&p, dirIn)
	}
	p.transportBytes(rs, b, offset)
	return rs.decide(&p, dirIn)
}

// DecideOutput judges a packet being sent: b starts at the IP header.
func (fw *Firewall) DecideOutput(b []byte, v6 bool) nke.Verdict {
	rs := fw.set.Load()
	var p packet
	p.outputBytes(rs, b, v6)
	return rs.decide(&p, dirOut)
}

func (p *packet) outputBytes(rs *ruleset, b []byte, v6 bool) {
	if !v6 {
		h := b[:min(20, len(b))]
		p.addresses(h, false)
		if len(h) < 20 {
			return
		}
		p.hasProto, p.proto = true, h[9]
		ihl := int(h[0]&0xf) * 4
		if ihl < 20 || v4Later(h) {
			return
		}
		p.transportBytes(rs, b, ihl)
		return
	}
	h := b[:min(40, len(b))]
	p.addresses(h, true)
	if len(h) < 40 {
		return
	}
	nh, off := h[6], 40
	for {
		switch nh {
		case ipv6HopByHop, ipv6Routing, ipv6DestOpts:
			if off < 0 || off+2 > len(b) {
				p.hasProto, p.proto = true, nh
				return
			}
			nh, off = b[off], off+(int(b[off+1])+1)*8
			continue
		case ipv6Fragment:
			if off < 0 || off+4 > len(b) {
				p.hasProto, p.proto = true, nh
				return
			}
			frag := binary.BigEndian.Uint16(b[off+2 : off+4])
			nh, off = b[off], off+8
			if frag&^7 != 0 {
				p.hasProto, p.proto = true, nh
				return
			}
			continue
		}
		break
	}
	p.hasProto, p.proto = true, nh
	p.transportBytes(rs, b, off)
}

func (p *packet) transportBytes(rs *ruleset, b []byte, off int) {
	if !rs.needPorts || (p.proto != ProtoTCP && p.proto != ProtoUDP) || off < 0 || off > len(b)-4 {
		return
	}
	p.sport = binary.BigEndian.Uint16(b[off : off+2])
	p.dport = binary.BigEndian.Uint16(b[off+2 : off+4])
	p.hasPorts = true
}
