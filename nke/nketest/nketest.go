// Package nketest holds fakes of the kernel's side of the KPI for NKE
// unit tests (like netlink's nltest): an Interface and a Socket with the
// values a test sets. Tests that need the real hooks use
// kernel/kerneltest; the conformance suite is kernel/kerneltest/conformance.
package nketest

import (
	"net/netip"
	"sync/atomic"

	"github.com/nke-harness/nke/nke"
)

// Interface is an nke.Interface with fixed values.
type Interface struct {
	IfName  string
	IfIndex uint16
	IfMAC   [6]byte
	IfMTU   int
}

var _ nke.Interface = Interface{}

func (i Interface) Name() string  { return i.IfName }
func (i Interface) Index() uint16 { return i.IfIndex }
func (i Interface) MAC() [6]byte  { return i.IfMAC }
func (i Interface) MTU() int      { return i.IfMTU }

// DefaultInterface is vt0, index 1, MAC 02:00:00:00:00:01, MTU 1500.
var DefaultInterface = Interface{IfName: "vt0", IfIndex: 1, IfMAC: [6]byte{2, 0, 0, 0, 0, 1}, IfMTU: 1500}

var socketIDs atomic.Uint64

// Socket is an nke.Socket whose addresses a test sets (and may change, as
// a connect or bind would, before the filter sees the next call).
type Socket struct {
	SockID     uint64
	SockFamily nke.IPFamily
	SockType   nke.SocketType
	SockProto  uint8
	Local      netip.AddrPort
	Remote     netip.AddrPort
}

var _ nke.Socket = (*Socket)(nil)

// TCP returns a connected TCP socket between local and remote, with a
// fresh id.
func TCP(local, remote string) *Socket {
	l, r := netip.MustParseAddrPort(local), netip.MustParseAddrPort(remote)
	fam := nke.IPv4
	if l.Addr().Is6() {
		fam = nke.IPv6
	}
	return &Socket{SockID: socketIDs.Add(1), SockFamily: fam, SockType: nke.SockStream, SockProto: 6, Local: l, Remote: r}
}

func (s *Socket) ID() uint64                 { return s.SockID }
func (s *Socket) Family() nke.IPFamily       { return s.SockFamily }
func (s *Socket) Type() nke.SocketType       { return s.SockType }
func (s *Socket) Protocol() uint8            { return s.SockProto }
func (s *Socket) LocalAddr() netip.AddrPort  { return s.Local }
func (s *Socket) RemoteAddr() netip.AddrPort { return s.Remote }
