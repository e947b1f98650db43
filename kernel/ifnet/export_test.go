package ifnet

import (
	"testing"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// FuncProto is a protocol for tests: In gets each frame (it must free
// it); pre-output sends to the 6-byte MAC in dest with Type.
type FuncProto struct {
	In   func(m *mbuf.Mbuf, frame []byte)
	Type uint16
}

func (p FuncProto) ProtoInput(_ nke.Interface, m *mbuf.Mbuf, frame []byte) { p.In(m, frame) }

func (p FuncProto) ProtoPreOutput(_ nke.Interface, _ **mbuf.Mbuf, dest []byte) (uint16, [6]byte, error) {
	var mac [6]byte
	copy(mac[:], dest)
	return p.Type, mac, nil
}

// AttachFuncs attaches, for each EtherType, a FuncProto named after it
// that calls in, first detaching every protocol attached.
func AttachFuncs(tb testing.TB, ifp *Interface, in func(et uint16, m *mbuf.Mbuf, frame []byte), ets ...uint16) []nke.ProtocolAttachment {
	tb.Helper()
	ifp.detachProtos()
	var out []nke.ProtocolAttachment
	for _, et := range ets {
		et := et
		a, err := ifp.AttachProto(nke.ProtocolSpec{Name: "proto-" + hex4(et), Demux: []nke.DemuxDesc{nke.EtherType(et)},
			Protocol: FuncProto{Type: et, In: func(m *mbuf.Mbuf, frame []byte) { in(et, m, frame) }}})
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, a)
	}
	return out
}

func hex4(v uint16) string {
	const digits = "0123456789abcdef"
	return string([]byte{digits[v>>12], digits[v>>8&15], digits[v>>4&15], digits[v&15]})
}

// WholeFrame is the frame as it came in: header and data.
func WholeFrame(m *mbuf.Mbuf, frame []byte) []byte {
	b := make([]byte, len(frame)+m.PktLen())
	copy(b, frame)
	m.CopyOut(b[len(frame):])
	return b
}

func freeIt(_ uint16, m *mbuf.Mbuf, _ []byte) { m.Free() }
