package nke

import (
	"fmt"

	"github.com/nke-harness/nke/nke/mbuf"
)

// IPFamily says which IP version an IP filter sees (Apple's ipf_addv4 and
// ipf_addv6 are two calls; here it is a field).
type IPFamily uint8

const (
	IPv4 IPFamily = 4
	IPv6 IPFamily = 6
)

func (f IPFamily) String() string {
	switch f {
	case IPv4:
		return "inet"
	case IPv6:
		return "inet6"
	}
	return fmt.Sprintf("family(%d)", uint8(f))
}

// An IP filter (Apple's ipf_filter) implements IPInputFilter,
// IPOutputFilter, or both, in the per-packet or the burst form.
type (
	// IPInputFilter sees each IP packet the guest receives, after
	// reassembly and before the stack's transport protocols (Apple's
	// ipf_input_func): m's data starts at the IP header, offset is
	// where the transport header starts and proto is its protocol
	// number (after any IPv6 extension headers). It may replace *m.
	IPInputFilter interface {
		FilterIPInput(m **mbuf.Mbuf, offset int, proto uint8) Verdict
	}
	// IPOutputFilter sees each IP packet the guest sends, whole, before
	// fragmentation (Apple's ipf_output_func): m's data starts at the IP
	// header. It may replace *m; to change the destination it swallows
	// the packet and injects the changed one, as with Apple's.
	IPOutputFilter interface {
		FilterIPOutput(m **mbuf.Mbuf) Verdict
	}
	// IPInputBurstFilter is the burst form of IPInputFilter: a verdict
	// per packet (offsets[i], protos[i] are pkts[i]'s). A filter
	// implementing it is called this way only.
	IPInputBurstFilter interface {
		FilterIPInputBurst(pkts []*mbuf.Mbuf, offsets []int, protos []uint8, verdicts []Verdict)
	}
	// IPOutputBurstFilter is the burst form of IPOutputFilter.
	IPOutputBurstFilter interface {
		FilterIPOutputBurst(pkts []*mbuf.Mbuf, verdicts []Verdict)
	}
)

// IPFilterSpec declares an IP filter (Apple's ipf_filter passed to
// ipf_addv4/ipf_addv6).
type IPFilterSpec struct {
	// Name identifies the filter ("com.example.firewall").
	Name string
	// Family is IPv4 or IPv6; a filter for both is attached twice.
	Family IPFamily
	// Order places it among the family's filters; by default the newest
	// runs first, in both directions (Apple's order).
	Order Order
	// Filter implements at least one of the IP filter interfaces.
	Filter any
	// Detached, if set, is the filter's last call (ipf_detach_func).
	Detached func()
}

// Check validates the spec.
func (s IPFilterSpec) Check() error {
	if err := CheckName(s.Name); err != nil {
		return err
	}
	if s.Family != IPv4 && s.Family != IPv6 {
		return fmt.Errorf("nke: IP filter %s: family %v: want IPv4 or IPv6", s.Name, s.Family)
	}
	switch s.Filter.(type) {
	case IPInputFilter, IPOutputFilter, IPInputBurstFilter, IPOutputBurstFilter:
		return nil
	}
	return fmt.Errorf("nke: IP filter %s (%T): %w", s.Name, s.Filter, ErrNoCallbacks)
}

// IPHook is where IP filters attach and packets are injected (Apple's
// ipf_addv4/v6, ipf_remove through the attachment, ipf_inject_input and
// ipf_inject_output).
type IPHook interface {
	// AttachIPFilter attaches a filter; it runs from the next packet on.
	AttachIPFilter(spec IPFilterSpec) (Attachment, error)
	// InjectIPInput hands m (data at the IP header, a whole datagram) to
	// the stack as if received. With ref (an attachment of this hook)
	// the filters up to and including ref are skipped; with nil every
	// input filter sees it again. The injection is recorded in m's
	// provenance (InjectedBy: ref's ID, 0 for nil); past MaxInjections
	// it fails with ErrInjectLoop. On error m is still the caller's
	// (Apple's rule for ipf_inject_input).
	InjectIPInput(m *mbuf.Mbuf, ref Attachment) error
	// InjectIPOutput sends m (data at the IP header) as if the stack
	// had sent it: the filters after ref (all, with nil), then
	// fragmentation, the link layer and the interface filters.
	// Provenance and hop limit as for InjectIPInput. m is consumed,
	// error or not (Apple's rule for ipf_inject_output).
	InjectIPOutput(m *mbuf.Mbuf, ref Attachment) error
}
