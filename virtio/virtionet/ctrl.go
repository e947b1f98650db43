package virtionet

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"time"

	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/virtqueue"
)

// Control classes and commands, spec 5.1.6.5.
const (
	ctrlClassRx       = 0
	ctrlRxPromisc     = 0
	ctrlRxAllMulti    = 1
	ctrlClassMAC      = 1
	ctrlMACAddrSet    = 1
	ctrlAckOK         = 0
	ctrlAckUnanswered = 0xff // what the driver writes; a device writes 0 or 1

	ctrlSize    = 64 // queue size; a command takes three descriptors
	ctrlBufSize = 64 // class, cmd @0; data @16; ack @48
	ctrlDataOff = 16
	ctrlAckOff  = 48
	ctrlMaxData = ctrlAckOff - ctrlDataOff
	ctrlTimeout = 2 * time.Second
)

// Errors from control commands.
var (
	// ErrCtrlRejected reports a command the device answered with
	// VIRTIO_NET_ERR.
	ErrCtrlRejected = errors.New("device rejected the control command")
	// ErrCtrlUnanswered reports a command the device did not answer in
	// time. The control queue is then out of service until the device is
	// reset (Health reports it).
	ErrCtrlUnanswered = errors.New("device left a control command unanswered")
)

// ctrlq is the control virtqueue. Each command has a buffer of its own,
// indexed by its id in the ring, so a command the device answers late
// never shares memory with a later one, and answers are matched to
// commands by id, never by order. Commands are added and reaped under
// Device.ctrlMu, and waited for without it: nothing holds the lock while
// the device thinks.
type ctrlq struct {
	rings virtqueue.Rings
	q     virtqueue.Ring
	kick  virtio.Notifier
	bufs  []dma.Block // per id
	cmds  []ctrlState // per id: the command in flight
	gen   uint64      // bumped by every reset: commands of an older one fail
	// running is set once the device has DRIVER_OK: no kick before it,
	// nor after a failed recovery (spec 3.1.1).
	running bool
	used    [8]virtqueue.Used
	stats   *counters
	// broken is why the queue is out of service until a reset: the
	// device broke the ring contract or left a command unanswered.
	broken error
	// rxMode and mac are what the driver set, sent again after a reset.
	promisc, allMulti *bool
	mac               net.HardwareAddr
}

type ctrlState struct {
	gen        uint64
	class, cmd uint8
	inFlight   bool
	done       bool
	ack        uint8
	abandoned  bool // nobody waits for the answer (gave up, or never did)
}

