package virtqueue

import (
	"errors"
	"testing"
)

// FuzzUsedRing drives a queue against a device that writes whatever the
// input says into the used ring. The driver must never panic, never hand out
// an id it did not have in flight, keep its descriptor accounting exact, and
// recover with Reset after refusing the device.
func FuzzUsedRing(f *testing.F) {
	f.Add([]byte{0x08, 0x10, 0x20, 0x01, 0x30})                   // add, publish, device completes, reap
	f.Add([]byte{0x04, 0x10, 0x43, 0x7f, 0x00, 0x00, 0x50, 0x30}) // raw bogus id
	f.Add([]byte{0x04, 0x10, 0x60, 0xff, 0xff, 0x30})             // used index jump
	f.Add([]byte{0x83, 0x10, 0x20, 0x02, 0x30, 0x70, 0x04, 0x10}) // chains, reset, reuse
	f.Fuzz(func(t *testing.T, prog []byte) {
		for _, eventIdx := range []bool{false, true} {
			runProgram(t, prog, eventIdx)
		}
	})
}

func runProgram(t *testing.T, prog []byte, eventIdx bool) {
	p := newPair(t, 16, eventIdx, true)
	buf := p.buf(t, 256)
	tbl := p.buf(t, 16*4)
	var out [16]Used
	var c Chain
	next := func() byte {
		if len(prog) == 0 {
			return 0
		}
		b := prog[0]
		prog = prog[1:]
		return b
	}
	check := func() {
		inChains := 0
		for head, n := range p.drv.chainLen {
			inChains += int(n)
			if n == 0 && p.drv.writable[head] != 0 {
				t.Fatalf("head %d free but writable %d", head, p.drv.writable[head])
			}
		}
		if inChains+int(p.drv.numFree) != int(p.drv.Size()) {
			t.Fatalf("descriptors leak: %d in chains + %d free != %d", inChains, p.drv.numFree, p.drv.Size())
		}
	}
	for len(prog) > 0 {
		op := next()
		switch op >> 4 {
		case 0: // add op&15 one-descriptor buffers
			for i := 0; i < int(op&15); i++ {
				p.drv.Add1(buf.Addr, 256, op&1 == 0)
			}
		case 8: // add a chain of op&7 segments, maybe indirect
			segs := make([]Seg, int(op&7)+1)
			for i := range segs {
				segs[i] = Seg{buf.Addr, 64, i == len(segs)-1}
			}
			if op&8 != 0 {
				p.drv.AddIndirect(tbl, segs)
			} else {
				p.drv.AddChain(segs)
			}
		case 1:
			p.drv.Publish()
			p.drv.NeedsKick()
		case 2: // device completes up to n well-formed chains
			for i := 0; i < int(next()); i++ {
				if ok, _ := p.dev.Pop(&c); !ok {
					break
				}
				p.dev.Push(c.ID, uint32(c.WritableLen()))
			}
			p.dev.PublishUsed()
		case 4: // device writes a raw element
			id, l := uint32(next())|uint32(op&3)<<8, uint32(next())<<(op&12)
			p.dev.PushRaw(id, l)
		case 5:
			p.dev.PublishUsed()
		case 6: // device sets used.idx anywhere
			p.dev.SetUsedIdx(uint16(next()) | uint16(next())<<8)
		case 3: // driver reaps
			n, err := p.drv.Reap(out[:op&15+1])
			seen := map[uint16]bool{}
			for _, u := range out[:n] {
				if seen[u.ID] {
					t.Fatalf("id %d reaped twice in one call", u.ID)
				}
				seen[u.ID] = true
			}
			if err != nil {
				var de *DeviceError
				if !errors.As(err, &de) || p.drv.Broken() == nil {
					t.Fatalf("Reap error %v is not a DeviceError on a broken queue", err)
				}
			}
		case 7: // reset both sides, as a driver does after refusing a device
			p.drv.Reset()
			d, err := NewDevice(p.rings, p.heap, eventIdx, true)
			if err != nil {
				t.Fatal(err)
			}
			p.dev = d
			if p.drv.NumFree() != 16 {
				t.Fatalf("after reset NumFree = %d", p.drv.NumFree())
			}
		}
		check()
	}
}
