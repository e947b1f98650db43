package devmodel

import (
	"strings"
	"testing"

	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/virtionet"
	"github.com/nke-harness/nke/virtio/virtqueue"
)

// The model must catch the driver mistakes QEMU punishes, or driver tests
// against it prove nothing.
func TestModelCatchesDriverMistakes(t *testing.T) {
	setup := func(t *testing.T) (*Net, *dma.Heap, virtio.Notifier, *virtqueue.Queue) {
		h := dma.NewHeap(1 << 20)
		n := New(h, Options{})
		n.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver)
		n.SetDriverFeatures(1 << virtio.FVersion1)
		n.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK)
		r, err := virtqueue.AllocRings(h, 8)
		if err != nil {
			t.Fatal(err)
		}
		q, _ := virtqueue.New("tx", r, false)
		kick, err := n.SetupQueue(TxQueue, 8, virtio.QueueAddrs{Desc: r.Desc.Addr, Driver: r.Driver.Addr, Device: r.Device.Addr})
		if err != nil {
			t.Fatal(err)
		}
		return n, h, kick, q
	}
	t.Run("kick before DRIVER_OK", func(t *testing.T) {
		n, _, kick, _ := setup(t)
		kick.Notify()
		if err := n.Err(); err == nil || !strings.Contains(err.Error(), "before DRIVER_OK") {
			t.Fatalf("Err = %v", err)
		}
	})
	t.Run("status bit cleared", func(t *testing.T) {
		n, _, _, _ := setup(t)
		n.SetStatus(virtio.StatusAcknowledge)
		if n.Err() == nil {
			t.Fatal("clearing DRIVER and FEATURES_OK went unnoticed")
		}
	})
	t.Run("writable tx buffer", func(t *testing.T) {
		n, h, kick, q := setup(t)
		n.SetStatus(n.Status() | virtio.StatusDriverOK)
		b, _ := h.Alloc(64, 8)
		q.Add1(b.Addr, 64, true)
		q.Publish()
		kick.Notify()
		if n.Err() == nil || n.Status()&virtio.StatusNeedsReset == 0 {
			t.Fatalf("writable tx chain: err %v status %#x", n.Err(), n.Status())
		}
	})
	t.Run("tx shorter than the header", func(t *testing.T) {
		n, h, kick, q := setup(t)
		n.SetStatus(n.Status() | virtio.StatusDriverOK)
		b, _ := h.Alloc(64, 8)
		q.Add1(b.Addr, virtionet.HeaderLen-1, false)
		q.Publish()
		kick.Notify()
		if n.Err() == nil {
			t.Fatal("short tx chain went unnoticed")
		}
	})
	t.Run("unoffered feature", func(t *testing.T) {
		h := dma.NewHeap(1 << 16)
		n := New(h, Options{Features: 1 << virtio.FVersion1})
		n.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver)
		n.SetDriverFeatures(1<<virtio.FVersion1 | 1<<virtio.FEventIdx)
		n.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK)
		if n.Status()&virtio.StatusFeaturesOK != 0 {
			t.Fatal("FEATURES_OK accepted for a feature the device never offered")
		}
	})
	t.Run("queue setup before FEATURES_OK", func(t *testing.T) {
		h := dma.NewHeap(1 << 16)
		n := New(h, Options{})
		if _, err := n.SetupQueue(RxQueue, 8, virtio.QueueAddrs{}); err == nil {
			t.Fatal("queue set up before FEATURES_OK")
		}
	})
}

// Like QEMU, the model holds frames it queued on an empty ring until the
// driver kicks rx, even after the driver has posted buffers: a driver that
// refills without kicking stalls here as it would in QEMU.
func TestRxStallNeedsKick(t *testing.T) {
	h := dma.NewHeap(1 << 20)
	n := New(h, Options{})
	n.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver)
	n.SetDriverFeatures(1<<virtio.FVersion1 | 1<<virtio.FEventIdx)
	n.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK)
	r, _ := virtqueue.AllocRings(h, 4)
	q, _ := virtqueue.New("rx", r, true)
	kick, err := n.SetupQueue(RxQueue, 4, virtio.QueueAddrs{Desc: r.Desc.Addr, Driver: r.Driver.Addr, Device: r.Device.Addr})
	if err != nil {
		t.Fatal(err)
	}
	n.SetStatus(n.Status() | virtio.StatusDriverOK)
	post := func() {
		for q.NumFree() > 0 {
			b, _ := h.Alloc(2048, 8)
			q.Add1(b.Addr, 2048, true)
		}
		q.Publish()
	}
	post()
	frame := make([]byte, 60)
	for i := 0; i < 6; i++ {
		n.Deliver(frame)
	}
	if n.Backlog() != 2 {
		t.Fatalf("backlog %d, want 2 (4 placed)", n.Backlog())
	}
	used := make([]virtqueue.Used, 8)
	if k, err := q.Reap(used); k != 4 || err != nil {
		t.Fatal(k, err)
	}
	post()
	if !q.NeedsKick() {
		t.Fatal("the device did not ask for a kick after its ring ran empty")
	}
	n.Deliver(frame) // new frames queue behind the backlog
	if n.Backlog() != 3 || q.Pending() != 0 {
		t.Fatalf("frames delivered without a kick: backlog %d, pending %d", n.Backlog(), q.Pending())
	}
	kick.Notify()
	if n.Backlog() != 0 || q.Pending() != 3 {
		t.Fatalf("after the kick: backlog %d, pending %d", n.Backlog(), q.Pending())
	}
}
