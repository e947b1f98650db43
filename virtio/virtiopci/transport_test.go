package virtiopci

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nke-harness/nke/virtio"
)

// access is one register access as a fake device saw it.
type access struct {
	Write bool
	Off   int
	Width int
	Val   uint32
}

func (a access) String() string {
	op := "r"
	if a.Write {
		op = "w"
	}
	return fmt.Sprintf("%s%d %#02x=%#x", op, a.Width*8, a.Off, a.Val)
}

// commonWidths is the width of every struct virtio_pci_common_cfg register
// (spec 4.1.4.3); the fake rejects any other access.
var commonWidths = map[int]int{
	regDeviceFeatureSelect: 4, regDeviceFeature: 4, regDriverFeatureSelect: 4, regDriverFeature: 4,
	regConfigMSIXVector: 2, regNumQueues: 2, regDeviceStatus: 1, regConfigGeneration: 1,
	regQueueSelect: 2, regQueueSize: 2, regQueueMSIXVector: 2, regQueueEnable: 2, regQueueNotifyOff: 2,
	0x20: 4, 0x24: 4, 0x28: 4, 0x2c: 4, 0x30: 4, 0x34: 4,
}

type fakeQueue struct {
	max, size, msix, enable, notifyOff uint16
	addr                               [6]uint32 // desc lo/hi, driver lo/hi, device lo/hi
}

// fakeCommon is a virtio common configuration structure with the select
// semantics of a real device, logging every access.
type fakeCommon struct {
	t            *testing.T
	log          []access
	devFeatures  uint64
	drvFeatures  uint64
	dfSel, gfSel uint32
	status, gen  uint8
	resetStuck   bool // status never returns to 0
	msixStuck    bool // queue_msix_vector ignores writes
	enableStuck  bool // queue_enable ignores writes
	qsel         uint16
	queues       []fakeQueue
	allOnes      bool
}

func newFakeCommon(t *testing.T) *fakeCommon {
	return &fakeCommon{
		t:           t,
		devFeatures: 1<<virtio.FVersion1 | 1<<5 | 1<<16,
		queues: []fakeQueue{
			{max: 256, msix: 0, notifyOff: 0},
			{max: 256, notifyOff: 1},
			{max: 64, notifyOff: 2},
		},
	}
}

func (f *fakeCommon) Len() int { return 0x1000 }

func (f *fakeCommon) check(off, width int) {
	f.t.Helper()
	if w, ok := commonWidths[off]; !ok || w != width {
		f.t.Errorf("%d-bit access at %#x: register has width %d", width*8, off, w*8)
	}
}

func (f *fakeCommon) q() *fakeQueue {
	if int(f.qsel) < len(f.queues) {
		return &f.queues[f.qsel]
	}
	return &fakeQueue{} // absent queues read 0 and ignore writes
}

func (f *fakeCommon) read(off, width int) uint32 {
	f.check(off, width)
	if f.allOnes {
		return 1<<(8*width) - 1
	}
	q := f.q()
	switch off {
	case regDeviceFeature:
		if f.dfSel > 1 {
			return 0
		}
		return uint32(f.devFeatures >> (32 * f.dfSel))
	case regDriverFeature:
		if f.gfSel > 1 {
			return 0
		}
		return uint32(f.drvFeatures >> (32 * f.gfSel))
	case regDeviceFeatureSelect:
		return f.dfSel
	case regDriverFeatureSelect:
		return f.gfSel
	case regNumQueues:
		return uint32(len(f.queues))
	case regDeviceStatus:
		return uint32(f.status)
	case regConfigGeneration:
		return uint32(f.gen)
	case regQueueSelect:
		return uint32(f.qsel)
	case regQueueSize:
		if q.size == 0 {
			return uint32(q.max)
		}
		return uint32(q.size)
	case regQueueMSIXVector:
		return uint32(q.msix)
	case regQueueEnable:
		return uint32(q.enable)
	case regQueueNotifyOff:
		return uint32(q.notifyOff)
	}
	if off >= 0x20 && off < 0x38 {
		return q.addr[(off-0x20)/4]
	}
	return 0
}

