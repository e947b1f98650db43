package virtioconsole

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/virtqueue"
)

// Queue indices, spec 5.3.2.
const (
	ctrlRxQueue = 2 // control receiveq: device → driver
	ctrlTxQueue = 3 // control transmitq: driver → device
)

// rxQueueOf and txQueueOf are port id's receiveq and transmitq.
func rxQueueOf(id uint32) int {
	if id == 0 {
		return 0
	}
	return 2 + 2*int(id)
}

func txQueueOf(id uint32) int { return rxQueueOf(id) + 1 }

// Defaults for Config.
const (
	DefaultPorts     = 2
	DefaultRxBufSize = 4096
	DefaultRxBuffers = 64
	DefaultTxBufSize = 16384
	DefaultTxBuffers = 32
	DefaultIdleSleep = time.Millisecond
	DefaultMinSleep  = 20 * time.Microsecond
	DefaultDeepSleep = 10 * time.Millisecond
	DefaultDeepAfter = 100 * time.Millisecond
	// MaxPorts bounds Config.Ports.
	MaxPorts      = 32
	ctrlQSize     = 32  // control queues; QEMU offers 32
	ctrlBufSize   = 512 // a control message and a name of MaxNameLen, with room
	ctrlOutSize   = 16  // a driver → device message, padded
	maxBufSize    = 1 << 20
	defaultSettle = 50 * time.Millisecond
)

// Config tunes a Device. The zero value is usable.
type Config struct {
	// Ports is how many port ids, from 0, the driver sets up queues
	// for (DefaultPorts: port 0 and port 1); at most the device's
	// max_nr_ports and MaxPorts.
	Ports int
	// RxBufSize and RxBuffers size each port's receive buffers; the
	// receiveq gets RxBuffers entries (a power of two, at most the
	// device's queue size).
	RxBufSize, RxBuffers int
	// TxBufSize and TxBuffers size each port's transmit buffers: one
	// Write is split into chunks of at most TxBufSize, one descriptor
	// each.
	TxBufSize, TxBuffers int
	// MinSleep and IdleSleep bound the back-off of a Read or Write with
	// nothing to do: it sleeps MinSleep first, doubling up to IdleSleep;
	// once it has waited DeepAfter, it sleeps DeepSleep (the latency of
	// the first byte after a quiet spell, against host CPU: measured
	// under TCG on QEMU 7.2 (vmtests TestControlChannelIdleCPU), 1 ms
	// sleeps cost an idle guest 27-44 points of a host CPU, 10 ms
	// about 12).
	MinSleep, IdleSleep  time.Duration
	DeepSleep, DeepAfter time.Duration
	// Refuse lists offered features the driver must not accept.
	Refuse virtio.Features
	// Logf, if set, hears about control messages refused and ports
	// coming and going.
	Logf func(format string, args ...any)
}

func (c *Config) defaults() error {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Ports, DefaultPorts)
	def(&c.RxBufSize, DefaultRxBufSize)
	def(&c.RxBuffers, DefaultRxBuffers)
	def(&c.TxBufSize, DefaultTxBufSize)
	def(&c.TxBuffers, DefaultTxBuffers)
	if c.MinSleep <= 0 {
		c.MinSleep = DefaultMinSleep
	}
	if c.IdleSleep <= 0 {
		c.IdleSleep = DefaultIdleSleep
	}
	if c.DeepSleep <= 0 {
		c.DeepSleep = DefaultDeepSleep
	}
	if c.DeepAfter <= 0 {
		c.DeepAfter = DefaultDeepAfter
	}
	c.MinSleep = min(c.MinSleep, c.IdleSleep)
	c.DeepSleep = max(c.DeepSleep, c.IdleSleep)
	switch {
	case c.Ports < 1 || c.Ports > MaxPorts:
		return fmt.Errorf("Ports %d outside 1..%d", c.Ports, MaxPorts)
	case c.RxBufSize < 1 || c.RxBufSize > maxBufSize || c.TxBufSize < 1 || c.TxBufSize > maxBufSize:
		return fmt.Errorf("buffer sizes %d/%d outside 1..%d", c.RxBufSize, c.TxBufSize, maxBufSize)
	case virtqueue.CheckSize(uint16(c.RxBuffers)) != nil || c.RxBuffers > virtqueue.MaxSize,
		virtqueue.CheckSize(uint16(c.TxBuffers)) != nil || c.TxBuffers > virtqueue.MaxSize:
		return fmt.Errorf("buffer counts %d/%d: want powers of two from 2", c.RxBuffers, c.TxBuffers)
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	return nil
}

