package hostvm

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"
)

// Default host ports for the forwarded guest services.
const (
	DefaultHTTPPort = 8080
	DefaultEchoPort = 7007
)

// PortFromEnv returns the port in environment variable env, or def when
// it is unset or empty.
func PortFromEnv(env string, def int) (int, error) {
	v := os.Getenv(env)
	if v == "" {
		return def, nil
	}
	p, err := strconv.Atoi(v)
	if err != nil || !validPort(p) {
		return 0, fmt.Errorf("%s=%q is not a port number; use 1..65535", env, v)
	}
	return p, nil
}

// PortBusyError says a host port the VM needs is taken.
type PortBusyError struct {
	Proto Proto
	Port  int
	Env   string // variable that picks another port
	Err   error  // from bind
}

func (e *PortBusyError) Error() string {
	return fmt.Sprintf("%s port %d on 127.0.0.1 is already in use; stop whatever holds it or set %s to a free port",
		e.Proto, e.Port, e.Env)
}

func (e *PortBusyError) Unwrap() error { return e.Err }

// CheckPortFree binds 127.0.0.1:port for proto and releases it at once,
// so a taken port fails before QEMU starts with one sentence naming env,
// the variable that moves it, rather than with QEMU's "could not set up
// host forwarding rule".
func CheckPortFree(proto Proto, port int, env string) error {
	if !validPort(port) {
		return fmt.Errorf("%s port %d is out of range; set %s to 1..65535", proto, port, env)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var err error
	switch proto {
	case TCP, "":
		proto = TCP
		var l net.Listener
		if l, err = net.Listen("tcp4", addr); err == nil {
			return l.Close()
		}
	case UDP:
		var c net.PacketConn
		if c, err = net.ListenPacket("udp4", addr); err == nil {
			return c.Close()
		}
	default:
		return fmt.Errorf("port check: unknown protocol %q", proto)
	}
	if errors.Is(err, syscall.EADDRINUSE) {
		return &PortBusyError{Proto: proto, Port: port, Env: env, Err: err}
	}
	if errors.Is(err, syscall.EACCES) {
		return fmt.Errorf("%s port %d on 127.0.0.1 needs privileges to bind; set %s to a port above 1023", proto, port, env)
	}
	return fmt.Errorf("checking %s port %d on 127.0.0.1 (%s): %w", proto, port, env, err)
}
