// Package frametest builds and parses the Ethernet frames tests send and
// expect: Ethernet II, 802.3 with an 802.2 LLC header (SAP) and SNAP,
// 802.1Q (and 802.1ad) tags, ARP, IPv4 and IPv6 with UDP, TCP and ICMP
// echo, IPv4 fragments and IPv6 fragment headers, every checksum right.
//
// A Frame is both what a builder makes and what Parse returns: Parse
// decodes what Marshal encodes, and Parse(f.Bytes()) is f again for the
// frames the New* constructors make. Ethernet framing is
// github.com/mdlayher/ethernet's (which pads to the 60-byte minimum, as a
// wire would), IP and transport headers are gVisor's tcpip/header.
//
// It is test support: it allocates freely, and imports nothing of the
// module outside nke/ (layering_test.go), so any package's tests may use it.
package frametest

import (
	"errors"
	"net"
	"net/netip"

	"github.com/mdlayher/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Errors from Parse (wrapped, with the layer and the numbers at fault).
var (
	// ErrTruncated: a header runs past the end of the frame.
	ErrTruncated = errors.New("frametest: truncated")
	// ErrLength: a length field disagrees with the bytes there are.
	ErrLength = errors.New("frametest: length field disagrees with the frame")
	// ErrMalformed: a field holds a value no sender may put there
	// (IP version, header length below the minimum, reserved bits, VLAN
	// id 0xfff, an EtherType between 1501 and 1535).
	ErrMalformed = errors.New("frametest: malformed header")
	// ErrChecksum: an IPv4 header, UDP, TCP or ICMP checksum is wrong.
	// The Frame is complete nonetheless, so a test can still look at it.
	ErrChecksum = errors.New("frametest: bad checksum")
)

// Broadcast is ff:ff:ff:ff:ff:ff.
var Broadcast = ethernet.Broadcast

// EtherTypes and IP protocol numbers tests use.
const (
	EtherTypeIPv4 = ethernet.EtherTypeIPv4
	EtherTypeARP  = ethernet.EtherTypeARP
	EtherTypeIPv6 = ethernet.EtherTypeIPv6
	EtherTypeVLAN = ethernet.EtherTypeVLAN

	ProtoICMPv4 = uint8(header.ICMPv4ProtocolNumber)
	ProtoTCP    = uint8(header.TCPProtocolNumber)
	ProtoUDP    = uint8(header.UDPProtocolNumber)
	ProtoICMPv6 = uint8(header.ICMPv6ProtocolNumber)
	// ProtoFragment is IPv6's fragment extension header.
	ProtoFragment = uint8(header.IPv6FragmentHeader)
)

// Frame is one Ethernet frame, layer by layer. At most one of ARP, IPv4
// and IPv6 is set, and at most one of UDP, TCP and ICMP (under IPv4 or
// IPv6). Fields left zero in a Frame given to Marshal are filled in where
// they follow from the rest: the EtherType from the network layer, the IP
// protocol from the transport layer, lengths and checksums always.
type Frame struct {
	Dst, Src net.HardwareAddr
	// ServiceVLAN is an outer 802.1ad tag; it needs VLAN as well.
	ServiceVLAN *ethernet.VLAN
	// VLAN is the 802.1Q tag, nil for an untagged frame.
	VLAN *ethernet.VLAN
	// EtherType is the Ethernet II type; it is zero in an 802.3 frame
	// (LLC set), whose length field Marshal computes.
	EtherType ethernet.EtherType
	// LLC is the 802.2 header of an 802.3 frame.
	LLC *LLC
	// SNAP follows an LLC header of AA AA 03 (Marshal supplies that LLC
	// when SNAP is set alone). With OUI 00-00-00 its PID is an EtherType
	// and the network layer is decoded as in Ethernet II.
	SNAP *SNAP

	ARP  *ARP
	IPv4 *IPv4
	IPv6 *IPv6

	UDP  *UDP
	TCP  *TCP
	ICMP *ICMP // ICMPv4 under IPv4, ICMPv6 under IPv6

	// Payload is the innermost part not decoded: the transport payload;
	// the data of an IP fragment; the IP payload of a protocol frametest
	// does not decode; the Ethernet (or LLC) payload of an EtherType (or
	// SAP) it does not decode. Nil when empty.
	Payload []byte
	// Trailer is whatever follows the network layer's packet in the
	// Ethernet payload, unless it is exactly the zero padding Marshal adds
	// (to a 46-byte payload), which Parse drops. Nil when empty.
	Trailer []byte
}

// LLC is an 802.2 header.
type LLC struct {
	DSAP, SSAP uint8
	// Control is one byte for U-format frames (low two bits 11, e.g.
	// 0x03 UI), else two bytes, the first in the low byte.
	Control uint16
}

// SNAP is the 5-byte SubNetwork Access Protocol header.
type SNAP struct {
	OUI [3]byte
	PID uint16
}

// ARP is an ARP packet for IPv4 over Ethernet (the only kind Parse decodes;
// others stay in Payload).
type ARP struct {
	Op                   header.ARPOp
	SenderMAC, TargetMAC net.HardwareAddr
	SenderIP, TargetIP   netip.Addr
}

// IPv4 is an IPv4 header.
type IPv4 struct {
	Src, Dst netip.Addr
	TOS      uint8
	ID       uint16
	// Flags are the three flag bits (header.IPv4FlagDontFragment,
	// header.IPv4FlagMoreFragments; the top one is reserved).
	Flags uint8
	// FragmentOffset is in bytes (a multiple of 8).
	FragmentOffset uint16
	TTL            uint8
	Protocol       uint8
	// Options are the raw options (a multiple of 4 bytes, at most 40).
	Options []byte
}

// More reports whether the more-fragments flag is set.
func (ip *IPv4) More() bool { return ip.Flags&header.IPv4FlagMoreFragments != 0 }

// IsFragment reports whether the packet is a fragment (offset or MF).
func (ip *IPv4) IsFragment() bool { return ip.FragmentOffset != 0 || ip.More() }

// IPv6 is an IPv6 header, with its fragment header if there is one.
type IPv6 struct {
	Src, Dst     netip.Addr
	TrafficClass uint8
	FlowLabel    uint32
	HopLimit     uint8
	// NextHeader is the upper-layer protocol: after the fragment header
	// when there is one (the fixed header then says 44).
	NextHeader uint8
	Fragment   *Fragment6
}

// Fragment6 is an IPv6 fragment extension header.
type Fragment6 struct {
	Offset uint16 // in bytes, a multiple of 8
	More   bool
	ID     uint32
}

// UDP is a UDP header; Marshal computes length and checksum.
type UDP struct {
	SrcPort, DstPort uint16
	// NoChecksum: the checksum field is zero (allowed over IPv4 only).
	NoChecksum bool
}

// TCP is a TCP header; Marshal computes data offset and checksum.
type TCP struct {
	SrcPort, DstPort uint16
	Seq, Ack         uint32
	Flags            header.TCPFlags
	// Reserved is the low nibble of byte 12 (reserved bits and AE/NS).
	Reserved uint8
	Window   uint16
	Urgent   uint16
	// Options are the raw options (a multiple of 4 bytes, at most 40).
	Options []byte
}

// ICMP is an ICMPv4 or ICMPv6 header: type, code, and the 4 bytes after
// the checksum, which echo messages use for identifier and sequence.
// The message body is the Frame's Payload.
type ICMP struct {
	Type, Code uint8
	Ident, Seq uint16
}

// ICMP types of the echo messages.
const (
	ICMPv4EchoRequest = uint8(header.ICMPv4Echo)
	ICMPv4EchoReply   = uint8(header.ICMPv4EchoReply)
	ICMPv6EchoRequest = uint8(header.ICMPv6EchoRequest)
	ICMPv6EchoReply   = uint8(header.ICMPv6EchoReply)
)
