package virtioconsole_test

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/devmodel"
	"github.com/nke-harness/nke/virtio/virtioconsole"
	"github.com/nke-harness/nke/virtio/virtqueue"
)

type rig struct {
	t    testing.TB
	heap *dma.Heap
	dev  *devmodel.Console
	d    *virtioconsole.Device
}

func newRig(t testing.TB, mo devmodel.ConsoleOptions, cfg virtioconsole.Config) *rig {
	t.Helper()
	r := &rig{t: t, heap: dma.NewHeap(8 << 20)}
	r.dev = devmodel.NewConsole(r.heap, mo)
	if cfg.IdleSleep == 0 {
		cfg.IdleSleep = 100 * time.Microsecond
	}
	d, err := virtioconsole.Open(r.dev, r.heap, cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.d = d
	t.Cleanup(func() {
		d.Close()
		if err := r.dev.Err(); err != nil {
			t.Errorf("device saw a driver error: %v", err)
		}
	})
	return r
}

func (r *rig) port(name string) *virtioconsole.Port {
	r.t.Helper()
	p, err := r.d.PortByName(name, time.Second)
	if err != nil {
		r.t.Fatal(err)
	}
	return p
}

// hostReadAll drains what the guest sent on port id until n bytes came.
func (r *rig) hostReadAll(id uint32, n int, timeout time.Duration) []byte {
	r.t.Helper()
	out := make([]byte, 0, n)
	buf := make([]byte, 64<<10)
	deadline := time.Now().Add(timeout)
	for len(out) < n {
		k := r.dev.HostRead(id, buf)
		out = append(out, buf[:k]...)
		if k == 0 {
			if time.Now().After(deadline) {
				r.t.Fatalf("host got %d of %d bytes in %v", len(out), n, timeout)
			}
			time.Sleep(50 * time.Microsecond)
		}
	}
	return out
}

func randBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestHandshake(t *testing.T) {
	r := newRig(t, devmodel.ConsoleOptions{Ports: []devmodel.ConsolePort{{ID: 0, Console: true}, {ID: 1, Name: "nke.ctl"}}}, virtioconsole.Config{})
	if got, want := r.dev.DriverFeatures(), virtio.Features(1<<virtio.FVersion1|1<<virtioconsole.FMultiport|1<<virtio.FEventIdx); got != want {
		t.Errorf("driver features %v, want %v", virtioconsole.FeatureList(got), virtioconsole.FeatureList(want))
	}
	infos := r.d.Ports()
	if len(infos) != 2 || !infos[0].Added || !infos[0].Console || !infos[1].Added || infos[1].Name != "nke.ctl" {
		t.Fatalf("ports after Open: %+v", infos)
	}
	if r.dev.GuestConnected(1) {
		t.Errorf("port 1 guest-connected before Port")
	}
	p := r.port("nke.ctl")
	if p.ID() != 1 || !r.dev.GuestConnected(1) || p.HostConnected() {
		t.Fatalf("port %d, guest connected %v, host connected %v", p.ID(), r.dev.GuestConnected(1), p.HostConnected())
	}
	r.dev.HostConnect(1)
	if err := p.WaitHost(time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.d.PortByName("nope", 10*time.Millisecond); !errors.Is(err, virtioconsole.ErrNoPort) {
		t.Errorf("PortByName(nope): %v", err)
	}
	if _, err := r.d.Port(7); !errors.Is(err, virtioconsole.ErrNoPort) {
		t.Errorf("Port(7): %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if r.dev.GuestConnected(1) {
		t.Errorf("port still guest-connected after Close")
	}
	if _, err := p.Read(make([]byte, 1)); !errors.Is(err, virtioconsole.ErrClosed) {
		t.Errorf("Read after Close: %v", err)
	}
	st := r.dev.Stats()
	if st.ControlDropped != 0 {
		t.Errorf("device dropped %d control messages", st.ControlDropped)
	}
}

func TestRefusesWithoutMultiport(t *testing.T) {
	heap := dma.NewHeap(4 << 20)
	for _, fs := range []virtio.Features{1 << virtio.FVersion1, 1 << virtioconsole.FMultiport} {
		dev := devmodel.NewConsole(heap, devmodel.ConsoleOptions{Features: fs})
		_, err := virtioconsole.Open(dev, heap, virtioconsole.Config{})
		if !errors.Is(err, virtio.ErrNotSupported) {
			t.Errorf("features %v: %v, want ErrNotSupported", fs, err)
		}
		if dev.Status()&virtio.StatusFailed == 0 {
			t.Errorf("features %v: FAILED not set", fs)
		}
	}
}

// TestBothWays moves 2 MiB each way, the host buffer smaller than a
// transmit buffer so that the port is throttled all the time.
func TestBothWays(t *testing.T) {
	for _, c := range []struct {
		name string
		mo   devmodel.ConsoleOptions
	}{
		{"unbounded", devmodel.ConsoleOptions{}},
		{"slow host", devmodel.ConsoleOptions{HostBuffer: 3000}},
		{"packed", devmodel.ConsoleOptions{Features: devmodel.ConsoleQEMUFeatures | 1<<virtio.FRingPacked}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, c.mo, virtioconsole.Config{})
			p := r.port("nke.ctl")
			r.dev.HostConnect(1)
			in := randBytes(t, 2<<20)
			// host → guest
			go r.dev.HostWrite(1, in)
			got := make([]byte, len(in))
			if _, err := io.ReadFull(p, got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, in) {
				t.Fatal("host → guest bytes differ")
			}
			// guest → host
			var wg sync.WaitGroup
			wg.Add(1)
			var werr error
			go func() {
				defer wg.Done()
				_, werr = p.Write(in)
			}()
			out := r.hostReadAll(1, len(in), 20*time.Second)
			wg.Wait()
			if werr != nil {
				t.Fatal(werr)
			}
			if !bytes.Equal(out, in) {
				t.Fatal("guest → host bytes differ")
			}
			if err := p.Flush(); err != nil {
				t.Fatal(err)
			}
			st := r.d.Stats()
			if st.RxBytes != uint64(len(in)) || st.TxBytes != uint64(len(in)) || st.DeviceErrors != 0 {
				t.Errorf("stats %+v", st)
			}
			if c.mo.HostBuffer != 0 && r.dev.Stats().Discarded != 0 {
				t.Errorf("device discarded bytes")
			}
		})
	}
}

// TestHostReconnect: writes wait while the host is away, and a
// reconnected host gets what is written after it came back.
func TestHostReconnect(t *testing.T) {
	r := newRig(t, devmodel.ConsoleOptions{}, virtioconsole.Config{})
	p := r.port("nke.ctl")
	p.SetWriteDeadline(time.Now().Add(20 * time.Millisecond))
	if n, err := p.Write([]byte("lost?")); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write with no host: %d, %v", n, err)
	}
	p.SetWriteDeadline(time.Time{})
	for round := 0; round < 3; round++ {
		done := make(chan error, 1)
		go func() {
			_, err := p.Write([]byte("hello"))
			done <- err
		}()
		select {
		case err := <-done:
			t.Fatalf("round %d: Write returned (%v) with the host disconnected", round, err)
		case <-time.After(5 * time.Millisecond):
		}
		r.dev.HostConnect(1)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if got := r.hostReadAll(1, 5, time.Second); string(got) != "hello" {
			t.Fatalf("round %d: host got %q", round, got)
		}
		r.dev.HostWrite(1, []byte("back"))
		b := make([]byte, 4)
		if _, err := io.ReadFull(p, b); err != nil || string(b) != "back" {
			t.Fatalf("round %d: read %q, %v", round, b, err)
		}
		r.dev.HostDisconnect(1)
		deadline := time.Now().Add(time.Second)
		for p.HostConnected() {
			r.d.Poll()
			if time.Now().After(deadline) {
				t.Fatal("driver never saw the host go")
			}
		}
	}
	if p.HostConnects() != 3 {
		t.Errorf("port counted %d host connects, want 3", p.HostConnects())
	}
	if st := r.d.Stats(); st.HostConnects != 3 {
		t.Errorf("%d host connects counted, want 3", st.HostConnects)
	}
	if st := r.dev.Stats(); st.Discarded != 0 {
		t.Errorf("device discarded %d bytes", st.Discarded)
	}
}

