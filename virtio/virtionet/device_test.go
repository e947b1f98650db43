package virtionet_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/frametest"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/devmodel"
	"github.com/nke-harness/nke/virtio/virtionet"
	"github.com/nke-harness/nke/virtio/virtqueue"
)

type rig struct {
	t    testing.TB
	heap *dma.Heap
	dev  *devmodel.Net
	drv  *virtionet.Device
	sent [][]byte // frames the device transmitted
	pkts []*mbuf.Mbuf
}

// rigLayout is the ring layout every rig's device offers: TestMain runs
// the package's tests once on split rings and once on packed ones, so the
// driver is held to the same tests on both.
var rigLayout = virtqueue.Split

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	// Benchmarks name their layout themselves (forLayouts); fuzz targets
	// draw it from their input (the offered RING_PACKED bit).
	if code == 0 && flagUnset("test.bench") && flagUnset("test.fuzz") {
		fmt.Println("virtionet: the same tests on packed rings (VIRTIO_F_RING_PACKED)")
		rigLayout = virtqueue.Packed
		code = m.Run()
	}
	os.Exit(code)
}

func flagUnset(name string) bool {
	f := flag.Lookup(name)
	return f == nil || f.Value.String() == ""
}

// newRig is the driver over the device model and nothing above it. The
// driver's tests keep this low-level setup rather than kernel/kerneltest's
// rig, which puts an interface (and its poll loop) on the driver: these
// tests call RxBurst, TxBurst, Reclaim and Recover themselves and look at
// exactly what each call did to the rings.
func newRig(t testing.TB, mo devmodel.Options, vo virtionet.Options) *rig {
	t.Helper()
	r := &rig{t: t, heap: dma.NewHeap(32 << 20), pkts: make([]*mbuf.Mbuf, 64)}
	if mo.Tx == nil {
		mo.Tx = func(f []byte) { r.sent = append(r.sent, append([]byte(nil), f...)) }
	}
	if rigLayout == virtqueue.Packed {
		if mo.Features == 0 {
			mo.Features = devmodel.QEMUFeatures
		}
		mo.Features |= 1 << virtio.FRingPacked
	}
	r.dev = devmodel.New(r.heap, mo)
	drv, err := virtionet.Open(r.dev, r.heap, vo)
	if err != nil {
		t.Fatalf("Open (%v rings): %v", rigLayout, err)
	}
	r.drv = drv
	if want := rigLayout; vo.Refuse.Has(virtio.FRingPacked) {
		want = virtqueue.Split
	} else if drv.Layout() != want {
		t.Fatalf("the driver is on %v rings, want %v", drv.Layout(), want)
	}
	t.Cleanup(func() {
		if err := r.dev.Err(); err != nil {
			t.Errorf("device saw a driver error (%v rings): %v", rigLayout, err)
		}
		if t.Failed() {
			t.Logf("(on %v rings)", drv.Layout())
		}
	})
	return r
}

// frame builds a recognisable Ethernet frame of exactly n bytes (runts
// included: frametest's padding to 60 is cut) addressed to dst, with a
// local experimental EtherType and a payload that depends on seq.
func frame(dst []byte, seq, n int) []byte {
	return patterned(frametest.NewEthernet(dst, peerMAC, 0x88b5, nil), seq, n)
}

// patterned fills f's payload so that the frame is n bytes long.
func patterned(f frametest.Frame, seq, n int) []byte {
	hdr := len(f.Bytes()) - max(46, len(f.Payload)) // header bytes, tag included
	f.Payload = make([]byte, max(0, n-hdr))
	for i := range f.Payload {
		f.Payload[i] = byte(seq + hdr + i)
	}
	return f.Bytes()[:n]
}

var peerMAC = []byte{0x02, 0, 0, 0, 0, 0x99}

var mac = []byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

// rxAll polls until want frames arrived (want <= 0: until idle) or polling
// makes no progress, returning copies.
func (r *rig) rxAll(want int) [][]byte {
	r.t.Helper()
	var got [][]byte
	for idle := 0; (want <= 0 || len(got) < want) && idle < 3; {
		n, err := r.drv.RxBurst(r.pkts)
		if err != nil {
			r.t.Fatalf("RxBurst: %v", err)
		}
		if n == 0 {
			idle++
		}
		for _, m := range r.pkts[:n] {
			b := make([]byte, m.PktLen())
			m.CopyOut(b)
			got = append(got, b)
			m.Free()
		}
	}
	return got
}