func newCtrlq(mem dma.Allocator, max uint16, fs virtio.Features, stats *counters) (*ctrlq, error) {
	size := uint16(ctrlSize)
	if max == 0 {
		return nil, fmt.Errorf("CTRL_VQ negotiated but queue %d is absent", ctrlQueue)
	}
	for size > max {
		size >>= 1
	}
	layout := virtqueue.Split
	if fs.Has(virtio.FRingPacked) {
		layout = virtqueue.Packed
	}
	rings, err := virtqueue.AllocLayout(mem, layout, size)
	if err != nil {
		return nil, err
	}
	q, err := virtqueue.NewRing("ctrl", rings, fs.Has(virtio.FEventIdx))
	if err != nil {
		return nil, err
	}
	c := &ctrlq{rings: rings, q: q, bufs: make([]dma.Block, size), cmds: make([]ctrlState, size), stats: stats}
	for i := range c.bufs {
		if c.bufs[i], err = mem.Alloc(ctrlBufSize, 16); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// resetLocked forgets every command in flight after a device reset; their
// waiters see the generation move and fail.
func (c *ctrlq) resetLocked() {
	c.q.Reset()
	clear(c.cmds)
	c.gen++
	c.broken = nil
	c.running = false
}

// submitLocked adds one command (spec 5.1.6.5: a readable {class, command},
// readable command data, a writable ack byte, as three descriptors, the
// split QEMU and others assume) and kicks. It returns the command's id.
func (c *ctrlq) submitLocked(class, cmd uint8, data []byte) (uint16, error) {
	if c.broken != nil {
		return 0, c.broken
	}
	if !c.running {
		return 0, fmt.Errorf("control queue: the device is not running (a recovery failed): %w", virtio.ErrDeviceBroken)
	}
	c.reapLocked() // frees the ids of answered commands
	id, ok := c.q.PeekID()
	if !ok {
		if err := c.q.Broken(); err != nil {
			return 0, c.fail(err)
		}
		return 0, fmt.Errorf("control queue full: %d commands unanswered: %w", c.q.InFlight(), virtio.ErrDeviceBroken)
	}
	b := c.bufs[id]
	b.Buf[0], b.Buf[1] = class, cmd
	copy(b.Buf[ctrlDataOff:], data)
	b.Buf[ctrlAckOff] = ctrlAckUnanswered
	segs := [3]virtqueue.Seg{
		{Addr: b.Addr, Len: 2},
		{Addr: b.Addr + ctrlDataOff, Len: uint32(len(data))},
		{Addr: b.Addr + ctrlAckOff, Len: 1, Writable: true},
	}
	if _, ok := c.q.AddChain(segs[:]); !ok {
		return 0, fmt.Errorf("control queue: no room for a command: %w", virtio.ErrDeviceBroken)
	}
	c.cmds[id] = ctrlState{gen: c.gen, class: class, cmd: cmd, inFlight: true}
	c.q.Publish()
	c.q.NeedsKick()
	// Always kick: the command is synchronous and the device may not poll.
	c.kick.Notify()
	c.stats.ctrlKicks.Add(1)
	return id, nil
}

// reapLocked records the answers the device has written. An answer to a
// command whose waiter gave up is discarded; its id is free again.
func (c *ctrlq) reapLocked() {
	if c.broken != nil {
		return
	}
	for {
		n, err := c.q.Reap(c.used[:])
		for _, u := range c.used[:n] {
			st := &c.cmds[u.ID]
			if !st.inFlight {
				// The ring validated the id; this cannot happen.
				continue
			}
			st.inFlight = false
			if u.Len < 1 {
				// Spec 5.1.6.5: the device writes the ack byte.
				c.fail(fmt.Errorf("control command %d/%d answered with %d bytes written, no ack", st.class, st.cmd, u.Len))
				return
			}
			st.done, st.ack = true, c.bufs[u.ID].Buf[ctrlAckOff]
			if st.abandoned {
				if st.ack != ctrlAckOK {
					c.stats.ctrlRejects.Add(1)
				}
				*st = ctrlState{}
			}
		}
		if err != nil {
			c.fail(err)
			return
		}
		if n < len(c.used) {
			return
		}
	}
}

func (c *ctrlq) fail(err error) error {
	if c.broken == nil {
		c.broken = fmt.Errorf("control queue out of service until reset: %w", errors.Join(virtio.ErrDeviceBroken, err))
	}
	return c.broken
}

// command sends one control command and waits for the device's answer to
// it, polling without holding the lock.
func (d *Device) command(class, cmd uint8, data []byte) error {
	if len(data) > ctrlMaxData || len(data) == 0 {
		return fmt.Errorf("control command data of %d bytes", len(data))
	}
	id, gen, err := d.submit(class, cmd, data)
	if err != nil {
		return err
	}
	timeout := d.opts.CtrlTimeout
	if timeout <= 0 {
		timeout = ctrlTimeout
	}
	deadline := time.Now().Add(timeout)
	for spin := 0; ; spin++ {
		if done, err := d.answer(id, gen, time.Now().After(deadline), timeout); done {
			return err
		}
		// QEMU answers during the kick; a device that does not gets
		// the CPU back for a while.
		if spin < 64 {
			runtime.Gosched()
		} else {
			time.Sleep(50 * time.Microsecond)
		}
	}
}

// submit adds a command under the lock and returns its id and the reset
// generation it belongs to.
func (d *Device) submit(class, cmd uint8, data []byte) (uint16, uint64, error) {
	d.ctrlMu.Lock()
	defer d.ctrlMu.Unlock()
	c := d.ctrl
	if c == nil {
		return 0, 0, fmt.Errorf("control queue not negotiated: %w", virtio.ErrNotSupported)
	}
	id, err := c.submitLocked(class, cmd, data)
	return id, c.gen, err
}

// answer reaps and reports whether command id of generation gen has its
// answer (or has failed): done and the command's result. With expired set
// a command still unanswered fails, and takes the queue out of service.
func (d *Device) answer(id uint16, gen uint64, expired bool, timeout time.Duration) (bool, error) {
	d.ctrlMu.Lock()
	defer d.ctrlMu.Unlock()
	c := d.ctrl
	if c.gen != gen {
		return true, fmt.Errorf("control command: the device was reset before it answered: %w", virtio.ErrDeviceBroken)
	}
	c.reapLocked()
	st := c.cmds[id]
	switch {
	case st.done:
		c.cmds[id] = ctrlState{}
		if st.ack != ctrlAckOK {
			d.stats.ctrlRejects.Add(1)
			return true, fmt.Errorf("control command %d/%d: %w (ack %d)", st.class, st.cmd, ErrCtrlRejected, st.ack)
		}
		return true, nil
	case c.broken != nil:
		return true, c.broken
	case expired:
		// The buffer stays the device's until it answers or is reset:
		// the id is not free, so nothing reuses it.
		c.cmds[id].abandoned = true
		return true, c.fail(fmt.Errorf("control command %d/%d: no answer within %v: %w", st.class, st.cmd, timeout, ErrCtrlUnanswered))
	}
	return false, nil
}

// restoreLocked sends the receive mode and MAC the driver set earlier to a
// device that was just reset, without waiting (it runs on the poll loop's
// recovery path): Health reaps the answers; a refusal is counted.
//
// +checklocks:d.ctrlMu
func (d *Device) restoreLocked() {
	c := d.ctrl
	if c.promisc != nil && d.features.Has(FCtrlRx) {
		c.sendLocked(ctrlClassRx, ctrlRxPromisc, []byte{b2u(*c.promisc)})
	}
	if c.allMulti != nil && d.features.Has(FCtrlRx) {
		c.sendLocked(ctrlClassRx, ctrlRxAllMulti, []byte{b2u(*c.allMulti)})
	}
	if c.mac != nil && d.features.Has(FCtrlMACAddr) {
		c.sendLocked(ctrlClassMAC, ctrlMACAddrSet, c.mac)
	}
}

// sendLocked submits a command nobody waits for.
func (c *ctrlq) sendLocked(class, cmd uint8, data []byte) {
	id, err := c.submitLocked(class, cmd, data)
	if err != nil {
		c.fail(err)
		return
	}
	c.cmds[id].abandoned = true
}

func b2u(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// SetPromisc turns promiscuous receive on or off (needs CTRL_RX).
func (d *Device) SetPromisc(on bool) error { return d.rxMode(ctrlRxPromisc, on, "promiscuous mode") }

// SetAllMulti turns all-multicast receive on or off (needs CTRL_RX).
func (d *Device) SetAllMulti(on bool) error {
	return d.rxMode(ctrlRxAllMulti, on, "all-multicast mode")
}

func (d *Device) rxMode(cmd uint8, on bool, what string) error {
	if !d.Features().Has(FCtrlRx) {
		return &OpError{Op: "set " + what, Dev: d.t.Name(), Err: fmt.Errorf("CTRL_RX not negotiated: %w", virtio.ErrNotSupported)}
	}
	if err := d.command(ctrlClassRx, cmd, []byte{b2u(on)}); err != nil {
		return &OpError{Op: "set " + what, Dev: d.t.Name(), Err: err}
	}
	d.ctrlMu.Lock()
	if cmd == ctrlRxPromisc {
		d.ctrl.promisc = &on
	} else {
		d.ctrl.allMulti = &on
	}
	d.ctrlMu.Unlock()
	return nil
}