func (f *fakeCommon) write(off, width int, v uint32) {
	f.check(off, width)
	q := f.q()
	switch off {
	case regDeviceFeatureSelect:
		f.dfSel = v
	case regDriverFeatureSelect:
		f.gfSel = v
	case regDriverFeature:
		if f.gfSel <= 1 {
			sh := 32 * f.gfSel
			f.drvFeatures = f.drvFeatures&^(0xffffffff<<sh) | uint64(v)<<sh
		}
	case regDeviceStatus:
		if v == 0 {
			if !f.resetStuck {
				f.status = 0
			}
			for i := range f.queues {
				f.queues[i] = fakeQueue{max: f.queues[i].max, notifyOff: f.queues[i].notifyOff}
			}
			return
		}
		f.status = uint8(v)
	case regQueueSelect:
		f.qsel = uint16(v)
	case regQueueSize:
		q.size = uint16(v)
	case regQueueMSIXVector:
		if !f.msixStuck {
			q.msix = uint16(v)
		}
	case regQueueEnable:
		if !f.enableStuck {
			q.enable = uint16(v)
		}
	default:
		if off >= 0x20 && off < 0x38 {
			q.addr[(off-0x20)/4] = v
		} else {
			f.t.Errorf("write to read-only register %#x", off)
		}
	}
}

func (f *fakeCommon) logged(a access) { f.log = append(f.log, a) }

func (f *fakeCommon) Read8(off int) uint8 {
	v := f.read(off, 1)
	f.logged(access{false, off, 1, v})
	return uint8(v)
}
func (f *fakeCommon) Read16(off int) uint16 {
	v := f.read(off, 2)
	f.logged(access{false, off, 2, v})
	return uint16(v)
}
func (f *fakeCommon) Read32(off int) uint32 {
	v := f.read(off, 4)
	f.logged(access{false, off, 4, v})
	return v
}
func (f *fakeCommon) Write8(off int, v uint8) {
	f.logged(access{true, off, 1, uint32(v)})
	f.write(off, 1, uint32(v))
}
func (f *fakeCommon) Write16(off int, v uint16) {
	f.logged(access{true, off, 2, uint32(v)})
	f.write(off, 2, uint32(v))
}
func (f *fakeCommon) Write32(off int, v uint32) {
	f.logged(access{true, off, 4, v})
	f.write(off, 4, v)
}

// logRegs wraps a window and logs accesses, for the device and notify
// structures.
type logRegs struct {
	*window
	log []access
}

func (l *logRegs) Read8(off int) uint8 {
	v := l.window.Read8(off)
	l.log = append(l.log, access{false, off, 1, uint32(v)})
	return v
}
func (l *logRegs) Read16(off int) uint16 {
	v := l.window.Read16(off)
	l.log = append(l.log, access{false, off, 2, uint32(v)})
	return v
}
func (l *logRegs) Read32(off int) uint32 {
	v := l.window.Read32(off)
	l.log = append(l.log, access{false, off, 4, v})
	return v
}
func (l *logRegs) Write16(off int, v uint16) {
	l.window.Write16(off, v)
	l.log = append(l.log, access{true, off, 2, uint32(v)})
}

type rig struct {
	tr     *Transport
	common *fakeCommon
	notify *logRegs
	isr    *window
	device *logRegs
	closed int
}