// sameFrames compares frame lists without drowning the log in hex.
func sameFrames(t testing.TB, what string, want, got [][]byte) {
	t.Helper()
	if len(want) != len(got) {
		t.Fatalf("%s: %d frames, want %d", what, len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(want[i], got[i]) {
			t.Fatalf("%s: frame %d differs: %s", what, i, cmp.Diff(want[i], got[i]))
		}
	}
}

func (r *rig) txFrames(frames ...[]byte) {
	r.t.Helper()
	for _, f := range frames {
		m := r.drv.Pool().Get()
		b, ok := m.Append(len(f))
		if !ok {
			r.t.Fatalf("frame of %d does not fit a buffer", len(f))
		}
		copy(b, f)
		if n, err := r.drv.TxBurst([]*mbuf.Mbuf{m}); n != 1 || err != nil {
			r.t.Fatalf("TxBurst = %d, %v", n, err)
		}
	}
}

func TestOpenNegotiates(t *testing.T) {
	r := newRig(t, devmodel.Options{}, virtionet.Options{})
	want := r.dev.DeviceFeatures() & virtionet.Supported
	if got := r.dev.DriverFeatures(); got != want {
		t.Errorf("driver accepted %v, want %v", virtionet.FeatureList(got), virtionet.FeatureList(want))
	}
	for _, f := range []string{"VERSION_1", "MAC", "STATUS", "MRG_RXBUF", "EVENT_IDX", "INDIRECT_DESC", "CTRL_VQ", "CTRL_RX"} {
		if !strings.Contains(strings.Join(virtionet.FeatureList(r.drv.Features()), ","), f) {
			t.Errorf("feature %s not negotiated", f)
		}
	}
	if !bytes.Equal(r.drv.MAC(), mac) {
		t.Errorf("MAC = %v", r.drv.MAC())
	}
	if rx, tx := r.drv.QueueSizes(); rx != 256 || tx != 256 {
		t.Errorf("queue sizes %d/%d, want 256/256", rx, tx)
	}
	if r.dev.Status()&virtio.StatusDriverOK == 0 {
		t.Error("no DRIVER_OK")
	}
	if err := r.drv.Health(); err != nil {
		t.Errorf("Health: %v", err)
	}
	if up, err := r.drv.LinkUp(); !up || err != nil {
		t.Errorf("LinkUp = %v, %v", up, err)
	}
}

// The device-option matrix the VM tests also run: every combination of the
// three ring features and two queue sizes carries the same traffic.
func TestMatrix(t *testing.T) {
	for _, size := range []uint16{256, 1024} {
		for bits := 0; bits < 8; bits++ {
			var refuse virtio.Features
			name := fmt.Sprintf("q%d", size)
			for i, f := range []virtio.Feature{virtionet.FMrgRxbuf, virtio.FEventIdx, virtio.FIndirectDesc} {
				if bits&(1<<i) == 0 {
					refuse = refuse.With(f)
					name += "-no" + virtionet.FeatureNames[f] + virtio.Features(1<<f).String()
				}
			}
			t.Run(name, func(t *testing.T) {
				r := newRig(t, devmodel.Options{QueueMax: 1024}, virtionet.Options{RxQueueSize: size, TxQueueSize: size, Refuse: refuse})
				if r.drv.Features()&refuse != 0 {
					t.Fatalf("refused features negotiated: %v", r.drv.Features()&refuse)
				}
				var in, got [][]byte
				for i := 0; i < 3*int(size); i++ { // more than the ring holds
					f := frame(mac, i, 60+i%1455)
					in = append(in, f)
					if err := r.dev.Deliver(f); err != nil && !errors.Is(err, devmodel.ErrNoBuffers) {
						t.Fatal(err)
					}
					if i%int(size) == int(size)-1 {
						// Drain now and then, as a poll loop would.
						got = append(got, r.rxAll(0)...)
					}
				}
				got = append(got, r.rxAll(len(in)-len(got))...)
				sameFrames(t, "rx", in, got)
				var out [][]byte
				for i := 0; i < 2*int(size); i++ {
					out = append(out, frame([]byte{2, 0, 0, 0, 0, 1}, i, 14+i%1501))
				}
				r.txFrames(out...)
				if err := r.drv.Reclaim(); err != nil {
					t.Fatal(err)
				}
				sameFrames(t, "tx", out, r.sent)
			})
		}
	}
}

func TestRxStallRecovers(t *testing.T) {
	r := newRig(t, devmodel.Options{}, virtionet.Options{RxQueueSize: 16})
	var in [][]byte
	for i := 0; i < 100; i++ {
		f := frame(mac, i, 100)
		in = append(in, f)
		err := r.dev.Deliver(f)
		if i < 16 && err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if i >= 16 && !errors.Is(err, devmodel.ErrNoBuffers) {
			t.Fatalf("frame %d with a full ring: %v, want ErrNoBuffers", i, err)
		}
	}
	// Each burst refills and kicks; the device then flushes its backlog.
	sameFrames(t, "rx across the stall", in, r.rxAll(100))
	if r.dev.Backlog() != 0 {
		t.Fatalf("backlog %d left", r.dev.Backlog())
	}
	if k := r.drv.Stats().RxKicks; k == 0 {
		t.Fatal("driver never kicked rx")
	}
}

func TestMergedRxBuffers(t *testing.T) {
	jumbo := devmodel.Options{Features: devmodel.QEMUFeatures | 1<<virtionet.FMTU, MTU: 9000}
	r := newRig(t, jumbo, virtionet.Options{})
	big := frame(mac, 7, 5000) // spans three 1932-byte rx buffers
	if err := r.dev.Deliver(big); err != nil {
		t.Fatal(err)
	}
	// One packet slot per burst: the partial packet must survive bursts.
	var got []byte
	for i := 0; i < 5 && got == nil; i++ {
		n, err := r.drv.RxBurst(r.pkts[:1])
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			if segs := r.pkts[0].Segs(); segs != 3 {
				t.Errorf("packet spans %d buffers, want 3", segs)
			}
			got = make([]byte, r.pkts[0].PktLen())
			r.pkts[0].CopyOut(got)
			r.pkts[0].Free()
		}
	}
	if !bytes.Equal(got, big) {
		t.Fatalf("merged packet differs (len %d)", len(got))
	}
	// A merged packet beyond the MTU's frame is dropped and counted, and
	// the stream goes on: the next packet arrives whole.
	r1 := newRig(t, devmodel.Options{}, virtionet.Options{})
	r1.dev.Deliver(big)
	r1.dev.Deliver(frame(mac, 1, 1514))
	if got := r1.rxAll(1); len(got) != 1 || len(got[0]) != 1514 {
		t.Fatalf("after an oversize merged packet: got %d frames", len(got))
	}
	if s := r1.drv.Stats(); s.RxDropOversize != 1 || s.DeviceErrors != 0 {
		t.Errorf("oversize merged packet: stats %+v", s)
	}
	// Without MRG_RXBUF the device drops what does not fit one buffer.
	r2 := newRig(t, devmodel.Options{}, virtionet.Options{Refuse: 1 << virtionet.FMrgRxbuf})
	r2.dev.Deliver(big)
	r2.dev.Deliver(frame(mac, 1, 1514))
	if got := r2.rxAll(1); len(got) != 1 || len(got[0]) != 1514 {
		t.Fatalf("without MRG_RXBUF: got %d frames", len(got))
	}
}

