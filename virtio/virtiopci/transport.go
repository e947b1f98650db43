// Package virtiopci is the modern virtio-over-PCI transport (virtio 1.2,
// section 4.1) for a user-space driver: it finds the PCI function in sysfs,
// walks its virtio capabilities, maps the BARs they point into, and drives
// the common configuration, notification, ISR and device configuration
// structures through exact-width MMIO. It implements virtio.Transport.
//
// Nothing here takes interrupts: the transport masks INTx and sets no
// MSI-X vectors; drivers poll.
package virtiopci

import (
	"fmt"
	"math/bits"
	"time"

	"github.com/nke-harness/nke/virtio"
)

// struct virtio_pci_common_cfg register offsets, spec 4.1.4.3.
const (
	regDeviceFeatureSelect = 0x00 // le32
	regDeviceFeature       = 0x04 // le32
	regDriverFeatureSelect = 0x08 // le32
	regDriverFeature       = 0x0c // le32
	regConfigMSIXVector    = 0x10 // le16
	regNumQueues           = 0x12 // le16
	regDeviceStatus        = 0x14 // u8
	regConfigGeneration    = 0x15 // u8
	regQueueSelect         = 0x16 // le16
	regQueueSize           = 0x18 // le16
	regQueueMSIXVector     = 0x1a // le16
	regQueueEnable         = 0x1c // le16
	regQueueNotifyOff      = 0x1e // le16
	regQueueDesc           = 0x20 // le64, written as two le32: low then high
	regQueueDriver         = 0x28 // le64
	regQueueDevice         = 0x30 // le64
)

// DefaultResetTimeout bounds how long Reset waits for device_status to
// read 0. QEMU resets synchronously; real hardware may take a while.
const DefaultResetTimeout = time.Second

// Transport is a virtio device reached over modern PCI. It implements
// virtio.Transport. Like that interface, it is not safe for concurrent
// use, except that each Notifier it returns may be used by one other
// goroutine (a queue's poll loop) at the same time.
type Transport struct {
	name   string
	caps   []Cap // the structures in use: common, notify, ISR, device
	common registers
	notify registers
	isr    registers
	device registers // Len() 0 when the device has no configuration

	notifyMult uint32

	// driverFeatures is what the driver last wrote, to check SetupQueue
	// against (power-of-two sizes unless RING_PACKED, no NOTIFICATION_DATA).
	driverFeatures virtio.Features

	// ResetTimeout bounds Reset; DefaultResetTimeout when zero.
	ResetTimeout time.Duration

	unmap  func() error // releases the mappings; nil for test transports
	closed bool

	// iommu is set when an IOMMU translates the device's DMA.
	iommu bool
}

var _ virtio.Transport = (*Transport)(nil)

// newTransport builds a transport over register windows whose sizes have
// already been validated against the capabilities.
func newTransport(name string, caps []Cap, common, notify, isr, device registers, notifyMult uint32, unmap func() error) (*Transport, error) {
	t := &Transport{name: name, caps: caps, common: common, notify: notify, isr: isr, device: device, notifyMult: notifyMult, unmap: unmap}
	switch {
	case common.Len() < commonLen10:
		return nil, fmt.Errorf("%w: common configuration window is %#x bytes, need %#x", ErrBadCaps, common.Len(), commonLen10)
	case notify.Len() < notifyMinLen:
		return nil, fmt.Errorf("%w: notify window is %d bytes, need %d", ErrBadCaps, notify.Len(), notifyMinLen)
	case isr.Len() < isrMinLen:
		return nil, fmt.Errorf("%w: ISR window is empty", ErrBadCaps)
	}
	// All-ones reads are what a PCI read returns when nothing decodes the
	// address: memory decoding off, BAR unassigned, or the device gone.
	if t.common.Read8(regDeviceStatus) == 0xff && t.common.Read16(regNumQueues) == 0xffff {
		return nil, fmt.Errorf("%w: common configuration reads all ones (memory decoding off or device gone)", virtio.ErrDeviceBroken)
	}
	return t, nil
}

// DMATranslated reports whether an IOMMU sits between the device and
// memory, so that guest-physical addresses are not what it must be given.
func (t *Transport) DMATranslated() bool { return t.iommu }

// Name implements virtio.Transport: the PCI address.
func (t *Transport) Name() string { return t.name }

// Caps returns the capabilities the transport uses: common, notify, ISR
// and, if present, device configuration.
func (t *Transport) Caps() []Cap { return append([]Cap(nil), t.caps...) }

// DeviceFeatures implements virtio.Transport. It reads device_feature
// through device_feature_select 0 and 1.
func (t *Transport) DeviceFeatures() virtio.Features {
	t.common.Write32(regDeviceFeatureSelect, 0)
	lo := t.common.Read32(regDeviceFeature)
	t.common.Write32(regDeviceFeatureSelect, 1)
	hi := t.common.Read32(regDeviceFeature)
	return virtio.Features(uint64(hi)<<32 | uint64(lo))
}

