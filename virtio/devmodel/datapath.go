package devmodel

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/virtionet"
)

// Errors from Deliver.
var (
	ErrNotRunning = errors.New("devmodel: device not running (no DRIVER_OK, or needs reset)")
	ErrLinkDown   = errors.New("devmodel: link down, frame dropped")
	ErrFiltered   = errors.New("devmodel: frame filtered by the rx mode")
	ErrBacklog    = errors.New("devmodel: rx backlog full, frame dropped")
	ErrTooBig     = errors.New("devmodel: frame exceeds the negotiated MTU, dropped")
)

// Deliver hands the device a frame from the wire. It is written into the
// driver's rx buffers at once when there are enough; otherwise it is queued
// and ErrNoBuffers returned, and like QEMU the device then waits for an rx
// kick before delivering anything queued.
func (n *Net) Deliver(frame []byte) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.admitLocked(frame); err != nil {
		return err
	}
	if n.waitKick || n.backlogN > 0 || !n.placeLocked(frame) {
		return n.queueLocked(frame)
	}
	n.publishLocked(rxq)
	return nil
}

// placeLocked writes frame into rx buffers as QEMU's virtio_net_has_buffers
// decides: when the ring looks empty, enable notifications and look once
// more, so that buffers the driver published in between (and will not kick
// for, since notifications were off when it looked) are not missed. With
// buffers found, notifications go off again.
//
// +checklocks:n.mu
func (n *Net) placeLocked(frame []byte) bool {
	dq := n.q[rxq].dev
	if !n.rxOneLocked(frame) {
		dq.SetNotify(true)
		if !n.rxOneLocked(frame) {
			return false
		}
	}
	dq.SetNotify(false)
	return true
}

// admitLocked decides whether the device takes a frame from the wire at all.
//
// +checklocks:n.mu
func (n *Net) admitLocked(frame []byte) error {
	var err error
	switch {
	case n.status&virtio.StatusDriverOK == 0 || n.status&virtio.StatusNeedsReset != 0 || n.q[rxq].dev == nil:
		err = ErrNotRunning
	case binary.LittleEndian.Uint16(n.config[6:])&virtionet.StatusLinkUp == 0 && n.opts.Features.Has(virtionet.FStatus):
		err = ErrLinkDown
	case !n.acceptLocked(frame):
		err = ErrFiltered
	case n.maxFrameLocked(frame) != 0 && len(frame) > n.maxFrameLocked(frame):
		err = ErrTooBig
	default:
		return nil
	}
	n.stats.RxDropped++
	return err
}

// DeliverBurst hands the device several frames at once and publishes them
// with one used-index update, as a backend delivering a batch does. It
// returns how many were placed in rx buffers; the rest are queued (until the
// driver kicks) or dropped, as with Deliver, whose error for the first frame
// not placed it returns.
func (n *Net) DeliverBurst(frames [][]byte) (int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	placed := 0
	var err error
	for _, f := range frames {
		e := n.admitLocked(f)
		if e == nil && (n.waitKick || n.backlogN > 0 || !n.placeLocked(f)) {
			e = n.queueLocked(f)
		}
		if e == nil {
			placed++
		} else if err == nil {
			err = e
		}
	}
	if placed > 0 {
		n.publishLocked(rxq)
	}
	return placed, err
}

// +checklocks:n.mu
func (n *Net) acceptLocked(frame []byte) bool {
	if n.promisc || len(frame) < 6 {
		return true
	}
	if frame[0]&1 != 0 {
		bcast := frame[0]&frame[1]&frame[2]&frame[3]&frame[4]&frame[5] == 0xff
		return bcast || n.allmulti
	}
	return [6]byte(frame[:6]) == n.filterMAC
}

// +checklocks:n.mu
func (n *Net) queueLocked(frame []byte) error {
	if n.backlogN == len(n.backlog) {
		n.stats.RxDropped++
		return ErrBacklog
	}
	i := (n.backlogHead + n.backlogN) % len(n.backlog)
	n.backlog[i] = append(n.backlog[i][:0], frame...)
	n.backlogN++
	n.waitKick = true
	return ErrNoBuffers
}