func TestRxClassifiesAndDrops(t *testing.T) {
	r := newRig(t, devmodel.Options{}, virtionet.Options{})
	bcast := frame([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 1, 60)
	mcast := frame([]byte{0x01, 0x00, 0x5e, 0, 0, 1}, 2, 60)
	r.dev.Deliver(bcast)
	r.dev.Deliver(mcast)
	r.dev.Deliver(make([]byte, 10)) // runt
	n, err := r.drv.RxBurst(r.pkts)
	if err != nil || n != 2 {
		t.Fatalf("RxBurst = %d, %v", n, err)
	}
	if r.pkts[0].Flags != mbuf.FlagBroadcast || r.pkts[1].Flags != mbuf.FlagMulticast {
		t.Errorf("flags %v %v", r.pkts[0].Flags, r.pkts[1].Flags)
	}
	r.pkts[0].Free()
	r.pkts[1].Free()
	if s := r.drv.Stats(); s.RxDropRunt != 1 || s.RxPackets != 2 || s.RxBytes != 120 {
		t.Errorf("stats %+v", s)
	}
}

func TestTxChainsAndDrops(t *testing.T) {
	for _, refuse := range []virtio.Features{0, 1 << virtio.FIndirectDesc} {
		r := newRig(t, devmodel.Options{}, virtionet.Options{Refuse: refuse})
		pool := r.drv.Pool()
		want := frame([]byte{2, 0, 0, 0, 0, 1}, 3, 600)
		// Three segments, the first without headroom.
		var head, tail *mbuf.Mbuf
		for i := 0; i < 3; i++ {
			m := pool.Get()
			m.SetData(0, 0)
			b, _ := m.Append(200)
			copy(b, want[200*i:])
			if head == nil {
				head = m
			} else {
				tail.SetNext(m)
			}
			tail = m
		}
		// A chain longer than MaxTxSegs is linearised.
		var long, ltail *mbuf.Mbuf
		for i := 0; i < virtionet.MaxTxSegs+4; i++ {
			m := pool.Get()
			b, _ := m.Append(30)
			copy(b, want[30*i:])
			if long == nil {
				long = m
			} else {
				ltail.SetNext(m)
			}
			ltail = m
		}
		runt := pool.Get()
		runt.Append(13)
		huge := pool.Get()
		huge.Append(1600)
		avail := pool.Avail()
		n, err := r.drv.TxBurst([]*mbuf.Mbuf{head, long, runt, huge})
		if n != 4 || err != nil {
			t.Fatalf("TxBurst = %d, %v", n, err)
		}
		if err := r.drv.Reclaim(); err != nil {
			t.Fatal(err)
		}
		if len(r.sent) != 2 || !bytes.Equal(r.sent[0], want) || !bytes.Equal(r.sent[1], want) {
			t.Fatalf("sent %d frames, first ok %v", len(r.sent), len(r.sent) > 0 && bytes.Equal(r.sent[0], want))
		}
		if s := r.drv.Stats(); s.TxDropSize != 2 || s.TxPackets != 2 {
			t.Errorf("stats %+v", s)
		}
		// Everything handed over went back to the pool.
		if got := pool.Avail(); got != avail+3+virtionet.MaxTxSegs+4+2 {
			t.Errorf("pool has %d free, want %d", got, avail+3+virtionet.MaxTxSegs+4+2)
		}
	}
}

func TestTxRingFull(t *testing.T) {
	r := newRig(t, devmodel.Options{}, virtionet.Options{TxQueueSize: 8})
	// A device that never completes: swallow kicks by breaking nothing but
	// not reclaiming. The model completes synchronously, so fill by using
	// more packets than slots in one burst only.
	pkts := make([]*mbuf.Mbuf, 20)
	for i := range pkts {
		pkts[i] = r.drv.Pool().Get()
		b, _ := pkts[i].Append(60)
		copy(b, frame(mac, i, 60))
	}
	n, err := r.drv.TxBurst(pkts)
	if err != nil || n != 8 {
		t.Fatalf("TxBurst into an 8-slot ring = %d, %v; want 8", n, err)
	}
	if r.drv.Stats().TxRingFull != 1 {
		t.Error("ring-full not counted")
	}
	n2, err := r.drv.TxBurst(pkts[n:])
	if err != nil || n2 != 8 {
		t.Fatalf("second burst = %d, %v", n2, err)
	}
	for _, m := range pkts[n+n2:] {
		m.Free()
	}
}

func TestHostileDeviceRecovery(t *testing.T) {
	cases := []struct {
		name   string
		inject func(*devmodel.Net)
		rx     bool
		want   error
	}{
		{"rx bad id", func(n *devmodel.Net) { n.InjectUsedID(devmodel.RxQueue, 999) }, true, virtqueue.ErrUsedID},
		{"rx oversize", func(n *devmodel.Net) { n.InjectOversize(devmodel.RxQueue, 5000) }, true, virtqueue.ErrUsedLen},
		// (Split only: a packed device that marks posted rx buffers used
		// is indistinguishable from one that filled them with garbage;
		// what the driver can catch there is an id not in flight, "rx
		// bad id".)
		{"rx index jump", func(n *devmodel.Net) { n.InjectUsedIdxJump(devmodel.RxQueue, 3000) }, true, virtqueue.ErrUsedIndex},
		{"tx bad id", func(n *devmodel.Net) { n.InjectUsedID(devmodel.TxQueue, 7) }, false, virtqueue.ErrUsedID},
		{"tx oversize", func(n *devmodel.Net) { n.InjectOversize(devmodel.TxQueue, 1) }, false, virtqueue.ErrUsedLen},
		{"tx index jump", func(n *devmodel.Net) { n.InjectUsedIdxJump(devmodel.TxQueue, 77) }, false, virtqueue.ErrUsedIndex},
	}
	for _, c := range cases {
		if c.name == "rx index jump" && rigLayout == virtqueue.Packed {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, devmodel.Options{}, virtionet.Options{})
			pool := r.drv.RxPool()
			before := pool.Avail() + 256 // rx ring buffers come back on reset
			c.inject(r.dev)
			var err error
			if c.rx {
				r.dev.Deliver(frame(mac, 1, 64))
				_, err = r.drv.RxBurst(r.pkts)
			} else {
				r.txFrames(frame(mac, 1, 64))
				err = r.drv.Reclaim()
			}
			if !errors.Is(err, c.want) || !errors.Is(err, virtio.ErrDeviceBroken) {
				t.Fatalf("got %v, want %v and ErrDeviceBroken", err, c.want)
			}
			if _, err := r.drv.RxBurst(r.pkts); err == nil {
				t.Fatal("broken device still receives")
			}
			if err := r.drv.Recover(); err != nil {
				t.Fatalf("Recover: %v", err)
			}
			if s := r.drv.Stats(); s.Resets != 1 || s.DeviceErrors != 1 {
				t.Errorf("stats %+v", s)
			}
			// No buffer leaked: free + rx ring == everything.
			if got := pool.Avail() + 256; got != before {
				t.Errorf("pool: %d free after recovery, want %d", got-256, before-256)
			}
			r.sent = nil
			r.dev.Deliver(frame(mac, 2, 64))
			if got := r.rxAll(1); len(got) != 1 {
				t.Fatal("no traffic after recovery")
			}
			r.txFrames(frame(mac, 3, 64))
			r.drv.Reclaim()
			if len(r.sent) != 1 {
				t.Fatal("no tx after recovery")
			}
		})
	}
}