// Errors from the driver.
var (
	// ErrClosed is a Read or Write on a closed port or device.
	ErrClosed = errors.New("virtio-console: port closed")
	// ErrNoPort is a port id the driver does not drive or a name no port has.
	ErrNoPort = errors.New("virtio-console: no such port")
)

// OpError is a failed driver operation on a named device.
type OpError struct {
	Op  string
	Dev string
	Err error
}

func (e *OpError) Error() string {
	return "virtio-console " + e.Dev + ": " + e.Op + ": " + e.Err.Error()
}
func (e *OpError) Unwrap() error { return e.Err }

// queue is one virtqueue and the DMA buffer of each of its ids.
type queue struct {
	rings virtqueue.Rings
	q     virtqueue.Ring
	kick  virtio.Notifier
	bufs  []dma.Block // by id; each bufSize bytes
	size  uint32      // bytes per buffer
	used  []virtqueue.Used
	// wantKick: buffers were published that the device asked to hear
	// about and no kick has gone out for them yet.
	wantKick bool
	unkicked int
}

func newQueue(mem dma.Allocator, name string, layout virtqueue.Layout, size uint16, bufSize int, eventIdx bool) (*queue, error) {
	rings, err := virtqueue.AllocLayout(mem, layout, size)
	if err != nil {
		return nil, fmt.Errorf("%s rings: %w", name, err)
	}
	r, err := virtqueue.NewRing(name, rings, eventIdx)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	q := &queue{rings: rings, q: r, bufs: make([]dma.Block, size), size: uint32(bufSize), used: make([]virtqueue.Used, size)}
	for i := range q.bufs {
		if q.bufs[i], err = mem.Alloc(bufSize, 64); err != nil {
			return nil, fmt.Errorf("%s buffers: %w", name, err)
		}
	}
	return q, nil
}

// post adds buffer id (the next the ring will use) for the device to
// write into. The caller publishes.
func (q *queue) postNext() bool {
	id, ok := q.q.PeekID()
	if !ok {
		return false
	}
	_, ok = q.q.Add1(q.bufs[id].Addr, q.size, true)
	return ok
}

// publish makes added buffers visible and notes whether a kick is owed.
func (q *queue) publish() {
	q.q.Publish()
	if q.q.NeedsKick() {
		q.wantKick = true
	}
	q.unkicked++
}

// flush kicks if a kick is owed.
func (q *queue) flush() bool {
	q.unkicked = 0
	if !q.wantKick {
		return false
	}
	q.wantKick = false
	q.kick.Notify()
	return true
}

// Device is a virtio console device with MULTIPORT, driven in poll mode.
// Its ports are safe for concurrent use: one Read and one Write at a time
// each (further callers wait their turn).
type Device struct {
	t        virtio.Transport
	mem      dma.Allocator
	cfg      Config
	offered  virtio.Features
	features virtio.Features
	maxPorts uint32
	ports    []*Port // by id: the ports with queues

	closed atomic.Bool
	broken atomic.Pointer[OpError]
	stats  counters

	ctrlMu sync.Mutex
	// +checklocks:ctrlMu
	cin *queue
	// +checklocks:ctrlMu
	cout *queue
	// +checklocks:ctrlMu
	ctrlErr error // the last control message refused
}

// Open resets the device behind t, negotiates VERSION_1 and MULTIPORT
// (and EVENT_IDX and RING_PACKED when offered and not refused), sets up
// the control queues and each port's receiveq and transmitq with memory
// from mem, posts the receive buffers, sets DRIVER_OK and sends
// DEVICE_READY. It then handles the device's first control messages
// (PORT_ADD, PORT_NAME, PORT_OPEN) for a moment; later ones are handled
// while a Read or Write waits, and in Poll.
func Open(t virtio.Transport, mem dma.Allocator, cfg Config) (*Device, error) {
	if err := cfg.defaults(); err != nil {
		return nil, &OpError{Op: "open", Dev: t.Name(), Err: err}
	}
	d := &Device{t: t, mem: mem, cfg: cfg}
	if err := d.negotiate(); err != nil {
		return nil, err
	}
	if err := d.start(); err != nil {
		t.SetStatus(t.Status() | virtio.StatusFailed)
		return nil, err
	}
	deadline := time.Now().Add(defaultSettle)
	for time.Now().Before(deadline) {
		if d.Poll() == 0 && d.settled() {
			break
		}
		time.Sleep(time.Millisecond)
	}
	return d, nil
}

// settled reports whether every port the device added has been named,
// and at least one was added.
func (d *Device) settled() bool {
	any := false
	for _, p := range d.ports {
		if p.added.Load() {
			any = true
			if p.name.Load() == nil {
				return false
			}
		}
	}
	return any
}

// Supported are the features the driver can use.
const Supported = virtio.Features(1<<virtio.FVersion1 | 1<<FMultiport | 1<<virtio.FEventIdx | 1<<virtio.FRingPacked)

// Required must be offered and are accepted.
const Required = virtio.Features(1<<virtio.FVersion1 | 1<<FMultiport)

// FeatureList names the features set in fs.
func FeatureList(fs virtio.Features) []string { return fs.Names(FeatureNames) }

func (d *Device) negotiate() error {
	t := d.t
	fail := func(op string, err error) error {
		t.SetStatus(t.Status() | virtio.StatusFailed)
		return &OpError{Op: op, Dev: t.Name(), Err: err}
	}
	if err := t.Reset(); err != nil {
		return &OpError{Op: "reset", Dev: t.Name(), Err: err}
	}
	t.SetStatus(virtio.StatusAcknowledge)
	t.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver)
	offered := t.DeviceFeatures()
	if offered&Required != Required {
		return fail("negotiate features", fmt.Errorf(
			"device offers %s; need VERSION_1 (a modern device: disable-legacy=on) and MULTIPORT (QEMU: virtio-serial-pci with max_ports of 2 or more): %w",
			strings.Join(FeatureList(offered), ","), virtio.ErrNotSupported))
	}
	want := offered&Supported&^d.cfg.Refuse | Required
	if t.ConfigLen() < ConfigSize {
		return fail("read config", fmt.Errorf("device configuration is %d bytes, need %d for max_nr_ports: %w", t.ConfigLen(), ConfigSize, virtio.ErrDeviceBroken))
	}
	var b [4]byte
	for tries := 0; ; tries++ {
		gen := t.ConfigGeneration()
		if err := t.ReadConfig(cfgMaxNrPorts, b[:]); err != nil {
			return fail("read config", err)
		}
		if t.ConfigGeneration() == gen {
			break
		}
		if tries == 10 {
			return fail("read config", fmt.Errorf("config_generation keeps changing: %w", virtio.ErrDeviceBroken))
		}
	}
	d.maxPorts = uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
	if d.maxPorts == 0 || d.maxPorts > 0x7fff {
		return fail("read config", fmt.Errorf("max_nr_ports is %d: %w", d.maxPorts, virtio.ErrDeviceBroken))
	}
	if need := 2 + 2*int(d.maxPorts); t.NumQueues() < need {
		return fail("read config", fmt.Errorf("max_nr_ports %d needs %d queues, the device has %d: %w", d.maxPorts, need, t.NumQueues(), virtio.ErrDeviceBroken))
	}
	t.SetDriverFeatures(want)
	t.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK)
	if t.Status()&virtio.StatusFeaturesOK == 0 {
		return fail("negotiate features", fmt.Errorf("device refused FEATURES_OK for %s: %w", strings.Join(FeatureList(want), ","), virtio.ErrNotSupported))
	}
	d.offered, d.features = offered, want
	return nil
}

func (d *Device) queueSize(q int, want int) (uint16, error) {
	max := d.t.QueueMaxSize(q)
	if max == 0 {
		return 0, fmt.Errorf("queue %d is absent", q)
	}
	size := uint16(want)
	for size > max {
		size >>= 1
	}
	if size < 2 {
		return 0, fmt.Errorf("queue %d: the device allows %d entries", q, max)
	}
	return size, nil
}

func (d *Device) start() error {
	t := d.t
	fail := func(op string, err error) error { return &OpError{Op: op, Dev: t.Name(), Err: err} }
	layout := virtqueue.Split
	if d.features.Has(virtio.FRingPacked) {
		layout = virtqueue.Packed
	}
	ev := d.features.Has(virtio.FEventIdx)
	mk := func(q int, name string, entries, bufSize int) (*queue, error) {
		size, err := d.queueSize(q, entries)
		if err != nil {
			return nil, err
		}
		qq, err := newQueue(d.mem, name, layout, size, bufSize, ev)
		if err != nil {
			return nil, err
		}
		if qq.kick, err = t.SetupQueue(q, size, virtio.QueueAddrs{Desc: qq.rings.Desc.Addr, Driver: qq.rings.Driver.Addr, Device: qq.rings.Device.Addr}); err != nil {
			return nil, err
		}
		return qq, nil
	}
	cin, err := mk(ctrlRxQueue, "control receiveq", ctrlQSize, ctrlBufSize)
	if err != nil {
		return fail("set up control receiveq", err)
	}
	cout, err := mk(ctrlTxQueue, "control transmitq", ctrlQSize, ctrlOutSize)
	if err != nil {
		return fail("set up control transmitq", err)
	}
	n := min(uint32(d.cfg.Ports), d.maxPorts)
	d.ports = make([]*Port, n)
	for id := uint32(0); id < n; id++ {
		p := &Port{d: d, id: id}
		rx, err := mk(rxQueueOf(id), fmt.Sprintf("port %d receiveq", id), d.cfg.RxBuffers, d.cfg.RxBufSize)
		if err != nil {
			return fail(fmt.Sprintf("set up port %d receiveq", id), err)
		}
		tx, err := mk(txQueueOf(id), fmt.Sprintf("port %d transmitq", id), d.cfg.TxBuffers, d.cfg.TxBufSize)
		if err != nil {
			return fail(fmt.Sprintf("set up port %d transmitq", id), err)
		}
		p.rxMu.Lock()
		p.rx = rx
		for p.rx.postNext() {
		}
		p.rx.q.Publish()
		p.rxMu.Unlock()
		p.txMu.Lock()
		p.tx = tx
		p.txMu.Unlock()
		d.ports[id] = p
	}
	d.ctrlMu.Lock()
	defer d.ctrlMu.Unlock()
	return d.startLocked(cin, cout)
}

// startLocked posts the control receive buffers, sets DRIVER_OK, kicks
// the receive queues and sends DEVICE_READY.
//
// +checklocks:d.ctrlMu
func (d *Device) startLocked(cin, cout *queue) error {
	t := d.t
	d.cin, d.cout = cin, cout
	for d.cin.postNext() {
	}
	d.cin.q.Publish()
	// No notification before DRIVER_OK (spec 3.1.1).
	t.SetStatus(t.Status() | virtio.StatusDriverOK)
	if s := t.Status(); s&virtio.StatusDriverOK == 0 || s&(virtio.StatusFailed|virtio.StatusNeedsReset) != 0 {
		return d.opError("start", fmt.Errorf("device status %#x after DRIVER_OK: %w", s, virtio.ErrDeviceBroken))
	}
	if d.cin.q.NeedsKick() {
		d.cin.kick.Notify()
	}
	for _, p := range d.ports {
		p.rxMu.Lock()
		if p.rx.q.NeedsKick() {
			p.rx.kick.Notify()
		}
		p.rxMu.Unlock()
	}
	if err := d.sendLocked(0, EventDeviceReady, 1); err != nil {
		return d.opError("send DEVICE_READY", err)
	}
	return nil
}

func (d *Device) opError(op string, err error) error {
	return &OpError{Op: op, Dev: d.t.Name(), Err: err}
}

// Poll handles the control messages the device has sent: ports added,
// named, removed, the host side connecting and disconnecting. Read and
// Write call it while they wait; a program that does neither for long
// should call it now and then, for QEMU drops control messages when the
// control receiveq has no buffers. It returns how many it handled.
func (d *Device) Poll() int {
	if d.closed.Load() {
		return 0
	}
	d.ctrlMu.Lock()
	defer d.ctrlMu.Unlock()
	return d.pollLocked()
}

// +checklocks:d.ctrlMu
func (d *Device) pollLocked() int {
	if d.broken.Load() != nil || !d.cin.q.HasUsed() {
		return 0
	}
	handled := 0
	for {
		n, err := d.cin.q.Reap(d.cin.used)
		for _, u := range d.cin.used[:n] {
			c, perr := ParseControl(d.cin.bufs[u.ID].Buf[:u.Len])
			if perr == nil {
				perr = d.handleLocked(c)
			}
			if perr != nil {
				d.stats.ctrlErrors.Add(1)
				d.ctrlErr = perr
				d.cfg.Logf("virtio-console %s: control message refused: %v", d.t.Name(), perr)
			}
			d.stats.ctrlMessages.Add(1)
			handled++
		}
		// Only now: Reap freed the ids, and a buffer posted earlier
		// could have taken one whose message was not handled yet.
		for range n {
			d.cin.postNext()
		}
		if n > 0 {
			d.cin.publish()
			d.cin.flush()
		}
		if err != nil {
			d.fail("control receiveq", err)
			return handled
		}
		if n < len(d.cin.used) {
			return handled
		}
	}
}

// handleLocked acts on one control message from the device.
//
// +checklocks:d.ctrlMu
func (d *Device) handleLocked(c Control) error {
	if c.ID >= d.maxPorts {
		return fmt.Errorf("%w: %v: the device has ports 0..%d", ErrBadControl, c, d.maxPorts-1)
	}
	var p *Port
	if c.ID < uint32(len(d.ports)) {
		p = d.ports[c.ID]
	}
	switch c.Event {
	case EventPortAdd:
		if p == nil {
			// A port without queues: say it failed, as Linux does
			// when it cannot add one.
			d.cfg.Logf("virtio-console %s: port %d added, but only ports 0..%d are driven", d.t.Name(), c.ID, len(d.ports)-1)
			return d.sendLocked(c.ID, EventPortReady, 0)
		}
		p.added.Store(true)
		if err := d.sendLocked(c.ID, EventPortReady, 1); err != nil {
			return err
		}
		if p.guestOpen.Load() {
			return d.sendLocked(c.ID, EventPortOpen, 1)
		}
		return nil
	case EventPortRemove:
		if p != nil {
			p.added.Store(false)
			p.hostOpen.Store(false)
			p.name.Store(nil)
		}
		return nil
	case EventPortOpen:
		if p != nil {
			on := c.Value != 0
			if p.hostOpen.Swap(on) != on && on {
				p.hostConnects.Add(1)
			}
		}
		return nil
	case EventConsolePort:
		if p != nil {
			p.console.Store(c.Value != 0)
		}
		return nil
	case EventPortName:
		if p != nil {
			s := string(c.Name)
			p.name.Store(&s)
		}
		return nil
	case EventResize:
		return nil
	}
	return fmt.Errorf("%w: %v is not a device → driver event", ErrBadControl, c)
}

// sendLocked sends one control message to the device.
//
// +checklocks:d.ctrlMu
func (d *Device) sendLocked(id uint32, event, value uint16) error {
	q := d.cout
	for {
		n, err := q.q.Reap(q.used)
		if err != nil {
			return d.fail("control transmitq", err)
		}
		if n < len(q.used) {
			break
		}
	}
	slot, ok := q.q.PeekID()
	if !ok {
		if err := q.q.Broken(); err != nil {
			return d.fail("control transmitq", err)
		}
		return fmt.Errorf("control transmitq full: the device left %d messages unread", q.q.InFlight())
	}
	b := q.bufs[slot]
	n := PutControl(b.Buf, id, event, value)
	if _, ok := q.q.Add1(b.Addr, uint32(n), false); !ok {
		return fmt.Errorf("control transmitq refused a message")
	}
	q.publish()
	q.flush()
	d.stats.ctrlSent.Add(1)
	return nil
}

// fail marks the device broken: it broke the ring contract. Reads and
// writes fail from then on; Close still resets it.
func (d *Device) fail(what string, err error) error {
	e := &OpError{Op: what, Dev: d.t.Name(), Err: errors.Join(virtio.ErrDeviceBroken, err)}
	d.broken.CompareAndSwap(nil, e)
	d.stats.deviceErrors.Add(1)
	return d.broken.Load()
}

// Err is why the device is out of service (it broke the ring contract,
// or set NEEDS_RESET), or nil.
func (d *Device) Err() error {
	if e := d.broken.Load(); e != nil {
		return e
	}
	if d.closed.Load() {
		return nil
	}
	d.ctrlMu.Lock()
	s := d.t.Status()
	d.ctrlMu.Unlock()
	if s&virtio.StatusNeedsReset != 0 {
		return &OpError{Op: "health", Dev: d.t.Name(), Err: virtio.ErrNeedsReset}
	}
	return nil
}

// ControlErr is the last control message refused, or nil.
func (d *Device) ControlErr() error {
	d.ctrlMu.Lock()
	defer d.ctrlMu.Unlock()
	return d.ctrlErr
}

// Name is the transport's name for the device.
func (d *Device) Name() string { return d.t.Name() }

// Features are the negotiated features.
func (d *Device) Features() virtio.Features { return d.features }

// MaxPorts is the device's max_nr_ports.
func (d *Device) MaxPorts() uint32 { return d.maxPorts }

