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
