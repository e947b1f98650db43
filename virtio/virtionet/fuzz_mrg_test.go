package virtionet_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/devmodel"
	"github.com/nke-harness/nke/virtio/virtionet"
)

// FuzzMergedRx delivers frames of any size through mergeable rx buffers
// (MRG_RXBUF, spec 5.1.6.4) while the device rewrites, as the input says,
// the header (num_buffers, flags, gso_type) and the used length of any
// buffer of a packet. Whatever it does, every packet the driver returns is
// a frame the device was given, whole, in order: a lie about the layout is
// a device fault or a counted drop, never a shifted stream. No buffer
// leaks.
//
// Input: a byte choosing the MTU and queue size, then ops: 0x0N deliver a
// frame of a size from the next two bytes; 0x1N receive a burst of N+1;
// 0x2N mangle the next packet (kind N, parameters from the next bytes);
// 0x3N recover if the driver reports trouble.
func FuzzMergedRx(f *testing.F) {
	f.Add([]byte{0x00, 0x00, 0x10, 0x00, 0x1f})
	f.Add([]byte{0x01, 0x00, 0x88, 0x13, 0x10, 0x10, 0x10})
	f.Add([]byte{0x02, 0x21, 0x01, 0x05, 0x00, 0x88, 0x13, 0x1f, 0x30, 0x00, 0xdc, 0x05, 0x1f})
	f.Add([]byte{0x03, 0x23, 0x00, 0x02, 0x00, 0xdc, 0x05, 0x17, 0x30})
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 1 {
			return
		}
		mtu := []uint16{1500, 4000, 9000, 16000}[in[0]&3]
		qmax := []uint16{16, 64}[in[0]>>2&1]
		heap := dma.NewHeap(4 << 20)
		dev := devmodel.New(heap, devmodel.Options{Features: devmodel.QEMUFeatures | 1<<virtionet.FMTU, MTU: mtu, QueueMax: qmax})
		drv, err := virtionet.Open(dev, heap, virtionet.Options{RxBuffers: 2 * int(qmax)})
		if err != nil {
			t.Fatal(err)
		}
		prog := in[1:]
		next := func() byte {
			if len(prog) == 0 {
				return 0
			}
			b := prog[0]
			prog = prog[1:]
			return b
		}
		frames := map[uint32][]byte{}
		var seq, lastSeen uint32
		pkts := make([]*mbuf.Mbuf, 16)
		got := make([]byte, 1<<16)
		for len(prog) > 0 {
			op := next()
			arg := op & 15
			switch op >> 4 {
			case 0:
				size := 14 + 4 + int(binary.LittleEndian.Uint16([]byte{next(), next()}))%(int(mtu)+10)
				seq++
				fr := frame(mac, int(seq), size)
				binary.BigEndian.PutUint32(fr[14:], seq)
				frames[seq] = fr
				dev.Deliver(fr)
			case 1:
				n, err := drv.RxBurst(pkts[:arg+1])
				for _, m := range pkts[:n] {
					// A device that misreports the last buffer's length
					// truncates its frame or appends stale bytes; either
					// way the packet starts where a frame it was given
					// starts.
					l := m.CopyOut(got)
					s := lastSeen + 1
					if l >= 18 {
						s = binary.BigEndian.Uint32(got[14:])
					}
					want, ok := frames[s]
					k := min(l, len(want))
					if !ok || !bytes.Equal(got[:k], want[:k]) || l != m.PktLen() {
						t.Fatalf("received %d bytes, not the start of frame %d (of %d): a shifted stream", l, s, seq)
					}
					if s <= lastSeen {
						t.Fatalf("frame %d after frame %d: out of order or twice", s, lastSeen)
					}
					lastSeen = s
					m.Free()
				}
				if err != nil && !errors.Is(err, virtio.ErrDeviceBroken) {
					t.Fatalf("RxBurst: %v", err)
				}
			case 2:
				kind, j, v := arg%6, int(next()), next()
				dev.MangleNextRx(func(h virtionet.Header, lens []uint32) {
					i := j % len(lens)
					switch kind {
					case 0:
						lens[i] -= min(lens[i], uint32(v))
					case 1:
						lens[i] += uint32(v)
					case 2:
						h.SetNumBuffers(uint16(v))
					case 3:
						h[0] = v // flags
					case 4:
						h[1] = v // gso_type
					case 5:
						lens[i] = uint32(v)
					}
				})
			case 3:
				if drv.Health() != nil {
					if err := drv.Recover(); err != nil {
						t.Fatalf("Recover: %v", err)
					}
				}
			}
			if err := dev.Err(); err != nil {
				t.Fatalf("the driver broke the protocol: %v", err)
			}
		}
		if err := drv.Recover(); err != nil {
			t.Fatal(err)
		}
		rx, _ := drv.QueueSizes()
		if p := drv.RxPool(); p.Avail()+int(rx) != p.Cap() {
			t.Fatalf("rx buffers leaked: %d free + %d in the ring of %d", p.Avail(), rx, p.Cap())
		}
	})
}
