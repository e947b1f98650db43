package nke

import (
	"fmt"

	"github.com/nke-harness/nke/nke/mbuf"
)

// Link is an interface as an NKE's start code sees it: where it attaches
// interface filters, raw ring hooks and protocols (Apple's iflt_attach,
// ifnet_attach_protocol), and where it gets packets to send.
type Link interface {
	Interface
	AttachFilter(spec InterfaceFilterSpec) (Attachment, error)
	AttachRawHook(spec RawHookSpec) (Attachment, error)
	AttachProto(spec ProtocolSpec) (ProtocolAttachment, error)
	// Pool is where packets to send on this interface come from
	// (mbuf_allocpacket).
	Pool() *mbuf.Pool
	// InjectInput hands a whole Ethernet frame to the interface as if
	// received (ifnet_input); every interface filter sees it again,
	// from's too, and from is recorded in its provenance. m is consumed.
	InjectInput(m *mbuf.Mbuf, from Attachment) error
	// InjectOutput sends a whole Ethernet frame (ifnet_output_raw)
	// through every interface filter's output. m is consumed.
	InjectOutput(m *mbuf.Mbuf, from Attachment) error
	// Ioctl runs an interface ioctl through the filters, then the
	// protocol attached for proto (ifnet_ioctl), with Apple's rules.
	Ioctl(proto uint16, cmd uint32, arg []byte) error
	// ResolveMulticast maps a multicast address of the protocol attached
	// for etherType to a link address (ifnet_resolve_multicast).
	ResolveMulticast(etherType uint16, addr []byte) ([6]byte, error)
	// SendARP has the protocol attached for etherType send an ARP
	// packet (ifnet_send_arp).
	SendARP(etherType, op uint16, senderHW [6]byte, senderIP []byte, targetHW [6]byte, targetIP []byte) error
}

// Kernel is what the guest offers an NKE when it starts it: the hook
// points of the KPI.
type Kernel interface {
	// Links are the guest's network interfaces.
	Links() []Link
	// IP is where IP filters attach (ipf_addv4, ipf_addv6).
	IP() IPHook
	// Sockets is where socket filters register (sflt_register) and
	// data is injected into sockets.
	Sockets() SocketHook
	// Control is where kernel-control endpoints register (ctl_register);
	// the endpoints belong to this NKE, whose unload is refused while
	// clients are connected to them.
	Control() ControlHook
	// Logf writes to the guest's log, prefixed with the NKE's name.
	Logf(format string, args ...any)
}

// Module is an NKE built into the guest image (Apple's kmod_info with its
// start and stop routines). Until the loader exists, the guest starts the
// modules the kernel command line names (nke.load=ethlog,ipfw) in order,
// each with its own setting (nke.ipfw=...) as args.
type Module struct {
	// Name is the short name nke.load uses ("ipfw").
	Name string
	// ID is the bundle identifier ("com.example.ipfw").
	ID string
	// Doc says in one line what it does.
	Doc string
	// Start attaches the NKE's filters and protocols. It either succeeds
	// and returns the NKE's stop routine, or fails having attached
	// nothing (detaching what it attached before failing).
	Start func(k Kernel, args string) (Stop func() error, err error)
}

// Check validates the module's declaration.
func (m Module) Check() error {
	if err := CheckName(m.ID); err != nil {
		return err
	}
	if m.Name == "" || m.Start == nil {
		return fmt.Errorf("nke: module %s: needs a name and a start routine", m.ID)
	}
	return nil
}

// Detacher collects attachments so a start routine that fails half way, or
// a stop routine, can detach them all and wait for their Detached
// callbacks (the "fully succeeds or cleans up" rule).
type Detacher []Attachment

// Add records a.
func (d *Detacher) Add(a Attachment) { *d = append(*d, a) }

// DetachAll detaches every attachment, newest first, and waits for each
// to be gone.
func (d *Detacher) DetachAll() {
	for i := len(*d) - 1; i >= 0; i-- {
		(*d)[i].Detach()
	}
	for i := len(*d) - 1; i >= 0; i-- {
		<-(*d)[i].Done()
	}
	*d = nil
}