// newRig builds a transport over a fake common structure and plain-memory
// notify, ISR and device windows (as the QEMU layout: multiplier 4).
func newRig(t *testing.T) *rig {
	r := &rig{
		common: newFakeCommon(t),
		notify: &logRegs{window: &window{mem: make([]byte, 0x1000)}},
		isr:    &window{mem: make([]byte, 1)},
		device: &logRegs{window: &window{mem: make([]byte, 0x20)}},
	}
	tr, err := newTransport("0000:00:03.0", nil, r.common, r.notify, r.isr, r.device, 4, func() error { r.closed++; return nil })
	if err != nil {
		t.Fatal(err)
	}
	tr.ResetTimeout = 20 * time.Millisecond
	r.tr = tr
	return r
}

func TestFeatures(t *testing.T) {
	r := newRig(t)
	r.common.log = nil
	want := virtio.Features(1<<virtio.FVersion1 | 1<<5 | 1<<16)
	if got := r.tr.DeviceFeatures(); got != want {
		t.Errorf("DeviceFeatures = %#x, want %#x", got, want)
	}
	r.tr.SetDriverFeatures(1<<virtio.FVersion1 | 1<<5)
	if r.common.drvFeatures != 1<<virtio.FVersion1|1<<5 {
		t.Errorf("device saw driver features %#x", r.common.drvFeatures)
	}
	wantLog := []access{
		{true, regDeviceFeatureSelect, 4, 0}, {false, regDeviceFeature, 4, 1<<5 | 1<<16},
		{true, regDeviceFeatureSelect, 4, 1}, {false, regDeviceFeature, 4, 1},
		{true, regDriverFeatureSelect, 4, 0}, {true, regDriverFeature, 4, 1 << 5},
		{true, regDriverFeatureSelect, 4, 1}, {true, regDriverFeature, 4, 1},
	}
	if diff := cmp.Diff(wantLog, r.common.log); diff != "" {
		t.Errorf("accesses (-want +got):\n%s", diff)
	}
}

func TestResetAndStatus(t *testing.T) {
	r := newRig(t)
	r.tr.SetStatus(virtio.StatusAcknowledge)
	r.tr.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver)
	if s := r.tr.Status(); s != 3 {
		t.Fatalf("Status = %d, want 3", s)
	}
	if err := r.tr.Reset(); err != nil {
		t.Fatal(err)
	}
	if s := r.tr.Status(); s != 0 {
		t.Fatalf("Status after reset = %d", s)
	}

	r.common.status = virtio.StatusDriver
	r.common.resetStuck = true
	start := time.Now()
	err := r.tr.Reset()
	if !errors.Is(err, virtio.ErrDeviceBroken) || !strings.Contains(err.Error(), "device_status still 0x02") {
		t.Fatalf("stuck reset: err = %v", err)
	}
	if d := time.Since(start); d < 20*time.Millisecond || d > 2*time.Second {
		t.Errorf("stuck reset returned after %v, want about the 20ms timeout", d)
	}
}

// ready brings the fake device to FEATURES_OK.
func (r *rig) ready(fs virtio.Features) {
	r.tr.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver)
	r.tr.SetDriverFeatures(fs)
	r.tr.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK)
	r.common.log = nil
}

