package virtionet

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/virtqueue"
)

// Queue indices without VIRTIO_NET_F_MQ, spec 5.1.2.
const (
	rxQueue   = 0
	txQueue   = 1
	ctrlQueue = 2
)

// Buffer geometry. A transmitted packet's buffers and, with MRG_RXBUF, a
// received packet's come from pools of 2 KiB buffers; without MRG_RXBUF
// each rx buffer holds a whole frame of the MTU (plus a VLAN tag) after its
// header. The headroom leaves NKEs room to prepend encapsulation headers
// without copying.
const (
	BufSize  = 2048
	Headroom = 128
	// MaxTxSegs is the smallest indirect table: the most descriptors (the
	// header's included) one transmitted packet may take before it is
	// copied into fewer buffers. It grows with the MTU so that a
	// compacted packet of the MTU always fits.
	MaxTxSegs = 16
	// DefaultMTU is the IP MTU used without VIRTIO_NET_F_MTU.
	DefaultMTU = 1500
	// MaxRxBufSize bounds one rx buffer: without MRG_RXBUF a device MTU
	// needing more is declined.
	MaxRxBufSize = 16 << 10
	ethHdrLen    = 14
	vlanTagLen   = 4
	minMTU       = 68 // spec 5.1.4.1: the device must not report less
)

// Options tune a Device. The zero value is usable.
type Options struct {
	// RxQueueSize and TxQueueSize choose queue sizes (powers of two no
	// larger than the device's maximum); 0 takes the device's maximum.
	RxQueueSize, TxQueueSize uint16
	// Refuse lists offered features the driver must not accept, for
	// experiments and the device-option test matrix.
	Refuse virtio.Features
	// RxBuffers and TxBuffers size the receive and transmit pools; 0
	// sizes them from the queues. The pools are separate so that packets
	// waiting to be sent can never starve the rx ring of buffers.
	RxBuffers, TxBuffers int
	// Ring chooses the virtqueue layout; the zero value takes packed
	// rings when the device offers them.
	Ring RingChoice
	// CtrlTimeout bounds the wait for the device to answer a control
	// command (default 2s). A command left unanswered takes the control
	// queue out of service until the device is reset: Health reports it.
	CtrlTimeout time.Duration
}

// RingChoice picks split or packed virtqueues (spec 2.7, 2.8).
type RingChoice uint8

const (
	RingAuto   RingChoice = iota // packed when offered, else split
	RingSplit                    // split even when packed is offered
	RingPacked                   // packed, or refuse the device
)

// ParseRingChoice reads "auto", "split" or "packed".
func ParseRingChoice(s string) (RingChoice, error) {
	switch s {
	case "", "auto":
		return RingAuto, nil
	case "split":
		return RingSplit, nil
	case "packed":
		return RingPacked, nil
	}
	return 0, fmt.Errorf("ring layout %q: want auto, split or packed", s)
}

// Decline is an offered feature the driver did not accept, and why.
type Decline struct {
	Feature virtio.Feature
	Reason  string
}

func (d Decline) String() string {
	return FeatureList(1 << d.Feature)[0] + ": " + d.Reason
}

