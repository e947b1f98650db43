package nketest

import (
	"errors"
	"sync"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Link is a fake nke.Link recording the interface filters, raw hooks and
// protocols attached to it and the frames injected; a test calls the
// filters itself. Set it in Kernel.LinkList.
type Link struct {
	Interface
	// PacketPool is what Pool returns (nil if unset).
	PacketPool *mbuf.Pool

	mu sync.Mutex
	// +checklocks:mu
	filters []nke.InterfaceFilterSpec
	// +checklocks:mu
	filterAtts []*Attachment
	// +checklocks:mu
	raws []nke.RawHookSpec
	// +checklocks:mu
	rawAtts []*Attachment
	// +checklocks:mu
	protos []nke.ProtocolSpec
	// +checklocks:mu
	protoAtts []*Attachment
	// +checklocks:mu
	injected int
}

var _ nke.Link = (*Link)(nil)

// ErrNotFake is what the fake link's calls that need a real interface
// return.
var ErrNotFake = errors.New("nketest: the fake link does not do that")

func (l *Link) AttachFilter(spec nke.InterfaceFilterSpec) (nke.Attachment, error) {
	if err := spec.Check(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	a := NewAttachment(spec.Name, spec.Detached)
	l.filters = append(l.filters, spec)
	l.filterAtts = append(l.filterAtts, a)
	return a, nil
}

func (l *Link) AttachRawHook(spec nke.RawHookSpec) (nke.Attachment, error) {
	if err := spec.Check(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	a := NewAttachment(spec.Name, spec.Detached)
	l.raws = append(l.raws, spec)
	l.rawAtts = append(l.rawAtts, a)
	return a, nil
}

func (l *Link) AttachProto(spec nke.ProtocolSpec) (nke.ProtocolAttachment, error) {
	if err := spec.Check(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	a := NewAttachment(spec.Name, spec.Detached)
	l.protos = append(l.protos, spec)
	l.protoAtts = append(l.protoAtts, a)
	return protoAttachment{a}, nil
}

type protoAttachment struct{ *Attachment }

func (protoAttachment) Output(m *mbuf.Mbuf, _ []byte) error {
	m.Free()
	return ErrNotFake
}

// Filters returns the interface filter specs not detached.
func (l *Link) Filters() []nke.InterfaceFilterSpec {
	l.mu.Lock()
	defer l.mu.Unlock()
	return live(l.filters, l.filterAtts)
}

// RawHooks returns the raw hook specs not detached.
func (l *Link) RawHooks() []nke.RawHookSpec {
	l.mu.Lock()
	defer l.mu.Unlock()
	return live(l.raws, l.rawAtts)
}

// Protocols returns the protocol specs not detached.
func (l *Link) Protocols() []nke.ProtocolSpec {
	l.mu.Lock()
	defer l.mu.Unlock()
	return live(l.protos, l.protoAtts)
}

func live[S any](specs []S, atts []*Attachment) []S {
	var out []S
	for i, a := range atts {
		if !a.Detached() {
			out = append(out, specs[i])
		}
	}
	return out
}

// Injected counts the frames injected (and freed) by InjectInput and
// InjectOutput.
func (l *Link) Injected() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.injected
}

func (l *Link) Pool() *mbuf.Pool { return l.PacketPool }

func (l *Link) InjectInput(m *mbuf.Mbuf, _ nke.Attachment) error {
	m.Free()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.injected++
	return nil
}

func (l *Link) InjectOutput(m *mbuf.Mbuf, from nke.Attachment) error { return l.InjectInput(m, from) }

func (l *Link) Ioctl(uint16, uint32, []byte) error { return ErrNotFake }

func (l *Link) ResolveMulticast(uint16, []byte) ([6]byte, error) { return [6]byte{}, ErrNotFake }

func (l *Link) SendARP(uint16, uint16, [6]byte, []byte, [6]byte, []byte) error { return ErrNotFake }
