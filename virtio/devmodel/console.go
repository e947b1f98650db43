package devmodel

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/virtqueue"
)

// Console feature bits (spec 5.3.3), kept here so that the model does not
// depend on the driver it tests.
const (
	ConsoleFSize       virtio.Feature = 0
	ConsoleFMultiport  virtio.Feature = 1
	ConsoleFEmergWrite virtio.Feature = 2
)

// ConsoleQEMUFeatures is what QEMU 7.2 offers for
// virtio-serial-pci,disable-legacy=on,max_ports=2 (minus RING_RESET).
const ConsoleQEMUFeatures = virtio.Features(1<<virtio.FVersion1 | 1<<virtio.FIndirectDesc | 1<<virtio.FEventIdx |
	1<<ConsoleFMultiport | 1<<ConsoleFEmergWrite)

// Console control events, spec 5.3.6.2.
const (
	conDeviceReady = 0
	conPortAdd     = 1
	conPortRemove  = 2
	conPortReady   = 3
	conConsolePort = 4
	conPortOpen    = 6
	conPortName    = 7
)

// ConsolePort is one port of a model console.
type ConsolePort struct {
	ID      uint32
	Name    string // sent as PORT_NAME when non-empty
	Console bool   // sent as CONSOLE_PORT
}

// ConsoleOptions configure a model console.
type ConsoleOptions struct {
	// Features offered; 0 means ConsoleQEMUFeatures.
	Features virtio.Features
	// MaxPorts is max_nr_ports; 0 means 2.
	MaxPorts uint32
	// Ports the device has; nil means port 1 named "nke.ctl".
	Ports []ConsolePort
	// QueueMax is each port queue's size; 0 means QEMU's 128. The
	// control queues have 32.
	QueueMax uint16
	// HostBuffer bounds the bytes of each port the host side holds
	// unread (the chardev's buffer): past it the port is throttled, as
	// QEMU's virtserialport is when its chardev is full. 0: unbounded.
	HostBuffer int
}

type conPort struct {
	ConsolePort
	present        bool // added, not removed
	hostConnected  bool
	guestConnected bool
	toGuest        []byte // host → guest, not yet placed in rx buffers
	fromGuest      []byte // guest → host, not yet read by the host
	// A transmit chain only partly taken by the host: the port is
	// throttled until HostRead makes room.
	pending    virtqueue.Chain
	hasPending bool
	pendingOff int
	throttled  bool
	discarded  int // bytes dropped: transmitted with the host disconnected
}

// ConsoleStats count what the model console saw.
type ConsoleStats struct {
	Kicks           []int // per queue
	ControlDropped  int   // control messages lost: no buffer in the control receiveq
	ControlReceived int   // messages from the driver
	Discarded       int   // guest → host bytes dropped with the host disconnected
	Resets          int
}

// Console is a model virtio console (virtio-serial) with MULTIPORT that
// behaves like QEMU 7.2's where a driver can tell: control messages are
// dropped when the control receiveq has no buffer, a port delivers to the
// guest only once the guest opened it, transmitted bytes are discarded
// while the host is disconnected and held (throttled) while the host
// buffer is full. Its methods are safe for concurrent use.
type Console struct {
	mem  virtqueue.Translator
	opts ConsoleOptions

	mu sync.Mutex
	// +checklocks:mu
	status uint8
	// +checklocks:mu
	drvFeatures virtio.Features
	// +checklocks:mu
	q []queue
	// +checklocks:mu
	ports map[uint32]*conPort
	// +checklocks:mu
	chain virtqueue.Chain
	// +checklocks:mu
	faults faults
	// +checklocks:mu
	stats ConsoleStats
	// +checklocks:mu
	err error
	// +checklocks:mu
	ready bool // DEVICE_READY seen
}