// Device is a virtio-net device driven in poll mode.
type Device struct {
	t      virtio.Transport
	mem    dma.Allocator
	opts   Options
	rxPool *mbuf.Pool // rx ring buffers only
	txPool *mbuf.Pool // handed out by Pool for packets to send

	offered  virtio.Features
	features virtio.Features
	declined []Decline
	cfg      Config
	mac      net.HardwareAddr // from the device, or random and local
	mtu      int
	// rxPostLen is how much of an rx buffer the device may write (the
	// header included); rxBufSize the pool's buffer size it comes from.
	rxPostLen uint32
	rxBufSize int
	// maxRxBufs is the most buffers one received packet may span.
	maxRxBufs int
	// txTableSize is the number of descriptors in each indirect table.
	txTableSize int

	rx       virtqueue.Ring
	tx       virtqueue.Ring
	rxRings  virtqueue.Rings
	txRings  virtqueue.Rings
	rxKick   virtio.Notifier
	txKick   virtio.Notifier
	rxBufs   []*mbuf.Mbuf // rx buffer of each id
	txBufs   []*mbuf.Mbuf // packet of each tx id
	txTables []dma.Block  // indirect table of each tx id
	zeroHdr  dma.Block    // the (all-zero) header of packets without headroom
	used     []virtqueue.Used
	refill   []*mbuf.Mbuf
	txDone   []*mbuf.Mbuf // reclaimed packets, freed as a batch
	segs     []virtqueue.Seg

	// A packet spanning several rx buffers (MRG_RXBUF) whose later buffers
	// have not been reaped yet: partialLeft buffers to come, partialLen
	// bytes so far, and whether it is dropped once complete (too big).
	partial     *mbuf.Mbuf
	partialTail *mbuf.Mbuf
	partialLeft int
	partialLen  int
	partialDrop bool

	ctrlMu sync.Mutex
	// +checklocks:ctrlMu
	ctrl *ctrlq

	broken error
	stats  counters
	info   atomic.Pointer[info]
}

// Open resets the device behind t, negotiates features, sets up the rx, tx
// and (if offered) control queues with memory from mem, fills the rx queue
// and sets DRIVER_OK.
func Open(t virtio.Transport, mem dma.Allocator, opts Options) (*Device, error) {
	d := &Device{t: t, mem: mem, opts: opts}
	if err := d.negotiate(); err != nil {
		return nil, err
	}
	if err := d.allocate(); err != nil {
		t.SetStatus(t.Status() | virtio.StatusFailed)
		return nil, err
	}
	d.ctrlMu.Lock()
	err := d.startLocked()
	d.ctrlMu.Unlock()
	if err != nil {
		return nil, err
	}
	return d, nil
}

