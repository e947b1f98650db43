package ifnet_test

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nke-harness/nke/kernel/ifnet"
	"github.com/nke-harness/nke/kernel/kevent"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/devmodel"
	"github.com/nke-harness/nke/virtio/virtionet"
)

type rig struct {
	dev  *devmodel.Net
	drv  *virtionet.Device
	ifp  *ifnet.Interface
	sent chan []byte
	logs *logbuf
}

type logbuf struct {
	mu sync.Mutex
	// +checklocks:mu
	b strings.Builder
}

func (l *logbuf) Logf(f string, a ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.WriteString(strings.TrimSpace(fmt.Sprintf(f, a...)) + "\n")
}

func (l *logbuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newRig(t *testing.T, cfg ifnet.Config) *rig {
	t.Helper()
	heap := dma.NewHeap(16 << 20)
	r := &rig{sent: make(chan []byte, 4096), logs: &logbuf{}}
	r.dev = devmodel.New(heap, devmodel.Options{Tx: func(f []byte) { r.sent <- append([]byte(nil), f...) }})
	drv, err := virtionet.Open(r.dev, heap, virtionet.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r.drv = drv
	cfg.Logf = r.logs.Logf
	r.ifp, err = ifnet.New(drv, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.ifp.Stop)
	return r
}

var mac = []byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

func frame(et uint16, payload byte, n int) []byte {
	f := make([]byte, n)
	copy(f, mac)
	copy(f[6:], []byte{2, 0, 0, 0, 0, 1})
	f[12], f[13] = byte(et>>8), byte(et)
	for i := 14; i < n; i++ {
		f[i] = payload
	}
	return f
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestDemuxAndOutput(t *testing.T) {
	r := newRig(t, ifnet.Config{Index: 3})
	got := make(chan []byte, 100)
	var rcvIf uint16
	ifnet.AttachFuncs(t, r.ifp, func(_ uint16, m *mbuf.Mbuf, frame []byte) {
		rcvIf = m.RcvIf
		got <- ifnet.WholeFrame(m, frame)
		m.Free()
	}, ifnet.EtherTypeIPv4)
	if _, err := r.ifp.AttachProto(nke.ProtocolSpec{Name: "again", Demux: []nke.DemuxDesc{nke.EtherType(ifnet.EtherTypeIPv4)},
		Protocol: ifnet.FuncProto{}}); !errors.Is(err, ifnet.ErrProtoAttached) {
		t.Fatalf("second attach: %v", err)
	}
	r.ifp.Start()
	want := frame(0x0800, 0xab, 100)
	r.dev.Deliver(want)
	r.dev.Deliver(frame(0x1234, 0xcd, 100)) // nobody attached
	select {
	case b := <-got:
		if !bytes.Equal(b, want) || rcvIf != 3 {
			t.Fatalf("handler got %d bytes on if %d", len(b), rcvIf)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("frame never reached the handler")
	}
	waitFor(t, "unknown-proto count", func() bool { return r.ifp.Stats().RxUnknown == 1 })

	// Output from another goroutine wakes the (sleeping) loop.
	time.Sleep(20 * time.Millisecond)
	m := r.ifp.Pool().Get()
	b, _ := m.Append(60)
	copy(b, frame(0x0806, 0x11, 60))
	if err := r.ifp.Output(m); err != nil {
		t.Fatal(err)
	}
	select {
	case f := <-r.sent:
		if !bytes.Equal(f, frame(0x0806, 0x11, 60)) {
			t.Fatal("wrong frame sent")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("output never sent")
	}
	if s := r.ifp.Stats(); s.TxPackets != 1 || s.RxPackets != 2 {
		t.Errorf("stats %+v", s)
	}
}

func TestIdleLoopSleeps(t *testing.T) {
	r := newRig(t, ifnet.Config{})
	r.ifp.Start()
	time.Sleep(200 * time.Millisecond)
	s := r.ifp.Stats()
	// 500µs max sleep: an idle second is ~2000 polls, not millions.
	if s.IdleWaits == 0 || s.Polls > 20000 {
		t.Fatalf("idle loop: %d polls, %d waits in 200ms", s.Polls, s.IdleWaits)
	}
}

func TestRecoveryAndLink(t *testing.T) {
	r := newRig(t, ifnet.Config{CheckEvery: time.Millisecond})
	var mu sync.Mutex
	n := 0
	ifnet.AttachFuncs(t, r.ifp, func(_ uint16, m *mbuf.Mbuf, _ []byte) { mu.Lock(); n++; mu.Unlock(); m.Free() }, 0x0800)
	r.ifp.Start()
	waitFor(t, "link up", r.ifp.LinkUp)
	r.dev.SetLink(false)
	waitFor(t, "link down", func() bool { return !r.ifp.LinkUp() })
	r.dev.SetLink(true)
	waitFor(t, "link up again", r.ifp.LinkUp)

	r.dev.InjectUsedID(devmodel.RxQueue, 4000)
	r.dev.Deliver(frame(0x0800, 1, 64))
	waitFor(t, "recovery", func() bool { return r.ifp.Stats().Recoveries == 1 })
	// The count goes up as the recovery starts: a NEEDS_RESET set before
	// its reset is done would be cleared by it, and never seen.
	waitFor(t, "the first recovery's end", func() bool { return strings.Count(r.logs.String(), "running again") == 1 })
	r.dev.SetNeedsReset()
	waitFor(t, "second recovery", func() bool { return r.ifp.Stats().Recoveries == 2 })
	// The driver belongs to the poll loop; ask the device, not the driver.
	waitFor(t, "device running", func() bool {
		st := r.dev.Status()
		return st&virtio.StatusDriverOK != 0 && st&virtio.StatusNeedsReset == 0
	})
	for i := 0; i < 10; i++ {
		r.dev.Deliver(frame(0x0800, 2, 64))
	}
	waitFor(t, "traffic after recovery", func() bool { mu.Lock(); defer mu.Unlock(); return n == 10 })
	for _, want := range []string{"link down", "link up", "resetting", "running again"} {
		if !strings.Contains(r.logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, r.logs.String())
		}
	}
}

func TestOutputQueueFull(t *testing.T) {
	r := newRig(t, ifnet.Config{TxQueueLen: 4})
	// Not started: nothing drains the queue.
	var errs int
	for i := 0; i < 6; i++ {
		m := r.ifp.Pool().Get()
		m.Append(60)
		if err := r.ifp.Output(m); errors.Is(err, ifnet.ErrNoBufs) {
			errs++
		}
	}
	if errs != 2 || r.ifp.Stats().TxQueueDrops != 2 {
		t.Fatalf("%d drops, want 2", errs)
	}
}

func TestLinkErrorLoggedOnce(t *testing.T) {
	r := newRig(t, ifnet.Config{CheckEvery: time.Millisecond})
	r.ifp.Start()
	var bad [virtionet.ConfigSize]byte
	copy(bad[:], mac)
	bad[0] |= 1 // a multicast MAC: a configuration the driver refuses
	bad[6] = 1
	r.dev.SetConfig(bad)
	time.Sleep(100 * time.Millisecond)
	if n := strings.Count(r.logs.String(), "config invalid"); n != 1 {
		t.Fatalf("config error logged %d times in 100 checks, want once:\n%s", n, r.logs.String())
	}
}

// A device that comes back from a reset with another MAC: the interface
// (and so the stack above, which asks it) takes the new one.
func TestRecoveryLearnsNewMAC(t *testing.T) {
	r := newRig(t, ifnet.Config{})
	var cfg [virtionet.ConfigSize]byte
	newMAC := [6]byte{0x52, 0x54, 0, 1, 2, 3}
	copy(cfg[:], newMAC[:])
	cfg[6] = 1
	r.dev.SetConfig(cfg)
	r.dev.SetNeedsReset()
	for i := 0; i < 10 && r.ifp.Stats().Recoveries == 0; i++ {
		r.ifp.PollOnce()
		r.ifp.CheckOnce()
	}
	if got := r.ifp.MAC(); got != newMAC {
		t.Fatalf("MAC after the device came back: %x, want %x", got, newMAC)
	}
	if !strings.Contains(r.logs.String(), "came back with MAC 525400010203") {
		t.Errorf("the change was not logged:\n%s", r.logs.String())
	}
}

func TestLinkEvents(t *testing.T) {
	var bus kevent.Bus
	sub := bus.Subscribe(8, kevent.LinkUp, kevent.LinkDown)
	defer sub.Close()
	r := newRig(t, ifnet.Config{CheckEvery: time.Millisecond, Events: &bus})
	r.ifp.Start()
	waitFor(t, "link up", r.ifp.LinkUp)
	r.dev.SetLink(false)
	waitFor(t, "link down", func() bool { return !r.ifp.LinkUp() })
	r.dev.SetLink(true)
	waitFor(t, "link up again", r.ifp.LinkUp)
	var got []string
	for len(got) < 2 {
		select {
		case e := <-sub.C():
			got = append(got, e.Kind.String()+" "+e.Interface)
		case <-time.After(5 * time.Second):
			t.Fatalf("link events: %v, want 2", got)
		}
	}
	if d := cmp.Diff([]string{"link-down vtnet0", "link-up vtnet0"}, got); d != "" {
		t.Errorf("link events (-want +got):\n%s", d)
	}
}