func TestSetupQueue(t *testing.T) {
	r := newRig(t)
	r.ready(1 << virtio.FVersion1)
	addrs := virtio.QueueAddrs{Desc: 0x1_2345_6000, Driver: 0x1_2345_7002, Device: 0x1_2345_8004}
	n, err := r.tr.SetupQueue(2, 32, addrs)
	if err != nil {
		t.Fatal(err)
	}
	W, R := true, false
	want := []access{
		{R, regDeviceStatus, 1, 0xb},
		{R, regNumQueues, 2, 3},
		{W, regQueueSelect, 2, 2},
		{R, regQueueSize, 2, 64},
		{R, regQueueEnable, 2, 0},
		{W, regQueueSize, 2, 32},
		{W, regQueueMSIXVector, 2, 0xffff},
		{R, regQueueMSIXVector, 2, 0xffff},
		{W, 0x20, 4, 0x2345_6000}, {W, 0x24, 4, 1},
		{W, 0x28, 4, 0x2345_7002}, {W, 0x2c, 4, 1},
		{W, 0x30, 4, 0x2345_8004}, {W, 0x34, 4, 1},
		{R, regQueueNotifyOff, 2, 2},
		{W, regQueueEnable, 2, 1},
		{R, regQueueEnable, 2, 1},
	}
	if diff := cmp.Diff(want, r.common.log); diff != "" {
		t.Errorf("accesses (-want +got):\n%s", diff)
	}
	q := r.common.queues[2]
	if q.size != 32 || q.enable != 1 || q.addr != [6]uint32{0x2345_6000, 1, 0x2345_7002, 1, 0x2345_8004, 1} {
		t.Errorf("device queue state %+v", q)
	}
	// queue_notify_off 2 * multiplier 4: a 16-bit write of 2 at 8.
	n.Notify()
	if diff := cmp.Diff([]access{{W, 8, 2, 2}}, r.notify.log); diff != "" {
		t.Errorf("notify accesses (-want +got):\n%s", diff)
	}
	if got := r.notify.mem[8:10]; got[0] != 2 || got[1] != 0 {
		t.Errorf("doorbell bytes % x", got)
	}
}

func TestSetupQueueErrors(t *testing.T) {
	ok := virtio.QueueAddrs{Desc: 0x10000, Driver: 0x11000, Device: 0x12000}
	for _, tc := range []struct {
		name     string
		q        int
		size     uint16
		addrs    virtio.QueueAddrs
		features virtio.Features
		setup    func(*rig)
		wantErr  error
		errHas   string
	}{
		{name: "before FEATURES_OK", size: 8, addrs: ok, setup: func(r *rig) { r.common.status = 3 }, errHas: "FEATURES_OK not set"},
		{name: "needs reset", size: 8, addrs: ok, setup: func(r *rig) { r.common.status |= virtio.StatusNeedsReset }, wantErr: virtio.ErrNeedsReset},
		{name: "failed", size: 8, addrs: ok, setup: func(r *rig) { r.common.status |= virtio.StatusFailed }, errHas: "FAILED"},
		{name: "negative queue", q: -1, size: 8, addrs: ok, errHas: "out of range"},
		{name: "queue past num_queues", q: 3, size: 8, addrs: ok, errHas: "has 3 queues"},
		{name: "absent queue", q: 1, size: 8, addrs: ok, setup: func(r *rig) { r.common.queues[1].max = 0 }, errHas: "not available"},
		{name: "device max not power of two", size: 8, addrs: ok, setup: func(r *rig) { r.common.queues[0].max = 100 }, wantErr: virtio.ErrDeviceBroken},
		{name: "size zero", size: 0, addrs: ok, errHas: "outside 1..256"},
		{name: "size above max", size: 512, addrs: ok, errHas: "outside 1..256"},
		{name: "size not power of two", size: 48, addrs: ok, errHas: "not a power of two"},
		{name: "desc misaligned", size: 8, addrs: virtio.QueueAddrs{Desc: 0x10008, Driver: 0x11000, Device: 0x12000}, errHas: "descriptor area address 0x10008"},
		{name: "driver misaligned", size: 8, addrs: virtio.QueueAddrs{Desc: 0x10000, Driver: 0x11001, Device: 0x12000}, errHas: "driver area"},
		{name: "device misaligned", size: 8, addrs: virtio.QueueAddrs{Desc: 0x10000, Driver: 0x11000, Device: 0x12002}, errHas: "device area"},
		{name: "zero address", size: 8, addrs: virtio.QueueAddrs{Driver: 0x11000, Device: 0x12000}, errHas: "zero"},
		{name: "packed driver area needs 4", size: 8, features: 1 << virtio.FRingPacked, addrs: virtio.QueueAddrs{Desc: 0x10000, Driver: 0x11002, Device: 0x12000}, errHas: "not 4-byte aligned"},
		{name: "already enabled", size: 8, addrs: ok, setup: func(r *rig) { r.common.queues[0].enable = 1 }, errHas: "already enabled"},
		{name: "msix not taken", size: 8, addrs: ok, setup: func(r *rig) { r.common.msixStuck = true; r.common.queues[0].msix = 3 }, wantErr: virtio.ErrDeviceBroken, errHas: "queue_msix_vector reads 0x3"},
		{name: "doorbell outside notify", size: 8, addrs: ok, setup: func(r *rig) { r.common.queues[0].notifyOff = 0x400 }, wantErr: virtio.ErrDeviceBroken, errHas: "0x1000 lies outside"},
		{name: "doorbell straddles end", size: 8, addrs: ok, setup: func(r *rig) {
			r.common.queues[0].notifyOff = 0x3ff
			r.tr.notifyMult = 4
			r.notify.mem = r.notify.mem[:0xffd]
		}, wantErr: virtio.ErrDeviceBroken},
		{name: "enable does not stick", size: 8, addrs: ok, setup: func(r *rig) { r.common.enableStuck = true }, wantErr: virtio.ErrDeviceBroken, errHas: "queue_enable reads 0"},
		{name: "notification data", size: 8, addrs: ok, features: 1 << virtio.FNotificationData, wantErr: virtio.ErrNotSupported},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			r.ready(1<<virtio.FVersion1 | tc.features)
			if tc.setup != nil {
				tc.setup(r)
			}
			n, err := r.tr.SetupQueue(tc.q, tc.size, tc.addrs)
			if err == nil || n != nil {
				t.Fatalf("SetupQueue succeeded (%v)", n)
			}
			var oe *OpError
			if !errors.As(err, &oe) || oe.BDF != "0000:00:03.0" {
				t.Errorf("err %v is not an *OpError naming the device", err)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.errHas) {
				t.Errorf("err = %v, want it to contain %q", err, tc.errHas)
			}
		})
	}
}