// negotiate runs spec 3.1.1 steps 1-6: reset, ACKNOWLEDGE, DRIVER, feature
// negotiation, FEATURES_OK, and reads the configuration. The accepted set
// is what the driver supports, minus what it was told to refuse, minus
// what the configuration rules out (an unusable MTU), minus every feature
// whose prerequisite is then missing (spec 5.1.3.1): a device offering an
// inconsistent set is driven with less, and each feature declined is
// recorded with its reason.
func (d *Device) negotiate() error {
	t := d.t
	if err := t.Reset(); err != nil {
		return &OpError{Op: "reset", Dev: t.Name(), Err: err}
	}
	t.SetStatus(virtio.StatusAcknowledge)
	t.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver)
	offered := t.DeviceFeatures()
	if offered&Required != Required {
		t.SetStatus(t.Status() | virtio.StatusFailed)
		return &OpError{Op: "negotiate features", Dev: t.Name(), Err: fmt.Errorf(
			"device does not offer VIRTIO_F_VERSION_1 (bit 32): legacy virtio is not supported, use a modern device (disable-legacy=on): %w",
			virtio.ErrNotSupported)}
	}
	var declined []Decline
	decline := func(f virtio.Feature, format string, args ...any) {
		declined = append(declined, Decline{f, fmt.Sprintf(format, args...)})
	}
	switch d.opts.Ring {
	case RingSplit:
		d.opts.Refuse |= 1 << virtio.FRingPacked
	case RingPacked:
		if !offered.Has(virtio.FRingPacked) || d.opts.Refuse.Has(virtio.FRingPacked) {
			t.SetStatus(t.Status() | virtio.StatusFailed)
			return &OpError{Op: "negotiate features", Dev: t.Name(), Err: fmt.Errorf(
				"packed rings asked for, but the device does not offer VIRTIO_F_RING_PACKED (QEMU: packed=on): %w", virtio.ErrNotSupported)}
		}
	}
	want := offered & Supported &^ d.opts.Refuse
	if want.Has(virtio.FAccessPlatform) && translated(t) {
		// The rings hold guest-physical addresses; behind an IOMMU the
		// device would need I/O virtual ones, which this driver does not
		// program.
		want &^= 1 << virtio.FAccessPlatform
		decline(virtio.FAccessPlatform, "an IOMMU translates the device's DMA and the driver does not program it")
	}
	// Spec 3.1.1 step 4: the configuration may be read before
	// FEATURES_OK, to check the device can be driven.
	raw, err := readConfig(t, make([]byte, ConfigSize))
	var cfg Config
	if err == nil {
		cfg, err = ParseConfig(raw, want)
	}
	if err != nil {
		t.SetStatus(t.Status() | virtio.StatusFailed)
		return &OpError{Op: "read config", Dev: t.Name(), Err: err}
	}
	if want.Has(FMTU) {
		switch need := rxBufSizeFor(int(cfg.MTU), false); {
		case cfg.MTU < minMTU:
			want &^= 1 << FMTU
			decline(FMTU, "the device reports MTU %d, below the minimum of %d", cfg.MTU, minMTU)
		case !want.Has(FMrgRxbuf) && need > MaxRxBufSize:
			want &^= 1 << FMTU
			decline(FMTU, "MTU %d needs %d-byte receive buffers without MRG_RXBUF, more than the %d this driver posts", cfg.MTU, need, MaxRxBufSize)
		}
	}
	want, declined = settle(want, offered, declined)
	want |= Required
	t.SetDriverFeatures(want)
	t.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK)
	if t.Status()&virtio.StatusFeaturesOK == 0 {
		t.SetStatus(t.Status() | virtio.StatusFailed)
		return &OpError{Op: "negotiate features", Dev: t.Name(), Err: fmt.Errorf(
			"device refused FEATURES_OK for %s (offered %s): %w",
			strings.Join(FeatureList(want), ","), strings.Join(FeatureList(offered), ","), virtio.ErrNotSupported)}
	}
	// After a reset the device must offer what it did before: the rings
	// and buffers were laid out for it. Only the MTU may come and go (a
	// device reporting a new one, or none usable): adopt follows it.
	const mayChange = virtio.Features(1 << FMTU)
	if d.features != 0 && d.features&^mayChange != want&^mayChange {
		return &OpError{Op: "negotiate features", Dev: t.Name(), Err: fmt.Errorf(
			"device offers %s after reset, %s before: %w", want, d.features, virtio.ErrDeviceBroken)}
	}
	if err := d.adopt(cfg, want); err != nil {
		t.SetStatus(t.Status() | virtio.StatusFailed)
		return &OpError{Op: "read config", Dev: t.Name(), Err: err}
	}
	d.offered, d.features, d.declined, d.cfg = offered, want, declined, cfg
	d.info.Store(&info{Features: d.features, Offered: d.offered, Declined: declined, MAC: d.mac, MTU: d.mtu})
	return nil
}

// settle removes from want every feature whose prerequisites it lacks,
// until the set is consistent, and says why each went.
func settle(want, offered virtio.Features, declined []Decline) (virtio.Features, []Decline) {
	for {
		r, bad := Unmet(want)
		if !bad {
			return want, declined
		}
		want &^= 1 << r.Feature
		if !offered.Has(r.Feature) {
			continue
		}
		names := FeatureList(r.AnyOf)
		why := "not offered"
		if offered&r.AnyOf != 0 {
			why = "not accepted"
		}
		declined = append(declined, Decline{r.Feature, fmt.Sprintf("needs %s (%s)", strings.Join(names, " or "), why)})
	}
}

// translated reports whether an IOMMU sits between the device and memory,
// for transports that can tell.
func translated(t virtio.Transport) bool {
	tr, ok := t.(interface{ DMATranslated() bool })
	return ok && tr.DMATranslated()
}

// rxBufSizeFor is the pool buffer size an rx buffer needs: with
// MRG_RXBUF a fixed 2 KiB, otherwise room for the header and a VLAN-tagged
// frame of the MTU after the headroom, rounded to cache lines.
func rxBufSizeFor(mtu int, mrg bool) int {
	if mrg {
		return BufSize
	}
	return max(BufSize, (Headroom+mtu+ethHdrLen+vlanTagLen+63)&^63)
}

