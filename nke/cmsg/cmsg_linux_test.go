package cmsg

import (
	"net/netip"
	"syscall"
	"testing"
)

// The bytes are what the kernel's own parser reads.
func TestKernelLayout(t *testing.T) {
	c := Control{HasPacketInfo: true, Addr: netip.MustParseAddr("10.1.2.3"), IfIndex: 4, HasTOS: true, TOS: 5, HasTTL: true, TTL: 6}
	msgs, err := syscall.ParseSocketControlMessage(c.Append(nil, false))
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 3 {
		t.Fatalf("%d messages, want 3", len(msgs))
	}
	if h := msgs[0].Header; h.Level != syscall.SOL_IP || h.Type != syscall.IP_PKTINFO || len(msgs[0].Data) != syscall.SizeofInet4Pktinfo {
		t.Errorf("first: %+v, %d bytes", h, len(msgs[0].Data))
	}
	if h := msgs[1].Header; h.Type != syscall.IP_TOS || msgs[1].Data[0] != 5 {
		t.Errorf("second: %+v %v", h, msgs[1].Data)
	}
	if h := msgs[2].Header; h.Type != syscall.IP_TTL || msgs[2].Data[0] != 6 {
		t.Errorf("third: %+v %v", h, msgs[2].Data)
	}
	msgs, err = syscall.ParseSocketControlMessage((&Control{HasPacketInfo: true, Addr: netip.MustParseAddr("fd00::2"), IfIndex: 7}).Append(nil, true))
	if err != nil || len(msgs) != 1 || msgs[0].Header.Level != syscall.SOL_IPV6 || msgs[0].Header.Type != syscall.IPV6_PKTINFO || len(msgs[0].Data) != syscall.SizeofInet6Pktinfo {
		t.Errorf("IPv6: %+v, %v", msgs, err)
	}
}
