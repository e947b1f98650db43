package virtionet_test

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/devmodel"
	"github.com/nke-harness/nke/virtio/virtionet"
)

// fuzzFeatureBits are the offered-feature bits the fuzzer may flip in
// devmodel.QEMUFeatures: every virtio-net bit and the ring features.
const fuzzFeatureBits = virtio.Features(0x00ff_fffb |
	1<<virtio.FVersion1 | 1<<virtio.FAccessPlatform | 1<<virtio.FOrderPlatform | 1<<virtio.FRingPacked |
	1<<virtionet.FHashReport | 1<<virtionet.FRSS | 1<<virtionet.FNotfCoal | 1<<virtionet.FHostUSO)

// FuzzHostileDevice runs the whole driver against a device model whose
// offered features, MTU and queue size come from the input, and which then
// injects faults, delays control commands and receives frames and
// transmit chains of any shape as the input says. The driver must not
// panic, must never break the protocol (the model checks), must report
// device errors as errors and recover from them, must never wedge its
// transmit path or mismatch a control command's answer, and must not leak
// a buffer.
//
// Input: 8 bytes XORed (within fuzzFeatureBits) into the offered
// features, a little-endian MTU, a queue-size byte, then one op per byte
// (high nibble op, low nibble argument; some ops take more bytes).
func FuzzHostileDevice(f *testing.F) {
	hdr := make([]byte, 11)
	for _, prog := range [][]byte{
		{0x00, 0x10, 0x20, 0x30},
		{0x01, 0x40, 0x00, 0x10},
		{0x02, 0x51, 0x00, 0x10, 0x05, 0x05},
		{0x03, 0x62, 0x21, 0x10, 0x73, 0x10},
		{0xa3, 0x40, 0x50, 0x60, 0x20, 0xd0},
		{0xb1, 0xb2, 0xc1, 0xb0, 0x70},
		{0xe0, 0x40, 0x1f, 0xf0, 0x10},
	} {
		f.Add(append(append([]byte(nil), hdr...), prog...))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 11 {
			return
		}
		offered := devmodel.QEMUFeatures ^ virtio.Features(binary.LittleEndian.Uint64(in))&fuzzFeatureBits
		mtu := binary.LittleEndian.Uint16(in[8:])
		qmax := []uint16{16, 32, 64, 256}[in[10]%4]
		runHostile(t, offered, mtu, qmax, in[11:])
	})
}

type hostile struct {
	t       *testing.T
	dev     *devmodel.Net
	drv     *virtionet.Device
	prog    []byte
	reject  [2]bool // the device rejects promisc / all-multicast commands
	faulted bool    // a fault was injected since the last recovery
	held    bool    // the device leaves control commands unanswered
	// trouble: a control command went unanswered since the last recovery.
	trouble bool
}

func (h *hostile) next() byte {
	if len(h.prog) == 0 {
		return 0
	}
	b := h.prog[0]
	h.prog = h.prog[1:]
	return b
}