// adopt takes the MAC and MTU from a configuration at Open and after each
// reset. A device whose MTU changed across a reset gets it, if the rx
// buffers (already allocated) can take it; a MAC that changed is taken
// and reported, so that the layers above can follow.
func (d *Device) adopt(cfg Config, fs virtio.Features) error {
	mtu := DefaultMTU
	if fs.Has(FMTU) {
		mtu = int(cfg.MTU)
	}
	if d.rxPool != nil && !fs.Has(FMrgRxbuf) && rxBufSizeFor(mtu, false) > d.rxBufSize {
		return fmt.Errorf("the device's MTU went from %d to %d across a reset, beyond what the %d-byte rx buffers hold: %w",
			d.mtu, mtu, d.rxBufSize, virtio.ErrDeviceBroken)
	}
	if d.mtu != 0 && mtu != d.mtu {
		d.stats.identityChanges.Add(1)
	}
	d.mtu = mtu
	switch {
	case fs.Has(FMAC):
		if d.mac != nil && !bytes.Equal(d.mac, cfg.MAC) {
			d.stats.identityChanges.Add(1)
		}
		d.mac = cfg.MAC
	case d.mac == nil:
		// Spec 5.1.5: without VIRTIO_NET_F_MAC the driver picks a
		// random address; locally administered, unicast. It stays the
		// same across resets.
		mac := make(net.HardwareAddr, 6)
		if _, err := rand.Read(mac); err != nil {
			return fmt.Errorf("random MAC: %w", err)
		}
		mac[0] = mac[0]&^1 | 2
		d.mac = mac
	}
	return nil
}

// maxFrame is the largest frame of the MTU, untagged or VLAN-tagged.
func (d *Device) maxFrame(tagged bool) int {
	if tagged {
		return d.mtu + ethHdrLen + vlanTagLen
	}
	return d.mtu + ethHdrLen
}

// layout is the virtqueue format negotiated.
func (d *Device) layout() virtqueue.Layout {
	if d.features.Has(virtio.FRingPacked) {
		return virtqueue.Packed
	}
	return virtqueue.Split
}

func (d *Device) queueSize(q int, asked uint16) (uint16, error) {
	max := d.t.QueueMaxSize(q)
	if max == 0 {
		return 0, fmt.Errorf("queue %d is absent", q)
	}
	if max > virtqueue.MaxSize {
		max = virtqueue.MaxSize
	}
	if d.layout() == virtqueue.Packed {
		// Spec 2.8: any size up to the device's.
		if asked == 0 {
			return max, nil
		}
		if err := virtqueue.CheckPackedSize(asked); err != nil || asked > max {
			return 0, fmt.Errorf("queue %d: size %d is not between 2 and the device's %d", q, asked, max)
		}
		return asked, nil
	}
	if virtqueue.CheckSize(max) != nil {
		// Spec 2.7: split queue sizes are powers of two. Use the largest
		// power of two below what the device reported.
		for p := uint16(virtqueue.MaxSize); p >= 2; p >>= 1 {
			if p < max {
				max = p
				break
			}
		}
	}
	if asked == 0 {
		return max, nil
	}
	if err := virtqueue.CheckSize(asked); err != nil || asked > max {
		return 0, fmt.Errorf("queue %d: size %d is not a power of two between 2 and the device's %d", q, asked, max)
	}
	return asked, nil
}