// SetDriverFeatures implements virtio.Transport.
func (t *Transport) SetDriverFeatures(fs virtio.Features) {
	t.common.Write32(regDriverFeatureSelect, 0)
	t.common.Write32(regDriverFeature, uint32(fs))
	t.common.Write32(regDriverFeatureSelect, 1)
	t.common.Write32(regDriverFeature, uint32(fs>>32))
	t.driverFeatures = fs
}

// Status implements virtio.Transport.
func (t *Transport) Status() uint8 { return t.common.Read8(regDeviceStatus) }

// SetStatus implements virtio.Transport.
func (t *Transport) SetStatus(s uint8) { t.common.Write8(regDeviceStatus, s) }

// Reset implements virtio.Transport: it writes 0 to device_status and polls
// until the device reads back 0 (spec 4.1.4.3.2), for at most ResetTimeout.
func (t *Transport) Reset() error {
	t.common.Write8(regDeviceStatus, 0)
	t.driverFeatures = 0
	timeout := t.ResetTimeout
	if timeout <= 0 {
		timeout = DefaultResetTimeout
	}
	deadline := time.Now().Add(timeout)
	for pause := time.Microsecond; ; pause = min(2*pause, 10*time.Millisecond) {
		s := t.common.Read8(regDeviceStatus)
		if s == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return &OpError{Op: "reset", BDF: t.name,
				Err: fmt.Errorf("%w: device_status still %#02x after %v", virtio.ErrDeviceBroken, s, timeout)}
		}
		time.Sleep(pause)
	}
}

// NumQueues implements virtio.Transport.
func (t *Transport) NumQueues() int { return int(t.common.Read16(regNumQueues)) }

// QueueMaxSize implements virtio.Transport. Out of range queues read as
// absent (0).
func (t *Transport) QueueMaxSize(q int) uint16 {
	if q < 0 || q >= t.NumQueues() {
		return 0
	}
	t.common.Write16(regQueueSelect, uint16(q))
	return t.common.Read16(regQueueSize)
}

// SetupQueue implements virtio.Transport, following spec 4.1.5.1.3: select
// the queue, write its size, set no MSI-X vector (checked by reading it
// back), write the three ring addresses (each as two 32-bit halves, low
// first), read queue_notify_off to locate the doorbell, then enable it.
//
// It must run after FEATURES_OK (spec 3.1.1 step 7) and checks its
// arguments against the device: q exists and is not yet enabled, size is
// non-zero, at most the device maximum, and a power of two unless
// RING_PACKED was negotiated, and the addresses are non-zero and aligned
// as spec 2.7 requires (16, 2, 4; packed: 16, 4, 4).
func (t *Transport) SetupQueue(q int, size uint16, addrs virtio.QueueAddrs) (virtio.Notifier, error) {
	fail := func(format string, args ...any) (virtio.Notifier, error) {
		return nil, &OpError{Op: fmt.Sprintf("set up queue %d", q), BDF: t.name, Err: fmt.Errorf(format, args...)}
	}
	st := t.Status()
	switch {
	case st&virtio.StatusNeedsReset != 0:
		return fail("%w (status %#02x)", virtio.ErrNeedsReset, st)
	case st&virtio.StatusFailed != 0:
		return fail("device status is FAILED (%#02x): reset first", st)
	case st&virtio.StatusFeaturesOK == 0:
		return fail("FEATURES_OK not set (status %#02x): negotiate features before setting up queues (spec 3.1.1)", st)
	}
	if t.driverFeatures.Has(virtio.FNotificationData) {
		return fail("%w: VIRTIO_F_NOTIFICATION_DATA was negotiated, but the notifier writes only the queue index", virtio.ErrNotSupported)
	}
	if n := t.NumQueues(); q < 0 || q >= n {
		return fail("queue index out of range: the device has %d queues", n)
	}
	packed := t.driverFeatures.Has(virtio.FRingPacked)
	t.common.Write16(regQueueSelect, uint16(q))
	max := t.common.Read16(regQueueSize)
	switch {
	case max == 0:
		return fail("queue is not available (queue_size 0)")
	case !packed && max&(max-1) != 0:
		return fail("%w: device reports queue_size %d, not a power of two", virtio.ErrDeviceBroken, max)
	case size == 0 || size > max:
		return fail("size %d outside 1..%d", size, max)
	case !packed && size&(size-1) != 0:
		return fail("size %d is not a power of two (required for split rings)", size)
	}
	if en := t.common.Read16(regQueueEnable); en != 0 {
		return fail("queue already enabled (queue_enable %d): reset the device first", en)
	}
	drvAlign := uint64(2)
	if packed {
		drvAlign = 4
	}
	for _, a := range []struct {
		name  string
		addr  uint64
		align uint64
	}{{"descriptor area", addrs.Desc, 16}, {"driver area", addrs.Driver, drvAlign}, {"device area", addrs.Device, 4}} {
		if a.addr == 0 || a.addr%a.align != 0 {
			return fail("%s address %#x is zero or not %d-byte aligned", a.name, a.addr, a.align)
		}
	}

	t.common.Write16(regQueueSize, size)
	t.common.Write16(regQueueMSIXVector, virtio.NoVector)
	if v := t.common.Read16(regQueueMSIXVector); v != virtio.NoVector {
		return fail("%w: queue_msix_vector reads %#x after writing NO_VECTOR %#x", virtio.ErrDeviceBroken, v, virtio.NoVector)
	}
	t.write64(regQueueDesc, addrs.Desc)
	t.write64(regQueueDriver, addrs.Driver)
	t.write64(regQueueDevice, addrs.Device)

	notifyOff := t.common.Read16(regQueueNotifyOff)
	hi, off := bits.Mul64(uint64(notifyOff), uint64(t.notifyMult))
	if hi != 0 || off > uint64(t.notify.Len()) || uint64(t.notify.Len())-off < 2 {
		return fail("%w: doorbell at queue_notify_off %d * multiplier %d = %#x lies outside the %#x-byte notify structure",
			virtio.ErrDeviceBroken, notifyOff, t.notifyMult, off, t.notify.Len())
	}

	t.common.Write16(regQueueEnable, 1)
	if en := t.common.Read16(regQueueEnable); en != 1 {
		return fail("%w: queue_enable reads %d after enabling", virtio.ErrDeviceBroken, en)
	}
	return &doorbell{regs: t.notify, off: int(off), queue: uint16(q)}, nil
}

