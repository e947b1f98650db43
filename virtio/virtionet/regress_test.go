package virtionet_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/devmodel"
	"github.com/nke-harness/nke/virtio/virtionet"
)

// Regression tests for the bugs a review against the virtio 1.2
// specification, Linux and DPDK found. Each failed before its fix.

// chainOf builds a packet of the given frame split into buffers of at
// most seg bytes.
func chainOf(t testing.TB, pool *mbuf.Pool, f []byte, seg int) *mbuf.Mbuf {
	t.Helper()
	var head, tail *mbuf.Mbuf
	for off := 0; off < len(f); off += seg {
		m := pool.Get()
		if m == nil {
			t.Fatal("pool empty")
		}
		b, ok := m.Append(min(seg, len(f)-off))
		if !ok {
			t.Fatalf("segment of %d bytes does not fit a buffer", seg)
		}
		copy(b, f[off:])
		if head == nil {
			head = m
		} else {
			tail.SetNext(m)
		}
		tail = m
	}
	return head
}

// Bug 1: a chain of 16 segments needs 17 descriptors with the header, more
// than an indirect table of 16 held; without INDIRECT_DESC a chain longer
// than the ring never fit. Either was refused as "ring full" with the ring
// empty, and the poll loop retried it forever. Every chain length must be
// consumed and arrive intact.
func TestTxChainOfAnyLengthIsSent(t *testing.T) {
	for _, refuse := range []virtio.Features{0, 1 << virtio.FIndirectDesc} {
		t.Run(fmt.Sprintf("indirect=%v", refuse == 0), func(t *testing.T) {
			r := newRig(t, devmodel.Options{QueueMax: 16}, virtionet.Options{Refuse: refuse})
			pool := r.drv.Pool()
			for segs := 1; segs <= 40; segs++ {
				r.sent = nil
				f := frame([]byte{2, 0, 0, 0, 0, 1}, segs, 30*segs+14)
				m := chainOf(t, pool, f, 30)
				if n, err := r.drv.TxBurst([]*mbuf.Mbuf{m}); n != 1 || err != nil {
					t.Fatalf("%d segments: TxBurst = %d, %v with the tx ring empty: the packet wedges the ring", m.Segs(), n, err)
				}
				if err := r.drv.Reclaim(); err != nil {
					t.Fatal(err)
				}
				sameFrames(t, fmt.Sprintf("%d segments", segs), [][]byte{f}, r.sent)
			}
		})
	}
}

// Bug 2: CTRL_RX was accepted without CTRL_VQ (QEMU's ctrl_vq=off offers
// it anyway), and the guest then failed to boot. The driver must accept
// a consistent subset and keep going.
func TestFeatureDependencies(t *testing.T) {
	offered := devmodel.QEMUFeatures &^ (1 << virtionet.FCtrlVQ)
	r := newRig(t, devmodel.Options{Features: offered}, virtionet.Options{})
	got := r.dev.DriverFeatures()
	for _, f := range []virtio.Feature{virtionet.FCtrlRx, virtionet.FCtrlVLAN, virtionet.FGuestAnnounce, virtionet.FCtrlMACAddr, virtionet.FCtrlRxExtra} {
		if got.Has(f) {
			t.Errorf("accepted %s without CTRL_VQ", virtionet.FeatureNames[f])
		}
	}
	if r, bad := virtionet.Unmet(got); bad {
		t.Errorf("accepted %s without its prerequisite", virtionet.FeatureNames[r.Feature])
	}
	for _, f := range []virtio.Feature{virtionet.FMAC, virtionet.FStatus, virtionet.FMrgRxbuf, virtio.FEventIdx} {
		if !got.Has(f) {
			t.Errorf("%s, which needs nothing missing, was not accepted", virtionet.FeatureList(1 << f)[0])
		}
	}
	// It carries traffic both ways.
	in := frame(mac, 1, 200)
	if err := r.dev.Deliver(in); err != nil {
		t.Fatal(err)
	}
	sameFrames(t, "rx", [][]byte{in}, r.rxAll(1))
	r.txFrames(in)
	if err := r.drv.Reclaim(); err != nil {
		t.Fatal(err)
	}
	sameFrames(t, "tx", [][]byte{in}, r.sent)
}