func TestNeedsResetAndLink(t *testing.T) {
	r := newRig(t, devmodel.Options{}, virtionet.Options{})
	r.dev.SetLink(false)
	if up, err := r.drv.LinkUp(); up || err != nil {
		t.Fatalf("LinkUp after flap down = %v, %v", up, err)
	}
	if err := r.dev.Deliver(frame(mac, 1, 64)); !errors.Is(err, devmodel.ErrLinkDown) {
		t.Fatalf("deliver with link down: %v", err)
	}
	r.dev.SetLink(true)
	if up, _ := r.drv.LinkUp(); !up {
		t.Fatal("link did not come back")
	}
	r.dev.SetNeedsReset()
	if err := r.drv.Health(); !errors.Is(err, virtio.ErrNeedsReset) {
		t.Fatalf("Health = %v, want ErrNeedsReset", err)
	}
	if err := r.drv.Recover(); err != nil {
		t.Fatal(err)
	}
	if err := r.drv.Health(); err != nil {
		t.Fatalf("Health after Recover: %v", err)
	}
	r.dev.Deliver(frame(mac, 2, 64))
	if len(r.rxAll(1)) != 1 {
		t.Fatal("no traffic after NEEDS_RESET recovery")
	}
}

func TestConfigReads(t *testing.T) {
	r := newRig(t, devmodel.Options{}, virtionet.Options{})
	r.dev.TearConfigReads(3)
	if up, err := r.drv.LinkUp(); !up || err != nil {
		t.Fatalf("LinkUp through 3 torn reads = %v, %v", up, err)
	}
	r.dev.TearConfigReads(1000)
	if _, err := r.drv.LinkUp(); !errors.Is(err, virtionet.ErrConfig) {
		t.Fatalf("LinkUp with a config that never settles = %v", err)
	}
	r.dev.TearConfigReads(0)
	var cfg [virtionet.ConfigSize]byte
	copy(cfg[:], mac)
	cfg[6] = 0xf0 // undefined status bits, link down: the bits are ignored
	r.dev.SetConfig(cfg)
	if up, err := r.drv.LinkUp(); up || err != nil {
		t.Fatalf("LinkUp with undefined status bits and the link down = %v, %v", up, err)
	}
	cfg[6] = 0xf1
	r.dev.SetConfig(cfg)
	if up, err := r.drv.LinkUp(); !up || err != nil {
		t.Fatalf("LinkUp with undefined status bits and the link up = %v, %v", up, err)
	}
}