// NewConsole returns a model console whose DMA engine reaches memory
// through mem.
func NewConsole(mem virtqueue.Translator, opts ConsoleOptions) *Console {
	if opts.Features == 0 {
		opts.Features = ConsoleQEMUFeatures
	}
	if opts.MaxPorts == 0 {
		opts.MaxPorts = 2
	}
	if opts.Ports == nil {
		opts.Ports = []ConsolePort{{ID: 1, Name: "nke.ctl"}}
	}
	if opts.QueueMax == 0 {
		opts.QueueMax = 128
	}
	c := &Console{mem: mem, opts: opts}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.q = make([]queue, 2+2*opts.MaxPorts)
	c.stats.Kicks = make([]int, len(c.q))
	c.ports = map[uint32]*conPort{}
	for _, p := range opts.Ports {
		c.ports[p.ID] = &conPort{ConsolePort: p, present: true}
	}
	c.resetLocked()
	return c
}

// +checklocks:c.mu
func (c *Console) resetLocked() {
	c.status, c.drvFeatures, c.ready = 0, 0, false
	for i := range c.q {
		c.q[i] = queue{max: c.opts.QueueMax}
		if i == 2 || i == 3 {
			c.q[i].max = 32
		}
	}
	for _, p := range c.ports {
		p.guestConnected, p.hasPending, p.throttled, p.pendingOff = false, false, false, 0
		p.toGuest = p.toGuest[:0]
	}
	c.faults.usedID, c.faults.oversize, c.faults.usedIdxJump = -1, 0, 0
}

// Name implements virtio.Transport.
func (c *Console) Name() string { return "devmodel-console" }

// DeviceFeatures implements virtio.Transport.
func (c *Console) DeviceFeatures() virtio.Features { return c.opts.Features }

// SetDriverFeatures implements virtio.Transport.
func (c *Console) SetDriverFeatures(f virtio.Features) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drvFeatures = f
}

// Status implements virtio.Transport.
func (c *Console) Status() uint8 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status
}

// SetStatus implements virtio.Transport.
func (c *Console) SetStatus(s uint8) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s == 0 {
		c.resetLocked()
		c.stats.Resets++
		return
	}
	if c.status&^s&^virtio.StatusNeedsReset != 0 {
		c.failLocked(fmt.Errorf("driver cleared status bits: %#x -> %#x", c.status, s))
	}
	if s&virtio.StatusFeaturesOK != 0 && c.status&virtio.StatusFeaturesOK == 0 {
		if c.drvFeatures&^c.opts.Features != 0 || c.faults.refuseFeatures {
			s &^= virtio.StatusFeaturesOK
		}
	}
	if s&virtio.StatusDriverOK != 0 && c.status&virtio.StatusDriverOK == 0 {
		c.activateLocked()
	}
	c.status = s | c.status&virtio.StatusNeedsReset
}

// Reset implements virtio.Transport.
func (c *Console) Reset() error { c.SetStatus(0); return nil }

// NumQueues implements virtio.Transport.
func (c *Console) NumQueues() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.q)
}

// QueueMaxSize implements virtio.Transport.
func (c *Console) QueueMaxSize(q int) uint16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if q < 0 || q >= len(c.q) {
		return 0
	}
	return c.q[q].max
}

// SetupQueue implements virtio.Transport.
func (c *Console) SetupQueue(q int, size uint16, a virtio.QueueAddrs) (virtio.Notifier, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if q < 0 || q >= len(c.q) {
		return nil, fmt.Errorf("devmodel: no queue %d", q)
	}
	packed := c.drvFeatures.Has(virtio.FRingPacked)
	if size == 0 || size > c.q[q].max || (!packed && size&(size-1) != 0) {
		return nil, fmt.Errorf("devmodel: queue %d size %d invalid (max %d)", q, size, c.q[q].max)
	}
	if c.status&virtio.StatusFeaturesOK == 0 || c.status&virtio.StatusDriverOK != 0 {
		return nil, fmt.Errorf("devmodel: queue %d set up in status %#x", q, c.status)
	}
	c.q[q].size, c.q[q].addrs, c.q[q].enabled = size, a, true
	return conNotifier{c, q}, nil
}