func TestSetupQueuePackedAnySize(t *testing.T) {
	r := newRig(t)
	r.ready(1<<virtio.FVersion1 | 1<<virtio.FRingPacked)
	if _, err := r.tr.SetupQueue(0, 100, virtio.QueueAddrs{Desc: 0x10000, Driver: 0x11000, Device: 0x12000}); err != nil {
		t.Fatal(err)
	}
}

func TestMultiplierZeroSharesDoorbell(t *testing.T) {
	r := newRig(t)
	r.tr.notifyMult = 0
	r.ready(1 << virtio.FVersion1)
	for q := range 2 {
		n, err := r.tr.SetupQueue(q, 8, virtio.QueueAddrs{Desc: 0x10000, Driver: 0x11000, Device: 0x12000})
		if err != nil {
			t.Fatal(err)
		}
		n.Notify()
	}
	if diff := cmp.Diff([]access{{true, 0, 2, 0}, {true, 0, 2, 1}}, r.notify.log); diff != "" {
		t.Errorf("notify accesses (-want +got):\n%s", diff)
	}
}

func TestQueueMaxSize(t *testing.T) {
	r := newRig(t)
	for q, want := range map[int]uint16{0: 256, 2: 64, 3: 0, -1: 0, 70000: 0} {
		if got := r.tr.QueueMaxSize(q); got != want {
			t.Errorf("QueueMaxSize(%d) = %d, want %d", q, got, want)
		}
	}
	if n := r.tr.NumQueues(); n != 3 {
		t.Errorf("NumQueues = %d", n)
	}
}