func runHostile(t *testing.T, offered virtio.Features, mtu, qmax uint16, prog []byte) {
	heap := dma.NewHeap(4 << 20)
	dev := devmodel.New(heap, devmodel.Options{Features: offered, MTU: mtu, QueueMax: qmax, Tx: func([]byte) {}})
	drv, err := virtionet.Open(dev, heap, virtionet.Options{RxBuffers: int(qmax) + 16, TxBuffers: 2 * int(qmax), CtrlTimeout: time.Millisecond})
	if err != nil {
		if !offered.Has(virtio.FVersion1) && errors.Is(err, virtio.ErrNotSupported) {
			return // legacy devices are refused by design
		}
		if errors.Is(err, dma.ErrNoMemory) {
			return // a large MTU without MRG_RXBUF needs more than this heap
		}
		t.Fatalf("Open refused a device offering %v with MTU %d: %v", virtionet.FeatureList(offered), mtu, err)
	}
	h := &hostile{t: t, dev: dev, drv: drv, prog: prog}
	h.checkNegotiated(mtu)
	pool := drv.Pool()
	pkts := make([]*mbuf.Mbuf, 8)
	fr := make([]byte, 1<<16)
	copy(fr, []byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 2, 0, 0, 0, 0, 1, 0x88, 0xb5})
	for len(h.prog) > 0 {
		op := h.next()
		arg := uint16(op & 15)
		switch op >> 4 {
		case 0: // deliver a frame of some size
			dev.Deliver(fr[:14+int(arg)*390])
		case 1: // receive
			n, err := drv.RxBurst(pkts)
			for _, m := range pkts[:n] {
				m.Free()
			}
			h.deviceErr("RxBurst", err)
		case 2: // send one buffer
			if m := pool.Get(); m != nil {
				m.Append(14 + int(arg)*100)
				h.send(m)
			}
		case 3:
			dev.InjectUsedID(int(arg%3), uint32(arg)*5)
			h.faulted = true
		case 4:
			dev.InjectOversize(int(arg%3), uint32(arg)+1)
			h.faulted = true
		case 5:
			dev.InjectUsedIdxJump(int(arg%3), arg+1)
			h.faulted = true
		case 6:
			dev.SetNeedsReset()
			h.faulted = true
		case 7: // the owner's periodic checks and recovery
			if drv.Health() != nil {
				h.recover()
			}
		case 8:
			dev.SetLink(arg&1 == 0)
			drv.LinkUp()
		case 9:
			var c [virtionet.ConfigSize]byte
			binary.LittleEndian.PutUint16(c[6:], arg)
			c[0] = byte(arg)
			dev.SetConfig(c)
			drv.LinkUp()
			h.faulted = true
		case 10: // send a chain of 1..40 buffers of the lengths that follow
			h.sendChain(pool, 1+int(h.next())%40)
		case 11: // a control command; arg bit 2: answered late, bit 3: held
			h.command(arg)
		case 12: // the device rejects promisc (bit 0) / all-multicast (bit 1)
			h.reject = [2]bool{arg&1 != 0, arg&2 != 0}
			r := h.reject
			dev.RejectCtrl(func(class, cmd uint8) bool { return class == 0 && cmd < 2 && r[cmd] })
		case 13:
			h.deviceErr("Reclaim", drv.Reclaim())
		case 14: // deliver a frame of an exact size
			n := int(binary.LittleEndian.Uint16([]byte{h.next(), h.next()}))
			dev.Deliver(fr[:max(n, 14)])
		case 15:
			dev.HoldCtrl(false)
			h.held = false
		}
		if err := dev.Err(); err != nil {
			t.Fatalf("op %#02x: the driver broke the protocol: %v", op, err)
		}
	}
	// Whatever happened, a recovery brings back a working device (or
	// refuses garbage configuration) and every buffer is accounted for.
	dev.HoldCtrl(false)
	rxPool := drv.RxPool()
	if err := drv.Recover(); err != nil {
		if !errors.Is(err, virtionet.ErrConfig) {
			t.Fatalf("final Recover: %v", err)
		}
		if rxPool.Avail() != rxPool.Cap() || pool.Avail() != pool.Cap() {
			t.Fatalf("buffers leaked after a refused recovery: rx %d of %d free, tx %d of %d", rxPool.Avail(), rxPool.Cap(), pool.Avail(), pool.Cap())
		}
		return
	}
	h.checkNegotiated(mtu)
	rx, _ := drv.QueueSizes()
	if got := rxPool.Avail() + int(rx); got != rxPool.Cap() {
		t.Fatalf("rx buffers leaked: %d free + %d in the rx ring of %d", rxPool.Avail(), rx, rxPool.Cap())
	}
	if pool.Avail() != pool.Cap() {
		t.Fatalf("tx buffers leaked: %d of %d free after a reset", pool.Avail(), pool.Cap())
	}
}

// checkNegotiated: the accepted features are consistent and the driver
// uses the MTU it accepted.
func (h *hostile) checkNegotiated(mtu uint16) {
	fs := h.drv.Features()
	if r, bad := virtionet.Unmet(fs); bad {
		h.t.Fatalf("accepted %v without its prerequisite", virtionet.FeatureList(1<<r.Feature))
	}
	if fs.Has(virtionet.FMTU) && h.drv.MTU() != int(mtu) {
		h.t.Fatalf("MTU %d accepted but the driver uses %d", mtu, h.drv.MTU())
	}
}

