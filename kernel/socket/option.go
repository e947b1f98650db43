package socket

import (
	"fmt"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// Option is a socket option (setsockopt/getsockopt); every set and get
// passes through the socket's setOption/getOption seams.
type Option int

// The options. Booleans are 0 or 1.
const (
	OptReuseAddr Option = iota + 1 // SO_REUSEADDR
	OptKeepAlive                   // SO_KEEPALIVE
	OptRcvBuf                      // SO_RCVBUF, bytes
	OptSndBuf                      // SO_SNDBUF, bytes
	OptNoDelay                     // TCP_NODELAY
	OptV6Only                      // IPV6_V6ONLY
	OptBroadcast                   // SO_BROADCAST
	// The receive control messages of a datagram socket (ReadMsgUDP's
	// oob and what filters get as control; package nke/cmsg).
	OptRecvPktInfo // IP_PKTINFO, IPV6_RECVPKTINFO: destination address and interface
	OptRecvTOS     // IP_RECVTOS, IPV6_RECVTCLASS
	OptRecvTTL     // IP_RECVTTL, IPV6_RECVHOPLIMIT
)

func (o Option) String() string {
	switch o {
	case OptReuseAddr:
		return "SO_REUSEADDR"
	case OptKeepAlive:
		return "SO_KEEPALIVE"
	case OptRcvBuf:
		return "SO_RCVBUF"
	case OptSndBuf:
		return "SO_SNDBUF"
	case OptNoDelay:
		return "TCP_NODELAY"
	case OptV6Only:
		return "IPV6_V6ONLY"
	case OptBroadcast:
		return "SO_BROADCAST"
	case OptRecvPktInfo:
		return "IP_PKTINFO"
	case OptRecvTOS:
		return "IP_RECVTOS"
	case OptRecvTTL:
		return "IP_RECVTTL"
	}
	return fmt.Sprintf("Option(%d)", int(o))
}

func (o Option) set(ep tcpip.Endpoint, v6 bool, v int) error {
	so := ep.SocketOptions()
	switch o {
	case OptReuseAddr:
		so.SetReuseAddress(v != 0)
	case OptKeepAlive:
		so.SetKeepAlive(v != 0)
	case OptRcvBuf:
		so.SetReceiveBufferSize(int64(v), true)
	case OptSndBuf:
		so.SetSendBufferSize(int64(v), true)
	case OptNoDelay:
		so.SetDelayOption(v == 0)
	case OptV6Only:
		so.SetV6Only(v != 0)
	case OptBroadcast:
		so.SetBroadcast(v != 0)
	case OptRecvPktInfo:
		if v6 {
			so.SetIPv6ReceivePacketInfo(v != 0)
		} else {
			so.SetReceivePacketInfo(v != 0)
		}
	case OptRecvTOS:
		if v6 {
			so.SetReceiveTClass(v != 0)
		} else {
			so.SetReceiveTOS(v != 0)
		}
	case OptRecvTTL:
		if v6 {
			so.SetReceiveHopLimit(v != 0)
		} else {
			so.SetReceiveTTL(v != 0)
		}
	default:
		return syscall.ENOPROTOOPT
	}
	return nil
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (o Option) get(ep tcpip.Endpoint, v6 bool) (int, error) {
	so := ep.SocketOptions()
	switch o {
	case OptReuseAddr:
		return b2i(so.GetReuseAddress()), nil
	case OptKeepAlive:
		return b2i(so.GetKeepAlive()), nil
	case OptRcvBuf:
		return int(so.GetReceiveBufferSize()), nil
	case OptSndBuf:
		return int(so.GetSendBufferSize()), nil
	case OptNoDelay:
		return b2i(!so.GetDelayOption()), nil
	case OptV6Only:
		return b2i(so.GetV6Only()), nil
	case OptBroadcast:
		return b2i(so.GetBroadcast()), nil
	case OptRecvPktInfo:
		if v6 {
			return b2i(so.GetIPv6ReceivePacketInfo()), nil
		}
		return b2i(so.GetReceivePacketInfo()), nil
	case OptRecvTOS:
		if v6 {
			return b2i(so.GetReceiveTClass()), nil
		}
		return b2i(so.GetReceiveTOS()), nil
	case OptRecvTTL:
		if v6 {
			return b2i(so.GetReceiveHopLimit()), nil
		}
		return b2i(so.GetReceiveTTL()), nil
	}
	return 0, syscall.ENOPROTOOPT
}

// Ioctl is a socket ioctl; every one passes through the ioctl seam.
type Ioctl int

// The ioctls.
const (
	FIONREAD  Ioctl = iota + 1 // bytes waiting to be read
	FIONWRITE                  // bytes sent and not yet acknowledged (TIOCOUTQ)
)

func (r Ioctl) do(ep tcpip.Endpoint) (int, error) {
	var opt tcpip.SockOptInt
	switch r {
	case FIONREAD:
		opt = tcpip.ReceiveQueueSizeOption
	case FIONWRITE:
		opt = tcpip.SendQueueSizeOption
	default:
		return 0, syscall.ENOTTY
	}
	v, err := ep.GetSockOptInt(opt)
	if err != nil {
		return 0, tcpipErr(err)
	}
	return v, nil
}