// write64 writes a 64-bit common configuration field as two 32-bit
// halves, low then high (spec 4.1.3).
func (t *Transport) write64(off int, v uint64) {
	t.common.Write32(off, uint32(v))
	t.common.Write32(off+4, uint32(v>>32))
}

// doorbell is one queue's notification address, spec 4.1.4.4.
type doorbell struct {
	regs  registers
	off   int
	queue uint16
}

// Notify writes the queue index to the doorbell, one 16-bit store
// (spec 4.1.5.2 without VIRTIO_F_NOTIFICATION_DATA).
func (d *doorbell) Notify() { d.regs.Write16(d.off, d.queue) }

// ConfigGeneration implements virtio.Transport.
func (t *Transport) ConfigGeneration() uint8 { return t.common.Read8(regConfigGeneration) }

// ConfigLen implements virtio.Transport.
func (t *Transport) ConfigLen() int { return t.device.Len() }

// ReadConfig implements virtio.Transport. Access widths follow the length
// of p, as spec 4.1.3.1 wants them to follow field widths: 1, 2 or 4
// bytes at a matching alignment are one access of that width; 8 aligned
// bytes are two 32-bit accesses (low then high); anything else (byte
// arrays such as the MAC) is read byte by byte. Callers reading more than
// one field re-check ConfigGeneration (spec 2.5.1).
func (t *Transport) ReadConfig(off int, p []byte) error {
	n := t.device.Len()
	if off < 0 || off > n || len(p) > n-off {
		return &OpError{Op: "read device config", BDF: t.name,
			Err: fmt.Errorf("%d bytes at %#x outside the %#x-byte device configuration", len(p), off, n)}
	}
	switch {
	case len(p) == 2 && off%2 == 0:
		v := t.device.Read16(off)
		p[0], p[1] = byte(v), byte(v>>8)
	case len(p) == 4 && off%4 == 0:
		putLE32(p, t.device.Read32(off))
	case len(p) == 8 && off%4 == 0:
		putLE32(p, t.device.Read32(off))
		putLE32(p[4:], t.device.Read32(off+4))
	default:
		for i := range p {
			p[i] = t.device.Read8(off + i)
		}
	}
	return nil
}

func putLE32(p []byte, v uint32) {
	p[0], p[1], p[2], p[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}

// ISR implements virtio.Transport.
func (t *Transport) ISR() uint8 { return t.isr.Read8(0) }

// Close implements virtio.Transport: it resets the device, so that it
// stops touching ring memory, and unmaps the BARs. Using the transport or
// its notifiers afterwards panics.
func (t *Transport) Close() error {
	if t.closed {
		return nil
	}
	t.closed = true
	err := t.Reset()
	if t.unmap != nil {
		if uerr := t.unmap(); err == nil {
			err = uerr
		}
	}
	return err
}
