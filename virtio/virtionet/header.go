package virtionet

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/nke-harness/nke/virtio"
)

// HeaderLen is the size of struct virtio_net_hdr with VIRTIO_F_VERSION_1
// and without HASH_REPORT, spec 5.1.6: it always includes num_buffers.
const HeaderLen = 12

// Header flags and GSO types, spec 5.1.6.
const (
	HdrFNeedsCsum uint8 = 1
	HdrFDataValid uint8 = 2
	HdrFRscInfo   uint8 = 4

	GSONone uint8 = 0
)

// Header is a view of a virtio-net header, spec 5.1.6 "struct
// virtio_net_hdr": flags u8, gso_type u8, hdr_len le16, gso_size le16,
// csum_start le16, csum_offset le16, num_buffers le16.
type Header []byte

func (h Header) Flags() uint8           { return h[0] }
func (h Header) GSOType() uint8         { return h[1] }
func (h Header) HdrLen() uint16         { return binary.LittleEndian.Uint16(h[2:]) }
func (h Header) GSOSize() uint16        { return binary.LittleEndian.Uint16(h[4:]) }
func (h Header) CsumStart() uint16      { return binary.LittleEndian.Uint16(h[6:]) }
func (h Header) CsumOffset() uint16     { return binary.LittleEndian.Uint16(h[8:]) }
func (h Header) NumBuffers() uint16     { return binary.LittleEndian.Uint16(h[10:]) }
func (h Header) SetNumBuffers(n uint16) { binary.LittleEndian.PutUint16(h[10:], n) }

// HeaderFields is a decoded header, for tests and tools.
type HeaderFields struct {
	Flags, GSOType                                 uint8
	HdrLen, GSOSize, CsumStart, CsumOffset, NumBuf uint16
}

// Fields decodes h.
func (h Header) Fields() HeaderFields {
	return HeaderFields{h.Flags(), h.GSOType(), h.HdrLen(), h.GSOSize(), h.CsumStart(), h.CsumOffset(), h.NumBuffers()}
}

// Encode writes f into h.
func (h Header) Encode(f HeaderFields) {
	h[0], h[1] = f.Flags, f.GSOType
	binary.LittleEndian.PutUint16(h[2:], f.HdrLen)
	binary.LittleEndian.PutUint16(h[4:], f.GSOSize)
	binary.LittleEndian.PutUint16(h[6:], f.CsumStart)
	binary.LittleEndian.PutUint16(h[8:], f.CsumOffset)
	binary.LittleEndian.PutUint16(h[10:], f.NumBuf)
}

// Errors for received headers the driver refuses.
var (
	ErrShortHeader = errors.New("virtio-net header truncated")
	ErrHeaderGSO   = errors.New("GSO packet although no GSO feature was negotiated")
	ErrHeaderCsum  = errors.New("partial checksum although GUEST_CSUM was not negotiated")
	ErrNumBuffers  = errors.New("num_buffers out of range")
)

// CheckRxHeader validates a header the device wrote in front of a received
// packet, given the negotiated features and how many rx buffers the device
// could possibly have used (the ring size). It returns the packet's buffer
// count.
func CheckRxHeader(b []byte, fs virtio.Features, maxBufs int) (int, error) {
	if len(b) < HeaderLen {
		return 0, fmt.Errorf("%w: %d bytes", ErrShortHeader, len(b))
	}
	h := Header(b[:HeaderLen])
	if h.GSOType() != GSONone {
		return 0, fmt.Errorf("%w (gso_type %d)", ErrHeaderGSO, h.GSOType())
	}
	if h.Flags()&HdrFNeedsCsum != 0 && !fs.Has(FGuestCsum) {
		return 0, ErrHeaderCsum
	}
	if !fs.Has(FMrgRxbuf) {
		// Without MRG_RXBUF the field is not set by the device: one buffer.
		return 1, nil
	}
	n := int(h.NumBuffers())
	if n < 1 || n > maxBufs {
		return 0, fmt.Errorf("%w: %d (1..%d)", ErrNumBuffers, n, maxBufs)
	}
	return n, nil
}
