package virtionet

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nke-harness/nke/kernel/dma"
	"github.com/nke-harness/nke/kernel/mbuf"
	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/virtqueue"
)

// Queue indices without VIRTIO_NET_F_MQ, spec 5.1.2.
const (
	rxQueue   = 0
	txQueue   = 1
	ctrlQueue = 2
)

// Buffer geometry. Every rx buffer holds a whole 1514-byte frame (plus a
// VLAN tag) after its header, so MRG_RXBUF is only needed for frames above
// the MTU; the headroom leaves NKEs room to prepend encapsulation headers
// without copying.
const (
	BufSize  = 2048
	Headroom = 128
	// MaxTxSegs is the most buffers one transmitted packet may span
	// before it is copied into one.
	MaxTxSegs = 16
	// DefaultMTU is the IP MTU used unless the device offers a smaller one.
	DefaultMTU = 1500
	ethHdrLen  = 14
)

// Options tune a Device. The zero value is usable.
type Options struct {
	// RxQueueSize and TxQueueSize choose queue sizes (powers of two no
	// larger than the device's maximum); 0 takes the device's maximum.
	RxQueueSize, TxQueueSize uint16
	// Refuse lists offered features the driver must not accept, for
	// experiments and the device-option test matrix.
	Refuse virtio.Features
	// PoolBuffers sizes the packet pool; 0 sizes it from the queues.
	PoolBuffers int
	// CtrlTimeout bounds the wait for the device to answer a control
	// command (default 2s).
	CtrlTimeout time.Duration
}

// Device is a virtio-net device driven in poll mode.
type Device struct {
	t    virtio.Transport
	mem  dma.Allocator
	opts Options
	pool *mbuf.Pool

	offered  virtio.Features
	features virtio.Features
	cfg      Config
	mtu      int
	maxFrame int // largest frame sent or received, without the virtio header

	rx, tx           virtqueue.Ring
	rxRings, txRings virtqueue.Rings
	rxKick, txKick   virtio.Notifier
	rxBufs           []*mbuf.Mbuf // rx buffer of each descriptor head
	txBufs           []*mbuf.Mbuf // packet of each tx head
	txTables         []dma.Block  // indirect table of each tx head
	zeroHdr          dma.Block    // the (all-zero) header of chained tx packets
	used             []virtqueue.Used
	refill           []*mbuf.Mbuf
	txDone           []*mbuf.Mbuf // reclaimed packets, freed as a batch
	segs             []virtqueue.Seg

	// A packet spanning several rx buffers (MRG_RXBUF) whose later buffers
	// have not been reaped yet.
	partial, partialTail *mbuf.Mbuf
	partialLeft          int

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
// negotiation, FEATURES_OK, then reads the configuration.
func (d *Device) negotiate() error {
	t := d.t
	if err := t.Reset(); err != nil {
		return &OpError{Op: "reset", Dev: t.Name(), Err: err}
	}
	t.SetStatus(virtio.StatusAcknowledge)
	t.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver)
	d.offered = t.DeviceFeatures()
	if d.offered&Required != Required {
		t.SetStatus(t.Status() | virtio.StatusFailed)
		return &OpError{Op: "negotiate features", Dev: t.Name(), Err: fmt.Errorf(
			"device does not offer VIRTIO_F_VERSION_1 (bit 32): legacy virtio is not supported, use a modern device (disable-legacy=on): %w",
			virtio.ErrNotSupported)}
	}
	want := d.offered & Supported &^ d.opts.Refuse
	want |= Required
	t.SetDriverFeatures(want)
	t.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK)
	if t.Status()&virtio.StatusFeaturesOK == 0 {
		t.SetStatus(t.Status() | virtio.StatusFailed)
		return &OpError{Op: "negotiate features", Dev: t.Name(), Err: fmt.Errorf(
			"device refused FEATURES_OK for %s (offered %s): %w",
			strings.Join(FeatureList(want), ","), strings.Join(FeatureList(d.offered), ","), virtio.ErrNotSupported)}
	}
	if d.features != 0 && d.features != want {
		return &OpError{Op: "negotiate features", Dev: t.Name(), Err: fmt.Errorf(
			"device offers %s after reset, %s before: %w", want, d.features, virtio.ErrDeviceBroken)}
	}
	d.features = want
	raw, err := readConfig(t, make([]byte, ConfigSize))
	if err == nil {
		d.cfg, err = ParseConfig(raw, want)
	}
	if err != nil {
		t.SetStatus(t.Status() | virtio.StatusFailed)
		return &OpError{Op: "read config", Dev: t.Name(), Err: err}
	}
	d.mtu = DefaultMTU
	if want.Has(FMTU) && int(d.cfg.MTU) < d.mtu {
		d.mtu = int(d.cfg.MTU)
	}
	d.maxFrame = d.mtu + ethHdrLen + 4 // a VLAN tag fits
	d.info.Store(&info{Features: d.features, Offered: d.offered, MAC: d.cfg.MAC, MTU: d.mtu})
	return nil
}

