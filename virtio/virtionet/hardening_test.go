package virtionet_test

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/frametest"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/devmodel"
	"github.com/nke-harness/nke/virtio/virtionet"
	"github.com/nke-harness/nke/virtio/virtqueue"
)

// behindIOMMU is a device whose DMA an IOMMU translates.
type behindIOMMU struct{ *devmodel.Net }

func (behindIOMMU) DMATranslated() bool { return true }

func TestPlatformFeatures(t *testing.T) {
	offered := devmodel.QEMUFeatures | 1<<virtio.FAccessPlatform | 1<<virtio.FOrderPlatform
	r := newRig(t, devmodel.Options{Features: offered}, virtionet.Options{})
	if fs := r.drv.Features(); !fs.Has(virtio.FAccessPlatform) || !fs.Has(virtio.FOrderPlatform) {
		t.Errorf("without an IOMMU: features %v, want ACCESS_PLATFORM and ORDER_PLATFORM", virtionet.FeatureList(fs))
	}
	heap := dma.NewHeap(8 << 20)
	dev := devmodel.New(heap, devmodel.Options{Features: offered})
	drv, err := virtionet.Open(behindIOMMU{dev}, heap, virtionet.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if drv.Features().Has(virtio.FAccessPlatform) {
		t.Error("ACCESS_PLATFORM accepted behind an IOMMU the driver does not program")
	}
	if d := fmt.Sprint(drv.Declined()); !strings.Contains(d, "ACCESS_PLATFORM: an IOMMU") {
		t.Errorf("Declined() = %s, want ACCESS_PLATFORM and why", d)
	}
}

func TestDeclinedSaysWhy(t *testing.T) {
	offered := devmodel.QEMUFeatures&^(1<<virtionet.FCtrlVQ) | 1<<virtionet.FMTU
	r := newRig(t, devmodel.Options{Features: offered, MTU: 40}, virtionet.Options{})
	got := fmt.Sprint(r.drv.Declined())
	for _, want := range []string{"CTRL_RX: needs CTRL_VQ (not offered)", "CTRL_MAC_ADDR: needs CTRL_VQ (not offered)", "MTU: the device reports MTU 40"} {
		if !strings.Contains(got, want) {
			t.Errorf("Declined() = %s, missing %q", got, want)
		}
	}
	if r.drv.MTU() != virtionet.DefaultMTU {
		t.Errorf("MTU %d after declining the device's 40", r.drv.MTU())
	}
	// Refused by the caller is not "declined": that was asked for.
	r2 := newRig(t, devmodel.Options{}, virtionet.Options{Refuse: 1 << virtionet.FCtrlVQ})
	if got := fmt.Sprint(r2.drv.Declined()); !strings.Contains(got, "CTRL_RX: needs CTRL_VQ (not accepted)") || strings.Contains(got, "CTRL_VQ:") {
		t.Errorf("with CTRL_VQ refused: Declined() = %s", got)
	}
}

// A packet another owner also holds is sent without writing its headroom.
func TestTxSharedBufferKeepsItsHeadroom(t *testing.T) {
	r := newRig(t, devmodel.Options{}, virtionet.Options{})
	f := frame([]byte{2, 0, 0, 0, 0, 1}, 5, 100)
	m := r.drv.Pool().Get()
	b, _ := m.Append(len(f))
	copy(b, f)
	head := m.Raw()[:m.Headroom()]
	for i := range head {
		head[i] = 0xaa
	}
	m.Ref() // a second owner, say a capture
	if n, err := r.drv.TxBurst([]*mbuf.Mbuf{m}); n != 1 || err != nil {
		t.Fatalf("TxBurst = %d, %v", n, err)
	}
	if err := r.drv.Reclaim(); err != nil {
		t.Fatal(err)
	}
	sameFrames(t, "tx", [][]byte{f}, r.sent)
	if bytes.Count(head, []byte{0xaa}) != len(head) {
		t.Error("the driver wrote the virtio header into a shared buffer's headroom")
	}
	if !bytes.Equal(m.Bytes(), f) || m.Shared() {
		t.Errorf("after the driver freed its reference: shared %v, data intact %v", m.Shared(), bytes.Equal(m.Bytes(), f))
	}
	m.Free()
}

// Packets waiting to be sent cannot take the rx ring's buffers.
func TestTxCannotStarveRx(t *testing.T) {
	r := newRig(t, devmodel.Options{}, virtionet.Options{RxQueueSize: 16, TxBuffers: 8})
	var held []*mbuf.Mbuf
	for m := r.drv.Pool().Get(); m != nil; m = r.drv.Pool().Get() {
		held = append(held, m) // the stack's queues hold every tx buffer
	}
	var in [][]byte
	for i := 0; i < 64; i++ {
		f := frame(mac, i, 80)
		in = append(in, f)
		r.dev.Deliver(f)
		if i%16 == 15 {
			r.rxAll(0)
		}
	}
	r.rxAll(0)
	if s := r.drv.Stats(); s.RxPackets != 64 || s.RxRingDry != 0 {
		t.Errorf("with the tx pool exhausted: rx %d of 64, ring ran dry %d times", s.RxPackets, s.RxRingDry)
	}
	mbuf.FreeBatch(held)
}

func TestTxFrameSizeLimits(t *testing.T) {
	r := newRig(t, devmodel.Options{}, virtionet.Options{})
	send := func(f []byte) {
		m := r.drv.Pool().Get()
		b, _ := m.Append(len(f))
		copy(b, f)
		if n, err := r.drv.TxBurst([]*mbuf.Mbuf{m}); n != 1 || err != nil {
			t.Fatalf("TxBurst = %d, %v", n, err)
		}
	}
	untagged := frame([]byte{2, 0, 0, 0, 0, 1}, 1, 1518)
	tagged := patterned(frametest.NewEthernet([]byte{2, 0, 0, 0, 0, 1}, peerMAC, 0x88b5, nil).Tagged(5, 0), 1, 1518)
	send(untagged)
	send(tagged)
	send(untagged[:1514])
	r.drv.Reclaim()
	sameFrames(t, "tx", [][]byte{tagged, untagged[:1514]}, r.sent)
	if s := r.drv.Stats(); s.TxDropSize != 1 {
		t.Errorf("an untagged frame of MTU+18: TxDropSize %d, want 1", s.TxDropSize)
	}
}

func TestRandomMACWithoutFMAC(t *testing.T) {
	offered := devmodel.QEMUFeatures &^ (1 << virtionet.FMAC)
	r := newRig(t, devmodel.Options{Features: offered}, virtionet.Options{})
	m := r.drv.MAC()
	if len(m) != 6 || m[0]&1 != 0 || m[0]&2 == 0 {
		t.Fatalf("MAC %x: want a unicast, locally administered address", m)
	}
	if err := r.drv.SetPromisc(false); err != nil {
		t.Fatal(err)
	}
	if got := r.dev.FilterMAC(); !bytes.Equal(got[:], m) {
		t.Fatalf("the device filters for %x, the driver uses %x (CTRL_MAC_ADDR_SET not sent)", got, m)
	}
	f := frame(m, 1, 80)
	if err := r.dev.Deliver(f); err != nil {
		t.Fatalf("a frame for the random MAC with promiscuous mode off: %v", err)
	}
	sameFrames(t, "rx", [][]byte{f}, r.rxAll(1))
	r.dev.SetNeedsReset()
	if err := r.drv.Recover(); err != nil {
		t.Fatal(err)
	}
	r.drv.Health() // reaps the control commands the recovery re-sent
	if !bytes.Equal(r.drv.MAC(), m) {
		t.Errorf("MAC changed across a reset: %x -> %x", m, r.drv.MAC())
	}
	if got := r.dev.FilterMAC(); !bytes.Equal(got[:], m) {
		t.Errorf("after a reset the device filters for %x, not %x", got, m)
	}
	if p, _ := r.dev.RxMode(); p {
		t.Error("promiscuous mode is back on after a reset: the rx mode was not restored")
	}
}

func TestRecoveredDeviceChangedIdentity(t *testing.T) {
	r := newRig(t, devmodel.Options{Features: devmodel.QEMUFeatures | 1<<virtionet.FMTU, MTU: 1500}, virtionet.Options{})
	var cfg [virtionet.ConfigSize]byte
	newMAC := []byte{0x52, 0x54, 0, 0xaa, 0xbb, 0xcc}
	copy(cfg[:], newMAC)
	cfg[6], cfg[8] = 1, 1
	cfg[10], cfg[11] = 0x28, 0x23 // MTU 9000: merged rx buffers take it
	r.dev.SetConfig(cfg)
	r.dev.SetNeedsReset()
	if err := r.drv.Recover(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r.drv.MAC(), newMAC) || r.drv.MTU() != 9000 || r.drv.Stats().IdentityChanges != 2 {
		t.Fatalf("after the reset: MAC %x MTU %d changes %d; want the device's new %x and 9000", r.drv.MAC(), r.drv.MTU(), r.drv.Stats().IdentityChanges, newMAC)
	}
	// A device that comes back with an MTU below 68 loses F_MTU, not the
	// recovery: the guest goes on at 1500.
	cfg[10], cfg[11] = 40, 0
	r.dev.SetConfig(cfg)
	r.dev.SetNeedsReset()
	if err := r.drv.Recover(); err != nil {
		t.Fatalf("Recover with the MTU gone bad: %v", err)
	}
	if r.drv.Features().Has(virtionet.FMTU) || r.drv.MTU() != virtionet.DefaultMTU {
		t.Fatalf("after the MTU went bad: features %v, MTU %d", virtionet.FeatureList(r.drv.Features()), r.drv.MTU())
	}
	// Without MRG_RXBUF the rx buffers were sized for 1500: a device
	// that grows its MTU beyond them cannot be driven.
	r2 := newRig(t, devmodel.Options{Features: devmodel.QEMUFeatures | 1<<virtionet.FMTU, MTU: 1500}, virtionet.Options{Refuse: 1 << virtionet.FMrgRxbuf})
	copy(cfg[:], mac)
	cfg[10], cfg[11] = 0x28, 0x23 // 9000
	r2.dev.SetConfig(cfg)
	r2.dev.SetNeedsReset()
	if err := r2.drv.Recover(); !errors.Is(err, virtio.ErrDeviceBroken) || !strings.Contains(err.Error(), "MTU went from 1500 to 9000") {
		t.Fatalf("Recover with an MTU beyond the buffers = %v", err)
	}
}

// Merged rx (spec 5.1.6.4): a device that does not fill every buffer but
// the last, or writes a header the driver refuses inside a merged packet,
// is at fault; the driver does not guess where the next packet starts.
func TestMergedRxDeviceFaults(t *testing.T) {
	cases := []struct {
		name   string
		size   int
		mangle func(h virtionet.Header, lens []uint32)
	}{
		{"first buffer short", 5000, func(h virtionet.Header, lens []uint32) { lens[0] -= 100 }},
		{"middle buffer short", 5000, func(h virtionet.Header, lens []uint32) { lens[1] -= 1 }},
		{"gso in a merged packet", 5000, func(h virtionet.Header, lens []uint32) { h[1] = 1 }},
		{"num_buffers zero", 100, func(h virtionet.Header, lens []uint32) { h.SetNumBuffers(0) }},
		{"num_buffers beyond the ring", 100, func(h virtionet.Header, lens []uint32) { h.SetNumBuffers(300) }},
		{"header cut short", 100, func(h virtionet.Header, lens []uint32) { lens[0] = 6 }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, devmodel.Options{Features: devmodel.QEMUFeatures | 1<<virtionet.FMTU, MTU: 9000}, virtionet.Options{})
			r.dev.MangleNextRx(c.mangle)
			r.dev.Deliver(frame(mac, 1, c.size))
			_, err := r.drv.RxBurst(r.pkts)
			if !errors.Is(err, virtio.ErrDeviceBroken) {
				t.Fatalf("RxBurst = %v, want a device fault", err)
			}
			if err := r.drv.Recover(); err != nil {
				t.Fatal(err)
			}
			f := frame(mac, 2, 3000)
			r.dev.Deliver(f)
			sameFrames(t, "after recovery", [][]byte{f}, r.rxAll(1))
		})
	}
	// Without MRG_RXBUF a refused header costs one frame, not the device.
	r := newRig(t, devmodel.Options{}, virtionet.Options{Refuse: 1 << virtionet.FMrgRxbuf})
	r.dev.MangleNextRx(func(h virtionet.Header, _ []uint32) { h[1] = 1 })
	r.dev.Deliver(frame(mac, 1, 100))
	f := frame(mac, 2, 100)
	r.dev.Deliver(f)
	sameFrames(t, "after a refused header", [][]byte{f}, r.rxAll(1))
	if s := r.drv.Stats(); s.RxDropHeader != 1 || s.DeviceErrors != 0 {
		t.Errorf("stats %+v", s)
	}
}

