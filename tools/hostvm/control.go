package hostvm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nke-harness/nke/kernel/ctlchan"
)

// The out-of-band control channel: a virtio-serial-pci device whose port 1
// (ControlPortName) QEMU connects to a unix socket it listens on. The
// guest drives the device from user space (virtio/virtioconsole) with
// MULTIPORT, on which QEMU throttles instead of dropping guest→host bytes
// when the host reads slowly. It needs no network, so it keeps working
// when a filter drops every packet.
const (
	// ControlPortName is the virtserialport's name, which the guest
	// looks the port up by (kernel/guest).
	ControlPortName = "nke.ctl"
	// ControlSocketName is QEMU's socket in the VM's runtime directory.
	ControlSocketName = "console.sock"
	// controlChardev and controlSerial are the QEMU ids used.
	controlChardev = "nkectl0"
	controlSerial  = "nkevser0"
)

// ControlChannel configures the control channel of one VM.
type ControlChannel struct {
	// VM names the VM's runtime directory, ctlchan.RuntimeDir()/VM
	// (mode 0700, created by Args). Ignored when SocketPath is set.
	VM string
	// SocketPath, if set, is where QEMU listens instead; its directory
	// must exist and should be the caller's alone.
	SocketPath string
	// Packed is the device's VIRTIO_F_RING_PACKED (QEMU's default off).
	Packed Switch
}

// DefaultVMName names the runtime directory of a VM started by this
// process: vm-PID.
func DefaultVMName() string { return "vm-" + strconv.Itoa(os.Getpid()) }

// Socket returns the socket path, creating the VM's runtime directory
// (0700) when SocketPath is not set.
func (c ControlChannel) Socket() (string, error) {
	if c.SocketPath != "" {
		return c.SocketPath, nil
	}
	if c.VM == "" {
		return "", errors.New("control channel: neither VM nor SocketPath set")
	}
	dir, err := ctlchan.MakeVMDir(c.VM)
	if err != nil {
		return "", fmt.Errorf("control channel: %w", err)
	}
	return filepath.Join(dir, ControlSocketName), nil
}

// Args returns the -chardev and -device flags: QEMU listens on the socket
// (server=on, wait=off: the guest boots without a client, and a client
// may come, go and come back), a modern virtio-serial-pci with two ports
// (0 is unused; max_ports above 1 turns MULTIPORT on) and the
// virtserialport nr=1 named ControlPortName.
func (c ControlChannel) Args() ([]string, error) {
	path, err := c.Socket()
	if err != nil {
		return nil, err
	}
	if strings.Contains(path, ",") {
		return nil, fmt.Errorf("control socket %q contains ',', which QEMU's option parser splits on", path)
	}
	// sun_path holds 108 bytes with the terminating NUL.
	if len(path) > 107 {
		return nil, fmt.Errorf("control socket %q is %d bytes long, more than a unix socket address holds (107): set %s to a shorter directory", path, len(path), ctlchan.EnvRuntimeDir)
	}
	dev := fmt.Sprintf("virtio-serial-pci,id=%s,max_ports=2,disable-legacy=on", controlSerial)
	switch c.Packed {
	case Default:
	case On, Off:
		dev += ",packed=" + c.Packed.String()
	default:
		return nil, fmt.Errorf("control channel: packed: invalid switch value %d", c.Packed)
	}
	return []string{
		"-chardev", fmt.Sprintf("socket,id=%s,path=%s,server=on,wait=off", controlChardev, path),
		"-device", dev,
		"-device", fmt.Sprintf("virtserialport,bus=%s.0,nr=1,chardev=%s,name=%s", controlSerial, controlChardev, ControlPortName),
	}, nil
}

// ControlSocketIn finds the control socket in a QEMU command line made by
// Options.Args, or "".
func ControlSocketIn(args []string) string {
	prefix := "socket,id=" + controlChardev + ","
	for i, a := range args {
		if a != "-chardev" || i+1 >= len(args) || !strings.HasPrefix(args[i+1], prefix) {
			continue
		}
		for _, kv := range strings.Split(args[i+1], ",") {
			if p, ok := strings.CutPrefix(kv, "path="); ok {
				return p
			}
		}
	}
	return ""
}

// SecureSocket waits up to timeout for QEMU to create the socket at path
// and makes it 0600 (QEMU creates it as its umask says; the directory is
// 0700 already, so nobody else could reach it in between).
func SecureSocket(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		fi, err := os.Lstat(path)
		if err == nil {
			if fi.Mode()&os.ModeSocket == 0 {
				return fmt.Errorf("control socket %s is not a socket", path)
			}
			return os.Chmod(path, 0o600)
		}
		if !errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
			return fmt.Errorf("control socket: %w", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
