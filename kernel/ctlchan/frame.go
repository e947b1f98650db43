// Package ctlchan is the control channel between nkectl on the host and
// the guest: framed, versioned, checksummed messages over one reliable
// byte stream (a virtio-console port), carrying many concurrent sessions.
//
// A frame is a 28-byte header and a payload:
//
//	off size field
//	  0    4 magic "NKEC"
//	  4    1 version (1)
//	  5    1 message type
//	  6    2 flags (bit 0: reply, from the guest)
//	  8    4 session id (one per nkectl client; the host multiplexer assigns it)
//	 12    4 request id (chosen by the client, unique within its session)
//	 16    4 payload length (at most MaxPayload)
//	 20    4 CRC32C of the payload
//	 24    4 CRC32C of bytes 0..23
//
// All integers are big-endian. The header has its own checksum so that a
// corrupt length is caught before anyone waits for the payload it claims.
// A reader that meets bytes that are not a frame (garbage, a truncated
// frame, a stream joined mid-frame) skips to the next valid header and
// reports what it skipped: see Decoder.
package ctlchan

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
)

const (
	// Magic starts every frame.
	Magic = "NKEC"
	// Version is the frame format and message set this package speaks.
	Version = 1
	// HeaderLen is the size of a frame header.
	HeaderLen = 28
	// MaxPayload bounds a frame's payload: a 2 MiB bundle archive with
	// twice that as headroom, plus room for the message's own fields.
	MaxPayload = 4<<20 + 64<<10
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Flags are a frame's flag bits.
type Flags uint16

// FlagReply marks frames the guest sends: replies and stream items.
const FlagReply Flags = 1 << 0

// Frame is one decoded frame. Payload aliases the buffer it was decoded
// from.
type Frame struct {
	Type    Type
	Flags   Flags
	Session uint32
	Request uint32
	Payload []byte
}

// Errors DecodeFrame returns. All but ErrShort mean the bytes are not a
// frame this side accepts.
var (
	ErrShort           = errors.New("ctlchan: incomplete frame")
	ErrBadMagic        = errors.New("ctlchan: bytes that are not a frame (bad magic)")
	ErrHeaderChecksum  = errors.New("ctlchan: frame header checksum mismatch")
	ErrVersion         = errors.New("ctlchan: unsupported protocol version")
	ErrTooLarge        = errors.New("ctlchan: frame payload too large")
	ErrPayloadChecksum = errors.New("ctlchan: frame payload checksum mismatch")
	ErrTruncated       = errors.New("ctlchan: truncated frame (its payload stopped arriving)")
)

// PutHeader writes f's header, for a payload of f.Payload, into h.
func PutHeader(h *[HeaderLen]byte, f *Frame) {
	copy(h[0:4], Magic)
	h[4] = Version
	h[5] = byte(f.Type)
	binary.BigEndian.PutUint16(h[6:8], uint16(f.Flags))
	binary.BigEndian.PutUint32(h[8:12], f.Session)
	binary.BigEndian.PutUint32(h[12:16], f.Request)
	binary.BigEndian.PutUint32(h[16:20], uint32(len(f.Payload)))
	binary.BigEndian.PutUint32(h[20:24], crc32.Checksum(f.Payload, castagnoli))
	binary.BigEndian.PutUint32(h[24:28], crc32.Checksum(h[0:24], castagnoli))
}

// AppendFrame appends f, encoded, to dst.
func AppendFrame(dst []byte, f Frame) ([]byte, error) {
	if len(f.Payload) > MaxPayload {
		return dst, ErrTooLarge
	}
	var h [HeaderLen]byte
	PutHeader(&h, &f)
	return append(append(dst, h[:]...), f.Payload...), nil
}

// DecodeFrame decodes the frame at the start of b and returns it and the
// bytes it spans. ErrShort means b holds the start of a frame and more
// bytes are needed; n is then the frame's whole length if the header is
// complete and valid, else 0. ErrVersion, ErrTooLarge and
// ErrPayloadChecksum come with a valid header: f has its type, session
// and request (for the error reply) but no payload, and n is the frame's
// length (ErrTooLarge: HeaderLen).
func DecodeFrame(b []byte) (f Frame, n int, err error) {
	if len(b) < HeaderLen {
		k := min(len(b), len(Magic))
		if string(b[:k]) != Magic[:k] {
			return Frame{}, 0, ErrBadMagic
		}
		return Frame{}, 0, ErrShort
	}
	if string(b[0:4]) != Magic {
		return Frame{}, 0, ErrBadMagic
	}
	if crc32.Checksum(b[0:24], castagnoli) != binary.BigEndian.Uint32(b[24:28]) {
		return Frame{}, 0, ErrHeaderChecksum
	}
	f = Frame{
		Type:    Type(b[5]),
		Flags:   Flags(binary.BigEndian.Uint16(b[6:8])),
		Session: binary.BigEndian.Uint32(b[8:12]),
		Request: binary.BigEndian.Uint32(b[12:16]),
	}
	plen := binary.BigEndian.Uint32(b[16:20])
	if plen > MaxPayload {
		return f, HeaderLen, ErrTooLarge
	}
	n = HeaderLen + int(plen)
	if len(b) < n {
		return f, n, ErrShort
	}
	if b[4] != Version {
		return f, n, ErrVersion
	}
	p := b[HeaderLen:n:n]
	if crc32.Checksum(p, castagnoli) != binary.BigEndian.Uint32(b[20:24]) {
		return f, n, ErrPayloadChecksum
	}
	f.Payload = p
	return f, n, nil
}

func crcOf(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }
