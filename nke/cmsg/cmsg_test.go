package cmsg

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		name string
		v6   bool
		c    Control
	}{
		{"empty v4", false, Control{}},
		{"all v4", false, Control{HasPacketInfo: true, Addr: netip.MustParseAddr("10.0.2.15"), IfIndex: 1, HasTOS: true, TOS: 0x10, HasTTL: true, TTL: 64}},
		{"ttl v4", false, Control{HasTTL: true, TTL: 1}},
		{"all v6", true, Control{HasPacketInfo: true, Addr: netip.MustParseAddr("fd00::15"), IfIndex: 2, HasTOS: true, TOS: 0xb8, HasTTL: true, TTL: 255}},
		{"pktinfo v6", true, Control{HasPacketInfo: true, Addr: netip.MustParseAddr("fe80::1"), IfIndex: 3}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.c.Append(nil, tt.v6)
			if len(b)%align != 0 {
				t.Errorf("length %d is not a multiple of %d", len(b), align)
			}
			var got Control
			if err := got.Parse(b, tt.v6); err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.c, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
				t.Errorf("round trip (-want +got):\n%s", d)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	ttl := func(v int32) []byte {
		var d [4]byte
		d[0], d[1], d[2], d[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
		return d[:]
	}
	for _, tt := range []struct {
		name string
		b    []byte
		v6   bool
		want error
		text string
	}{
		{"short header", make([]byte, 8), false, ErrMalformed, "a header is 16"},
		{"length past end", Append(nil, LevelIP, IPTTL, ttl(3))[:18], false, ErrMalformed, "length 20 with 18"},
		{"length under header", func() []byte { b := Append(nil, LevelIP, IPTTL, ttl(3)); b[0] = 4; return b }(), false, ErrMalformed, "length 4"},
		{"v6 message on v4", Append(nil, LevelIPv6, IPv6HopLimit, ttl(3)), false, ErrUnsupported, "IPV6_HOPLIMIT"},
		{"unknown type", Append(nil, LevelIP, 99, nil), false, ErrUnsupported, "level 0 type 99"},
		{"ttl wrong size", Append(nil, LevelIP, IPTTL, []byte{1}), false, ErrMalformed, "IP_TTL with 1 bytes"},
		{"ttl out of range", Append(nil, LevelIP, IPTTL, ttl(256)), false, ErrMalformed, "out of range"},
		{"negative hop limit", Append(nil, LevelIPv6, IPv6HopLimit, ttl(-1)), true, ErrMalformed, "out of range"},
		{"pktinfo v6 short", Append(nil, LevelIPv6, IPv6PktInfo, make([]byte, 16)), true, ErrMalformed, "IPV6_PKTINFO with 16"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var c Control
			err := c.Parse(tt.b, tt.v6)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Parse = %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.text) {
				t.Errorf("error %q does not say %q", err, tt.text)
			}
		})
	}
}

// The last message may lack its padding (Linux's CMSG_NXTHDR allows it).
func TestUnpaddedLast(t *testing.T) {
	b := Append(nil, LevelIP, IPTOS, []byte{7})
	b = b[:hdrLen+1]
	var c Control
	if err := c.Parse(b, false); err != nil || !c.HasTOS || c.TOS != 7 {
		t.Fatalf("Parse = %+v, %v", c, err)
	}
}

func TestAppendAllocs(t *testing.T) {
	c := Control{HasPacketInfo: true, Addr: netip.MustParseAddr("fd00::1"), HasTTL: true, TTL: 9, HasTOS: true}
	buf := make([]byte, 0, 128)
	var out Control
	if n := testing.AllocsPerRun(100, func() {
		b := c.Append(buf[:0], true)
		if err := out.Parse(b, true); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Append+Parse: %v allocs, want 0", n)
	}
}

// FuzzParse: any buffer parses or fails cleanly; what parses encodes to
// a buffer that parses to the same.
func FuzzParse(f *testing.F) {
	f.Add(Append(nil, LevelIP, IPTTL, []byte{64, 0, 0, 0}), false)
	f.Add((&Control{HasPacketInfo: true, Addr: netip.MustParseAddr("fd00::1"), HasTTL: true, TTL: 3}).Append(nil, true), true)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0}, false)
	f.Fuzz(func(t *testing.T, b []byte, v6 bool) {
		var c Control
		if err := c.Parse(b, v6); err != nil {
			return
		}
		var again Control
		if err := again.Parse(c.Append(nil, v6), v6); err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if c.HasPacketInfo && !v6 {
			// IPv4 packet info keeps ipi_addr; spec_dst is written from it.
			again.Addr = c.Addr
		}
		if c != again {
			t.Fatalf("round trip: %+v != %+v", c, again)
		}
	})
}