func TestOpenRefuses(t *testing.T) {
	heap := dma.NewHeap(8 << 20)
	cases := []struct {
		name string
		dev  func() *devmodel.Net
		want string
	}{
		{"legacy", func() *devmodel.Net {
			return devmodel.New(heap, devmodel.Options{Features: 1<<virtionet.FMAC | 1<<virtionet.FStatus})
		}, "VERSION_1"},
		{"features refused", func() *devmodel.Net {
			n := devmodel.New(heap, devmodel.Options{})
			n.RefuseFeaturesOK(true)
			return n
		}, "FEATURES_OK"},
		{"multicast MAC", func() *devmodel.Net {
			return devmodel.New(heap, devmodel.Options{MAC: [6]byte{1, 2, 3, 4, 5, 6}})
		}, "not a unicast"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := c.dev()
			_, err := virtionet.Open(n, heap, virtionet.Options{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Open = %v, want an error mentioning %q", err, c.want)
			}
			var oe *virtionet.OpError
			if !errors.As(err, &oe) {
				t.Fatalf("error %T is not an *OpError", err)
			}
			if n.Status()&virtio.StatusFailed == 0 {
				t.Error("driver did not set FAILED")
			}
		})
	}
	n := devmodel.New(heap, devmodel.Options{})
	if _, err := virtionet.Open(n, heap, virtionet.Options{RxQueueSize: 300}); err == nil {
		t.Error("queue size 300 accepted")
	}
	if _, err := virtionet.Open(n, heap, virtionet.Options{RxQueueSize: 512}); err == nil {
		t.Error("queue size above the device's 256 accepted")
	}
}

