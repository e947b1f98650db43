package nke

import (
	"errors"
	"fmt"

	"github.com/nke-harness/nke/nke/mbuf"
)

// Injection provenance: every packet a filter injects at the interface
// layer (Apple's ifnet_input, ifnet_output_raw: Link.InjectInput and
// InjectOutput) carries a tag saying who injected it last and how many
// injections deep it is. IP injection (ipf_inject_*) records none yet: it
// resumes after the reference filter by position instead. A filter
// recognises its own re-injected packets by the attachment id (Apple makes
// each filter invent its own tag for that), and a re-injection loop is
// stopped at MaxInjections instead of spinning forever.

// Provenance is the injection tag of a packet.
type Provenance struct {
	// Injector is the id of the attachment that injected the packet last
	// (Attachment.ID), 0 if it was injected without one.
	Injector uint64
	// Generation counts the injections the packet has been through: 1
	// for a packet injected once.
	Generation uint32
}

// MaxInjections bounds Generation: the injection that would go past it
// fails with ErrInjectLoop and the packet is dropped and counted.
const MaxInjections = 8

// ErrInjectLoop reports a packet injected more than MaxInjections times.
var ErrInjectLoop = errors.New("nke: packet injected too many times (a re-injection loop?)")

const provenanceType = 1

var provenanceTag = mustTagID("com.nke-harness.provenance")

func mustTagID(name string) mbuf.TagIDType {
	id, err := mbuf.TagID(name)
	if err != nil {
		panic(err)
	}
	return id
}

// InjectedBy returns m's provenance, if it was ever injected.
func InjectedBy(m *mbuf.Mbuf) (Provenance, bool) {
	return mbuf.TagGet[Provenance](m, provenanceTag, provenanceType)
}

// InjectedByMe reports whether the attachment a injected m last: what a
// filter checks to let its own re-injected packet pass.
func InjectedByMe(m *mbuf.Mbuf, a Attachment) bool {
	p, ok := InjectedBy(m)
	return ok && a != nil && p.Injector == a.ID()
}

// StampInjection records an injection of m by the attachment with id
// injector (0 for none) and returns the new provenance. It is called by
// the hooks' inject functions, not by filters. Past MaxInjections it
// fails with ErrInjectLoop, leaving m unchanged.
func StampInjection(m *mbuf.Mbuf, injector uint64) (Provenance, error) {
	p, _ := InjectedBy(m)
	if p.Generation >= MaxInjections {
		return p, fmt.Errorf("%w: %d injections, the last by attachment %d", ErrInjectLoop, p.Generation, p.Injector)
	}
	p.Injector = injector
	p.Generation++
	m.ClearHolder() // back with the kernel
	if err := mbuf.TagPut(m, provenanceTag, provenanceType, p); err != nil {
		return p, fmt.Errorf("nke: tag the injected packet: %w", err)
	}
	return p, nil
}
