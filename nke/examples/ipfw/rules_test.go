package ipfw

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const example = "block in proto tcp to port 9999; block in proto udp from 10.0.2.2 to any port 7000-7010; block out proto icmp6; pass in proto tcp from fe80::/10; block in from 192.0.2.0/24"

func TestParseExample(t *testing.T) {
	got, err := Parse(example)
	if err != nil {
		t.Fatal(err)
	}
	want := Rules{List: []Rule{
		{Action: Block, Dir: In, HasProto: true, Proto: ProtoTCP, To: Endpoint{HasPort: true, PortLo: 9999, PortHi: 9999}},
		{Action: Block, Dir: In, HasProto: true, Proto: ProtoUDP,
			From: Endpoint{Prefix: netip.MustParsePrefix("10.0.2.2/32")},
			To:   Endpoint{HasPort: true, PortLo: 7000, PortHi: 7010}},
		{Action: Block, Dir: Out, HasProto: true, Proto: ProtoICMP6},
		{Action: Pass, Dir: In, HasProto: true, Proto: ProtoTCP, From: Endpoint{Prefix: netip.MustParsePrefix("fe80::/10")}},
		{Action: Block, Dir: In, From: Endpoint{Prefix: netip.MustParsePrefix("192.0.2.0/24")}},
	}}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	wantText := `block in proto tcp to port 9999
block in proto udp from 10.0.2.2 to port 7000-7010
block out proto icmp6
pass in proto tcp from fe80::/10
block in from 192.0.2.0/24
`
	if s := got.String(); s != wantText {
		t.Errorf("String:\n%s\nwant:\n%s", s, wantText)
	}
}

func TestParseForms(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{"  ;;\n# nothing\n ; ", ""},
		{"pass", "pass\n"},
		{"block inout", "block\n"},
		{"default block\npass out # let replies go", "default block\npass out\n"},
		{"default pass; block in", "block in\n"},
		{"block proto 6 from any port 1-2 to any", "block proto tcp from port 1-2\n"},
		{"block proto 17 to port 53-53", "block proto udp to port 53\n"},
		{"block proto 001", "block proto icmp\n"},
		{"block proto 0; block proto 255", "block proto 0\nblock proto 255\n"},
		{"block from 10.1.2.3/8", "block from 10.0.0.0/8\n"},
		{"block from 0.0.0.0/0 to 10.0.0.1/32", "block from 0.0.0.0/0 to 10.0.0.1\n"},
		{"block from ::/0", "block from ::/0\n"},
		{"block to 2001:DB8::1/128", "block to 2001:db8::1\n"},
		{"block to ::ffff:10.0.0.1", "block to ::ffff:10.0.0.1\n"},
		{"block in proto tcp from any port 0 to 10.0.0.0/8 port 0-65535", "block in proto tcp from port 0 to 10.0.0.0/8 port 0-65535\n"},
		{"\tblock\tin\r\n", "block in\n"},
	} {
		r, err := Parse(c.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", c.in, err)
			continue
		}
		if s := r.String(); s != c.want {
			t.Errorf("Parse(%q).String() = %q, want %q", c.in, s, c.want)
		}
		back, err := Parse(r.String())
		if err != nil || !back.Equal(r) {
			t.Errorf("%q: reparse gives %v, %v", r.String(), back, err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct {
		in         string
		rule, line int
		tok        string
	}{
		{"allow in", 1, 1, "allow"},
		{"pass; block up", 2, 1, "up"},
		{"pass\n\n# c\nblock in proto", 2, 4, "proto"},
		{"block proto tcpp", 1, 1, "tcpp"},
		{"block proto 256", 1, 1, "256"},
		{"block proto -1", 1, 1, "-1"},
		{"block from", 1, 1, "from"},
		{"block from 10.0.0.300", 1, 1, "10.0.0.300"},
		{"block from 10.0.0.0/33", 1, 1, "10.0.0.0/33"},
		{"block from fe80::1%eth0", 1, 1, "fe80::1%eth0"},
		{"block to port 80", 1, 1, "port"},
		{"block proto icmp to port 80", 1, 1, "port"},
		{"block proto tcp to port", 1, 1, "port"},
		{"block proto tcp to port 65536", 1, 1, "65536"},
		{"block proto tcp to port 90-80", 1, 1, "90-80"},
		{"block proto tcp to port 80-", 1, 1, "80-"},
		{"block proto tcp to port http", 1, 1, "http"},
		{"block to any from any", 1, 1, "from"},
		{"block in in", 1, 1, "in"},
		{"block proto tcp proto udp", 1, 1, "proto"},
		{"block from 10.0.0.1 to ::1", 1, 1, "::1"},
		{"block from 10.0.0.1 port 5", 1, 1, "port"},
		{"default", 1, 1, "default"},
		{"default deny", 1, 1, "deny"},
		{"default block now", 1, 1, "now"},
		{"pass\ndefault block; default pass", 3, 2, "default"},
		{"pass in all", 1, 1, "all"},
	} {
		_, err := Parse(c.in)
		var pe *ParseError
		if !errors.As(err, &pe) || !errors.Is(err, ErrSyntax) {
			t.Errorf("Parse(%q) = %v, want a *ParseError wrapping ErrSyntax", c.in, err)
			continue
		}
		if pe.Rule != c.rule || pe.Line != c.line || pe.Token != c.tok {
			t.Errorf("Parse(%q): rule %d line %d token %q, want %d %d %q (%v)", c.in, pe.Rule, pe.Line, pe.Token, c.rule, c.line, c.tok, err)
		}
	}
}

func TestParseErrorText(t *testing.T) {
	_, err := Parse("pass\nblock proto tcp to port 9x")
	want := `ipfw: rule 2 (line 2): at "9x": syntax error: want a port 0-65535 or a range N-M with N <= M`
	if err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
}
