package socket

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"

	"github.com/nke-harness/nke/kernel/netstack"
)

// parseNet splits a network name into the kind of socket and whether
// it is IPv6 (ok false: the network names no family yet).
func parseNet(network string) (k kind, v6, fixed bool, err error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
		k = kindTCP
	case "udp", "udp4", "udp6":
		k = kindUDP
	case "ping4", "ip4:icmp", "ip4:1":
		return kindICMP, false, true, nil
	case "ping6", "ip6:ipv6-icmp", "ip6:58":
		return kindICMP, true, true, nil
	default:
		return 0, false, false, net.UnknownNetworkError(network)
	}
	switch network[len(network)-1] {
	case '4':
		return k, false, true, nil
	case '6':
		return k, true, true, nil
	}
	return k, false, false, nil
}

// resolve parses "host:port" (or a bare host for ping sockets) of
// network into a stack address. An empty host is the wildcard: of IPv6
// for the "6" networks, else IPv4. A link-local IPv6 address is on the
// guest's one interface, whatever its zone says.
func resolve(network, address string) (k kind, v6 bool, fa tcpip.FullAddress, err error) {
	k, v6, fixed, err := parseNet(network)
	if err != nil {
		return
	}
	host, port := address, uint16(0)
	if k != kindICMP {
		h, p, serr := net.SplitHostPort(address)
		if serr != nil {
			return k, v6, fa, serr
		}
		n, perr := strconv.ParseUint(p, 10, 16)
		if perr != nil {
			return k, v6, fa, &net.AddrError{Err: "invalid port", Addr: address}
		}
		host, port = h, uint16(n)
	}
	fa.Port = port
	if host == "" {
		return k, v6, fa, nil
	}
	a, perr := netip.ParseAddr(host)
	if perr != nil {
		return k, v6, fa, &net.AddrError{Err: "not an IP address", Addr: host}
	}
	a = a.WithZone("").Unmap()
	if fixed && a.Is6() != v6 {
		return k, v6, fa, &net.AddrError{Err: "address of the wrong family for " + network, Addr: host}
	}
	v6 = a.Is6()
	fa.Addr = tcpip.AddrFromSlice(a.AsSlice())
	if a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() || a.IsInterfaceLocalMulticast() {
		fa.NIC = netstack.NICID
	}
	return k, v6, fa, nil
}

func proto(v6 bool) tcpip.NetworkProtocolNumber {
	if v6 {
		return ipv6.ProtocolNumber
	}
	return ipv4.ProtocolNumber
}

// fromNetAddr converts a net.Addr given to WriteTo.
func fromNetAddr(a net.Addr) (tcpip.FullAddress, bool, error) {
	var ip net.IP
	var port int
	switch a := a.(type) {
	case *net.UDPAddr:
		ip, port = a.IP, a.Port
	case *net.IPAddr:
		ip = a.IP
	case *net.TCPAddr:
		ip, port = a.IP, a.Port
	default:
		return tcpip.FullAddress{}, false, &net.AddrError{Err: "unsupported address type", Addr: fmt.Sprint(a)}
	}
	na, ok := netip.AddrFromSlice(ip)
	if !ok {
		return tcpip.FullAddress{}, false, &net.AddrError{Err: "invalid IP", Addr: a.String()}
	}
	na = na.Unmap()
	fa := tcpip.FullAddress{Addr: tcpip.AddrFromSlice(na.AsSlice()), Port: uint16(port)}
	if na.IsLinkLocalUnicast() || na.IsLinkLocalMulticast() {
		fa.NIC = netstack.NICID
	}
	return fa, na.Is6(), nil
}

func ipOf(a tcpip.FullAddress) net.IP {
	if a.Addr.Len() == 0 {
		return nil
	}
	return net.IP(a.Addr.AsSlice())
}

func tcpAddr(a tcpip.FullAddress) *net.TCPAddr {
	return &net.TCPAddr{IP: ipOf(a), Port: int(a.Port), Zone: zone(a)}
}
func udpAddr(a tcpip.FullAddress) *net.UDPAddr {
	return &net.UDPAddr{IP: ipOf(a), Port: int(a.Port), Zone: zone(a)}
}
func ipAddr(a tcpip.FullAddress) *net.IPAddr { return &net.IPAddr{IP: ipOf(a), Zone: zone(a)} }

// zone names the interface of a link-local address, as the standard
// library does.
func zone(a tcpip.FullAddress) string {
	if a.Addr.Len() == 16 {
		if na, ok := netip.AddrFromSlice(a.Addr.AsSlice()); ok && na.IsLinkLocalUnicast() {
			return strconv.Itoa(int(netstack.NICID))
		}
	}
	return ""
}

// tcpipErr converts a stack error into the errno the standard library
// would report in its place (a syscall.Errno, which errors.Is finds
// inside the *net.OpError), or a plain error naming it.
func tcpipErr(err tcpip.Error) error {
	var e syscall.Errno
	switch err.(type) {
	case *tcpip.ErrConnectionRefused:
		e = syscall.ECONNREFUSED
	case *tcpip.ErrConnectionReset:
		e = syscall.ECONNRESET
	case *tcpip.ErrConnectionAborted:
		e = syscall.ECONNABORTED
	case *tcpip.ErrTimeout:
		e = syscall.ETIMEDOUT
	case *tcpip.ErrPortInUse, *tcpip.ErrDuplicateAddress:
		e = syscall.EADDRINUSE
	case *tcpip.ErrBadLocalAddress:
		e = syscall.EADDRNOTAVAIL
	case *tcpip.ErrHostUnreachable:
		e = syscall.EHOSTUNREACH
	case *tcpip.ErrNetworkUnreachable:
		e = syscall.ENETUNREACH
	case *tcpip.ErrClosedForSend:
		e = syscall.EPIPE
	case *tcpip.ErrNotConnected:
		e = syscall.ENOTCONN
	case *tcpip.ErrAlreadyConnected:
		e = syscall.EISCONN
	case *tcpip.ErrMessageTooLong:
		e = syscall.EMSGSIZE
	case *tcpip.ErrInvalidEndpointState, *tcpip.ErrInvalidOptionValue:
		e = syscall.EINVAL
	case *tcpip.ErrNotSupported, *tcpip.ErrUnknownProtocolOption:
		e = syscall.EOPNOTSUPP
	case *tcpip.ErrDestinationRequired:
		e = syscall.EDESTADDRREQ
	case *tcpip.ErrBroadcastDisabled, *tcpip.ErrNotPermitted:
		e = syscall.EACCES
	default:
		return errors.New(err.String())
	}
	return e
}
