package virtionet_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/nke-harness/nke/kernel/dma"
	"github.com/nke-harness/nke/kernel/mbuf"
	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/devmodel"
	"github.com/nke-harness/nke/virtio/virtionet"
)

// FuzzRxHeader: any 12 bytes the device writes are accepted or refused with
// an error; an accepted buffer count is within range, and re-encoding the
// decoded fields gives the same bytes.
func FuzzRxHeader(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0}, uint64(1<<virtionet.FMrgRxbuf))
	f.Add([]byte{1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 1, 0}, uint64(1<<virtionet.FGuestCsum))
	f.Add([]byte{0, 1, 54, 0, 0xa8, 5, 0, 0, 0, 0, 2, 0}, uint64(0))
	f.Add([]byte{0, 0, 0}, uint64(0))
	f.Fuzz(func(t *testing.T, b []byte, fs uint64) {
		n, err := virtionet.CheckRxHeader(b, virtio.Features(fs), 256)
		if err != nil {
			if n != 0 {
				t.Fatalf("error %v with count %d", err, n)
			}
			return
		}
		if n < 1 || n > 256 {
			t.Fatalf("accepted count %d", n)
		}
		h := virtionet.Header(b[:virtionet.HeaderLen])
		out := make(virtionet.Header, virtionet.HeaderLen)
		out.Encode(h.Fields())
		if string(out) != string(b[:virtionet.HeaderLen]) {
			t.Fatalf("round trip % x -> % x", b[:12], []byte(out))
		}
	})
}

// FuzzParseConfig: configuration bytes are accepted or refused, never
// panic, and what is accepted is within the spec's ranges.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte{0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0, 1, 0, 0xdc, 5}, uint64(devmodel.QEMUFeatures|1<<virtionet.FMTU))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, uint64(devmodel.QEMUFeatures))
	f.Add([]byte{2, 0, 0, 0, 0, 1}, uint64(1<<virtionet.FMAC|1<<virtionet.FMQ))
	f.Fuzz(func(t *testing.T, b []byte, fs uint64) {
		c, err := virtionet.ParseConfig(b, virtio.Features(fs))
		if err != nil {
			if !errors.Is(err, virtionet.ErrConfig) {
				t.Fatalf("error %v does not wrap ErrConfig", err)
			}
			return
		}
		if c.Status&^3 != 0 || c.MaxPairs < 1 || (c.MTU != 0 && c.MTU < 68) {
			t.Fatalf("accepted %+v", c)
		}
		if c.MAC != nil && (c.MAC[0]&1 != 0 || len(c.MAC) != 6) {
			t.Fatalf("accepted MAC %v", c.MAC)
		}
	})
}

// FuzzHostileDevice runs the whole driver against a device model that
// injects faults between deliveries as the input says. The driver must not
// panic, must report device errors as errors, must recover with Recover,
// and must not leak a buffer.
func FuzzHostileDevice(f *testing.F) {
	f.Add([]byte{0x00, 0x10, 0x20, 0x30})
	f.Add([]byte{0x01, 0x40, 0x00, 0x10})
	f.Add([]byte{0x02, 0x51, 0x00, 0x10, 0x05, 0x05})
	f.Add([]byte{0x03, 0x62, 0x21, 0x10, 0x73, 0x10})
	f.Fuzz(func(t *testing.T, prog []byte) {
		heap := dma.NewHeap(1 << 20)
		dev := devmodel.New(heap, devmodel.Options{QueueMax: 16, Tx: func([]byte) {}})
		drv, err := virtionet.Open(dev, heap, virtionet.Options{PoolBuffers: 64})
		if err != nil {
			t.Fatal(err)
		}
		pool := drv.Pool()
		pkts := make([]*mbuf.Mbuf, 8)
		fr := make([]byte, 6000)
		copy(fr, []byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56})
		for len(prog) > 0 {
			op := prog[0]
			prog = prog[1:]
			arg := uint16(op & 15)
			switch op >> 4 {
			case 0: // deliver a frame of some size
				dev.Deliver(fr[:14+int(arg)*390])
			case 1: // receive
				n, err := drv.RxBurst(pkts)
				for _, m := range pkts[:n] {
					m.Free()
				}
				if err != nil && !errors.Is(err, virtio.ErrDeviceBroken) {
					t.Fatalf("RxBurst error %v is not ErrDeviceBroken", err)
				}
			case 2: // send
				m := pool.Get()
				if m != nil {
					m.Append(14 + int(arg)*100)
					if n, _ := drv.TxBurst([]*mbuf.Mbuf{m}); n == 0 {
						m.Free()
					}
				}
			case 3:
				dev.InjectUsedID(int(arg%2), uint32(arg)*5)
			case 4:
				dev.InjectOversize(int(arg%2), uint32(arg)+1)
			case 5:
				dev.InjectUsedIdxJump(int(arg%2), arg+1)
			case 6:
				dev.SetNeedsReset()
			case 7: // the owner's periodic checks and recovery
				if drv.Health() != nil {
					if err := drv.Recover(); err != nil && !errors.Is(err, virtionet.ErrConfig) {
						t.Fatalf("Recover: %v", err)
					}
				}
			case 8:
				dev.SetLink(arg&1 == 0)
				drv.LinkUp()
			case 9:
				var c [virtionet.ConfigSize]byte
				binary.LittleEndian.PutUint16(c[6:], arg)
				c[0] = byte(arg)
				dev.SetConfig(c)
				drv.LinkUp()
			}
		}
		// Whatever happened, a recovery brings back a working device (or
		// refuses garbage configuration) and every buffer is accounted for.
		if err := drv.Recover(); err != nil {
			if !errors.Is(err, virtionet.ErrConfig) {
				t.Fatalf("final Recover: %v", err)
			}
			if pool.Avail() != pool.Cap() {
				t.Fatalf("buffers leaked: %d of %d free after a refused recovery", pool.Avail(), pool.Cap())
			}
			return
		}
		rx, _ := drv.QueueSizes()
		if got := pool.Avail() + int(rx); got != pool.Cap() {
			t.Fatalf("buffers leaked: %d free + %d in the rx ring of %d", pool.Avail(), rx, pool.Cap())
		}
	})
}