func TestReadConfig(t *testing.T) {
	r := newRig(t)
	copy(r.device.mem, []byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x01, 0x00, 0x04, 0x00, 0xdc, 0x05, 1, 2, 3, 4, 5, 6, 7, 8})
	R := false
	for _, tc := range []struct {
		off, n int
		want   []byte
		log    []access
	}{
		{0, 6, []byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}, []access{{R, 0, 1, 0x52}, {R, 1, 1, 0x54}, {R, 2, 1, 0}, {R, 3, 1, 0x12}, {R, 4, 1, 0x34}, {R, 5, 1, 0x56}}},
		{6, 2, []byte{1, 0}, []access{{R, 6, 2, 1}}},
		{8, 4, []byte{4, 0, 0xdc, 5}, []access{{R, 8, 4, 0x05dc0004}}},
		{12, 8, []byte{1, 2, 3, 4, 5, 6, 7, 8}, []access{{R, 12, 4, 0x04030201}, {R, 16, 4, 0x08070605}}},
		{7, 2, []byte{0, 4}, []access{{R, 7, 1, 0}, {R, 8, 1, 4}}},
		{0x1f, 1, []byte{0}, []access{{R, 0x1f, 1, 0}}},
		{0x20, 0, []byte{}, nil},
	} {
		r.device.log = nil
		p := make([]byte, tc.n)
		if err := r.tr.ReadConfig(tc.off, p); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tc.want, p); diff != "" {
			t.Errorf("ReadConfig(%d, %d) (-want +got):\n%s", tc.off, tc.n, diff)
		}
		if diff := cmp.Diff(tc.log, r.device.log); diff != "" {
			t.Errorf("ReadConfig(%d, %d) accesses (-want +got):\n%s", tc.off, tc.n, diff)
		}
	}
	for _, bad := range [][2]int{{-1, 1}, {0x1f, 2}, {0x21, 0}, {0, 0x21}, {math.MaxInt, 1}} {
		if err := r.tr.ReadConfig(bad[0], make([]byte, bad[1])); err == nil || !strings.Contains(err.Error(), "outside the 0x20-byte device configuration") {
			t.Errorf("ReadConfig(%d, %d): err = %v", bad[0], bad[1], err)
		}
	}
	if r.tr.ConfigLen() != 0x20 {
		t.Errorf("ConfigLen = %d", r.tr.ConfigLen())
	}
}

func TestISRGenerationName(t *testing.T) {
	r := newRig(t)
	r.isr.mem[0] = 3
	r.common.gen = 7
	if r.tr.ISR() != 3 || r.tr.ConfigGeneration() != 7 || r.tr.Name() != "0000:00:03.0" {
		t.Errorf("ISR %d generation %d name %q", r.tr.ISR(), r.tr.ConfigGeneration(), r.tr.Name())
	}
}

func TestClose(t *testing.T) {
	r := newRig(t)
	r.ready(1 << virtio.FVersion1)
	if err := r.tr.Close(); err != nil {
		t.Fatal(err)
	}
	if r.common.status != 0 || r.closed != 1 {
		t.Errorf("after Close: status %d, unmapped %d times", r.common.status, r.closed)
	}
	if err := r.tr.Close(); err != nil || r.closed != 1 {
		t.Errorf("second Close: %v, unmapped %d times", err, r.closed)
	}
}

func TestNewTransportChecks(t *testing.T) {
	mem := func(n int) *window { return &window{mem: make([]byte, n)} }
	c := newFakeCommon(t)
	for _, tc := range []struct {
		name                string
		common, notify, isr registers
		errHas              string
	}{
		{"short common", mem(0x34), mem(2), mem(1), "common configuration window is 0x34 bytes"},
		{"short notify", c, mem(1), mem(1), "notify window is 1 bytes"},
		{"empty isr", c, mem(2), mem(0), "ISR window is empty"},
		{"all ones", &fakeCommon{t: t, allOnes: true}, mem(2), mem(1), "reads all ones"},
	} {
		_, err := newTransport("x", nil, tc.common, tc.notify, tc.isr, mem(0), 0, nil)
		if err == nil || !strings.Contains(err.Error(), tc.errHas) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.errHas)
		}
	}
}