func TestReadDeadlineAndClose(t *testing.T) {
	r := newRig(t, devmodel.ConsoleOptions{}, virtioconsole.Config{})
	p := r.port("nke.ctl")
	p.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if _, err := p.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read: %v", err)
	}
	p.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := p.Read(make([]byte, 10))
		done <- err
	}()
	time.Sleep(5 * time.Millisecond)
	r.d.Close()
	select {
	case err := <-done:
		if !errors.Is(err, virtioconsole.ErrClosed) {
			t.Errorf("Read across Close: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Read did not return after Close")
	}
	if r.dev.Status() != 0 {
		t.Errorf("device status %#x after Close, want reset", r.dev.Status())
	}
}

// TestPortRemoveAdd: a port unplugged and plugged back is re-announced;
// the driver opens it again by itself.
func TestPortRemoveAdd(t *testing.T) {
	r := newRig(t, devmodel.ConsoleOptions{}, virtioconsole.Config{})
	p := r.port("nke.ctl")
	r.dev.RemovePort(1)
	r.d.Poll()
	if p.Info().Added || r.dev.GuestConnected(1) {
		t.Fatalf("after remove: %+v", p.Info())
	}
	r.dev.AddPort(1)
	r.d.Poll()
	r.d.Poll()
	if !p.Info().Added || p.Name() != "nke.ctl" || !r.dev.GuestConnected(1) {
		t.Fatalf("after add: %+v, guest connected %v", p.Info(), r.dev.GuestConnected(1))
	}
}

