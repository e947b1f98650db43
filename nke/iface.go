package nke

import (
	"errors"
	"fmt"

	"github.com/nke-harness/nke/nke/mbuf"
)

// Interface is what a filter is told about the network interface it sits
// on (Apple's ifnet_t, the parts a filter reads).
type Interface interface {
	Name() string
	Index() uint16
	MAC() [6]byte
	MTU() int
}

// Event is an interface event (Apple's kev_msg for KEV_DL_SUBCLASS).
type Event uint8

const (
	EventLinkUp Event = iota + 1
	EventLinkDown
	// EventAddressChanged: the device came back with another MAC or MTU.
	EventAddressChanged
	// EventDetaching: the interface is going away; Detached follows.
	EventDetaching
)

func (e Event) String() string {
	switch e {
	case EventLinkUp:
		return "link up"
	case EventLinkDown:
		return "link down"
	case EventAddressChanged:
		return "address changed"
	case EventDetaching:
		return "detaching"
	}
	return fmt.Sprintf("event(%d)", uint8(e))
}

// An interface filter (Apple's data-link NKE, iff_filter) implements any
// of these. A filter with none of them is refused at attach.
type (
	// InputFilter sees each received packet after demux, before the
	// protocol: m's data starts at the network header and frame is the
	// link header in front of it (Apple's iff_input_func). It may
	// replace *m with another packet (starting at the network header).
	InputFilter interface {
		FilterInput(ifp Interface, proto uint16, m **mbuf.Mbuf, frame []byte) Verdict
	}
	// OutputFilter sees each packet to send, the whole frame, header
	// included, right before the driver's ring (iff_output_func). It may
	// replace *m.
	OutputFilter interface {
		FilterOutput(ifp Interface, proto uint16, m **mbuf.Mbuf) Verdict
	}
	// InputBurstFilter is the burst form of InputFilter: a verdict for
	// each packet of a burst (frames[i] is pkts[i]'s link header), in one
	// call, as VPP runs a vector through a node. A filter implementing
	// it is called this way only.
	InputBurstFilter interface {
		FilterInputBurst(ifp Interface, pkts []*mbuf.Mbuf, frames [][]byte, verdicts []Verdict)
	}
	// OutputBurstFilter is the burst form of OutputFilter.
	OutputBurstFilter interface {
		FilterOutputBurst(ifp Interface, pkts []*mbuf.Mbuf, verdicts []Verdict)
	}
	// EventFilter is told about interface events; it cannot veto them
	// (iff_event_func).
	EventFilter interface {
		FilterEvent(ifp Interface, proto uint16, ev Event)
	}
	// IoctlFilter sees interface ioctls (iff_ioctl_func): nil handles it
	// and the next filters see it too, ErrNotMine passes it on,
	// ErrSwallowed stops it as a success, another error stops it with
	// that error.
	IoctlFilter interface {
		FilterIoctl(ifp Interface, proto uint16, cmd uint32, arg []byte) error
	}
)

// InterfaceFilterSpec declares an interface filter (Apple's iff_filter
// passed to iflt_attach).
type InterfaceFilterSpec struct {
	// Name identifies the filter on the interface ("com.example.ethlog").
	Name string
	// Protocol restricts the filter to frames of one EtherType; 0 means
	// every protocol (Apple's iff_protocol).
	Protocol uint16
	// Order places it among the interface's filters; by default filters
	// run in attach order, the same order in and out.
	Order Order
	// Filter implements at least one of the interface-filter interfaces.
	Filter any
	// Detached, if set, is the filter's last call, once nothing calls
	// into it any more (iff_detached_func).
	Detached func()
}

// ErrNoCallbacks reports a filter value that implements none of its
// layer's callbacks.
var ErrNoCallbacks = errors.New("nke: the filter implements none of the callbacks")

// Check validates the spec.
func (s InterfaceFilterSpec) Check() error {
	if err := CheckName(s.Name); err != nil {
		return err
	}
	if s.Protocol != 0 && s.Protocol < 0x0600 {
		// Below 0x600 the field is an 802.3 length, never a type.
		return fmt.Errorf("nke: interface filter %s: protocol %#04x is not an EtherType (0 for all, or 0x0600 and up)", s.Name, s.Protocol)
	}
	switch s.Filter.(type) {
	case InputFilter, OutputFilter, InputBurstFilter, OutputBurstFilter, EventFilter, IoctlFilter:
		return nil
	}
	return fmt.Errorf("nke: interface filter %s (%T): %w", s.Name, s.Filter, ErrNoCallbacks)
}

// Attachment is a filter attached to a hook (Apple's interface_filter_t,
// ipfilter_t). Detach unlinks it; its Detached callback follows once no
// call into it is in flight, and Done is closed after that.
type Attachment interface {
	Name() string
	// ID is unique among all attachments of the guest's lifetime: a
	// filter detached and attached again gets another.
	ID() uint64
	Detach()
	Done() <-chan struct{}
}

// RawVerdict is what a raw ring hook decides about a frame (XDP's return
// codes, the ones that make sense here).
type RawVerdict uint8

const (
	// RawPass hands the frame on to demux and the interface filters.
	RawPass RawVerdict = iota
	// RawDrop frees it at once, before anything parses it.
	RawDrop
	// RawTransmit sends it back out of the interface it came in on, as
	// the hook left its bytes (XDP_TX): a reflector swaps the addresses.
	RawTransmit
)

func (v RawVerdict) String() string {
	switch v {
	case RawPass:
		return "pass"
	case RawDrop:
		return "drop"
	case RawTransmit:
		return "transmit"
	}
	return fmt.Sprintf("raw-verdict(%d)", uint8(v))
}

// A raw ring hook (pfil's PFIL_MEMPTR, XDP's place) sees each received
// frame's bytes in its rx buffer, before any parsing: the Ethernet frame
// as the device wrote it (the first buffer's worth of a frame that spans
// several). It may rewrite them in place. It implements one of these.
type (
	RawFilter interface {
		FilterRaw(ifp Interface, frame []byte) RawVerdict
	}
	// RawBurstFilter is the burst form: a verdict per frame of a burst.
	RawBurstFilter interface {
		FilterRawBurst(ifp Interface, frames [][]byte, verdicts []RawVerdict)
	}
)

// RawHookSpec declares a raw ring hook.
type RawHookSpec struct {
	Name     string
	Order    Order
	Filter   any // a RawFilter or a RawBurstFilter
	Detached func()
}

// Check validates the spec.
func (s RawHookSpec) Check() error {
	if err := CheckName(s.Name); err != nil {
		return err
	}
	switch s.Filter.(type) {
	case RawFilter, RawBurstFilter:
		return nil
	}
	return fmt.Errorf("nke: raw hook %s (%T): %w", s.Name, s.Filter, ErrNoCallbacks)
}