// allocate sizes the queues and takes all DMA memory the device needs. It
// runs once; recovery reuses the memory.
func (d *Device) allocate() error {
	rxSize, err := d.queueSize(rxQueue, d.opts.RxQueueSize)
	if err != nil {
		return &OpError{Op: "size rx queue", Dev: d.t.Name(), Err: err}
	}
	txSize, err := d.queueSize(txQueue, d.opts.TxQueueSize)
	if err != nil {
		return &OpError{Op: "size tx queue", Dev: d.t.Name(), Err: err}
	}
	fail := func(what string, err error) error {
		return &OpError{Op: "allocate " + what, Dev: d.t.Name(), Err: err}
	}
	layout := d.layout()
	if d.rxRings, err = virtqueue.AllocLayout(d.mem, layout, rxSize); err != nil {
		return fail("rx rings", err)
	}
	if d.txRings, err = virtqueue.AllocLayout(d.mem, layout, txSize); err != nil {
		return fail("tx rings", err)
	}
	if d.rx, err = virtqueue.NewRing("rx0", d.rxRings, d.features.Has(virtio.FEventIdx)); err != nil {
		return fail("rx queue", err)
	}
	if d.tx, err = virtqueue.NewRing("tx0", d.txRings, d.features.Has(virtio.FEventIdx)); err != nil {
		return fail("tx queue", err)
	}
	mrg := d.features.Has(FMrgRxbuf)
	d.rxBufSize = rxBufSizeFor(d.mtu, mrg)
	d.rxPostLen = uint32(d.rxBufSize - rxPostOff)
	d.maxRxBufs = 1
	if mrg {
		// Spec 5.1.6.4.1: every buffer but the last is filled, so a
		// packet of the MTU spans at most this many.
		frame := HeaderLen + d.maxFrame(true)
		d.maxRxBufs = min((frame+int(d.rxPostLen)-1)/int(d.rxPostLen), int(rxSize))
	}
	nrx, ntx := d.opts.RxBuffers, d.opts.TxBuffers
	if nrx == 0 {
		// A full ring and a burst's worth on its way to the stack.
		nrx = int(rxSize) + max(64, int(rxSize)/4)
	}
	if ntx == 0 {
		// A full tx ring and as much again queued for it.
		ntx = 2*int(txSize) + 512
	}
	if d.rxPool, err = mbuf.NewPool(d.mem, "virtio-net rx", nrx, d.rxBufSize, Headroom); err != nil {
		return fail("rx packet pool", err)
	}
	if d.txPool, err = mbuf.NewPool(d.mem, "virtio-net tx", ntx, BufSize, Headroom); err != nil {
		return fail("tx packet pool", err)
	}
	if d.zeroHdr, err = d.mem.Alloc(HeaderLen, 16); err != nil {
		return fail("tx header", err)
	}
	// A packet of the MTU compacted into tx pool buffers, plus its
	// header, always fits one table.
	d.txTableSize = max(MaxTxSegs, 2+(d.maxFrame(true)+BufSize-1)/BufSize)
	if d.features.Has(virtio.FIndirectDesc) {
		d.txTables = make([]dma.Block, txSize)
		for i := range d.txTables {
			if d.txTables[i], err = d.mem.Alloc(16*d.txTableSize, 16); err != nil {
				return fail("indirect tables", err)
			}
		}
	}
	if d.features.Has(FCtrlVQ) {
		c, err := newCtrlq(d.mem, d.t.QueueMaxSize(ctrlQueue), d.features, &d.stats)
		if err != nil {
			return fail("control queue", err)
		}
		d.ctrlMu.Lock()
		d.ctrl = c
		d.ctrlMu.Unlock()
	}
	d.rxBufs = make([]*mbuf.Mbuf, rxSize)
	d.txBufs = make([]*mbuf.Mbuf, txSize)
	d.used = make([]virtqueue.Used, max(rxSize, txSize))
	d.refill = make([]*mbuf.Mbuf, rxSize)
	d.txDone = make([]*mbuf.Mbuf, 0, txSize)
	d.segs = make([]virtqueue.Seg, 0, d.txTableSize)
	return nil
}