func ctl(id uint32, ev, val uint16, payload ...byte) []byte {
	b := make([]byte, 8, 8+len(payload))
	binary.LittleEndian.PutUint32(b, id)
	binary.LittleEndian.PutUint16(b[4:], ev)
	binary.LittleEndian.PutUint16(b[6:], val)
	return append(b, payload...)
}

// TestHostileControl: bad control messages are refused one by one, with
// a clear error, and the port keeps working.
func TestHostileControl(t *testing.T) {
	r := newRig(t, devmodel.ConsoleOptions{}, virtioconsole.Config{})
	p := r.port("nke.ctl")
	r.dev.HostConnect(1)
	for _, c := range []struct {
		msg  []byte
		want string
	}{
		{[]byte{1, 2, 3}, "3 bytes, need 8"},
		{ctl(99, virtioconsole.EventPortOpen, 1), "ports 0..1"},
		{ctl(1, virtioconsole.EventDeviceReady, 1), "not a device → driver event"},
		{ctl(1, virtioconsole.EventPortReady, 1), "not a device → driver event"},
		{ctl(1, 42, 1), "event 42"},
		{ctl(1, virtioconsole.EventPortName, 1), "empty name"},
		{ctl(1, virtioconsole.EventPortName, 1, 'a', 0, 'b'), "control character"},
		{ctl(1, virtioconsole.EventPortName, 1, 0xff, 0xfe), "not UTF-8"},
		{ctl(1, virtioconsole.EventPortOpen, 1, 9, 9), "stray bytes"},
		{ctl(1, virtioconsole.EventPortName, 1, bytes.Repeat([]byte{'x'}, 300)...), "more than 255"},
	} {
		r.dev.InjectControl(c.msg)
		r.d.Poll()
		err := r.d.ControlErr()
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, virtioconsole.ErrBadControl) {
			t.Errorf("message % x: error %v, want one containing %q", c.msg[:min(len(c.msg), 12)], err, c.want)
		}
	}
	if p.Name() != "nke.ctl" || !p.HostConnected() {
		t.Errorf("port state changed by refused messages: %+v", p.Info())
	}
	// The host keeps its connection and the data flows.
	r.dev.HostWrite(1, []byte("still"))
	b := make([]byte, 5)
	if _, err := io.ReadFull(p, b); err != nil || string(b) != "still" {
		t.Fatalf("read %q, %v", b, err)
	}
	if st := r.d.Stats(); st.ControlErrors != 10 || st.DeviceErrors != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestHostileRing: a used length beyond the buffer or an id not in flight
