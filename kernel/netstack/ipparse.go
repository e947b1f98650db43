package netstack

import (
	"encoding/binary"

	"github.com/nke-harness/nke/nke/mbuf"
)

// IP protocol numbers the parsers need.
const (
	protoHopByHop = 0
	protoRouting  = 43
	protoFragment = 44
	protoAH       = 51
	protoNoNext   = 59
	protoDstOpts  = 60

	ethHdrLen    = 14
	ipv4MinLen   = 20
	ipv6HdrLen   = 40
	fragHdrLen   = 8
	maxIPPacket  = 65535
	maxParseHead = 256 // bytes of headers the parsers look at
)

// ipInfo is what the data path needs of an IP packet's headers.
type ipInfo struct {
	v6       bool
	totalLen int   // IPv4 total length, IPv6 40 + payload length
	hdrLen   int   // IPv4 header length; IPv6 40
	proto    uint8 // transport protocol (after IPv6 extension headers)
	transOff int   // where the transport header starts

	// Fragments (frag true): the offset of the payload in the datagram,
	// whether more follow, and the datagram's id.
	frag    bool
	fragOff int
	more    bool
	id      uint32
	// unfrag is the length of the part every fragment repeats (IPv4: the
	// header; IPv6: the header and the extension headers before the
	// fragment header) and payOff where the fragment's payload starts.
	unfrag int
	payOff int
	// nhOff is the offset of the Next Header byte that names the fragment
	// header and fragNH the fragment header's own Next Header (IPv6
	// only).
	nhOff  int
	fragNH uint8
	src    [16]byte
	dst    [16]byte
}

// head returns the first bytes of m's packet, up to maxParseHead, without
// copying when its first buffer holds them; else it copies into scratch.
func head(m *mbuf.Mbuf, scratch *[maxParseHead]byte) []byte {
	b := m.Bytes()
	if len(b) >= maxParseHead || m.Next() == nil {
		return b
	}
	n := m.CopyOut(scratch[:])
	return scratch[:n]
}

// parseIP parses the IP header at the start of b (the first bytes of a
// packet of pktLen bytes) and reports whether it is well formed: the
// version is the family's, the lengths fit in the packet, and the
// extension headers the parser walks fit in b.
func parseIP(b []byte, pktLen int, v6 bool) (ipInfo, bool) {
	var in ipInfo
	in.v6 = v6
	if !v6 {
		if len(b) < ipv4MinLen || b[0]>>4 != 4 {
			return in, false
		}
		ihl := int(b[0]&0xf) * 4
		tl := int(binary.BigEndian.Uint16(b[2:]))
		if ihl < ipv4MinLen || len(b) < ihl || tl < ihl || tl > pktLen {
			return in, false
		}
		in.totalLen, in.hdrLen, in.unfrag, in.payOff, in.transOff = tl, ihl, ihl, ihl, ihl
		in.proto = b[9]
		ff := binary.BigEndian.Uint16(b[6:])
		in.fragOff = int(ff&0x1fff) * 8
		in.more = ff&0x2000 != 0
		in.frag = in.more || in.fragOff != 0
		in.id = uint32(binary.BigEndian.Uint16(b[4:]))
		copy(in.src[:4], b[12:16])
		copy(in.dst[:4], b[16:20])
		return in, true
	}
	if len(b) < ipv6HdrLen || b[0]>>4 != 6 {
		return in, false
	}
	tl := ipv6HdrLen + int(binary.BigEndian.Uint16(b[4:]))
	if tl > pktLen {
		return in, false
	}
	in.totalLen, in.hdrLen = tl, ipv6HdrLen
	copy(in.src[:], b[8:24])
	copy(in.dst[:], b[24:40])
	nh, p, nhOff := b[6], ipv6HdrLen, 6
	for {
		switch nh {
		case protoHopByHop, protoRouting, protoDstOpts, protoAH:
			if p+8 > len(b) || p+8 > tl {
				return in, false
			}
			l := (int(b[p+1]) + 1) * 8
			if nh == protoAH {
				l = (int(b[p+1]) + 2) * 4
			}
			if p+l > tl {
				return in, false
			}
			nh, nhOff, p = b[p], p, p+l
			continue
		case protoFragment:
			if in.frag || p+fragHdrLen > len(b) || p+fragHdrLen > tl {
				return in, false // a second fragment header is malformed
			}
			ff := binary.BigEndian.Uint16(b[p+2:])
			in.frag = true
			in.fragOff = int(ff &^ 7)
			in.more = ff&1 != 0
			in.id = binary.BigEndian.Uint32(b[p+4:])
			in.unfrag, in.nhOff, in.payOff, in.fragNH = p, nhOff, p+fragHdrLen, b[p]
			nh, nhOff, p = b[p], p, p+fragHdrLen
			if in.fragOff != 0 {
				// The rest is payload of a later fragment: its proto
				// is the fragment header's next header.
				in.proto, in.transOff = nh, p
				return in, true
			}
			continue
		}
		in.proto, in.transOff = nh, p
		if !in.frag {
			in.payOff = p
		}
		return in, true
	}
}