// deviceErr checks a data-path error: only a device fault explains one.
func (h *hostile) deviceErr(op string, err error) {
	if err != nil && !errors.Is(err, virtio.ErrDeviceBroken) {
		h.t.Fatalf("%s error %v is not ErrDeviceBroken", op, err)
	}
}

func (h *hostile) recover() {
	err := h.drv.Recover()
	if err != nil && !errors.Is(err, virtionet.ErrConfig) {
		h.t.Fatalf("Recover: %v", err)
	}
	// A refused recovery (garbage configuration) leaves the device
	// broken until a later one succeeds.
	h.faulted, h.held, h.trouble = err != nil, false, false
}

// send hands m to TxBurst. On a healthy device with an empty tx ring a
// packet must be consumed (sent, or dropped and counted): one that is
// refused there would be retried by the poll loop forever.
func (h *hostile) send(m *mbuf.Mbuf) {
	drv := h.drv
	h.deviceErr("Reclaim", drv.Reclaim())
	idle := drv.TxInFlight() == 0 && drv.Health() == nil
	l, segs := m.PktLen(), m.Segs()
	n, err := drv.TxBurst([]*mbuf.Mbuf{m})
	h.deviceErr("TxBurst", err)
	if n == 0 {
		m.Free()
		if idle && err == nil {
			h.t.Fatalf("TxBurst refused a %d-byte packet of %d buffers with the tx ring empty: the poll loop would retry it forever", l, segs)
		}
	}
}

func (h *hostile) sendChain(pool *mbuf.Pool, segs int) {
	var head, tail *mbuf.Mbuf
	for i := 0; i < segs; i++ {
		m := pool.Get()
		if m == nil {
			break
		}
		m.Append(1 + int(h.next()))
		if head == nil {
			head = m
		} else {
			tail.SetNext(m)
		}
		tail = m
	}
	if head == nil {
		return
	}
	if head.PktLen() < 14 {
		head.Append(14)
	}
	h.send(head)
}

// command sends a control command and checks the driver reports the
// device's answer to that command and no other.
func (h *hostile) command(arg uint16) {
	drv, dev := h.drv, h.dev
	cmd := arg & 1
	on := arg&2 != 0
	late := arg&4 != 0
	if arg&8 != 0 || late {
		dev.HoldCtrl(true)
		h.held = true
	}
	var err error
	if cmd == 0 {
		err = drv.SetPromisc(on)
	} else {
		err = drv.SetAllMulti(on)
	}
	wasHeld := h.held
	if late {
		dev.HoldCtrl(false)
		h.held = false
	}
	fs := drv.Features()
	switch {
	case !fs.Has(virtionet.FCtrlRx):
		if !errors.Is(err, virtio.ErrNotSupported) {
			h.t.Fatalf("command without CTRL_RX: %v, want ErrNotSupported", err)
		}
	case err == nil:
		if wasHeld || h.reject[cmd] {
			h.t.Fatalf("command %d succeeded though the device held=%v rejected=%v it", cmd, wasHeld, h.reject[cmd])
		}
	case errors.Is(err, virtionet.ErrCtrlRejected):
		if wasHeld || !h.reject[cmd] {
			h.t.Fatalf("command %d reported rejected (%v) though the device held=%v rejected=%v it", cmd, err, wasHeld, h.reject[cmd])
		}
	case errors.Is(err, virtio.ErrDeviceBroken):
		// A timeout, a fault the model injected, or a control queue the
		// driver took out of service: Health must say so.
		if !wasHeld && !h.faulted && !h.trouble {
			h.t.Fatalf("command %d failed with no fault to explain it: %v", cmd, err)
		}
		h.trouble = true
		if drv.Health() == nil {
			h.t.Fatalf("command %d failed (%v) but Health reports a healthy device", cmd, err)
		}
	default:
		h.t.Fatalf("command %d: unexpected error %v", cmd, err)
	}
}
