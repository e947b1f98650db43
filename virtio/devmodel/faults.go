package devmodel

import (
	"encoding/binary"

	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/virtionet"
)

type faults struct {
	usedID           int64 // next completion names this id (-1: off)
	usedIDQueue      int
	oversize         uint32 // next completion reports this many extra bytes
	oversizeQueue    int
	usedIdxJump      uint16 // next publish moves used.idx this much further
	usedIdxJumpQueue int
	tornReads        int  // config reads that see the generation change
	refuseFeatures   bool // FEATURES_OK does not stick
	holdCtrl         bool // control-queue kicks are left unanswered
	mangleRx         func(hdr virtionet.Header, lens []uint32)
	rejectCtrl       func(class, cmd uint8) bool
}

// Queue numbers for fault injection.
const (
	RxQueue   = rxq
	TxQueue   = txq
	CtrlQueue = ctrlq
)

// InjectUsedID makes the next completion on queue q name id instead of the
// chain it completes.
func (n *Net) InjectUsedID(q int, id uint32) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.faults.usedID, n.faults.usedIDQueue = int64(id), q
}

// InjectOversize makes the next completion on queue q claim extra more
// bytes than were written.
func (n *Net) InjectOversize(q int, extra uint32) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.faults.oversize, n.faults.oversizeQueue = extra, q
}

// InjectUsedIdxJump makes the next publish on queue q move used.idx delta
// entries past what was used.
func (n *Net) InjectUsedIdxJump(q int, delta uint16) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.faults.usedIdxJump, n.faults.usedIdxJumpQueue = delta, q
}

// SetNeedsReset sets DEVICE_NEEDS_RESET, as a device does after an internal
// error (spec 2.1.2). A reset clears it.
func (n *Net) SetNeedsReset() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.status |= virtio.StatusNeedsReset
}

// SetLink changes the link status and bumps the config generation.
func (n *Net) SetLink(up bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := binary.LittleEndian.Uint16(n.config[6:]) &^ virtionet.StatusLinkUp
	if up {
		s |= virtionet.StatusLinkUp
	}
	binary.LittleEndian.PutUint16(n.config[6:], s)
	n.generation++
}

// TearConfigReads makes the next k config reads race with a config change
// (the generation moves during each).
func (n *Net) TearConfigReads(k int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.faults.tornReads = k
}

// SetConfig replaces the raw configuration bytes (any garbage).
func (n *Net) SetConfig(b [virtionet.ConfigSize]byte) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.config = b
	n.generation++
}

// HoldCtrl makes the device leave control commands unanswered while on, as
// a slow or wedged device would; turning it off answers what is waiting at
// once, late.
func (n *Net) HoldCtrl(on bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.faults.holdCtrl = on
	if !on && n.status&virtio.StatusDriverOK != 0 && n.status&virtio.StatusNeedsReset == 0 && n.q[ctrlq].dev != nil {
		n.ctrlLocked()
	}
}

// RejectCtrl makes the device answer VIRTIO_NET_ERR to the control
// commands reject picks (nil: none beyond those it does not know).
func (n *Net) RejectCtrl(reject func(class, cmd uint8) bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.faults.rejectCtrl = reject
}

// MangleNextRx lets fn rewrite the next received packet as the device
// reports it: the virtio-net header in its first buffer, and the used
// length of each buffer it took. Lengths are not checked against the
// buffers: that is the driver's job.
func (n *Net) MangleNextRx(fn func(hdr virtionet.Header, lens []uint32)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.faults.mangleRx = fn
}

// RefuseFeaturesOK makes the device refuse FEATURES_OK whatever the driver
// accepted.
func (n *Net) RefuseFeaturesOK(on bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.faults.refuseFeatures = on
}
