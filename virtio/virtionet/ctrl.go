package virtionet

import (
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/nke-harness/nke/kernel/dma"
	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/virtqueue"
)

// Control classes and commands, spec 5.1.6.5.
const (
	ctrlClassRx       = 0
	ctrlRxPromisc     = 0
	ctrlRxAllMulti    = 1
	ctrlAckOK         = 0
	ctrlSize          = 64 // the control queue rarely holds more than one command
	ctrlDataOff       = 16
	ctrlAckOff        = 48
	ctrlMaxData       = ctrlAckOff - ctrlDataOff
	ctrlTimeout       = 2 * time.Second
	ctrlBufSize       = 64
	ctrlHeaderLen     = 2
	ctrlAckLen        = 1
	ctrlChainSegments = 3
)

// ErrCtrlRejected reports a control command the device answered with
// VIRTIO_NET_ERR.
var ErrCtrlRejected = errors.New("device rejected the control command")

// ctrlq is the control virtqueue: synchronous commands from the control
// path, never from the data path.
type ctrlq struct {
	rings virtqueue.Rings
	q     virtqueue.Ring
	kick  virtio.Notifier
	buf   dma.Block // class, cmd @0; data @16; ack @48
	used  [1]virtqueue.Used
}

func newCtrlq(mem dma.Allocator, max uint16, fs virtio.Features) (*ctrlq, error) {
	size := uint16(ctrlSize)
	if max == 0 {
		return nil, fmt.Errorf("CTRL_VQ negotiated but queue %d is absent", ctrlQueue)
	}
	for size > max {
		size >>= 1
	}
	rings, err := virtqueue.AllocRings(mem, size)
	if err != nil {
		return nil, err
	}
	q, err := virtqueue.New("ctrl", rings, fs.Has(virtio.FEventIdx))
	if err != nil {
		return nil, err
	}
	buf, err := mem.Alloc(ctrlBufSize, 16)
	if err != nil {
		return nil, err
	}
	return &ctrlq{rings: rings, q: q, buf: buf}, nil
}

// command sends one control command and waits for the device's answer.
// Spec 5.1.6.5: a readable {class, command}, readable command data, and a
// writable ack byte, as three descriptors (QEMU and others assume this
// split).
func (d *Device) command(class, cmd uint8, data []byte) error {
	d.ctrlMu.Lock()
	defer d.ctrlMu.Unlock()
	c := d.ctrl
	if c == nil {
		return fmt.Errorf("control queue not negotiated: %w", virtio.ErrNotSupported)
	}
	if len(data) > ctrlMaxData || len(data) == 0 {
		return fmt.Errorf("control command data of %d bytes", len(data))
	}
	b := c.buf.Buf
	b[0], b[1] = class, cmd
	copy(b[ctrlDataOff:], data)
	b[ctrlAckOff] = 0xff
	segs := [ctrlChainSegments]virtqueue.Seg{
		{Addr: c.buf.Addr, Len: ctrlHeaderLen},
		{Addr: c.buf.Addr + ctrlDataOff, Len: uint32(len(data))},
		{Addr: c.buf.Addr + ctrlAckOff, Len: ctrlAckLen, Writable: true},
	}
	if _, ok := c.q.AddChain(segs[:]); !ok {
		return fmt.Errorf("control queue full: %w", virtio.ErrDeviceBroken)
	}
	c.q.Publish()
	c.q.NeedsKick()
	// Always kick: the command is synchronous and the device may not poll.
	d.stats.ctrlKicks.Add(1)
	c.kick.Notify()
	timeout := d.opts.CtrlTimeout
	if timeout <= 0 {
		timeout = ctrlTimeout
	}
	deadline := time.Now().Add(timeout)
	for {
		n, err := c.q.Reap(c.used[:])
		if err != nil {
			return fmt.Errorf("control queue: %w", errors.Join(virtio.ErrDeviceBroken, err))
		}
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("control command %d/%d: no answer within %v: %w", class, cmd, timeout, virtio.ErrDeviceBroken)
		}
		runtime.Gosched()
	}
	if ack := b[ctrlAckOff]; ack != ctrlAckOK {
		return fmt.Errorf("control command %d/%d: %w (ack %d)", class, cmd, ErrCtrlRejected, ack)
	}
	return nil
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
	v := byte(0)
	if on {
		v = 1
	}
	if err := d.command(ctrlClassRx, cmd, []byte{v}); err != nil {
		return &OpError{Op: "set " + what, Dev: d.t.Name(), Err: err}
	}
	return nil
}