// startLocked runs spec 3.1.1 steps 7-8: queue setup, rx fill, DRIVER_OK;
// then it sends the control commands that restore what the driver set
// before (receive mode, a MAC of its own), without waiting for them.
//
// +checklocks:d.ctrlMu
func (d *Device) startLocked() error {
	t := d.t
	var err error
	if d.rxKick, err = t.SetupQueue(rxQueue, d.rxRings.Size, addrs(d.rxRings)); err != nil {
		return d.failStart("set up rx queue", err)
	}
	if d.txKick, err = t.SetupQueue(txQueue, d.txRings.Size, addrs(d.txRings)); err != nil {
		return d.failStart("set up tx queue", err)
	}
	if d.ctrl != nil {
		if d.ctrl.kick, err = t.SetupQueue(ctrlQueue, d.ctrl.rings.Size, addrs(d.ctrl.rings)); err != nil {
			return d.failStart("set up control queue", err)
		}
	}
	// Fill rx before DRIVER_OK; no notification before it (spec 3.1.1).
	d.fillRx(false)
	t.SetStatus(t.Status() | virtio.StatusDriverOK)
	if s := t.Status(); s&virtio.StatusDriverOK == 0 || s&(virtio.StatusFailed|virtio.StatusNeedsReset) != 0 {
		return d.failStart("start", fmt.Errorf("device status %#x after DRIVER_OK: %w", s, virtio.ErrDeviceBroken))
	}
	d.broken = nil
	if d.rx.NeedsKick() {
		d.rxKick.Notify()
	}
	if d.ctrl != nil {
		d.ctrl.running = true
		if !d.features.Has(FMAC) && d.features.Has(FCtrlMACAddr) {
			// Tell the device the address the driver made up, so its
			// receive filter passes our unicast (spec 5.1.6.5.2).
			d.ctrl.mac = d.mac
		}
		d.restoreLocked()
	}
	return nil
}

// failStart sets FAILED (spec 3.1.1) and says what step failed.
func (d *Device) failStart(op string, err error) error {
	d.t.SetStatus(d.t.Status() | virtio.StatusFailed)
	return &OpError{Op: op, Dev: d.t.Name(), Err: err}
}

func addrs(r virtqueue.Rings) virtio.QueueAddrs {
	return virtio.QueueAddrs{Desc: r.Desc.Addr, Driver: r.Driver.Addr, Device: r.Device.Addr}
}

// Recover resets the device and brings it back with the same features and
// memory after a device error or NEEDS_RESET. Packets in the rings are
// lost (and counted); the rx ring is refilled; control commands in flight
// fail, and the receive mode and MAC the driver set are sent again.
func (d *Device) Recover() error {
	d.ctrlMu.Lock()
	defer d.ctrlMu.Unlock()
	// Reset first: from here on the device touches none of our memory.
	if err := d.t.Reset(); err != nil {
		d.broken = &OpError{Op: "reset", Dev: d.t.Name(), Err: err}
		return d.broken
	}
	d.stats.resets.Add(1)
	for i, m := range d.rxBufs {
		if m != nil {
			m.Free()
			d.rxBufs[i] = nil
		}
	}
	lost := 0
	for i, m := range d.txBufs {
		if m != nil {
			m.Free()
			d.txBufs[i] = nil
			lost++
		}
	}
	d.stats.txDropReset.Add(uint64(lost))
	d.dropPartial()
	d.rx.Reset()
	d.tx.Reset()
	if d.ctrl != nil {
		d.ctrl.resetLocked()
	}
	d.broken = nil
	err := d.negotiate()
	if err == nil {
		err = d.startLocked()
	}
	if err != nil {
		// Unusable until a later Recover succeeds.
		d.broken = &OpError{Op: "recover", Dev: d.t.Name(), Err: errors.Join(virtio.ErrDeviceBroken, err)}
		return d.broken
	}
	return nil
}