// +checklocks:c.mu
func (c *Console) activateLocked() {
	for i := range c.q {
		q := &c.q[i]
		if !q.enabled {
			continue
		}
		r, err := ringsFor(c.mem, q, c.drvFeatures.Has(virtio.FRingPacked))
		if err == nil {
			q.dev, err = virtqueue.NewDeviceRing(r, c.mem, c.drvFeatures.Has(virtio.FEventIdx), c.drvFeatures.Has(virtio.FIndirectDesc))
		}
		if err != nil {
			c.failLocked(fmt.Errorf("queue %d: %w", i, err))
			continue
		}
		q.dev.SetNotify(true) // QEMU's virtio-serial never suppresses kicks
	}
}

// ringsFor translates a queue's three areas.
func ringsFor(mem virtqueue.Translator, q *queue, packed bool) (virtqueue.Rings, error) {
	get := ringGetter(mem)
	var r virtqueue.Rings
	r.Size = q.size
	if packed {
		r.Layout = virtqueue.Packed
	}
	descLen, drvLen, devLen := virtqueue.AreaSizes(r.Layout, int(q.size))
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

// ConfigGeneration implements virtio.Transport.
func (c *Console) ConfigGeneration() uint8 { return 0 }

// ReadConfig implements virtio.Transport: cols, rows, max_nr_ports, emerg_wr.
func (c *Console) ReadConfig(off int, p []byte) error {
	var cfg [12]byte
	binary.LittleEndian.PutUint16(cfg[0:], 80)
	binary.LittleEndian.PutUint16(cfg[2:], 25)
	binary.LittleEndian.PutUint32(cfg[4:], c.opts.MaxPorts)
	if off < 0 || off+len(p) > len(cfg) {
		return fmt.Errorf("devmodel: config read %d+%d outside %d bytes", off, len(p), len(cfg))
	}
	copy(p, cfg[off:])
	return nil
}

// ConfigLen implements virtio.Transport.
func (c *Console) ConfigLen() int { return 12 }

// ISR implements virtio.Transport.
func (c *Console) ISR() uint8 { return 0 }

// Close implements virtio.Transport.
func (c *Console) Close() error { return c.Reset() }

// Err returns the first protocol violation the device saw from the driver.
func (c *Console) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// +checklocks:c.mu
func (c *Console) failLocked(err error) {
	if c.err == nil {
		c.err = err
	}
	c.status |= virtio.StatusNeedsReset
}

// Stats returns what the model counted.
func (c *Console) Stats() ConsoleStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Kicks = append([]int(nil), c.stats.Kicks...)
	for _, p := range c.ports {
		s.Discarded += p.discarded
	}
	return s
}

// DriverFeatures returns what the driver accepted.
func (c *Console) DriverFeatures() virtio.Features {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.drvFeatures
}

type conNotifier struct {
	c *Console
	q int
}

// Notify handles a kick synchronously, as QEMU's vCPU thread does under TCG.
func (n conNotifier) Notify() { n.c.kick(n.q) }

func (c *Console) kick(q int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats.Kicks[q]++
	if c.status&virtio.StatusDriverOK == 0 {
		c.failLocked(fmt.Errorf("kick on queue %d before DRIVER_OK", q))
		return
	}
	if c.status&virtio.StatusNeedsReset != 0 || c.q[q].dev == nil {
		return
	}
	switch {
	case q == 2: // control receiveq: buffers for us, nothing to do
	case q == 3:
		c.controlLocked()
	case q%2 == 0: // a port's receiveq: deliver what waits
		if p := c.portOfQueue(q); p != nil {
			c.deliverLocked(p)
		}
	default:
		if p := c.portOfQueue(q); p != nil {
			c.transmitLocked(p)
		}
	}
}

// +checklocks:c.mu
func (c *Console) portOfQueue(q int) *conPort {
	id := uint32(0)
	if q >= 4 {
		id = uint32(q/2 - 1)
	}
	return c.ports[id]
}

func conRx(id uint32) int {
	if id == 0 {
		return 0
	}
	return 2 + 2*int(id)
}

// +checklocks:c.mu
func (c *Console) running() bool {
	return c.status&virtio.StatusDriverOK != 0 && c.status&virtio.StatusNeedsReset == 0
}

// sendControlLocked writes a control message into the next control
// receiveq buffer; like QEMU, it drops it when there is none.
//
// +checklocks:c.mu
func (c *Console) sendControlLocked(msg []byte) {
	dq := c.q[2].dev
	if dq == nil || !c.running() {
		c.stats.ControlDropped++
		return
	}
	ok, err := dq.Pop(&c.chain)
	if err != nil {
		c.failLocked(fmt.Errorf("control receiveq pop: %w", err))
		return
	}
	if !ok {
		c.stats.ControlDropped++
		return
	}
	w := 0
	for _, b := range c.chain.Write {
		w += copy(b, msg[w:])
	}
	c.pushLocked(2, c.chain.ID, uint32(w))
	c.publishLocked(2)
	dq.SetNotify(true)
}

// +checklocks:c.mu
func (c *Console) event(id uint32, ev, val uint16) {
	var b [8]byte
	binary.LittleEndian.PutUint32(b[0:], id)
	binary.LittleEndian.PutUint16(b[4:], ev)
	binary.LittleEndian.PutUint16(b[6:], val)
	c.sendControlLocked(b[:])
}

// controlLocked handles the driver's control messages, as QEMU's
// handle_control_message does.
//
// +checklocks:c.mu
func (c *Console) controlLocked() {
	dq := c.q[3].dev
	for {
		c.controlOnceLocked(dq)
		dq.SetNotify(true)
		if !dq.HasAvail() || !c.running() {
			return
		}
	}
}

// +checklocks:c.mu
func (c *Console) controlOnceLocked(dq virtqueue.DeviceRing) {
	for {
		ok, err := dq.Pop(&c.chain)
		if err != nil {
			c.failLocked(fmt.Errorf("control transmitq pop: %w", err))
			return
		}
		if !ok {
			break
		}
		var msg [8]byte
		n := 0
		for _, b := range c.chain.Read {
			n += copy(msg[n:], b)
		}
		c.pushLocked(3, c.chain.ID, 0)
		c.publishLocked(3)
		c.stats.ControlReceived++
		if n < 8 {
			c.failLocked(fmt.Errorf("control message of %d bytes", n))
			return
		}
		id := binary.LittleEndian.Uint32(msg[0:])
		ev := binary.LittleEndian.Uint16(msg[4:])
		val := binary.LittleEndian.Uint16(msg[6:])
		if ev == conDeviceReady {
			if val == 0 {
				c.failLocked(fmt.Errorf("DEVICE_READY 0"))
				continue
			}
			c.ready = true
			for pid := uint32(0); pid < c.opts.MaxPorts; pid++ {
				if p := c.ports[pid]; p != nil && p.present {
					c.event(pid, conPortAdd, 1)
				}
			}
			continue
		}
		p := c.ports[id]
		if p == nil {
			c.failLocked(fmt.Errorf("control event %d for port %d, which does not exist", ev, id))
			continue
		}
		switch ev {
		case conPortReady:
			if val == 0 {
				continue // the guest failed to add it; QEMU logs this
			}
			if p.Console {
				c.event(id, conConsolePort, 1)
			}
			if p.Name != "" {
				msg := make([]byte, 8, 8+len(p.Name)+1)
				binary.LittleEndian.PutUint32(msg[0:], id)
				binary.LittleEndian.PutUint16(msg[4:], conPortName)
				binary.LittleEndian.PutUint16(msg[6:], 1)
				msg = append(append(msg, p.Name...), 0)
				c.sendControlLocked(msg)
			}
			if p.hostConnected {
				c.event(id, conPortOpen, 1)
			}
		case conPortOpen:
			p.guestConnected = val != 0
			if p.guestConnected {
				c.deliverLocked(p)
			}
		default:
			c.failLocked(fmt.Errorf("control event %d from the driver", ev))
		}
	}
}

// HostConnect connects the host side of port id (a client on its
// chardev): the device tells the driver with PORT_OPEN 1.
func (c *Console) HostConnect(id uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.ports[id]
	if p == nil || p.hostConnected {
		return
	}
	p.hostConnected = true
	c.event(id, conPortOpen, 1)
	c.transmitLocked(p)
}

// HostDisconnect disconnects the host side: PORT_OPEN 0. Bytes the host
// had not read are gone.
func (c *Console) HostDisconnect(id uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.ports[id]
	if p == nil || !p.hostConnected {
		return
	}
	p.hostConnected = false
	p.fromGuest = p.fromGuest[:0]
	c.event(id, conPortOpen, 0)
}

// HostWrite queues bytes from the host to port id and places what fits
// in the guest's receive buffers.
func (c *Console) HostWrite(id uint32, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.ports[id]
	if p == nil {
		return
	}
	p.toGuest = append(p.toGuest, b...)
	c.deliverLocked(p)
}

// HostPending is how many host → guest bytes wait for receive buffers.
func (c *Console) HostPending(id uint32) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.ports[id]; p != nil {
		return len(p.toGuest)
	}
	return 0
}

// HostRead takes up to len(b) bytes the guest sent on port id and, the
// host buffer having room again, un-throttles the port.
func (c *Console) HostRead(id uint32, b []byte) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.ports[id]
	if p == nil {
		return 0
	}
	n := copy(b, p.fromGuest)
	p.fromGuest = p.fromGuest[:copy(p.fromGuest, p.fromGuest[n:])]
	if n > 0 && p.throttled {
		p.throttled = false
		c.transmitLocked(p)
	}
	return n
}

// Throttled reports whether port id's transmitq is held because the host
// buffer is full.
func (c *Console) Throttled(id uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.ports[id]
	return p != nil && p.throttled
}

// GuestConnected reports whether the driver opened port id (PORT_OPEN 1).
func (c *Console) GuestConnected(id uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.ports[id]
	return p != nil && p.guestConnected
}

// RemovePort hot-unplugs port id (PORT_REMOVE); AddPort plugs it back.
func (c *Console) RemovePort(id uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.ports[id]; p != nil && p.present {
		p.present, p.guestConnected = false, false
		c.event(id, conPortRemove, 1)
	}
}

// AddPort plugs port id back in (PORT_ADD).
func (c *Console) AddPort(id uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.ports[id]; p != nil && !p.present {
		p.present = true
		if c.ready {
			c.event(id, conPortAdd, 1)
		}
	}
}

// InjectControl sends the driver an arbitrary control message: fault
// injection.
func (c *Console) InjectControl(msg []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sendControlLocked(msg)
}

// InjectUsedID makes the next completion on queue q name id.
func (c *Console) InjectUsedID(q int, id uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.faults.usedID, c.faults.usedIDQueue = int64(id), q
}

// InjectOversize makes the next completion on queue q claim extra more
// bytes than were written.
func (c *Console) InjectOversize(q int, extra uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.faults.oversize, c.faults.oversizeQueue = extra, q
}

// SetNeedsReset sets DEVICE_NEEDS_RESET.
func (c *Console) SetNeedsReset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.status |= virtio.StatusNeedsReset
}

// deliverLocked places host → guest bytes into receive buffers, as QEMU's
// virtio_serial_write does once the guest opened the port.
//
// +checklocks:c.mu
func (c *Console) deliverLocked(p *conPort) {
	q := conRx(p.ID)
	if q >= len(c.q) || !c.running() || !p.guestConnected || len(p.toGuest) == 0 {
		return
	}
	dq := c.q[q].dev
	if dq == nil {
		return
	}
	for {
		c.deliverOnceLocked(p, q, dq)
		// Ask for a kick, then look once more: buffers published in
		// between came with no kick (the driver saw notifications off).
		dq.SetNotify(true)
		if len(p.toGuest) == 0 || !dq.HasAvail() || !c.running() {
			return
		}
	}
}

// +checklocks:c.mu
func (c *Console) deliverOnceLocked(p *conPort, q int, dq virtqueue.DeviceRing) {
	off := 0
	for off < len(p.toGuest) {
		ok, err := dq.Pop(&c.chain)
		if err != nil {
			c.failLocked(fmt.Errorf("port %d receiveq pop: %w", p.ID, err))
			return
		}
		if !ok {
			break
		}
		w := 0
		for _, b := range c.chain.Write {
			w += copy(b, p.toGuest[off+w:])
		}
		off += w
		c.pushLocked(q, c.chain.ID, uint32(w))
	}
	if off > 0 {
		c.publishLocked(q)
		p.toGuest = p.toGuest[:copy(p.toGuest, p.toGuest[off:])]
	}
}

// transmitLocked takes what the guest transmitted on p, as QEMU's
// do_flush_queued_data does: discarded with the host disconnected, held
// (throttled) when the host buffer is full.
//
// +checklocks:c.mu
func (c *Console) transmitLocked(p *conPort) {
	q := conRx(p.ID) + 1
	if q >= len(c.q) || !c.running() || c.q[q].dev == nil {
		return
	}
	for {
		if c.transmitChainsLocked(p, q) {
			c.publishLocked(q)
		}
		dq := c.q[q].dev
		dq.SetNotify(true)
		if p.throttled || !dq.HasAvail() || !c.running() {
			return
		}
	}
}

// transmitChainsLocked is transmitLocked's loop; it reports whether it
// pushed anything.
//
// +checklocks:c.mu
func (c *Console) transmitChainsLocked(p *conPort, q int) (pushed bool) {
	dq := c.q[q].dev
	for !p.throttled {
		if !p.hasPending {
			ok, err := dq.Pop(&p.pending)
			if err != nil {
				c.failLocked(fmt.Errorf("port %d transmitq pop: %w", p.ID, err))
				return pushed
			}
			if !ok {
				return pushed
			}
			if len(p.pending.Write) != 0 {
				c.failLocked(fmt.Errorf("port %d transmit chain %d has writable buffers", p.ID, p.pending.ID))
				return pushed
			}
			p.hasPending, p.pendingOff = true, 0
		}
		total := 0
		for _, b := range p.pending.Read {
			total += len(b)
		}
		if !p.hostConnected {
			p.discarded += total - p.pendingOff
		} else {
			for off := p.pendingOff; off < total; {
				room := total - off
				if c.opts.HostBuffer > 0 {
					room = min(room, c.opts.HostBuffer-len(p.fromGuest))
				}
				if room <= 0 {
					p.pendingOff = off
					p.throttled = true
					return pushed
				}
				p.fromGuest = appendRange(p.fromGuest, p.pending.Read, off, room)
				off += room
			}
		}
		p.hasPending = false
		c.pushLocked(q, p.pending.ID, 0)
		pushed = true
	}
	return pushed
}

// appendRange appends n bytes of the concatenation of bufs from off.
func appendRange(dst []byte, bufs [][]byte, off, n int) []byte {
	for _, b := range bufs {
		if n == 0 {
			break
		}
		if off >= len(b) {
			off -= len(b)
			continue
		}
		take := min(len(b)-off, n)
		dst = append(dst, b[off:off+take]...)
		n -= take
		off = 0
	}
	return dst
}

// +checklocks:c.mu
func (c *Console) pushLocked(q int, id uint16, l uint32) {
	f := &c.faults
	dq := c.q[q].dev
	switch {
	case f.usedID >= 0 && f.usedIDQueue == q:
		dq.PushRaw(uint32(f.usedID), l)
		f.usedID = -1
	case f.oversize > 0 && f.oversizeQueue == q:
		dq.PushRaw(uint32(id), l+f.oversize)
		f.oversize = 0
	default:
		dq.Push(id, l)
	}
}

// +checklocks:c.mu
func (c *Console) publishLocked(q int) { c.q[q].dev.PublishUsed() }