func (d *Device) queueSize(q int, asked uint16) (uint16, error) {
	max := d.t.QueueMaxSize(q)
	if max == 0 {
		return 0, fmt.Errorf("queue %d is absent", q)
	}
	if max > virtqueue.MaxSize {
		max = virtqueue.MaxSize
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
	if d.rxRings, err = virtqueue.AllocRings(d.mem, rxSize); err != nil {
		return fail("rx rings", err)
	}
	if d.txRings, err = virtqueue.AllocRings(d.mem, txSize); err != nil {
		return fail("tx rings", err)
	}
	if d.rx, err = virtqueue.New("rx0", d.rxRings, d.features.Has(virtio.FEventIdx)); err != nil {
		return fail("rx queue", err)
	}
	if d.tx, err = virtqueue.New("tx0", d.txRings, d.features.Has(virtio.FEventIdx)); err != nil {
		return fail("tx queue", err)
	}
	n := d.opts.PoolBuffers
	if n == 0 {
		// A full rx ring, a full tx ring, and as much again for packets
		// on their way between the rings and the stack.
		n = 2 * (int(rxSize) + int(txSize))
	}
	if d.pool, err = mbuf.NewPool(d.mem, "virtio-net", n, BufSize, Headroom); err != nil {
		return fail("packet pool", err)
	}
	if d.zeroHdr, err = d.mem.Alloc(HeaderLen, 16); err != nil {
		return fail("tx header", err)
	}
	if d.features.Has(virtio.FIndirectDesc) {
		d.txTables = make([]dma.Block, txSize)
		for i := range d.txTables {
			if d.txTables[i], err = d.mem.Alloc(16*MaxTxSegs, 16); err != nil {
				return fail("indirect tables", err)
			}
		}
	}
	if d.features.Has(FCtrlVQ) {
		c, err := newCtrlq(d.mem, d.t.QueueMaxSize(ctrlQueue), d.features)
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
	d.segs = make([]virtqueue.Seg, MaxTxSegs+1)
	return nil
}

// startLocked runs spec 3.1.1 steps 7-8: queue setup, rx fill, DRIVER_OK.
//
// Precondition: d.ctrlMu is held.
func (d *Device) startLocked() error {
	t := d.t
	fail := func(op string, err error) error {
		t.SetStatus(t.Status() | virtio.StatusFailed)
		return &OpError{Op: op, Dev: t.Name(), Err: err}
	}
	var err error
	if d.rxKick, err = t.SetupQueue(rxQueue, d.rxRings.Size, addrs(d.rxRings)); err != nil {
		return fail("set up rx queue", err)
	}
	if d.txKick, err = t.SetupQueue(txQueue, d.txRings.Size, addrs(d.txRings)); err != nil {
		return fail("set up tx queue", err)
	}
	if d.ctrl != nil {
		if d.ctrl.kick, err = t.SetupQueue(ctrlQueue, d.ctrl.rings.Size, addrs(d.ctrl.rings)); err != nil {
			return fail("set up control queue", err)
		}
	}
	// Fill rx before DRIVER_OK; no notification before it (spec 3.1.1).
	d.fillRx(false)
	t.SetStatus(t.Status() | virtio.StatusDriverOK)
	if s := t.Status(); s&virtio.StatusDriverOK == 0 || s&(virtio.StatusFailed|virtio.StatusNeedsReset) != 0 {
		return fail("start", fmt.Errorf("device status %#x after DRIVER_OK: %w", s, virtio.ErrDeviceBroken))
	}
	d.broken = nil
	if d.rx.NeedsKick() {
		d.rxKick.Notify()
	}
	return nil
}

func addrs(r virtqueue.Rings) virtio.QueueAddrs {
	return virtio.QueueAddrs{Desc: r.Desc.Addr, Driver: r.Driver.Addr, Device: r.Device.Addr}
}

// Recover resets the device and brings it back with the same features and
// memory after a device error or NEEDS_RESET. Packets in the rings are
// lost (and counted); the rx ring is refilled.
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
		d.ctrl.q.Reset()
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
// asked for a reset (spec 2.1.2) or ErrDeviceBroken when it dropped
// DRIVER_OK or the driver refused it earlier. It costs a register read:
// call it every few milliseconds, not per burst.
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
	return nil
}

// LinkUp reads the link status from the configuration (always up without
// VIRTIO_NET_F_STATUS). A configuration the driver cannot trust is an error.
func (d *Device) LinkUp() (bool, error) {
	if !d.features.Has(FStatus) {
		return true, nil
	}
	var b [8]byte
	raw, err := readConfig(d.t, b[:])
	if err == nil {
		var c Config
		if c, err = ParseConfig(raw, d.features&(1<<FStatus|1<<FMAC)); err == nil {
			return c.Status&StatusLinkUp != 0, nil
		}
	}
	return false, &OpError{Op: "read link status", Dev: d.t.Name(), Err: err}
}

// Close resets the device and releases the transport.
func (d *Device) Close() error { return d.t.Close() }

// Name is the transport's name for the device.
func (d *Device) Name() string { return d.t.Name() }

// MAC is the device's MAC address (nil without VIRTIO_NET_F_MAC).
func (d *Device) MAC() []byte { return d.info.Load().MAC }

// MTU is the IP MTU the driver uses.
func (d *Device) MTU() int { return d.info.Load().MTU }

// Features are the negotiated features.
func (d *Device) Features() virtio.Features { return d.info.Load().Features }

// Offered are the features the device offered.
func (d *Device) Offered() virtio.Features { return d.info.Load().Offered }

// info is what negotiation found, published for readers on other
// goroutines (status pages) while the data-path owner may be renegotiating
// in Recover.
type info struct {
	Features, Offered virtio.Features
	MAC               []byte
	MTU               int
}

// QueueSizes returns the rx and tx queue sizes.
func (d *Device) QueueSizes() (rx, tx uint16) { return d.rxRings.Size, d.txRings.Size }

// Pool is the packet pool shared by rx and tx. Packets handed to TxBurst
// may come from any pool.
func (d *Device) Pool() *mbuf.Pool { return d.pool }

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
