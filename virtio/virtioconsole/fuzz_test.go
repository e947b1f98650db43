package virtioconsole_test

import (
	"bytes"
	"errors"
	"os"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/devmodel"
	"github.com/nke-harness/nke/virtio/virtioconsole"
)

// FuzzControl: the control-message parser takes any bytes without
// panicking, accepts only well-formed messages and round-trips them.
func FuzzControl(f *testing.F) {
	f.Add(ctl(1, virtioconsole.EventPortAdd, 1))
	f.Add(ctl(1, virtioconsole.EventPortName, 1, []byte("nke.ctl\x00")...))
	f.Add(ctl(1, virtioconsole.EventPortOpen, 0))
	f.Add(ctl(0, virtioconsole.EventResize, 0, 80, 0, 25, 0))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := virtioconsole.ParseControl(b)
		if err != nil {
			if !errors.Is(err, virtioconsole.ErrBadControl) {
				t.Fatalf("error %v does not wrap ErrBadControl", err)
			}
			return
		}
		if len(b) < virtioconsole.ControlLen {
			t.Fatalf("accepted %d bytes", len(b))
		}
		if c.Event == virtioconsole.EventPortName {
			if len(c.Name) == 0 || len(c.Name) > virtioconsole.MaxNameLen || !utf8.Valid(c.Name) || bytes.IndexByte(c.Name, 0) >= 0 {
				t.Fatalf("accepted name %q", c.Name)
			}
		} else if c.Name != nil {
			t.Fatalf("%v has a name", c)
		}
		var out [virtioconsole.ControlLen]byte
		virtioconsole.PutControl(out[:], c.ID, c.Event, c.Value)
		if !bytes.Equal(out[:], b[:virtioconsole.ControlLen]) {
			t.Fatalf("round trip % x != % x", out, b[:8])
		}
		_ = c.String()
	})
}

// FuzzDevice drives the driver against a model console that the input
// turns hostile at will: host writes and reads, driver reads and writes
// with short deadlines, raw control messages, bad used ids and lengths,
// host disconnects, port removal. Nothing may panic or hang; while the
// rings are honest, every byte the host sent reaches the guest in order,
// and every byte the guest wrote reaches a host that stayed connected.
func FuzzDevice(f *testing.F) {
	for _, seed := range [][]byte{
		{0, 10, 1, 1, 2, 10, 3, 0},
		{0, 255, 1, 1, 1, 1, 2, 255, 3, 3, 3},
		{4, 5, 1, 0, 0, 0, 6, 0, 1, 0},
		{5, 4, 200, 0, 20, 1, 1},
		{6, 5, 3, 2, 40, 3},
		{7, 2, 9, 7, 2, 9, 3},
		{7, 8, 7, 0, 5, 1},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 256 {
			return
		}
		heap := dma.NewHeap(1 << 20)
		dev := devmodel.NewConsole(heap, devmodel.ConsoleOptions{HostBuffer: 300})
		d, err := virtioconsole.Open(dev, heap, virtioconsole.Config{RxBufSize: 64, RxBuffers: 4, TxBufSize: 64, TxBuffers: 4,
			IdleSleep: 20 * time.Microsecond, DeepSleep: 20 * time.Microsecond, DeepAfter: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		p, err := d.Port(1)
		if err != nil {
			t.Fatal(err)
		}
		dev.HostConnect(1)
		var toGuest, gotGuest, fromGuest, gotHost []byte
		ringFault, ctlFault, disconnected := false, false, false
		seq := byte(0)
		pattern := func(n int) []byte {
			b := make([]byte, n)
			for i := range b {
				b[i] = seq
				seq++
			}
			return b
		}
		buf := make([]byte, 512)
		arg := func(i int) int {
			if i < len(in) {
				return int(in[i])
			}
			return 0
		}
		for i := 0; i < len(in); i += 2 {
			switch a := arg(i + 1); in[i] % 8 {
			case 0:
				b := pattern(a)
				toGuest = append(toGuest, b...)
				dev.HostWrite(1, b)
			case 1:
				p.SetReadDeadline(time.Now().Add(time.Millisecond))
				n, err := p.Read(buf[:1+a])
				gotGuest = append(gotGuest, buf[:n]...)
				checkErr(t, err, ringFault)
			case 2:
				b := pattern(a)
				p.SetWriteDeadline(time.Now().Add(time.Millisecond))
				n, err := p.Write(b)
				fromGuest = append(fromGuest, b[:n]...)
				checkErr(t, err, ringFault)
			case 3:
				n := dev.HostRead(1, buf)
				gotHost = append(gotHost, buf[:n]...)
			case 4:
				end := min(len(in), i+2+a%24)
				dev.InjectControl(in[min(i+2, end):end])
				d.Poll()
				ctlFault = true
				i = end - 2
			case 5:
				dev.InjectOversize(2+a%4, uint32(1+arg(i+2)))
				ringFault = true
				i++
			case 6:
				dev.InjectUsedID(2+a%4, uint32(arg(i+2)))
				ringFault = true
				i++
			case 7:
				switch a % 4 {
				case 0:
					dev.HostDisconnect(1)
					disconnected = true
				case 1:
					dev.HostConnect(1)
				case 2:
					dev.RemovePort(1)
					d.Poll()
					disconnected = true
				case 3:
					dev.AddPort(1)
					d.Poll()
				}
			}
		}
		if !ringFault && !ctlFault {
			if !bytes.HasPrefix(toGuest, gotGuest) {
				t.Fatalf("guest read % x, host sent % x", gotGuest, toGuest)
			}
			if !disconnected && !bytes.HasPrefix(fromGuest, gotHost) {
				t.Fatalf("host read % x, guest wrote % x", gotHost, fromGuest)
			}
			if err := dev.Err(); err != nil {
				t.Fatalf("the driver broke the protocol: %v", err)
			}
		}
	})
}

func checkErr(t *testing.T, err error, faults bool) {
	t.Helper()
	switch {
	case err == nil, errors.Is(err, os.ErrDeadlineExceeded):
	case faults && errors.Is(err, virtio.ErrDeviceBroken):
	default:
		t.Fatalf("unexpected error %v", err)
	}
}