// PortInfo describes one port the driver drives.
type PortInfo struct {
	ID            uint32
	Name          string
	Added         bool // the device announced it (PORT_ADD)
	Console       bool // CONSOLE_PORT
	HostConnected bool // the host side is open (PORT_OPEN from the device)
	GuestOpen     bool // the driver sent PORT_OPEN for it
}

// Ports describes the ports the driver drives.
func (d *Device) Ports() []PortInfo {
	out := make([]PortInfo, len(d.ports))
	for i, p := range d.ports {
		out[i] = p.Info()
	}
	return out
}

// Port opens port id: it tells the device the guest side is open
// (PORT_OPEN) once the device has added the port, and returns it. Opening
// an open port returns it again.
func (d *Device) Port(id uint32) (*Port, error) {
	if d.closed.Load() {
		return nil, ErrClosed
	}
	if id >= uint32(len(d.ports)) {
		return nil, fmt.Errorf("%w: port %d (the driver drives ports 0..%d)", ErrNoPort, id, len(d.ports)-1)
	}
	p := d.ports[id]
	d.ctrlMu.Lock()
	defer d.ctrlMu.Unlock()
	p.closed.Store(false)
	if !p.guestOpen.Swap(true) && p.added.Load() {
		if err := d.sendLocked(id, EventPortOpen, 1); err != nil {
			p.guestOpen.Store(false)
			return nil, &OpError{Op: fmt.Sprintf("open port %d", id), Dev: d.t.Name(), Err: err}
		}
	}
	return p, nil
}

// PortByName waits up to timeout for the device to name a port name
// (PORT_NAME; QEMU's virtserialport name=) and opens it.
func (d *Device) PortByName(name string, timeout time.Duration) (*Port, error) {
	deadline := time.Now().Add(timeout)
	for {
		d.Poll()
		for _, p := range d.ports {
			if n := p.name.Load(); n != nil && *n == name && p.added.Load() {
				return d.Port(p.id)
			}
		}
		if err := d.Err(); err != nil {
			return nil, err
		}
		if time.Now().After(deadline) {
			var have []string
			for _, p := range d.ports {
				if n := p.name.Load(); n != nil {
					have = append(have, fmt.Sprintf("%d=%q", p.id, *n))
				}
			}
			return nil, fmt.Errorf("%w: none named %q after %v (named: %v)", ErrNoPort, name, timeout, have)
		}
		time.Sleep(time.Millisecond)
	}
}

// Close closes every port, waits for Reads and Writes in progress to
// return ErrClosed, resets the device (so that it stops touching guest
// memory) and releases the transport. The DMA memory is the caller's.
func (d *Device) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	for _, p := range d.ports {
		// Reads and Writes see closed within an idle sleep and return;
		// later ones see it first thing.
		p.closed.Store(true)
		p.rxMu.Lock()
		p.rxMu.Unlock()
		p.txMu.Lock()
		p.txMu.Unlock()
	}
	d.ctrlMu.Lock()
	defer d.ctrlMu.Unlock()
	return d.t.Close()
}

// Stats are the driver's counters.
type Stats struct {
	RxBytes, TxBytes     uint64
	RxBuffers, TxBuffers uint64 // used buffers reaped
	RxKicks, TxKicks     uint64
	IdleSleeps           uint64
	ControlMessages      uint64 // received
	ControlSent          uint64
	ControlErrors        uint64 // received and refused
	DeviceErrors         uint64 // ring contract violations
	HostConnects         uint64 // host-side opens seen, all ports
}

type counters struct {
	rxBytes, txBytes, rxBufs, txBufs, rxKicks, txKicks, idle atomic.Uint64
	ctrlMessages, ctrlSent, ctrlErrors, deviceErrors         atomic.Uint64
}

// Stats returns the driver's counters.
func (d *Device) Stats() Stats {
	s := &d.stats
	st := Stats{
		RxBytes: s.rxBytes.Load(), TxBytes: s.txBytes.Load(),
		RxBuffers: s.rxBufs.Load(), TxBuffers: s.txBufs.Load(),
		RxKicks: s.rxKicks.Load(), TxKicks: s.txKicks.Load(), IdleSleeps: s.idle.Load(),
		ControlMessages: s.ctrlMessages.Load(), ControlSent: s.ctrlSent.Load(),
		ControlErrors: s.ctrlErrors.Load(), DeviceErrors: s.deviceErrors.Load(),
	}
	for _, p := range d.ports {
		st.HostConnects += p.hostConnects.Load()
	}
	return st
}
