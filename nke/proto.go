package nke

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/nke-harness/nke/nke/mbuf"
)

// DemuxKind is the kind of an Ethernet demux descriptor (Apple's
// DLIL_DESC_ETYPE2, DLIL_DESC_SAP, DLIL_DESC_SNAP).
type DemuxKind uint8

const (
	// DemuxEtherType matches an Ethernet II frame's 2-byte type.
	DemuxEtherType DemuxKind = iota + 1
	// DemuxSAP matches an 802.3 frame's 802.2 LLC header: DSAP, SSAP and
	// control, 3 bytes.
	DemuxSAP
	// DemuxSNAP matches an 802.2 SNAP header after LLC AA-AA-03: the
	// 3-byte OUI and the 2-byte protocol id, 5 bytes.
	DemuxSNAP
)

// DemuxDesc says which frames belong to a protocol (Apple's
// ifnet_demux_desc): Data in network byte order, 2 bytes for an EtherType,
// 3 for a SAP, 5 for a SNAP header.
type DemuxDesc struct {
	Kind DemuxKind
	Data []byte
}

// EtherType is the descriptor of an Ethernet II type.
func EtherType(t uint16) DemuxDesc {
	return DemuxDesc{Kind: DemuxEtherType, Data: []byte{byte(t >> 8), byte(t)}}
}

// Check reports whether the descriptor is well formed.
func (d DemuxDesc) Check() error {
	want := map[DemuxKind]int{DemuxEtherType: 2, DemuxSAP: 3, DemuxSNAP: 5}[d.Kind]
	switch {
	case want == 0:
		return fmt.Errorf("nke: demux descriptor kind %d: want EtherType, SAP or SNAP", d.Kind)
	case len(d.Data) != want:
		return fmt.Errorf("nke: demux descriptor %v: %d bytes, want %d", d, len(d.Data), want)
	case d.Kind == DemuxEtherType && uint16(d.Data[0])<<8|uint16(d.Data[1]) < 0x0600:
		// Below 0x600 the field is an 802.3 length, never a type.
		return fmt.Errorf("nke: demux descriptor %v: an EtherType is at least 0x0600", d)
	case d.Kind == DemuxSAP && bytes.Equal(d.Data[:2], []byte{0xaa, 0xaa}):
		return fmt.Errorf("nke: demux descriptor %v: SAP AA-AA is SNAP; use a SNAP descriptor", d)
	}
	return nil
}

func (d DemuxDesc) String() string {
	name := map[DemuxKind]string{DemuxEtherType: "ethertype", DemuxSAP: "sap", DemuxSNAP: "snap"}[d.Kind]
	if name == "" {
		name = fmt.Sprintf("kind%d", d.Kind)
	}
	return fmt.Sprintf("%s %x", name, d.Data)
}

// A protocol attached to an interface (Apple's
// ifnet_attach_proto_param_v2) implements ProtocolInput and
// ProtocolPreOutput, both required, and may implement the others.
type (
	// ProtocolInput gets each frame demux gave this protocol, after the
	// interface filters, and owns it (Apple's proto_media_input): m's
	// data starts after the 14-byte Ethernet header, which is frame
	// (valid during the call only). It runs on the poll loop and must
	// not block.
	ProtocolInput interface {
		ProtoInput(ifp Interface, m *mbuf.Mbuf, frame []byte)
	}
	// ProtocolInputBurst is the burst form of ProtocolInput: a run of
	// consecutive frames of the same burst that demux gave this
	// protocol, in one call (Apple's proto_media_input_v2 takes packet
	// lists). A protocol implementing it is called this way only.
	ProtocolInputBurst interface {
		ProtoInputBurst(ifp Interface, pkts []*mbuf.Mbuf, frames [][]byte)
	}
	// ProtocolPreOutput prepares a packet the protocol sends with
	// Interface output: it resolves dest (the protocol's own address, such
	// as an IPv4 address) to a link address and names the frame type. It
	// may replace *m (Apple's proto_media_preout).
	ProtocolPreOutput interface {
		ProtoPreOutput(ifp Interface, m **mbuf.Mbuf, dest []byte) (frameType uint16, linkDest [6]byte, err error)
	}
	// ProtocolEvent is told about interface events.
	ProtocolEvent interface {
		ProtoEvent(ifp Interface, ev Event)
	}
	// ProtocolIoctl sees ioctls for the protocol after the interface
	// filters (nil or ErrSwallowed: handled; ErrNotMine: not handled;
	// another error is returned to the caller).
	ProtocolIoctl interface {
		ProtoIoctl(ifp Interface, cmd uint32, arg []byte) error
	}
	// ProtocolSendARP sends an ARP packet on the protocol's behalf
	// (proto_media_send_arp): op is 1 (request) or 2 (reply); a zero
	// targetHW in a request means broadcast.
	ProtocolSendARP interface {
		ProtoSendARP(ifp Interface, op uint16, senderHW [6]byte, senderIP []byte, targetHW [6]byte, targetIP []byte) error
	}
	// ProtocolResolveMulticast maps a protocol multicast address to a
	// link-layer one (proto_media_resolve_multi).
	ProtocolResolveMulticast interface {
		ProtoResolveMulticast(ifp Interface, addr []byte) ([6]byte, error)
	}
)

// ProtocolSpec declares a protocol to attach to an interface.
type ProtocolSpec struct {
	// Name identifies the protocol on the interface ("inet", "com.example.echo").
	Name string
	// Demux lists the frames that belong to it; at least one, none
	// claimed by another protocol of the interface.
	Demux []DemuxDesc
	// Protocol implements ProtocolInput (or ProtocolInputBurst) and
	// ProtocolPreOutput.
	Protocol any
	// Detached, if set, is the protocol's last call.
	Detached func()
}

// ErrProtocolCallbacks reports a protocol without input or pre-output.
var ErrProtocolCallbacks = errors.New("nke: a protocol needs ProtoInput and ProtoPreOutput")

// Check validates the spec.
func (s ProtocolSpec) Check() error {
	if err := CheckName(s.Name); err != nil {
		return err
	}
	if len(s.Demux) == 0 {
		return fmt.Errorf("nke: protocol %s: no demux descriptor", s.Name)
	}
	for _, d := range s.Demux {
		if err := d.Check(); err != nil {
			return fmt.Errorf("nke: protocol %s: %w", s.Name, err)
		}
	}
	_, in := s.Protocol.(ProtocolInput)
	if _, burst := s.Protocol.(ProtocolInputBurst); burst {
		in = true
	}
	_, out := s.Protocol.(ProtocolPreOutput)
	if !in || !out {
		return fmt.Errorf("nke: protocol %s (%T): %w", s.Name, s.Protocol, ErrProtocolCallbacks)
	}
	return nil
}

// ProtocolAttachment is a protocol attached to an interface (Apple's
// ifnet_attach_protocol result; ifnet_detach_protocol is Detach).
type ProtocolAttachment interface {
	Attachment
	// Output sends m, whose data starts at the protocol's own header,
	// to dest (an address of the protocol, as ifnet_output's dest): the
	// protocol's pre-output names the frame type and link destination,
	// the interface's framer adds the Ethernet header, the interface
	// filters' output sees the frame, then the driver. m is consumed.
	Output(m *mbuf.Mbuf, dest []byte) error
}
