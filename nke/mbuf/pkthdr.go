package mbuf

// pkthdr is the packet header beyond the exported Flags and RcvIf fields.
// The zero value is an empty header.
type pkthdr struct {
	pktmeta
	tags [TagSlots]tagSlot
}

// pktmeta is the header without the tags, so that a reset need not clear
// the tags' bytes (TagAllocate zeroes them).
type pktmeta struct {
	// frame is 1 + the offset in buf of the frame (link) header, 0 for
	// none (xnu mbuf_pkthdr_header).
	frame int32

	vlan    uint16
	hasVLAN bool

	csumReq    CsumRequestFlags
	csumStart  uint16
	csumOffset uint16
	csumDone   CsumPerformedFlags
	csumValue  uint16

	nextPkt *Mbuf
}

func (m *Mbuf) resetHdr() {
	m.Flags, m.RcvIf = 0, 0
	m.hdr.pktmeta = pktmeta{}
	for i := range m.hdr.tags {
		m.hdr.tags[i].n = 0
	}
}

// SetFrameHeader records where the frame (link-layer) header starts,
// relative to the start of the data: 0 before demux, when the data starts
// at the link header, or -14 after an Ethernet header has been stripped
// with Adj. The position is kept as an offset within this buffer, so it
// stays put while the data start moves (xnu mbuf_pkthdr_setheader). It
// reports false, changing nothing, when the position is outside the buffer.
func (m *Mbuf) SetFrameHeader(off int) bool {
	at := m.off + off
	if off < -m.off || at > len(m.buf) {
		return false
	}
	m.hdr.frame = int32(at) + 1
	return true
}

// ClearFrameHeader forgets the frame header.
func (m *Mbuf) ClearFrameHeader() { m.hdr.frame = 0 }

// FrameHeader returns the frame header: the bytes from its recorded start
// to the start of the data, as they lie in the headroom after demux
// (xnu mbuf_pkthdr_header). It is nil when none was set or the data start
// is no longer after it. It aliases the buffer.
func (m *Mbuf) FrameHeader() []byte {
	at := int(m.hdr.frame) - 1
	if at < 0 || at >= m.off {
		return nil
	}
	return m.buf[at:m.off:m.off]
}

// CsumRequestFlags are the checksums the stack left for the device to
// compute on output (xnu mbuf_csum_request_flags_t).
type CsumRequestFlags uint8

// Checksum offload requests. At most one of the transport-layer requests
// may be set; it needs CsumStart and CsumOffset as virtio's
// VIRTIO_NET_HDR_F_NEEDS_CSUM does.
const (
	CsumReqIP    CsumRequestFlags = 1 << iota // IPv4 header checksum (xnu CSUM_IP)
	CsumReqTCP                                // TCP over IPv4 (CSUM_TCP)
	CsumReqUDP                                // UDP over IPv4 (CSUM_UDP)
	CsumReqTCPv6                              // TCP over IPv6 (CSUM_TCPIPV6)
	CsumReqUDPv6                              // UDP over IPv6 (CSUM_UDPIPV6)

	csumReqL4  = CsumReqTCP | CsumReqUDP | CsumReqTCPv6 | CsumReqUDPv6
	csumReqAll = CsumReqIP | csumReqL4
)

// CsumRequest is a packet's output checksum offload request.
type CsumRequest struct {
	Flags CsumRequestFlags
	// CsumStart is where checksumming starts, in bytes from the start of
	// the packet's data (virtio csum_start).
	CsumStart uint16
	// CsumOffset is where the checksum goes, in bytes from CsumStart
	// (virtio csum_offset): 16 for TCP, 6 for UDP.
	CsumOffset uint16
}

// CsumRequested returns the packet's checksum offload request (xnu
// mbuf_get_csum_requested).
func (m *Mbuf) CsumRequested() CsumRequest {
	return CsumRequest{Flags: m.hdr.csumReq, CsumStart: m.hdr.csumStart, CsumOffset: m.hdr.csumOffset}
}

// SetCsumRequested sets the packet's checksum offload request (xnu
// mbuf_set_csum_requested). It reports false, changing nothing, for
// unknown flags, more than one transport-layer request, a CsumOffset that
// does not match the transport (16 for TCP, 6 for UDP), or a start or
// offset without a transport-layer request.
func (m *Mbuf) SetCsumRequested(r CsumRequest) bool {
	if r.Flags&^csumReqAll != 0 {
		return false
	}
	switch l4 := r.Flags & csumReqL4; l4 {
	case 0:
		if r.CsumStart != 0 || r.CsumOffset != 0 {
			return false
		}
	case CsumReqTCP, CsumReqTCPv6:
		if r.CsumOffset != 16 {
			return false
		}
	case CsumReqUDP, CsumReqUDPv6:
		if r.CsumOffset != 6 {
			return false
		}
	default:
		return false
	}
	m.hdr.csumReq, m.hdr.csumStart, m.hdr.csumOffset = r.Flags, r.CsumStart, r.CsumOffset
	return true
}

