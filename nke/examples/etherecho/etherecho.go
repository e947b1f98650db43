// Package etherecho is an example protocol handler (Apple's protocol
// plumbing, ifnet_attach_protocol): an echo protocol on the IEEE local
// experimental EtherType 0x88B5 that answers the frames sent to it.
//
// It demonstrates the protocol KPI: a demux descriptor claiming an
// EtherType, an input callback that owns each frame it is given (data
// after the Ethernet header, the header beside it), a pre-output that
// names the frame type and link destination, and sending through the
// attachment's Output, so that the interface's framer and the interface
// filters see the reply like any other frame. The reply reuses the
// request's buffer: nothing is allocated or copied per frame.
//
// The wire format is a one-byte type and an opaque body:
//
//	0x01 request: answered with a reply carrying the same body
//	0x02 reply:   counted, never answered (two echo speakers never loop)
//
//	e := etherecho.New()
//	a, err := ifp.AttachProto(e.Spec())
//	e.SetAttachment(a)
package etherecho

import (
	"errors"
	"sync/atomic"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// EtherType is IEEE 802 local experimental EtherType 1.
const EtherType = 0x88b5

// Name is the protocol's name on an interface.
const Name = "com.example.etherecho"

// Message types, the first byte after the Ethernet header.
const (
	TypeRequest = 0x01
	TypeReply   = 0x02
)

// Echo is the protocol. Its input runs on the poll loop.
type Echo struct {
	att atomic.Pointer[attachment]

	requests, replies, malformed, sendErrors atomic.Uint64
}

type attachment struct{ a nke.ProtocolAttachment }

var (
	_ nke.ProtocolInput     = (*Echo)(nil)
	_ nke.ProtocolPreOutput = (*Echo)(nil)
)

// New returns an echo protocol, not yet attached.
func New() *Echo { return &Echo{} }

// Spec is the spec to attach it with.
func (e *Echo) Spec() nke.ProtocolSpec {
	return nke.ProtocolSpec{Name: Name, Demux: []nke.DemuxDesc{nke.EtherType(EtherType)}, Protocol: e}
}

// SetAttachment gives the protocol the attachment it answers through;
// until then requests are counted and dropped.
func (e *Echo) SetAttachment(a nke.ProtocolAttachment) { e.att.Store(&attachment{a}) }

// ProtoInput answers a request to its sender, in the same buffer.
func (e *Echo) ProtoInput(ifp nke.Interface, m *mbuf.Mbuf, frame []byte) {
	b := m.Bytes()
	if len(b) == 0 || len(frame) < 12 {
		e.malformed.Add(1)
		m.Free()
		return
	}
	switch b[0] {
	case TypeRequest:
	case TypeReply:
		e.replies.Add(1)
		m.Free()
		return
	default:
		e.malformed.Add(1)
		m.Free()
		return
	}
	e.requests.Add(1)
	a := e.att.Load()
	if a == nil {
		m.Free()
		e.sendErrors.Add(1)
		return
	}
	b[0] = TypeReply
	// The sender's MAC, read by pre-output during the call.
	if err := a.a.Output(m, frame[6:12]); err != nil {
		e.sendErrors.Add(1)
	}
}

// ProtoPreOutput: dest is the peer's MAC.
func (e *Echo) ProtoPreOutput(_ nke.Interface, _ **mbuf.Mbuf, dest []byte) (uint16, [6]byte, error) {
	var mac [6]byte
	if len(dest) != 6 {
		return 0, mac, errBadDest
	}
	copy(mac[:], dest)
	return EtherType, mac, nil
}

var errBadDest = errors.New("etherecho: a destination is a 6-byte MAC")

// Stats are the protocol's counters.
type Stats struct {
	Requests   uint64 `json:"requests"` // answered (or tried to)
	Replies    uint64 `json:"replies"`  // received, not answered
	Malformed  uint64 `json:"malformed"`
	SendErrors uint64 `json:"send_errors"`
}

// Stats returns the counters.
func (e *Echo) Stats() Stats {
	return Stats{e.requests.Load(), e.replies.Load(), e.malformed.Load(), e.sendErrors.Load()}
}

// Module attaches the echo protocol to every interface.
var Module = nke.Module{
	Name: "etherecho",
	ID:   Name,
	Doc:  "answers echo requests on EtherType 0x88B5",
	Start: func(k nke.Kernel, _ string) (func() error, error) {
		var d nke.Detacher
		for _, link := range k.Links() {
			e := New()
			a, err := link.AttachProto(e.Spec())
			if err != nil {
				d.DetachAll()
				return nil, err
			}
			e.SetAttachment(a)
			d.Add(a)
		}
		return func() error { d.DetachAll(); return nil }, nil
	},
}