// takes the device out of service with a clear error; nothing panics and
// Close still resets it.
func TestHostileRing(t *testing.T) {
	for _, c := range []struct {
		name  string
		write bool
		fault func(*devmodel.Console)
		want  error
	}{
		{"rx oversize", false, func(d *devmodel.Console) { d.InjectOversize(4, 1<<20) }, virtqueue.ErrUsedLen},
		{"rx bad id", false, func(d *devmodel.Console) { d.InjectUsedID(4, 9999) }, virtqueue.ErrUsedID},
		{"tx oversize", true, func(d *devmodel.Console) { d.InjectOversize(5, 7) }, virtqueue.ErrUsedLen},
		{"tx bad id", true, func(d *devmodel.Console) { d.InjectUsedID(5, 3) }, virtqueue.ErrUsedID},
		{"ctrl oversize", false, func(d *devmodel.Console) {
			d.InjectOversize(2, 4096)
			d.InjectControl(ctl(1, virtioconsole.EventPortOpen, 1))
		}, virtqueue.ErrUsedLen},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, devmodel.ConsoleOptions{}, virtioconsole.Config{})
			p := r.port("nke.ctl")
			r.dev.HostConnect(1)
			c.fault(r.dev)
			var err error
			p.SetDeadline(time.Now().Add(2 * time.Second))
			if c.write {
				for i := 0; i < 4 && err == nil; i++ {
					_, err = p.Write([]byte("x"))
					if err == nil {
						r.hostReadAll(1, 1, time.Second)
						err = p.Flush()
					}
				}
			} else {
				r.dev.HostWrite(1, []byte("data"))
				_, err = p.Read(make([]byte, 4))
				if err == nil {
					_, err = p.Read(make([]byte, 4))
				}
			}
			if !errors.Is(err, c.want) || !errors.Is(err, virtio.ErrDeviceBroken) {
				t.Fatalf("error %v, want %v and ErrDeviceBroken", err, c.want)
			}
			if r.d.Err() == nil {
				t.Errorf("Err is nil")
			}
		})
	}
}

// TestNoAllocs: moving a chunk either way allocates nothing.
func TestNoAllocs(t *testing.T) {
	r := newRig(t, devmodel.ConsoleOptions{}, virtioconsole.Config{})
	p := r.port("nke.ctl")
	r.dev.HostConnect(1)
	chunk := randBytes(t, 8192)
	buf := make([]byte, len(chunk))
	host := make([]byte, 64<<10)
	// Warm up: the model's own buffers grow once.
	for i := 0; i < 4; i++ {
		r.dev.HostWrite(1, chunk)
		io.ReadFull(p, buf)
		p.Write(chunk)
		r.dev.HostRead(1, host)
	}
	r.dev.HostWrite(1, chunk)
	read := testing.AllocsPerRun(100, func() {
		if _, err := io.ReadFull(p, buf[:4096]); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(p, buf[4096:]); err != nil {
			t.Fatal(err)
		}
		r.dev.HostWrite(1, chunk) // the model appends into its grown buffer
	})
	write := testing.AllocsPerRun(100, func() {
		if _, err := p.Write(chunk); err != nil {
			t.Fatal(err)
		}
		for n := 0; n < len(chunk); {
			n += r.dev.HostRead(1, host)
		}
	})
	if read != 0 || write != 0 {
		t.Errorf("allocations per chunk: read %v, write %v", read, write)
	}
}

func BenchmarkWrite(b *testing.B) {
	r := newRig(b, devmodel.ConsoleOptions{}, virtioconsole.Config{})
	p := r.port("nke.ctl")
	r.dev.HostConnect(1)
	chunk := randBytes(b, 64<<10)
	host := make([]byte, 256<<10)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		p.Write(chunk)
		for n := 0; n < len(chunk); {
			n += r.dev.HostRead(1, host)
		}
	}
}
