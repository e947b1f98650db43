// Package devmodel is an in-process virtio-net device: the device side of
// the same split rings, over ordinary memory, behind the same
// virtio.Transport the PCI transport implements. The driver's unit tests,
// fuzz targets and benchmarks run against it on any machine.
//
// It behaves like QEMU 7.2's virtio-net where a driver can tell the
// difference (notification suppression, the rx stall when the ring runs
// empty, control-queue acks, config generation) and can misbehave on
// request: bad used ids, oversize lengths, index jumps, NEEDS_RESET, link
// flaps, torn or invalid configuration.
package devmodel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/virtionet"
	"github.com/nke-harness/nke/virtio/virtqueue"
)

// QEMUFeatures is what QEMU 7.2 offers for virtio-net-pci,disable-legacy=on
// on a user-mode backend (seen in a guest: 0x101_30bf8024), minus
// RING_RESET.
const QEMUFeatures = virtio.Features(1<<virtio.FVersion1 | 1<<virtio.FIndirectDesc | 1<<virtio.FEventIdx |
	1<<virtionet.FCtrlGuestOffloads | 1<<virtionet.FMAC | 1<<virtionet.FMrgRxbuf | 1<<virtionet.FStatus |
	1<<virtionet.FCtrlVQ | 1<<virtionet.FCtrlRx | 1<<virtionet.FCtrlVLAN | 1<<virtionet.FCtrlRxExtra |
	1<<virtionet.FGuestAnnounce | 1<<virtionet.FCtrlMACAddr)

// Options configure a model device.
type Options struct {
	// Features offered; 0 means QEMUFeatures.
	Features virtio.Features
	// MAC is the configured address; zero means 52:54:00:12:34:56.
	MAC [6]byte
	// QueueMax is the rx/tx queue size the device reports; 0 means 256.
	QueueMax uint16
	// MTU is reported when FMTU is offered.
	MTU uint16
	// Tx receives every transmitted frame (header stripped). The slice is
	// only valid during the call.
	Tx func(frame []byte)
}

const (
	rxq, txq, ctrlq = 0, 1, 2
	numQueues       = 3
	backlogMax      = 1024
)

type queue struct {
	max     uint16
	size    uint16
	addrs   virtio.QueueAddrs
	enabled bool
	dev     virtqueue.DeviceRing
	kicks   int
}

// Net is a model virtio-net device. Its methods are safe for concurrent use
// (the driver's transport calls and a test's Deliver may come from different
// goroutines); the rings are shared with the driver through atomics.
type Net struct {
	mem  virtqueue.Translator
	opts Options

	mu sync.Mutex
	// +checklocks:mu
	status uint8
	// +checklocks:mu
	drvFeatures virtio.Features
	// +checklocks:mu
	q [numQueues]queue
	// +checklocks:mu
	config [virtionet.ConfigSize]byte
	// +checklocks:mu
	generation uint8
	// +checklocks:mu
	backlog [][]byte // ring of frames waiting for rx buffers
	// +checklocks:mu
	backlogHead int
	// +checklocks:mu
	backlogN int
	// +checklocks:mu
	waitKick bool // rx ran empty: queued frames wait for a kick (QEMU)
	// +checklocks:mu
	promisc bool
	// +checklocks:mu
	allmulti bool
	// +checklocks:mu
	filterMAC [6]byte // unicast the rx filter passes: config's, or CTRL_MAC_ADDR's
	// +checklocks:mu
	chain virtqueue.Chain
	// +checklocks:mu
	scratch []byte
	// +checklocks:mu
	rxHeads [64]uint16 // the buffers one received frame takes
	// +checklocks:mu
	rxLens [64]uint32
	// +checklocks:mu
	faults faults
	// +checklocks:mu
	stats Stats
	// +checklocks:mu
	err error // the first driver error the device saw
}

// Stats count what the device saw.
type Stats struct {
	RxFrames, TxFrames, RxDropped int
	Kicks                         [numQueues]int
	Resets                        int
}

// New returns a device whose DMA engine reaches memory through mem.
func New(mem virtqueue.Translator, opts Options) *Net {
	if opts.Features == 0 {
		opts.Features = QEMUFeatures
	}
	if opts.MAC == [6]byte{} {
		opts.MAC = [6]byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	}
	if opts.QueueMax == 0 {
		opts.QueueMax = 256
	}
	n := &Net{mem: mem, opts: opts, promisc: true, scratch: make([]byte, 0, 65536)}
	n.mu.Lock() // nothing else sees n yet; the analyzer wants it held
	defer n.mu.Unlock()
	n.backlog = make([][]byte, backlogMax)
	copy(n.config[0:6], opts.MAC[:])
	binary.LittleEndian.PutUint16(n.config[6:], virtionet.StatusLinkUp)
	binary.LittleEndian.PutUint16(n.config[8:], 1)
	binary.LittleEndian.PutUint16(n.config[10:], opts.MTU)
	n.resetLocked()
	return n
}