// Bug 3: the device's MTU was accepted whatever its value and then not
// used: without MRG_RXBUF an rx buffer held 1920 bytes of frame, so
// frames beyond that were lost (spec 5.1.4.2), and the driver reported
// and enforced MTU 1500 whatever the device said. A jumbo MTU must work
// both ways, with and without MRG_RXBUF.
func TestJumboMTU(t *testing.T) {
	for _, refuse := range []virtio.Features{0, 1 << virtionet.FMrgRxbuf} {
		t.Run(fmt.Sprintf("mrg_rxbuf=%v", refuse == 0), func(t *testing.T) {
			r := newRig(t, devmodel.Options{Features: devmodel.QEMUFeatures | 1<<virtionet.FMTU, MTU: 9000},
				virtionet.Options{Refuse: refuse})
			if !r.drv.Features().Has(virtionet.FMTU) || r.drv.MTU() != 9000 {
				t.Fatalf("MTU %d (features %v), want the device's 9000", r.drv.MTU(), virtionet.FeatureList(r.drv.Features()))
			}
			var in [][]byte
			for _, n := range []int{9014, 4000, 1514, 60} {
				f := frame(mac, n, n)
				in = append(in, f)
				if err := r.dev.Deliver(f); err != nil {
					t.Fatalf("deliver %d bytes: %v", n, err)
				}
			}
			sameFrames(t, "rx", in, r.rxAll(len(in)))
			out := [][]byte{frame([]byte{2, 0, 0, 0, 0, 1}, 3, 9014), frame([]byte{2, 0, 0, 0, 0, 1}, 4, 4000)}
			for _, f := range out {
				m := chainOf(t, r.drv.Pool(), f, 1900)
				if n, err := r.drv.TxBurst([]*mbuf.Mbuf{m}); n != 1 || err != nil {
					t.Fatalf("TxBurst of %d bytes = %d, %v", len(f), n, err)
				}
			}
			if err := r.drv.Reclaim(); err != nil {
				t.Fatal(err)
			}
			sameFrames(t, "tx", out, r.sent)
			if s := r.drv.Stats(); s.RxDrops() != 0 || s.TxDrops() != 0 {
				t.Errorf("drops: %+v", s)
			}
		})
	}
}

// Bug 4: after a control command timed out it stayed in flight over the
// one shared buffer, the next command overwrote it, and every later answer
// was matched to the wrong command; a broken control queue also went
// unnoticed by Health. A late answer must never be taken for another
// command's, and Health must report the control queue until a reset
// brings it back.
func TestControlQueueAfterTimeout(t *testing.T) {
	r := newRig(t, devmodel.Options{}, virtionet.Options{CtrlTimeout: 5 * time.Millisecond})
	r.dev.HoldCtrl(true)
	if err := r.drv.SetPromisc(false); !errors.Is(err, virtio.ErrDeviceBroken) {
		t.Fatalf("SetPromisc with the device holding it = %v, want a timeout (ErrDeviceBroken)", err)
	}
	if err := r.drv.Health(); !errors.Is(err, virtio.ErrDeviceBroken) {
		t.Fatalf("Health after an unanswered control command = %v, want ErrDeviceBroken", err)
	}
	r.dev.HoldCtrl(false) // the late answer arrives
	// The device now rejects all-multicast: the driver must say so, or
	// say the queue is out of service; never report success.
	r.dev.RejectCtrl(func(class, cmd uint8) bool { return class == 0 && cmd == 1 })
	r.dev.HoldCtrl(true)
	if err := r.drv.SetAllMulti(true); err == nil || errors.Is(err, virtionet.ErrCtrlRejected) {
		t.Fatalf("SetAllMulti while the device holds it = %v: the answer of another command", err)
	}
	r.dev.HoldCtrl(false)
	if err := r.drv.Recover(); err != nil {
		t.Fatal(err)
	}
	if err := r.drv.Health(); err != nil {
		t.Fatalf("Health after Recover: %v", err)
	}
	if err := r.drv.SetAllMulti(true); !errors.Is(err, virtionet.ErrCtrlRejected) {
		t.Fatalf("SetAllMulti the device rejects = %v, want ErrCtrlRejected", err)
	}
	if err := r.drv.SetPromisc(false); err != nil {
		t.Fatalf("SetPromisc after recovery: %v", err)
	}
	// A device error on the control queue is the device's fault, and
	// Health says so.
	r.dev.InjectUsedID(devmodel.CtrlQueue, 50)
	if err := r.drv.SetPromisc(true); !errors.Is(err, virtio.ErrDeviceBroken) {
		t.Fatalf("SetPromisc answered with a bad id = %v, want ErrDeviceBroken", err)
	}
	if err := r.drv.Health(); !errors.Is(err, virtio.ErrDeviceBroken) {
		t.Fatalf("Health after a control-queue device error = %v", err)
	}
	if err := r.drv.Recover(); err != nil {
		t.Fatal(err)
	}
	if err := r.drv.SetPromisc(true); err != nil {
		t.Fatalf("SetPromisc after the second recovery: %v", err)
	}
	in := frame(mac, 9, 100)
	r.dev.Deliver(in)
	sameFrames(t, "rx after recoveries", [][]byte{in}, r.rxAll(1))
}
