// Package cmsg is socket ancillary data (control messages) as the socket
// layer and socket filters pass it: the control mbuf of a filter's data
// in and data out, and the oob buffer of ReadMsgUDP and WriteMsgUDP.
//
// The bytes are Linux's layout on a 64-bit machine (struct cmsghdr: a
// uint64 length, an int32 level and an int32 type, data padded to 8
// bytes; integers in the machine's byte order), so code that reads
// control messages from a kernel socket (syscall.ParseSocketControlMessage,
// golang.org/x/net/ipv4.ControlMessage) reads ours, and Apple's filters,
// which see BSD's cmsghdr in an mbuf, map one to one.
package cmsg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Levels and types of the messages the socket layer produces and
// accepts (Linux's values).
const (
	LevelIP   = 0  // SOL_IP
	LevelIPv6 = 41 // SOL_IPV6

	IPTOS     = 1 // IP_TOS: one byte
	IPTTL     = 2 // IP_TTL: an int32
	IPPktInfo = 8 // IP_PKTINFO: struct in_pktinfo

	IPv6PktInfo  = 50 // IPV6_PKTINFO: struct in6_pktinfo
	IPv6HopLimit = 52 // IPV6_HOPLIMIT: an int32
	IPv6TClass   = 67 // IPV6_TCLASS: an int32
)

const (
	hdrLen = 16
	align  = 8

	inPktInfoLen  = 12 // ifindex, spec_dst, addr
	in6PktInfoLen = 20 // addr, ifindex
)

// Errors.
var (
	// ErrMalformed is a control buffer whose headers do not add up.
	ErrMalformed = errors.New("cmsg: malformed control message")
	// ErrUnsupported is a well-formed message the socket layer does
	// not implement.
	ErrUnsupported = errors.New("cmsg: control message not supported")
)

// Message is one control message; Data aliases the buffer parsed.
type Message struct {
	Level, Type int32
	Data        []byte
}

// Space is the room a message with n bytes of data takes (CMSG_SPACE).
func Space(n int) int { return hdrLen + (n+align-1)&^(align-1) }

// Append appends a message to b.
func Append(b []byte, level, typ int32, data []byte) []byte {
	var h [hdrLen]byte
	binary.NativeEndian.PutUint64(h[0:], uint64(hdrLen+len(data)))
	binary.NativeEndian.PutUint32(h[8:], uint32(level))
	binary.NativeEndian.PutUint32(h[12:], uint32(typ))
	b = append(b, h[:]...)
	b = append(b, data...)
	for pad := Space(len(data)) - hdrLen - len(data); pad > 0; pad-- {
		b = append(b, 0)
	}
	return b
}

// Next splits the first message off b: it returns the message and what
// follows it. b must not be empty.
func Next(b []byte) (Message, []byte, error) {
	if len(b) < hdrLen {
		return Message{}, nil, fmt.Errorf("%w: %d bytes left, a header is %d", ErrMalformed, len(b), hdrLen)
	}
	n := binary.NativeEndian.Uint64(b)
	if n < hdrLen || n > uint64(len(b)) {
		return Message{}, nil, fmt.Errorf("%w: length %d with %d bytes left", ErrMalformed, n, len(b))
	}
	m := Message{
		Level: int32(binary.NativeEndian.Uint32(b[8:])),
		Type:  int32(binary.NativeEndian.Uint32(b[12:])),
		Data:  b[hdrLen:n],
	}
	next := min(uint64(Space(int(n-hdrLen))), uint64(len(b)))
	return m, b[next:], nil
}

// Control is the ancillary data the socket layer knows, decoded.
type Control struct {
	// HasPacketInfo: IP_PKTINFO or IPV6_PKTINFO. On receive, Addr is
	// the datagram's destination address and IfIndex the interface it
	// came in on; on send (IPv6 only), Addr is the source address to
	// use and IfIndex the interface (0: any).
	HasPacketInfo bool
	Addr          netip.Addr
	IfIndex       int32
	// HasTOS: IP_TOS (IPv4), IPV6_TCLASS (IPv6), on receive.
	HasTOS bool
	TOS    uint8
	// HasTTL: IP_TTL (IPv4) or IPV6_HOPLIMIT (IPv6): on receive the
	// datagram's, on send the one to send it with.
	HasTTL bool
	TTL    uint8
}