// resetLocked is the device side of a reset (status 0), spec 2.4.
//
// +checklocks:n.mu
func (n *Net) resetLocked() {
	n.status = 0
	n.drvFeatures = 0
	for i := range n.q {
		n.q[i] = queue{max: n.opts.QueueMax, kicks: n.q[i].kicks}
	}
	n.q[ctrlq].max = 64
	n.backlogHead, n.backlogN = 0, 0
	n.waitKick = false
	n.promisc, n.allmulti = true, false
	n.filterMAC = [6]byte(n.config[:6])
	n.faults.usedIdxJump, n.faults.usedID, n.faults.oversize = 0, -1, 0
	n.faults.holdCtrl = false
}

// Name implements virtio.Transport.
func (n *Net) Name() string { return "devmodel" }

// DeviceFeatures implements virtio.Transport.
func (n *Net) DeviceFeatures() virtio.Features { return n.opts.Features }

// SetDriverFeatures implements virtio.Transport.
func (n *Net) SetDriverFeatures(f virtio.Features) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.drvFeatures = f
}

// Status implements virtio.Transport.
func (n *Net) Status() uint8 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.status
}

// SetStatus implements virtio.Transport, checking the driver follows spec
// 3.1.1: no bit cleared, FEATURES_OK only for offered features.
func (n *Net) SetStatus(s uint8) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if s == 0 {
		n.resetLocked()
		n.stats.Resets++
		return
	}
	if n.status&^s&^virtio.StatusNeedsReset != 0 {
		n.failLocked(fmt.Errorf("driver cleared status bits: %#x -> %#x", n.status, s))
	}
	if s&virtio.StatusFeaturesOK != 0 && n.status&virtio.StatusFeaturesOK == 0 {
		if n.drvFeatures&^n.opts.Features != 0 || n.faults.refuseFeatures {
			s &^= virtio.StatusFeaturesOK
		}
		// Spec 2.2.1: the driver must not accept a feature whose
		// prerequisite it did not accept. QEMU takes such a set anyway
		// (and the guest then fails in its own way), so this is recorded
		// as a driver error, not refused.
		if r, bad := virtionet.Unmet(n.drvFeatures); bad {
			n.violationLocked(fmt.Errorf("driver accepted %s without %s (spec 5.1.3.1)",
				virtionet.FeatureList(1 << r.Feature)[0], strings.Join(virtionet.FeatureList(r.AnyOf), " or ")))
		}
	}
	if s&virtio.StatusDriverOK != 0 && n.status&virtio.StatusDriverOK == 0 {
		n.activateLocked()
	}
	n.status = s | n.status&virtio.StatusNeedsReset
}

// Reset implements virtio.Transport.
func (n *Net) Reset() error {
	n.SetStatus(0)
	return nil
}

// NumQueues implements virtio.Transport.
func (n *Net) NumQueues() int { return numQueues }

// QueueMaxSize implements virtio.Transport.
func (n *Net) QueueMaxSize(q int) uint16 {
	n.mu.Lock()
	defer n.mu.Unlock()
	if q < 0 || q >= numQueues || (q == ctrlq && !n.opts.Features.Has(virtionet.FCtrlVQ)) {
		return 0
	}
	return n.q[q].max
}

// SetupQueue implements virtio.Transport.
func (n *Net) SetupQueue(q int, size uint16, a virtio.QueueAddrs) (virtio.Notifier, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if q < 0 || q >= numQueues || n.q[q].max == 0 {
		return nil, fmt.Errorf("devmodel: no queue %d", q)
	}
	packed := n.drvFeatures.Has(virtio.FRingPacked)
	if size == 0 || size > n.q[q].max || (!packed && size&(size-1) != 0) {
		return nil, fmt.Errorf("devmodel: queue %d size %d invalid (max %d)", q, size, n.q[q].max)
	}
	if n.status&virtio.StatusFeaturesOK == 0 || n.status&virtio.StatusDriverOK != 0 {
		return nil, fmt.Errorf("devmodel: queue %d set up in status %#x", q, n.status)
	}
	n.q[q].size, n.q[q].addrs, n.q[q].enabled = size, a, true
	return notifier{n, q}, nil
}

// activateLocked builds the device side of each enabled queue at DRIVER_OK.
//
// +checklocks:n.mu
func (n *Net) activateLocked() {
	for i := range n.q {
		q := &n.q[i]
		if !q.enabled {
			continue
		}
		r, err := n.ringsLocked(q)
		if err == nil {
			q.dev, err = virtqueue.NewDeviceRing(r, n.mem, n.drvFeatures.Has(virtio.FEventIdx), n.drvFeatures.Has(virtio.FIndirectDesc))
		}
		if err != nil {
			n.failLocked(fmt.Errorf("queue %d: %w", i, err))
			continue
		}
		// Like QEMU: kicks wanted on tx and ctrl; rx wants none while it
		// has buffers.
		q.dev.SetNotify(i != rxq)
	}
}

