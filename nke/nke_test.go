package nke_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

func TestCheckName(t *testing.T) {
	for _, c := range []struct {
		name string
		ok   bool
	}{
		{"com.example.firewall", true},
		{"a", true},
		{"", false},
		{"has space", false},
		{"tab\there", false},
		{"é", false},
		{strings.Repeat("x", nke.MaxNameLen), true},
		{strings.Repeat("x", nke.MaxNameLen+1), false},
	} {
		if err := nke.CheckName(c.name); (err == nil) != c.ok {
			t.Errorf("CheckName(%q) = %v, want ok %v", c.name, err, c.ok)
		}
	}
}

type inOnly struct{}

func (inOnly) FilterInput(nke.Interface, uint16, **mbuf.Mbuf, []byte) nke.Verdict {
	return nke.Continue
}

type rawOnly struct{}

func (rawOnly) FilterRaw(nke.Interface, []byte) nke.RawVerdict { return nke.RawPass }

func TestSpecsCheckCallbacks(t *testing.T) {
	if err := (nke.InterfaceFilterSpec{Name: "x", Filter: inOnly{}}).Check(); err != nil {
		t.Errorf("an input filter: %v", err)
	}
	if err := (nke.InterfaceFilterSpec{Name: "x", Filter: rawOnly{}}).Check(); !errors.Is(err, nke.ErrNoCallbacks) {
		t.Errorf("a raw hook as an interface filter: %v", err)
	}
	if err := (nke.RawHookSpec{Name: "x", Filter: rawOnly{}}).Check(); err != nil {
		t.Errorf("a raw hook: %v", err)
	}
	if err := (nke.RawHookSpec{Name: "x", Filter: inOnly{}}).Check(); !errors.Is(err, nke.ErrNoCallbacks) {
		t.Errorf("an interface filter as a raw hook: %v", err)
	}
	if err := (nke.RawHookSpec{Name: "", Filter: rawOnly{}}).Check(); err == nil {
		t.Error("a raw hook without a name")
	}
}

func TestVerdictNames(t *testing.T) {
	got := []string{nke.Continue.String(), nke.Swallow.String(), nke.Drop.String(), nke.Verdict(7).String(),
		nke.RawPass.String(), nke.RawDrop.String(), nke.RawTransmit.String(), nke.EventDetaching.String()}
	want := []string{"continue", "swallow", "drop", "verdict(7)", "pass", "drop", "transmit", "detaching"}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("name %d = %q, want %q", i, got[i], want[i])
		}
	}
}

type ipIn struct{}

func (ipIn) FilterIPInput(**mbuf.Mbuf, int, uint8) nke.Verdict { return nke.Continue }

func TestIPFilterSpecCheck(t *testing.T) {
	for _, c := range []struct {
		spec nke.IPFilterSpec
		ok   bool
	}{
		{nke.IPFilterSpec{Name: "fw", Family: nke.IPv4, Filter: ipIn{}}, true},
		{nke.IPFilterSpec{Name: "fw", Family: nke.IPv6, Filter: ipIn{}}, true},
		{nke.IPFilterSpec{Name: "fw", Family: 5, Filter: ipIn{}}, false},
		{nke.IPFilterSpec{Family: nke.IPv4, Filter: ipIn{}}, false},
		{nke.IPFilterSpec{Name: "fw", Family: nke.IPv4, Filter: inOnly{}}, false},
	} {
		if err := c.spec.Check(); (err == nil) != c.ok {
			t.Errorf("%+v: Check = %v, want ok %v", c.spec, err, c.ok)
		}
	}
}

type sockOnly struct{}

func (sockOnly) SockAttach(nke.Socket) (any, error) { return nil, nil }
func (sockOnly) SockDetach(any, nke.Socket)         {}

func TestSocketFilterSpecCheck(t *testing.T) {
	ok := nke.SocketFilterSpec{Name: "log", Handle: 7, Type: nke.SockStream, Protocol: 6, Filter: sockOnly{}}
	if err := ok.Check(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		edit func(*nke.SocketFilterSpec)
		want string
	}{
		{func(s *nke.SocketFilterSpec) { s.Handle = 0 }, "nonzero handle"},
		{func(s *nke.SocketFilterSpec) { s.Name = "" }, "filter name"},
		{func(s *nke.SocketFilterSpec) { s.Family = 5 }, "want IPv4, IPv6 or 0"},
		{func(s *nke.SocketFilterSpec) { s.Type = 3 }, "want stream or dgram"},
		{func(s *nke.SocketFilterSpec) { s.Filter = inOnly{} }, "needs SockAttach"},
	} {
		s := ok
		c.edit(&s)
		if err := s.Check(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: Check = %v, want %q", s, err, c.want)
		}
	}
	for _, c := range []struct {
		f     nke.IPFamily
		t     nke.SocketType
		proto uint8
		want  bool
	}{{nke.IPv4, nke.SockStream, 6, true}, {nke.IPv6, nke.SockStream, 6, true}, {nke.IPv4, nke.SockDgram, 17, false}, {nke.IPv4, nke.SockStream, 17, false}} {
		if got := ok.Matches(c.f, c.t, c.proto); got != c.want {
			t.Errorf("Matches(%v, %v, %d) = %v", c.f, c.t, c.proto, got)
		}
	}
	if nke.SockEventCantSendMore.String() != "cant-send-more" || nke.SocketEvent(99).String() != "sockevent(99)" {
		t.Error("event names")
	}
}