// A control command waiting for a slow device does not hold the lock the
// poll loop's recovery needs: Recover goes ahead, and the waiter learns
// that its command was lost to the reset.
func TestRecoverDoesNotWaitForAControlCommand(t *testing.T) {
	r := newRig(t, devmodel.Options{}, virtionet.Options{CtrlTimeout: time.Minute})
	r.dev.HoldCtrl(true)
	kicks := r.dev.Stats().Kicks[devmodel.CtrlQueue]
	done := make(chan error)
	go func() { done <- r.drv.SetPromisc(false) }()
	for r.dev.Stats().Kicks[devmodel.CtrlQueue] == kicks {
		time.Sleep(time.Millisecond)
	}
	if err := r.drv.Recover(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, virtio.ErrDeviceBroken) || !strings.Contains(err.Error(), "reset before it answered") {
		t.Fatalf("the waiting command returned %v, want the reset reported", err)
	}
}

func TestRingChoice(t *testing.T) {
	offered := devmodel.QEMUFeatures | 1<<virtio.FRingPacked
	for _, c := range []struct {
		choice virtionet.RingChoice
		offer  virtio.Features
		want   virtqueue.Layout
	}{
		{virtionet.RingAuto, offered, virtqueue.Packed},
		{virtionet.RingAuto, devmodel.QEMUFeatures, virtqueue.Split},
		{virtionet.RingSplit, offered, virtqueue.Split},
		{virtionet.RingPacked, offered, virtqueue.Packed},
	} {
		heap := dma.NewHeap(8 << 20)
		drv, err := virtionet.Open(devmodel.New(heap, devmodel.Options{Features: c.offer}), heap, virtionet.Options{Ring: c.choice})
		if err != nil {
			t.Fatal(err)
		}
		if drv.Layout() != c.want || drv.Features().Has(virtio.FRingPacked) != (c.want == virtqueue.Packed) {
			t.Errorf("choice %d, offered packed %v: %v rings, features %v", c.choice, c.offer.Has(virtio.FRingPacked), drv.Layout(), virtionet.FeatureList(drv.Features()))
		}
	}
	heap := dma.NewHeap(8 << 20)
	_, err := virtionet.Open(devmodel.New(heap, devmodel.Options{}), heap, virtionet.Options{Ring: virtionet.RingPacked})
	if !errors.Is(err, virtio.ErrNotSupported) || !strings.Contains(err.Error(), "packed=on") {
		t.Fatalf("packed asked of a device without it: %v", err)
	}
	for s, want := range map[string]virtionet.RingChoice{"": virtionet.RingAuto, "auto": virtionet.RingAuto, "split": virtionet.RingSplit, "packed": virtionet.RingPacked} {
		if got, err := virtionet.ParseRingChoice(s); got != want || err != nil {
			t.Errorf("ParseRingChoice(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := virtionet.ParseRingChoice("spilt"); err == nil {
		t.Error("ParseRingChoice accepted a typo")
	}
}

// The dependency table against spec 5.1.3.1's own sentences (and the two
// rules the driver adds), so a typo in either shows.
func TestRequirementsMatchTheSpec(t *testing.T) {
	spec := []string{
		"GUEST_TSO4 requires GUEST_CSUM", "GUEST_TSO6 requires GUEST_CSUM",
		"GUEST_ECN requires GUEST_TSO4 or GUEST_TSO6", "GUEST_UFO requires GUEST_CSUM",
		"GUEST_USO4 requires GUEST_CSUM", "GUEST_USO6 requires GUEST_CSUM",
		"HOST_TSO4 requires CSUM", "HOST_TSO6 requires CSUM",
		"HOST_ECN requires HOST_TSO4 or HOST_TSO6", "HOST_UFO requires CSUM", "HOST_USO requires CSUM",
		"CTRL_RX requires CTRL_VQ", "CTRL_VLAN requires CTRL_VQ", "GUEST_ANNOUNCE requires CTRL_VQ",
		"MQ requires CTRL_VQ", "CTRL_MAC_ADDR requires CTRL_VQ", "NOTF_COAL requires CTRL_VQ",
		"VQ_NOTF_COAL requires CTRL_VQ", "RSC_EXT requires HOST_TSO4 or HOST_TSO6", "RSS requires CTRL_VQ",
		// Not in the spec's list: Linux's rule and this driver's.
		"HASH_REPORT requires CTRL_VQ", "CTRL_RX_EXTRA requires CTRL_RX", "CTRL_GUEST_OFFLOADS requires CTRL_VQ",
	}
	var got []string
	for _, r := range virtionet.Requirements {
		got = append(got, virtionet.FeatureList(1 << r.Feature)[0]+" requires "+strings.Join(virtionet.FeatureList(r.AnyOf), " or "))
	}
	slices.Sort(spec)
	slices.Sort(got)
	if diff := cmp.Diff(spec, got); diff != "" {
		t.Errorf("Requirements differ from the spec (-spec +table):\n%s", diff)
	}
}