// Append appends c's messages to b, in IPv6's form if v6.
func (c *Control) Append(b []byte, v6 bool) []byte {
	var d [in6PktInfoLen]byte
	if v6 {
		if c.HasPacketInfo {
			a := c.Addr.As16()
			copy(d[:16], a[:])
			binary.NativeEndian.PutUint32(d[16:], uint32(c.IfIndex))
			b = Append(b, LevelIPv6, IPv6PktInfo, d[:in6PktInfoLen])
		}
		if c.HasTOS {
			binary.NativeEndian.PutUint32(d[:], uint32(c.TOS))
			b = Append(b, LevelIPv6, IPv6TClass, d[:4])
		}
		if c.HasTTL {
			binary.NativeEndian.PutUint32(d[:], uint32(c.TTL))
			b = Append(b, LevelIPv6, IPv6HopLimit, d[:4])
		}
		return b
	}
	if c.HasPacketInfo {
		a := c.Addr.As4()
		binary.NativeEndian.PutUint32(d[0:], uint32(c.IfIndex))
		copy(d[4:8], a[:]) // ipi_spec_dst: the local address
		copy(d[8:12], a[:])
		b = Append(b, LevelIP, IPPktInfo, d[:inPktInfoLen])
	}
	if c.HasTOS {
		b = Append(b, LevelIP, IPTOS, []byte{c.TOS})
	}
	if c.HasTTL {
		binary.NativeEndian.PutUint32(d[:], uint32(c.TTL))
		b = Append(b, LevelIP, IPTTL, d[:4])
	}
	return b
}

// Parse decodes b, a buffer of messages for a socket of IPv6 if v6,
// else IPv4. A message of another level, an unknown type or a wrong
// size is an error naming it; c holds what came before it.
func (c *Control) Parse(b []byte, v6 bool) error {
	*c = Control{}
	for len(b) > 0 {
		m, rest, err := Next(b)
		if err != nil {
			return err
		}
		b = rest
		if err := c.decode(m, v6); err != nil {
			return err
		}
	}
	return nil
}

func (c *Control) decode(m Message, v6 bool) error {
	size := func(n int) error {
		if len(m.Data) != n {
			return fmt.Errorf("%w: %s with %d bytes of data, want %d", ErrMalformed, name(m.Level, m.Type), len(m.Data), n)
		}
		return nil
	}
	int8of := func() (uint8, error) {
		if err := size(4); err != nil {
			return 0, err
		}
		v := int32(binary.NativeEndian.Uint32(m.Data))
		if v < 0 || v > 255 {
			return 0, fmt.Errorf("%w: %s value %d out of range 0-255", ErrMalformed, name(m.Level, m.Type), v)
		}
		return uint8(v), nil
	}
	var err error
	switch {
	case !v6 && m.Level == LevelIP && m.Type == IPPktInfo:
		if err = size(inPktInfoLen); err == nil {
			c.HasPacketInfo = true
			c.IfIndex = int32(binary.NativeEndian.Uint32(m.Data))
			c.Addr = netip.AddrFrom4([4]byte(m.Data[8:12]))
		}
	case !v6 && m.Level == LevelIP && m.Type == IPTOS:
		if err = size(1); err == nil {
			c.HasTOS, c.TOS = true, m.Data[0]
		}
	case !v6 && m.Level == LevelIP && m.Type == IPTTL:
		c.TTL, err = int8of()
		c.HasTTL = err == nil
	case v6 && m.Level == LevelIPv6 && m.Type == IPv6PktInfo:
		if err = size(in6PktInfoLen); err == nil {
			c.HasPacketInfo = true
			c.Addr = netip.AddrFrom16([16]byte(m.Data[:16]))
			c.IfIndex = int32(binary.NativeEndian.Uint32(m.Data[16:]))
		}
	case v6 && m.Level == LevelIPv6 && m.Type == IPv6TClass:
		c.TOS, err = int8of()
		c.HasTOS = err == nil
	case v6 && m.Level == LevelIPv6 && m.Type == IPv6HopLimit:
		c.TTL, err = int8of()
		c.HasTTL = err == nil
	default:
		fam := "IPv4"
		if v6 {
			fam = "IPv6"
		}
		return fmt.Errorf("%w on an %s socket: %s", ErrUnsupported, fam, name(m.Level, m.Type))
	}
	return err
}

func name(level, typ int32) string {
	switch {
	case level == LevelIP && typ == IPTOS:
		return "IP_TOS"
	case level == LevelIP && typ == IPTTL:
		return "IP_TTL"
	case level == LevelIP && typ == IPPktInfo:
		return "IP_PKTINFO"
	case level == LevelIPv6 && typ == IPv6PktInfo:
		return "IPV6_PKTINFO"
	case level == LevelIPv6 && typ == IPv6HopLimit:
		return "IPV6_HOPLIMIT"
	case level == LevelIPv6 && typ == IPv6TClass:
		return "IPV6_TCLASS"
	}
	return fmt.Sprintf("level %d type %d", level, typ)
}