// Backlog reports how many frames wait for rx buffers.
func (n *Net) Backlog() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.backlogN
}

// flushLocked delivers queued frames after an rx kick.
//
// +checklocks:n.mu
func (n *Net) flushLocked() {
	moved := false
	for n.backlogN > 0 && n.placeLocked(n.backlog[n.backlogHead]) {
		n.backlogHead = (n.backlogHead + 1) % len(n.backlog)
		n.backlogN--
		moved = true
	}
	if moved {
		n.publishLocked(rxq)
	}
	// Frames left: placeLocked left notifications on; wait for a kick.
	n.waitKick = n.backlogN > 0
}

// rxOneLocked writes one frame into rx buffers and pushes them as used; the
// caller publishes. It reports false, consuming nothing, when the driver has
// not posted enough.
//
// +checklocks:n.mu
func (n *Net) rxOneLocked(frame []byte) bool {
	dq := n.q[rxq].dev
	mrg := n.drvFeatures.Has(virtionet.FMrgRxbuf)
	var hdr [virtionet.HeaderLen]byte
	stream := append(n.scratch[:0], hdr[:]...)
	stream = append(stream, frame...)
	n.scratch = stream[:0]
	heads, lens := &n.rxHeads, &n.rxLens
	used, off := 0, 0
	var first []byte // the first buffer, where the header goes
	for off < len(stream) {
		if !dq.HasAvail() || used == len(heads) || (!mrg && used == 1) {
			dq.Unpop(used)
			if !mrg && used == 1 {
				// One buffer too small without MRG_RXBUF: QEMU gives the
				// buffer back and drops the frame.
				n.stats.RxDropped++
				return true
			}
			return false
		}
		ok, err := dq.Pop(&n.chain)
		if err != nil || !ok {
			n.failLocked(fmt.Errorf("rx pop: %v", err))
			return true
		}
		if len(n.chain.Read) != 0 || n.chain.WritableLen() == 0 {
			n.failLocked(fmt.Errorf("rx chain %d has no writable buffer", n.chain.ID))
			return true
		}
		if used == 0 {
			first = n.chain.Write[0]
		}
		if need := virtionet.HeaderLen + int(n.opts.MTU) + 14; !mrg && n.drvFeatures.Has(virtionet.FMTU) && n.chain.WritableLen() < need {
			// Spec 5.1.4.2: with VIRTIO_NET_F_MTU the driver must post
			// buffers that take an MTU-sized packet.
			n.violationLocked(fmt.Errorf("rx buffer of %d bytes cannot take an MTU %d frame (%d bytes with the header, spec 5.1.4.2)",
				n.chain.WritableLen(), n.opts.MTU, need))
		}
		w := 0
		for _, b := range n.chain.Write {
			w += copy(b, stream[off+w:])
		}
		heads[used], lens[used] = n.chain.ID, uint32(w)
		used++
		off += w
	}
	if mrg {
		// num_buffers is known only now; it sits in the first buffer,
		// which must hold the whole header.
		if len(first) < virtionet.HeaderLen {
			n.failLocked(fmt.Errorf("rx buffer of %d bytes cannot hold the header", len(first)))
			return true
		}
		virtionet.Header(first).SetNumBuffers(uint16(used))
	}
	if fn := n.faults.mangleRx; fn != nil && len(first) >= virtionet.HeaderLen {
		n.faults.mangleRx = nil
		fn(virtionet.Header(first[:virtionet.HeaderLen]), lens[:used])
	}
	for i := 0; i < used; i++ {
		n.pushLocked(rxq, heads[i], lens[i])
	}
	n.stats.RxFrames++
	return true
}

// +checklocks:n.mu
func (n *Net) pushLocked(q int, head uint16, l uint32) {
	f := &n.faults
	dq := n.q[q].dev
	switch {
	case f.usedID >= 0 && f.usedIDQueue == q:
		dq.PushRaw(uint32(f.usedID), l)
		f.usedID = -1
	case f.oversize > 0 && f.oversizeQueue == q:
		dq.PushRaw(uint32(head), l+f.oversize)
		f.oversize = 0
	default:
		dq.Push(head, l)
	}
}