// Health reads device_status and reports ErrNeedsReset when the device
// asked for a reset (spec 2.1.2), or ErrDeviceBroken when it dropped
// DRIVER_OK, the driver refused it earlier, or its control queue broke or
// left a command unanswered. It costs a register read: call it every few
// milliseconds, not per burst.
func (d *Device) Health() error {
	if d.broken != nil {
		return d.broken
	}
	s := d.t.Status()
	switch {
	case s&virtio.StatusNeedsReset != 0:
		return &OpError{Op: "health", Dev: d.t.Name(), Err: virtio.ErrNeedsReset}
	case s&virtio.StatusDriverOK == 0 || s&virtio.StatusFailed != 0:
		return &OpError{Op: "health", Dev: d.t.Name(), Err: fmt.Errorf("device status %#x: %w", s, virtio.ErrDeviceBroken)}
	}
	d.ctrlMu.Lock()
	defer d.ctrlMu.Unlock()
	if c := d.ctrl; c != nil {
		c.reapLocked()
		if c.broken != nil {
			return &OpError{Op: "health", Dev: d.t.Name(), Err: c.broken}
		}
	}
	return nil
}

// LinkUp reads the link status from the configuration (always up without
// VIRTIO_NET_F_STATUS). A configuration the driver cannot trust is an error.
func (d *Device) LinkUp() (bool, error) {
	if !d.Features().Has(FStatus) {
		return true, nil
	}
	var b [8]byte
	raw, err := readConfig(d.t, b[:])
	if err == nil {
		var c Config
		if c, err = ParseConfig(raw, d.Features()&(1<<FStatus|1<<FMAC)); err == nil {
			return c.Status&StatusLinkUp != 0, nil
		}
	}
	return false, &OpError{Op: "read link status", Dev: d.t.Name(), Err: err}
}

// Close resets the device and releases the transport.
func (d *Device) Close() error { return d.t.Close() }

// Name is the transport's name for the device.
func (d *Device) Name() string { return d.t.Name() }

// MAC is the interface's MAC address: the device's, or without
// VIRTIO_NET_F_MAC a random locally administered one.
func (d *Device) MAC() []byte { return d.info.Load().MAC }

// MTU is the IP MTU the driver uses: the device's with VIRTIO_NET_F_MTU.
func (d *Device) MTU() int { return d.info.Load().MTU }

// Features are the negotiated features.
func (d *Device) Features() virtio.Features { return d.info.Load().Features }

// Offered are the features the device offered.
func (d *Device) Offered() virtio.Features { return d.info.Load().Offered }

// Declined lists the offered features the driver supports but did not
// accept, with the reason for each.
func (d *Device) Declined() []Decline { return d.info.Load().Declined }

// info is what negotiation found, published for readers on other
// goroutines (status pages) while the data-path owner may be renegotiating
// in Recover.
type info struct {
	Features, Offered virtio.Features
	Declined          []Decline
	MAC               []byte
	MTU               int
}

// Layout is the virtqueue format in use: packed when the device offered
// VIRTIO_F_RING_PACKED and it was not refused, split otherwise.
func (d *Device) Layout() virtqueue.Layout { return d.rxRings.Layout }

// QueueSizes returns the rx and tx queue sizes.
func (d *Device) QueueSizes() (rx, tx uint16) { return d.rxRings.Size, d.txRings.Size }

// Pool is where packets to transmit should come from: its buffers are
// DMA memory, so they go on the ring without a copy. (TxBurst takes packets
// from any pool of DMA memory.)
func (d *Device) Pool() *mbuf.Pool { return d.txPool }

// RxPool holds the rx ring's buffers; received packets come from it and go
// back to it when freed.
func (d *Device) RxPool() *mbuf.Pool { return d.rxPool }

// OpError is a failed driver operation on a named device.
type OpError struct {
	Op  string
	Dev string
	Err error
}

func (e *OpError) Error() string { return "virtio-net " + e.Dev + ": " + e.Op + ": " + e.Err.Error() }
func (e *OpError) Unwrap() error { return e.Err }

// deviceFault records a device-side contract violation seen on the data path
// and marks the device broken until Recover.
func (d *Device) deviceFault(op string, err error) error {
	d.stats.deviceErrors.Add(1)
	d.broken = &OpError{Op: op, Dev: d.t.Name(), Err: errors.Join(virtio.ErrDeviceBroken, err)}
	return d.broken
}
