// Package virtio holds what every virtio device and transport shares: the
// device status bits and reserved feature bits of the OASIS virtio 1.2
// specification, and the Transport interface that a device driver programs
// against. The PCI transport (virtiopci) and the in-process device model
// (virtiodev) both implement Transport, so one driver runs against either.
package virtio

import (
	"errors"
	"fmt"
	"math/bits"
	"strings"
)

// Device status bits, spec 2.1 "Device Status Field".
const (
	StatusAcknowledge uint8 = 1
	StatusDriver      uint8 = 2
	StatusDriverOK    uint8 = 4
	StatusFeaturesOK  uint8 = 8
	StatusNeedsReset  uint8 = 64
	StatusFailed      uint8 = 128
)

// Feature is one feature bit number (0-63).
type Feature uint

// Reserved (device-independent) feature bits, spec 6 "Reserved Feature Bits".
const (
	FIndirectDesc     Feature = 28
	FEventIdx         Feature = 29
	FVersion1         Feature = 32
	FAccessPlatform   Feature = 33
	FRingPacked       Feature = 34
	FInOrder          Feature = 35
	FOrderPlatform    Feature = 36
	FSRIOV            Feature = 37
	FNotificationData Feature = 38
	FNotifConfigData  Feature = 39
	FRingReset        Feature = 40
)

var reservedNames = map[Feature]string{
	FIndirectDesc:     "INDIRECT_DESC",
	FEventIdx:         "EVENT_IDX",
	FVersion1:         "VERSION_1",
	FAccessPlatform:   "ACCESS_PLATFORM",
	FRingPacked:       "RING_PACKED",
	FInOrder:          "IN_ORDER",
	FOrderPlatform:    "ORDER_PLATFORM",
	FSRIOV:            "SR_IOV",
	FNotificationData: "NOTIFICATION_DATA",
	FNotifConfigData:  "NOTIF_CONFIG_DATA",
	FRingReset:        "RING_RESET",
}

// Features is a feature bit set as exchanged through device_feature and
// driver_feature.
type Features uint64

// Has reports whether bit f is set.
func (fs Features) Has(f Feature) bool { return fs&(1<<f) != 0 }

// With returns fs with bit f set.
func (fs Features) With(f Feature) Features { return fs | 1<<f }

// Names lists the set bits, using devNames for device-specific bits
// (0-23 and 50-63) and the reserved names for the rest; unknown bits are
// shown as "bit N".
func (fs Features) Names(devNames map[Feature]string) []string {
	var out []string
	for v := uint64(fs); v != 0; v &= v - 1 {
		f := Feature(bits.TrailingZeros64(v))
		name, ok := devNames[f]
		if !ok {
			name, ok = reservedNames[f]
		}
		if !ok {
			name = fmt.Sprintf("bit %d", f)
		}
		out = append(out, name)
	}
	return out
}

// String lists the reserved feature names set in fs.
func (fs Features) String() string { return strings.Join(fs.Names(nil), ",") }

// NoVector is the MSI-X vector value meaning "no interrupt", spec 4.1.5.1.2.
const NoVector uint16 = 0xffff

// Errors returned by transports and drivers.
var (
	// ErrNotSupported reports a device or feature the driver cannot drive.
	ErrNotSupported = errors.New("virtio: not supported")
	// ErrDeviceBroken reports a device that violated the specification;
	// the driver must reset it before using it again.
	ErrDeviceBroken = errors.New("virtio: device misbehaved")
	// ErrNeedsReset reports that the device set DEVICE_NEEDS_RESET.
	ErrNeedsReset = errors.New("virtio: device needs reset")
)

// QueueAddrs are the guest-physical (device-visible) addresses of one split
// virtqueue's three areas, spec 2.7.
type QueueAddrs struct {
	Desc   uint64 // descriptor table
	Driver uint64 // driver (available) ring
	Device uint64 // device (used) ring
}

// Notifier rings one queue's doorbell (spec 4.1.4.4 for PCI). It is called
// on the data path, at most once per burst.
type Notifier interface {
	Notify()
}

// Transport is a virtio device's control surface as a driver sees it: the
// common configuration, per-queue setup and notification, the ISR and the
// device-specific configuration window. Spec 4.1.4 (PCI) describes the
// registers; implementations hide how they are reached.
//
// A Transport is not safe for concurrent use: one goroutine owns the
// device's control path.
type Transport interface {
	// Name identifies the device for people, e.g. "0000:00:03.0".
	Name() string

	// DeviceFeatures reads all 64 bits of device_feature.
	DeviceFeatures() Features
	// SetDriverFeatures writes all 64 bits of driver_feature.
	SetDriverFeatures(Features)

	// Status reads device_status.
	Status() uint8
	// SetStatus writes device_status. Callers OR in bits; they never clear one.
	SetStatus(uint8)
	// Reset writes 0 to device_status and waits until it reads back 0.
	Reset() error

	// NumQueues is num_queues: the most queues the device offers.
	NumQueues() int
	// QueueMaxSize selects queue q and reads its size; 0 means absent.
	QueueMaxSize(q int) uint16
	// SetupQueue selects queue q, writes its size and ring addresses, sets
	// no MSI-X vector, enables it and returns its doorbell.
	SetupQueue(q int, size uint16, addrs QueueAddrs) (Notifier, error)

	// ConfigGeneration reads config_generation (spec 2.5.1).
	ConfigGeneration() uint8
	// ReadConfig copies device-specific configuration at off into p.
	ReadConfig(off int, p []byte) error
	// ConfigLen is the length of the device-specific configuration window.
	ConfigLen() int

	// ISR reads (and so clears) the ISR status byte.
	ISR() uint8

	// Close releases the transport's mappings. The device is reset first.
	Close() error
}
