// Package virtioconsole is a poll-mode user-space driver for the virtio
// console device (virtio 1.2 section 5.3, QEMU's virtio-serial-pci) with
// VIRTIO_CONSOLE_F_MULTIPORT: its ports are byte streams between the guest
// and the host that need no network, so they keep working when a filter
// drops every packet.
//
// Multiport matters: QEMU gives only ports other than 0, driven through
// the multiport control protocol, host-side flow control. Port 0 without
// it (a virtconsole) drops guest→host bytes when the host is slow.
//
// Queues (spec 5.3.2): 0/1 are port 0's receiveq/transmitq, 2/3 the
// control receiveq/transmitq, and 2+2n/3+2n port n's (n ≥ 1).
//
// The control protocol (spec 5.3.6.2): the driver sends DEVICE_READY; the
// device sends PORT_ADD for each port; the driver answers PORT_READY; the
// device may name the port (PORT_NAME), mark it a console (CONSOLE_PORT)
// and tell whether the host side is connected (PORT_OPEN); the driver
// sends PORT_OPEN for the ports it uses.
package virtioconsole

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/nke-harness/nke/virtio"
)

// Feature bits, spec 5.3.3.
const (
	FSize       virtio.Feature = 0 // cols and rows in the configuration
	FMultiport  virtio.Feature = 1 // max_nr_ports and the control queues
	FEmergWrite virtio.Feature = 2 // emerg_wr in the configuration
)

// FeatureNames names the console's own feature bits.
var FeatureNames = map[virtio.Feature]string{
	FSize:       "SIZE",
	FMultiport:  "MULTIPORT",
	FEmergWrite: "EMERG_WRITE",
}

// Control events, spec 5.3.6.2 (struct virtio_console_control.event).
const (
	EventDeviceReady uint16 = 0
	EventPortAdd     uint16 = 1
	EventPortRemove  uint16 = 2
	EventPortReady   uint16 = 3
	EventConsolePort uint16 = 4
	EventResize      uint16 = 5
	EventPortOpen    uint16 = 6
	EventPortName    uint16 = 7
	numControlEvents        = 8
)

var eventNames = [numControlEvents]string{"DEVICE_READY", "DEVICE_ADD", "DEVICE_REMOVE", "PORT_READY", "CONSOLE_PORT", "RESIZE", "PORT_OPEN", "PORT_NAME"}

// EventName names a control event for errors and logs.
func EventName(e uint16) string {
	if e < numControlEvents {
		return eventNames[e]
	}
	return fmt.Sprintf("event %d", e)
}

// ControlLen is the size of struct virtio_console_control: le32 id, le16
// event, le16 value.
const ControlLen = 8

// MaxNameLen bounds a port name (PORT_NAME's payload). QEMU sends the
// name with a terminating NUL; Linux takes any length. Names longer than
// this are refused.
const MaxNameLen = 255

// Errors in control messages from the device. They wrap ErrBadControl.
var (
	ErrBadControl = errors.New("virtio-console: malformed control message")
)

// Control is one control message.
type Control struct {
	ID    uint32 // port id
	Event uint16
	Value uint16
	// Name is PORT_NAME's payload, without the terminating NUL; it
	// aliases the buffer parsed.
	Name []byte
}

func (c Control) String() string {
	if c.Event == EventPortName {
		return fmt.Sprintf("%s port %d %q", EventName(c.Event), c.ID, c.Name)
	}
	return fmt.Sprintf("%s port %d value %d", EventName(c.Event), c.ID, c.Value)
}

// ParseControl decodes a control message the device wrote (b is exactly
// what it wrote). It refuses what a driver must not act on: fewer than
// ControlLen bytes, a payload on anything but PORT_NAME, and a name that
// is empty, too long, not UTF-8 or holds NUL or control characters. It does
// not allocate. Whether the port id is one the device has is the caller's
// to check.
func ParseControl(b []byte) (Control, error) {
	if len(b) < ControlLen {
		return Control{}, fmt.Errorf("%w: %d bytes, need %d", ErrBadControl, len(b), ControlLen)
	}
	c := Control{
		ID:    binary.LittleEndian.Uint32(b),
		Event: binary.LittleEndian.Uint16(b[4:]),
		Value: binary.LittleEndian.Uint16(b[6:]),
	}
	rest := b[ControlLen:]
	switch c.Event {
	case EventPortName:
		if n := len(rest); n > 0 && rest[n-1] == 0 {
			rest = rest[:n-1]
		}
		switch {
		case len(rest) == 0:
			return c, fmt.Errorf("%w: PORT_NAME for port %d with an empty name", ErrBadControl, c.ID)
		case len(rest) > MaxNameLen:
			return c, fmt.Errorf("%w: PORT_NAME for port %d of %d bytes, more than %d", ErrBadControl, c.ID, len(rest), MaxNameLen)
		case !utf8.Valid(rest):
			return c, fmt.Errorf("%w: PORT_NAME for port %d is not UTF-8", ErrBadControl, c.ID)
		}
		for _, ch := range rest {
			if ch < 0x20 || ch == 0x7f {
				return c, fmt.Errorf("%w: PORT_NAME for port %d holds control character %#02x", ErrBadControl, c.ID, ch)
			}
		}
		c.Name = rest
	case EventResize:
		// QEMU 7.2 never sends it; Linux reads cols and rows after the
		// header. Take and ignore them.
	default:
		if len(rest) != 0 {
			return c, fmt.Errorf("%w: %s for port %d carries %d stray bytes", ErrBadControl, EventName(c.Event), c.ID, len(rest))
		}
	}
	return c, nil
}

// PutControl encodes a driver→device message into b (at least ControlLen
// bytes) and returns its length.
func PutControl(b []byte, id uint32, event, value uint16) int {
	binary.LittleEndian.PutUint32(b, id)
	binary.LittleEndian.PutUint16(b[4:], event)
	binary.LittleEndian.PutUint16(b[6:], value)
	return ControlLen
}

// Configuration layout, spec 5.3.4.
const (
	cfgCols       = 0
	cfgRows       = 2
	cfgMaxNrPorts = 4
	cfgEmergWr    = 8
	// ConfigSize is the configuration read: through max_nr_ports.
	ConfigSize = 8
)