// CsumPerformedFlags are the checksums the device (or a filter) verified
// on input (xnu mbuf_csum_performed_flags_t).
type CsumPerformedFlags uint8

// Checksum offload results.
const (
	CsumIPChecked CsumPerformedFlags = 1 << iota // IPv4 header checksum checked (CSUM_IP_CHECKED)
	CsumIPValid                                  // ... and it was valid (CSUM_IP_VALID)
	CsumDataValid                                // transport checksum computed (CSUM_DATA_VALID)
	CsumPseudoHdr                                // ... including the pseudo header: valid as is (CSUM_PSEUDO_HDR)

	csumDoneAll = CsumIPChecked | CsumIPValid | CsumDataValid | CsumPseudoHdr
)

// CsumPerformed returns the checksums verified on input and, with
// CsumDataValid but not CsumPseudoHdr, the transport checksum computed
// over the data (xnu mbuf_get_csum_performed).
func (m *Mbuf) CsumPerformed() (flags CsumPerformedFlags, value uint16) {
	return m.hdr.csumDone, m.hdr.csumValue
}

// SetCsumPerformed records verified checksums (xnu
// mbuf_set_csum_performed). It reports false, changing nothing, for
// unknown flags, CsumIPValid without CsumIPChecked, or CsumPseudoHdr
// without CsumDataValid.
func (m *Mbuf) SetCsumPerformed(flags CsumPerformedFlags, value uint16) bool {
	if flags&^csumDoneAll != 0 ||
		flags&CsumIPValid != 0 && flags&CsumIPChecked == 0 ||
		flags&CsumPseudoHdr != 0 && flags&CsumDataValid == 0 {
		return false
	}
	m.hdr.csumDone, m.hdr.csumValue = flags, value
	return true
}

// VLAN returns the packet's 802.1Q tag control information, when it has
// one out of band (xnu mbuf_get_vlan_tag).
func (m *Mbuf) VLAN() (tag uint16, ok bool) { return m.hdr.vlan, m.hdr.hasVLAN }

// SetVLAN gives the packet an out-of-band 802.1Q tag control information
// (priority, DEI and VLAN id as on the wire; xnu mbuf_set_vlan_tag).
func (m *Mbuf) SetVLAN(tag uint16) { m.hdr.vlan, m.hdr.hasVLAN = tag, true }

// ClearVLAN removes the VLAN tag (xnu mbuf_clear_vlan_tag).
func (m *Mbuf) ClearVLAN() { m.hdr.vlan, m.hdr.hasVLAN = 0, false }

// NextPkt is the next packet of a packet list, or nil (xnu mbuf_nextpkt).
// Free frees one packet only; FreeList frees the list.
func (m *Mbuf) NextPkt() *Mbuf { return m.hdr.nextPkt }

// SetNextPkt links packet n after packet m in a list (xnu
// mbuf_setnextpkt).
func (m *Mbuf) SetNextPkt(n *Mbuf) { m.hdr.nextPkt = n }

// FreeList frees every packet of the list starting at m (xnu
// mbuf_freem_list).
func (m *Mbuf) FreeList() {
	for m != nil {
		next := m.hdr.nextPkt
		m.hdr.nextPkt = nil
		m.Free()
		m = next
	}
}

// CopyPktHdr copies src's packet header to dst (xnu mbuf_copy_pkthdr):
// Flags, RcvIf, checksum offload state, the VLAN tag and the tags, but not
// the next-packet link. The frame header is copied with its bytes when
// dst's leading space holds it, and cleared on dst otherwise, so that
// dst.FrameHeader() is either equal to src's or nil.
func CopyPktHdr(dst, src *Mbuf) {
	if dst == src {
		return
	}
	next := dst.hdr.nextPkt
	dst.Flags, dst.RcvIf = src.Flags, src.RcvIf
	dst.hdr = src.hdr
	dst.hdr.nextPkt = next
	dst.hdr.frame = 0
	if fh := src.FrameHeader(); fh != nil && len(fh) <= dst.LeadingSpace() {
		copy(dst.buf[dst.off-len(fh):], fh)
		dst.hdr.frame = int32(dst.off-len(fh)) + 1
	}
}

// moveHdr moves m's packet header to n, which becomes the first buffer.
// When m is shared its header stays, for the other owner.
func (m *Mbuf) moveHdr(n *Mbuf) {
	n.Flags, n.RcvIf = m.Flags, m.RcvIf
	n.hdr = m.hdr
	n.hdr.frame = 0
	if m.refs.Load() == 1 {
		m.resetHdr()
	}
}