// +checklocks:n.mu
func (n *Net) ringsLocked(q *queue) (virtqueue.Rings, error) {
	size := int(q.size)
	get := ringGetter(n.mem)
	var r virtqueue.Rings
	r.Size = q.size
	if n.drvFeatures.Has(virtio.FRingPacked) {
		r.Layout = virtqueue.Packed
	}
	descLen, drvLen, devLen := virtqueue.AreaSizes(r.Layout, size)
	var err error
	if r.Desc.Buf, err = get(q.addrs.Desc, descLen); err != nil {
		return r, err
	}
	if r.Driver.Buf, err = get(q.addrs.Driver, drvLen); err != nil {
		return r, err
	}
	if r.Device.Buf, err = get(q.addrs.Device, devLen); err != nil {
		return r, err
	}
	r.Desc.Addr, r.Driver.Addr, r.Device.Addr = q.addrs.Desc, q.addrs.Driver, q.addrs.Device
	return r, nil
}

// ringGetter translates a ring area, or says which is outside memory.
func ringGetter(mem virtqueue.Translator) func(addr uint64, l int) ([]byte, error) {
	return func(addr uint64, l int) ([]byte, error) {
		b, ok := mem.Slice(addr, l)
		if !ok {
			return nil, fmt.Errorf("ring at %#x+%d outside memory", addr, l)
		}
		return b, nil
	}
}

// ConfigGeneration implements virtio.Transport.
func (n *Net) ConfigGeneration() uint8 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.generation
}

// ReadConfig implements virtio.Transport.
func (n *Net) ReadConfig(off int, p []byte) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if off < 0 || off+len(p) > len(n.config) {
		return fmt.Errorf("devmodel: config read %d+%d outside %d bytes", off, len(p), len(n.config))
	}
	copy(p, n.config[off:])
	if n.faults.tornReads > 0 {
		n.faults.tornReads--
		n.generation++
	}
	return nil
}

// ConfigLen implements virtio.Transport.
func (n *Net) ConfigLen() int { return len(n.config) }

// ISR implements virtio.Transport.
func (n *Net) ISR() uint8 { return 0 }

// Close implements virtio.Transport.
func (n *Net) Close() error { return n.Reset() }

// Err returns the first protocol violation the device saw from the driver.
func (n *Net) Err() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.err
}

// +checklocks:n.mu
func (n *Net) failLocked(err error) {
	n.violationLocked(err)
	n.status |= virtio.StatusNeedsReset
}

// violationLocked records a driver error the device does not act on.
//
// +checklocks:n.mu
func (n *Net) violationLocked(err error) {
	if n.err == nil {
		n.err = err
	}
}

// maxFrameLocked is the largest frame the negotiated MTU allows (spec
// 5.1.4.1: the device must not pass, nor the driver transmit, more), VLAN
// tag included when the frame carries one; 0 without VIRTIO_NET_F_MTU.
//
// +checklocks:n.mu
func (n *Net) maxFrameLocked(frame []byte) int {
	if !n.drvFeatures.Has(virtionet.FMTU) {
		return 0
	}
	max := int(n.opts.MTU) + 14
	if len(frame) >= 14 && frame[12] == 0x81 && frame[13] == 0x00 {
		max += 4
	}
	return max
}

// Stats returns what the device counted.
func (n *Net) Stats() Stats {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.stats
	for i := range n.q {
		s.Kicks[i] = n.q[i].kicks
	}
	return s
}

// DriverFeatures returns what the driver accepted.
func (n *Net) DriverFeatures() virtio.Features {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.drvFeatures
}

// QueueSize returns the size the driver chose for queue q (0 if not set up).
func (n *Net) QueueSize(q int) uint16 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.q[q].size
}

// FilterMAC is the unicast address the device's receive filter passes.
func (n *Net) FilterMAC() [6]byte {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.filterMAC
}

// RxMode reports the promiscuous and all-multicast settings.
func (n *Net) RxMode() (promisc, allmulti bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.promisc, n.allmulti
}

type notifier struct {
	n *Net
	q int
}

// Notify handles a kick synchronously, as QEMU's vCPU thread does under TCG.
func (nt notifier) Notify() { nt.n.kick(nt.q) }

func (n *Net) kick(q int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.q[q].kicks++
	if n.status&virtio.StatusDriverOK == 0 {
		n.failLocked(fmt.Errorf("kick on queue %d before DRIVER_OK", q))
		return
	}
	if n.status&virtio.StatusNeedsReset != 0 || n.q[q].dev == nil {
		return
	}
	switch q {
	case rxq:
		n.waitKick = false
		n.flushLocked()
	case txq:
		n.txLocked()
	case ctrlq:
		if !n.faults.holdCtrl {
			n.ctrlLocked()
		}
	}
}

// ErrNoBuffers reports a frame the device could not place because the
// driver posted too few rx buffers; it is queued until the driver kicks.
var ErrNoBuffers = errors.New("devmodel: rx ring empty, frame queued until the driver kicks")