func TestControlQueue(t *testing.T) {
	r := newRig(t, devmodel.Options{}, virtionet.Options{})
	if err := r.drv.SetPromisc(false); err != nil {
		t.Fatal(err)
	}
	if err := r.drv.SetAllMulti(true); err != nil {
		t.Fatal(err)
	}
	if p, a := r.dev.RxMode(); p || !a {
		t.Fatalf("rx mode promisc=%v allmulti=%v", p, a)
	}
	other := frame([]byte{0x52, 0x54, 0, 0, 0, 9}, 1, 60)
	if err := r.dev.Deliver(other); !errors.Is(err, devmodel.ErrFiltered) {
		t.Fatalf("frame for another MAC with promisc off: %v", err)
	}
	r2 := newRig(t, devmodel.Options{}, virtionet.Options{Refuse: 1 << virtionet.FCtrlRx})
	if err := r2.drv.SetPromisc(true); !errors.Is(err, virtio.ErrNotSupported) {
		t.Fatalf("SetPromisc without CTRL_RX = %v", err)
	}
	r3 := newRig(t, devmodel.Options{}, virtionet.Options{Refuse: 1 << virtionet.FCtrlVQ})
	if err := r3.drv.SetPromisc(true); !errors.Is(err, virtio.ErrNotSupported) {
		t.Fatalf("SetPromisc without CTRL_VQ = %v", err)
	}
}

func TestRxRingDryWhenThePoolIsHeld(t *testing.T) {
	// Exactly a ring's worth of buffers: once the stack holds them all the
	// ring cannot be refilled; the device queues, and nothing is lost once
	// the buffers come back.
	r := newRig(t, devmodel.Options{}, virtionet.Options{RxQueueSize: 16, RxBuffers: 16})
	for i := 0; i < 20; i++ {
		r.dev.Deliver(frame(mac, i, 60))
	}
	held := make([]*mbuf.Mbuf, 32)
	n, err := r.drv.RxBurst(held)
	if err != nil || n != 16 {
		t.Fatalf("RxBurst = %d, %v", n, err)
	}
	if s := r.drv.Stats(); s.RxRingDry != 1 {
		t.Errorf("RxRingDry = %d, want 1", s.RxRingDry)
	}
	for _, m := range held[:n] {
		m.Free()
	}
	if got := r.rxAll(4); len(got) != 4 {
		t.Fatalf("after returning the buffers: %d of the 4 queued frames", len(got))
	}
}
