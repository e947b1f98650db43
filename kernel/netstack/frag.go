package netstack

import (
	"encoding/binary"
	"math/rand/v2"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/nke-harness/nke/nke/mbuf"
)

// Reasons fragment refuses a datagram.
const (
	fragOK        = iota
	fragDontFrag  // IPv4 with DF set
	fragMTU       // the MTU leaves no room for 8 bytes of payload
	fragNoBufs    // the pool ran out
	fragMalformed // the headers do not parse
)

// fragIDs hands out IPv6 fragment ids for datagrams that had none (an
// output filter made them larger than the MTU); IPv4 datagrams keep their
// header's id.
var fragIDs atomic.Uint32

func init() { fragIDs.Store(rand.Uint32()) }

// fragment splits datagram m (data at its IP header, whole, in parsed by
// parseIP) into packets of at most mtu bytes of IP each, each link (nil:
// none) then a fragment, appended to dst. IPv6 fragments carry id (0: a fresh one). m
// is not consumed; on failure nothing is appended and the reason is
// returned.
func fragment(dst []*mbuf.Mbuf, pool *mbuf.Pool, m *mbuf.Mbuf, in *ipInfo, mtu int, link []byte, id uint32) ([]*mbuf.Mbuf, int) {
	var hdr [maxUnfrag]byte
	unfrag, nhOff := in.hdrLen, 0
	extra := 0 // the fragment header's bytes
	if in.v6 {
		unfrag, nhOff = unfragmentable(m)
		if unfrag < 0 || unfrag > maxUnfrag {
			return dst, fragMalformed
		}
		extra = fragHdrLen
		if id == 0 {
			id = fragIDs.Add(1)
		}
	}
	if unfrag > in.totalLen || m.CopyOut(hdr[:unfrag]) != unfrag {
		return dst, fragMalformed
	}
	if !in.v6 && hdr[6]&0x40 != 0 {
		return dst, fragDontFrag
	}
	chunk := (mtu - unfrag - extra) &^ 7
	if chunk < 8 {
		return dst, fragMTU
	}
	payload := in.totalLen - unfrag
	first := len(dst)
	origNH := hdr[nhOff]
	for off := 0; off < payload; off += chunk {
		l := min(chunk, payload-off)
		lh := len(link)
		f := pool.AllocPacket(lh + unfrag + extra + l)
		if f == nil {
			mbuf.FreeBatch(dst[first:])
			return dst[:first], fragNoBufs
		}
		f.CopyBack(0, link)
		f.CopyBack(lh, hdr[:unfrag])
		copyRange(f, lh+unfrag+extra, m, unfrag+off, l)
		b := f.Bytes()[lh:] // the first buffer holds the headers
		more := off+l < payload
		if in.v6 {
			binary.BigEndian.PutUint16(b[4:], uint16(unfrag-ipv6HdrLen+extra+l))
			b[nhOff] = protoFragment
			fh := b[unfrag : unfrag+fragHdrLen]
			fh[0], fh[1] = origNH, 0
			ff := uint16(off)
			if more {
				ff |= 1
			}
			binary.BigEndian.PutUint16(fh[2:], ff)
			binary.BigEndian.PutUint32(fh[4:], id)
		} else {
			ip := header.IPv4(b)
			ip.SetTotalLength(uint16(unfrag + l))
			var flags uint8
			if more {
				flags = header.IPv4FlagMoreFragments
			}
			ip.SetFlagsFragmentOffset(flags, uint16(off))
			ip.SetChecksum(0)
			ip.SetChecksum(^ip.CalculateChecksum())
		}
		dst = append(dst, f)
	}
	return dst, fragOK
}

// unfragmentable returns the length of an IPv6 packet's unfragmentable
// part (RFC 8200 section 4.5: the header, then Hop-by-Hop, Routing and the
// Destination Options before a Routing header) and the offset of the Next
// Header byte the fragment header goes after; -1 when it does not parse.
func unfragmentable(m *mbuf.Mbuf) (int, int) {
	var scratch [maxParseHead]byte
	b := head(m, &scratch)
	if len(b) < ipv6HdrLen {
		return -1, 0
	}
	nh, p := b[6], ipv6HdrLen
	end, endNH := p, 6
	for nh == protoHopByHop || nh == protoRouting || nh == protoDstOpts {
		if p+8 > len(b) {
			return -1, 0
		}
		typ, cur := nh, p
		nh, p = b[p], p+(int(b[p+1])+1)*8
		if typ != protoDstOpts {
			end, endNH = p, cur
		}
	}
	return end, endNH
}