// +checklocks:n.mu
func (n *Net) publishLocked(q int) {
	dq := n.q[q].dev
	dq.PublishUsed()
	if f := &n.faults; f.usedIdxJump != 0 && f.usedIdxJumpQueue == q {
		dq.JumpUsed(f.usedIdxJump)
		f.usedIdxJump = 0
	}
}

// txLocked sends every chain the driver published on the tx queue, then
// asks for the next kick and looks once more, as QEMU's tx bottom half does.
//
// +checklocks:n.mu
func (n *Net) txLocked() {
	dq := n.q[txq].dev
	for {
		dq.SetNotify(false)
		sent := 0
		for {
			ok, err := dq.Pop(&n.chain)
			if err != nil {
				n.failLocked(fmt.Errorf("tx pop: %w", err))
				return
			}
			if !ok {
				break
			}
			if len(n.chain.Write) != 0 {
				n.failLocked(fmt.Errorf("tx chain %d has writable buffers", n.chain.ID))
				return
			}
			pkt := n.scratch[:0]
			for _, b := range n.chain.Read {
				pkt = append(pkt, b...)
			}
			n.scratch = pkt[:0]
			if len(pkt) < virtionet.HeaderLen {
				// QEMU: "virtio-net header incorrect", a fatal device error.
				n.failLocked(fmt.Errorf("tx chain %d shorter than the header", n.chain.ID))
				return
			}
			if h := virtionet.Header(pkt); h.GSOType() != virtionet.GSONone || h.Flags()&virtionet.HdrFNeedsCsum != 0 {
				n.failLocked(fmt.Errorf("tx header asks for offloads that were not negotiated: %+v", h.Fields()))
				return
			}
			frame := pkt[virtionet.HeaderLen:]
			if max := n.maxFrameLocked(frame); max != 0 && len(frame) > max {
				n.violationLocked(fmt.Errorf("driver sent a %d-byte frame over an MTU of %d (spec 5.1.4.2)", len(frame), n.opts.MTU))
			}
			if n.opts.Tx != nil {
				n.opts.Tx(frame)
			}
			n.stats.TxFrames++
			n.pushLocked(txq, n.chain.ID, 0)
			sent++
		}
		if sent > 0 {
			n.publishLocked(txq)
		}
		dq.SetNotify(true)
		if !dq.HasAvail() {
			return
		}
	}
}

// ctrlLocked answers control commands: the rx mode class, VIRTIO_NET_OK;
// anything else, VIRTIO_NET_ERR.
//
// +checklocks:n.mu
func (n *Net) ctrlLocked() {
	dq := n.q[ctrlq].dev
	for {
		ok, err := dq.Pop(&n.chain)
		if err != nil {
			n.failLocked(fmt.Errorf("ctrl pop: %w", err))
			return
		}
		if !ok {
			break
		}
		cmd := n.scratch[:0]
		for _, b := range n.chain.Read {
			cmd = append(cmd, b...)
		}
		n.scratch = cmd[:0]
		if len(cmd) < 2 || len(n.chain.Write) == 0 || len(n.chain.Write[0]) < 1 {
			n.failLocked(fmt.Errorf("ctrl chain %d malformed", n.chain.ID))
			return
		}
		ack := byte(1)
		if r := n.faults.rejectCtrl; r != nil && r(cmd[0], cmd[1]) {
			// Answered with VIRTIO_NET_ERR below.
		} else if cmd[0] == 0 && (cmd[1] == 0 || cmd[1] == 1) && len(cmd) == 3 && n.drvFeatures.Has(virtionet.FCtrlRx) {
			on := cmd[2] != 0
			if cmd[1] == 0 {
				n.promisc = on
			} else {
				n.allmulti = on
			}
			ack = 0
		} else if cmd[0] == 1 && cmd[1] == 1 && len(cmd) == 8 && n.drvFeatures.Has(virtionet.FCtrlMACAddr) {
			// VIRTIO_NET_CTRL_MAC_ADDR_SET, spec 5.1.6.5.2.
			n.filterMAC = [6]byte(cmd[2:])
			ack = 0
		}
		n.chain.Write[0][0] = ack
		n.pushLocked(ctrlq, n.chain.ID, 1)
	}
	n.publishLocked(ctrlq)
}
