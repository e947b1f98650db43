package virtqueue

import (
	"errors"
	"fmt"
	"testing"

	"github.com/nke-harness/nke/nke/dma"
)

// prog is a fuzz input read a byte at a time; it reads zeros once empty.
type prog []byte

func (p *prog) next() byte {
	if len(*p) == 0 {
		return 0
	}
	b := (*p)[0]
	*p = (*p)[1:]
	return b
}

func (p *prog) u16() uint16 { return uint16(p.next()) | uint16(p.next())<<8 }

// FuzzPackedRing drives a PackedQueue against a device that, besides
// popping and completing buffers properly, writes whatever the input says
// into the ring: used descriptors at any slot with any id, length and flags
// (wrap bits included), raw pushes and used-position jumps. The driver must
// never panic, never return an id it had not handed to the device, keep its
// descriptor and id accounting exact, refuse only with a *DeviceError (and
// only once the device misbehaved), and work again after Reset.
func FuzzPackedRing(f *testing.F) {
	// Seeds: testdata/fuzz/FuzzPackedRing, one scenario each.
	f.Fuzz(func(t *testing.T, in []byte) {
		p := prog(in)
		runPackedHostile(t, &p)
	})
}

type fuzzBuf struct {
	descs     uint16
	writable  uint32
	published bool
	pushed    int64 // length the well-behaved device pushed, or -1
}

func runPackedHostile(t testing.TB, p *prog) {
	cfg := p.next()
	size := 2 + uint16(cfg%16)
	eventIdx := cfg&0x80 != 0
	e := newEnvHeap(t, layouts[1], size, eventIdx, true, 8<<10)
	q := e.drv.(*PackedQueue)
	data := e.buf(4096)
	tables := make([]dma.Block, size)
	for i := range tables {
		tables[i] = e.buf(16 * 4)
	}
	model := map[uint16]*fuzzBuf{}
	hostile := false // the device misbehaved since the last reset
	var held []Chain // popped by the device, not pushed
	recent := 0      // pops since the last push, which Unpop may take back
	var broken error
	out := make([]Used, 32)

	devq := func() *PackedDeviceQueue { return e.dev.(*PackedDeviceQueue) }
	add := func(id uint16, ok bool, descs uint16, w uint32) {
		if !ok {
			return
		}
		if broken != nil {
			t.Fatal("add succeeded on a broken queue")
		}
		if model[id] != nil {
			t.Fatalf("id %d handed out while in flight", id)
		}
		model[id] = &fuzzBuf{descs: descs, writable: w, pushed: -1}
	}
	segsFor := func(op byte) []Seg {
		n := int(op&3) + 1
		segs := make([]Seg, n)
		nr := int(op>>2&3) % (n + 1) // readable ones first
		for i := range segs {
			segs[i] = Seg{data.Addr + uint64(64*i), uint32(16 + 8*i), i >= nr}
		}
		return segs
	}
	writableOf := func(segs []Seg) uint32 {
		w := uint32(0)
		for _, s := range segs {
			if s.Writable {
				w += s.Len
			}
		}
		return w
	}

	for steps := 0; len(*p) > 0 && steps < 2000; steps++ {
		op := p.next()
		switch op >> 4 {
		case 0: // add op&15 one-descriptor buffers
			for i := 0; i < int(op&15); i++ {
				w := uint32(256 * (1 - i%2)) // writable, readable, ...
				id, ok := q.Add1(data.Addr, 256, w != 0)
				add(id, ok, 1, w)
			}
		case 1: // add a chain, maybe indirect
			segs := segsFor(op)
			if op&8 != 0 {
				next, ok := q.PeekID()
				if !ok {
					break
				}
				id, ok := q.AddIndirect(tables[next], segs)
				if ok && id != next {
					t.Fatalf("AddIndirect returned %d, PeekID said %d", id, next)
				}
				add(id, ok, 1, writableOf(segs))
			} else {
				id, ok := q.AddChain(segs)
				add(id, ok, uint16(len(segs)), writableOf(segs))
			}
		case 2: // publish and decide on a kick
			q.Publish()
			q.NeedsKick()
			if broken == nil {
				for _, b := range model {
					b.published = true
				}
			}
		case 3: // the device pops up to op&15 buffers
			for i := 0; i < int(op&15)+1; i++ {
				var c Chain
				ok, err := e.dev.Pop(&c)
				if err != nil && !hostile {
					t.Fatalf("device refused a buffer of a correct driver: %v", err)
				}
				if !ok {
					break
				}
				if m := model[c.ID]; !hostile && (m == nil || !m.published || uint32(c.WritableLen()) != m.writable) {
					t.Fatalf("device popped id %d (%d writable), driver has %+v", c.ID, c.WritableLen(), m)
				}
				held = append(held, c)
				recent++
			}
		case 4: // the device completes op&15+1 held buffers, picked by input
			for i := 0; i < int(op&15)+1 && len(held) > 0; i++ {
				k := int(p.next()) % len(held)
				c := held[k]
				held = append(held[:k], held[k+1:]...)
				l := uint32(c.WritableLen())
				if l > 0 {
					l -= uint32(p.next()) % (l + 1)
				}
				e.dev.Push(c.ID, l)
				if m := model[c.ID]; m != nil && !hostile {
					m.pushed = int64(l)
				}
				recent = 0
			}
		case 5:
			e.dev.PublishUsed()
		case 6: // write a used descriptor anywhere, with anything
			pos := uint16(p.next()) % size
			id := p.u16()
			if op&1 == 0 {
				id %= size + 2
			}
			l := uint32(p.next()) << (op >> 1 & 7)
			flags := p.u16()
			pokeUsed(e, pos, id, l, flags)
			hostile = true
		case 7: // raw push through the device
			e.dev.PushRaw(uint32(p.next())|uint32(op&1)<<8, uint32(p.next())<<(op>>1&7))
			hostile, recent = true, 0
		case 8: // the used position jumps
			e.dev.JumpUsed(uint16(p.next()) | uint16(op&3)<<8)
			hostile = true
		case 9: // the driver reaps
			n, err := q.Reap(out[:int(op&15)+1])
			for _, u := range out[:n] {
				m := model[u.ID]
				if m == nil || !m.published {
					t.Fatalf("reaped id %d, which the device was not given (%+v)", u.ID, m)
				}
				if !hostile && int64(u.Len) != m.pushed {
					t.Fatalf("reaped id %d with %d bytes, device pushed %d", u.ID, u.Len, m.pushed)
				}
				if u.Len > m.writable {
					t.Fatalf("reaped id %d with %d bytes, only %d writable", u.ID, u.Len, m.writable)
				}
				delete(model, u.ID)
			}
			if err != nil {
				var de *DeviceError
				if !errors.As(err, &de) || q.Broken() != err {
					t.Fatalf("Reap error %v is not the queue's *DeviceError", err)
				}
				if !hostile {
					t.Fatalf("a well-behaved device was refused: %v", err)
				}
				if broken != nil && err != broken {
					t.Fatalf("broken queue changed its error from %v to %v", broken, err)
				}
				broken = err
			}
		case 10: // reset both sides, as a driver does after refusing a device
			var ids []uint16
			q.InFlightIDs(func(id uint16) { ids = append(ids, id) })
			if len(ids) != len(model) {
				t.Fatalf("InFlightIDs %v, model has %d", ids, len(model))
			}
			q.Reset()
			e.newDevice()
			clear(model)
			held, recent, hostile, broken = held[:0], 0, false, nil
		case 11:
			e.dev.SetNotify(op&1 != 0)
		case 12: // the device gives back its latest pops
			if recent > 0 {
				k := int(p.next())%min(recent, unpopDepth) + 1
				e.dev.Unpop(k)
				held = held[:len(held)-k]
				recent -= k
			}
		default: // the device looks at the driver's interrupt request
			if devq().DriverWantsInterrupt() {
				t.Fatal("the driver asked for an interrupt")
			}
		}
		checkPacked(t, q, model)
		if broken != nil {
			if _, ok := q.Add1(data.Addr, 1, true); ok {
				t.Fatal("Add1 on a broken queue succeeded")
			}
			if n, err := q.Reap(out); n != 0 || err != broken {
				t.Fatalf("broken queue Reap = %d, %v", n, err)
			}
		}
	}
}

// checkPacked verifies the driver's private accounting against itself and
// against the model of what the test added and reaped.
func checkPacked(t testing.TB, q *PackedQueue, model map[uint16]*fuzzBuf) {
	t.Helper()
	inChains, inFlight, published := 0, 0, 0
	for id, b := range q.bufs {
		m := model[uint16(id)]
		if (b.descs != 0) != (m != nil) {
			t.Fatalf("id %d: driver has %+v, model %+v", id, b, m)
		}
		if b.descs == 0 {
			if b != (bufState{}) {
				t.Fatalf("free id %d has state %+v", id, b)
			}
			continue
		}
		if b.descs != m.descs || b.writable != m.writable || b.pub != m.published {
			t.Fatalf("id %d: driver has %+v, model %+v", id, b, m)
		}
		inChains += int(b.descs)
		inFlight++
		if b.pub {
			published++
		}
	}
	size := int(q.size)
	if inChains+int(q.numFree) != size {
		t.Fatalf("descriptors leak: %d in chains + %d free != %d", inChains, q.numFree, size)
	}
	if inFlight != int(q.inFlight) || published != int(q.published) || q.nFreeIDs+inFlight != size {
		t.Fatalf("counts: in flight %d/%d published %d/%d free ids %d", inFlight, q.inFlight, published, q.published, q.nFreeIDs)
	}
	seen := make([]bool, size)
	for _, id := range q.freeIDs[:q.nFreeIDs] {
		if id >= q.size || seen[id] || q.bufs[id].descs != 0 {
			t.Fatalf("free id stack holds %d wrongly", id)
		}
		seen[id] = true
	}
	dist := int(q.availPos) - int(q.usedPos)
	if q.availWrap != q.usedWrap {
		dist += size
	}
	if dist != inChains {
		t.Fatalf("ring positions avail %d/%v used %d/%v are %d apart, %d descriptors in flight", q.availPos, q.availWrap, q.usedPos, q.usedWrap, dist, inChains)
	}
	unpub := 0
	for _, ph := range q.pend[:q.npend] {
		unpub += int(q.bufs[uint16(ph.word)].descs)
	}
	pdist := int(q.pubPos) - int(q.usedPos)
	if q.pubWrap != q.usedWrap {
		pdist += size
	}
	if q.broken == nil && (pdist+unpub != inChains || q.npend != inFlight-published) {
		t.Fatalf("published end %d/%v: %d descriptors published, %d pending in %d heads, %d in flight", q.pubPos, q.pubWrap, pdist, unpub, q.npend, inChains)
	}
}

// FuzzRingExchange drives each layout's driver against its well-behaved
// device with input-chosen operations: chains of 1-4 segments, direct or
// indirect, published in batches, popped, given back, completed in any order
// with any length up to the writable bytes, reaped in batches of any size.
// Every buffer must come back exactly once with the length pushed, the
// device must see exactly the segments added, nothing may be refused, and
// a device that enabled notifications and found nothing must be kicked
// for the next buffer.
func FuzzRingExchange(f *testing.F) {
	// Seeds: testdata/fuzz/FuzzRingExchange, one scenario each.
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, lc := range layouts {
			p := prog(in)
			runExchange(t, lc, &p)
		}
	})
}

type exchangeBuf struct {
	segs   []Seg
	pushed int64 // -1 until the device pushes it
}

func runExchange(t testing.TB, lc layoutCase, p *prog) {
	cfg := p.next()
	var size uint16
	if lc.name == "split" {
		size = 2 << (cfg % 6)
	} else {
		size = 2 + uint16(cfg%63)
	}
	eventIdx, indirect := cfg&0x40 != 0, cfg&0x80 != 0
	e := newEnvHeap(t, lc, size, eventIdx, indirect, 16<<10)
	data := e.buf(4096)
	tables := make([]dma.Block, size)
	for i := range tables {
		tables[i] = e.buf(16 * 4)
	}
	model := map[uint16]*exchangeBuf{}
	var held []Chain
	recent := 0
	waiting := false // the device asked for a kick and found nothing
	out := make([]Used, 64)
	added, completed := 0, 0
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("%s size %d eventIdx %v indirect %v: %s", lc.name, size, eventIdx, indirect, fmt.Sprintf(format, args...))
	}
	unpublished := 0
	publish := func() {
		e.drv.Publish()
		kick := e.drv.NeedsKick()
		if waiting && unpublished > 0 && !kick {
			fail("no kick for %d new buffers to a device waiting for one", unpublished)
		}
		if kick {
			waiting = false
		}
		unpublished = 0
	}
	var spare []Chain // pushed chains, whose slices Pop reuses
	pop := func() bool {
		var c Chain
		if len(spare) > 0 {
			c, spare = spare[len(spare)-1], spare[:len(spare)-1]
		}
		ok, err := e.dev.Pop(&c)
		if err != nil {
			fail("device refused a buffer: %v", err)
		}
		if !ok {
			spare = append(spare, c)
			return false
		}
		m := model[c.ID]
		if m == nil {
			fail("device popped id %d, not in flight", c.ID)
		}
		r, w := 0, 0
		for _, s := range m.segs {
			want, _ := e.heap.Slice(s.Addr, int(s.Len))
			var got []byte
			if s.Writable {
				got, w = c.Write[w], w+1
			} else {
				got, r = c.Read[r], r+1
			}
			if len(got) != len(want) || &got[0] != &want[0] {
				fail("id %d: segment at %#x+%d popped as %d bytes elsewhere", c.ID, s.Addr, s.Len, len(got))
			}
		}
		if r != len(c.Read) || w != len(c.Write) {
			fail("id %d: %d read, %d write popped for %d segments", c.ID, len(c.Read), len(c.Write), len(m.segs))
		}
		held = append(held, c)
		recent++
		return true
	}
	reap := func(limit int) int {
		n, err := e.drv.Reap(out[:limit])
		if err != nil {
			fail("Reap: %v", err)
		}
		for _, u := range out[:n] {
			m := model[u.ID]
			if m == nil || m.pushed != int64(u.Len) {
				fail("reaped id %d with %d bytes; model %+v", u.ID, u.Len, m)
			}
			delete(model, u.ID)
			completed++
		}
		return n
	}

	for steps := 0; len(*p) > 0 && steps < 3000; steps++ {
		op := p.next()
		switch op >> 4 {
		case 0, 1, 8, 9: // add a buffer: op&3+1 segments, some readable
			n := int(op&3) + 1
			nr := int(op>>2&3) % (n + 1)
			segs := make([]Seg, n)
			for i := range segs {
				segs[i] = Seg{data.Addr + uint64(128*i), uint32(1 + int(p.next())%120), i >= nr}
			}
			var id uint16
			var ok bool
			if op&0x80 != 0 && indirect {
				next, ok2 := e.drv.PeekID()
				if !ok2 {
					break
				}
				id, ok = e.drv.AddIndirect(tables[next], segs)
				if ok && id != next {
					fail("AddIndirect returned %d, PeekID said %d", id, next)
				}
			} else {
				id, ok = e.drv.AddChain(segs)
			}
			if !ok {
				break
			}
			if model[id] != nil {
				fail("id %d handed out while in flight", id)
			}
			model[id] = &exchangeBuf{segs: segs, pushed: -1}
			added++
			unpublished++
		case 2:
			publish()
		case 3: // pop op&15+1
			for i := 0; i < int(op&15)+1 && pop(); i++ {
			}
		case 4: // complete op&15+1 held buffers in input order
			for i := 0; i < int(op&15)+1 && len(held) > 0; i++ {
				k := int(p.next()) % len(held)
				c := held[k]
				held = append(held[:k], held[k+1:]...)
				l := uint32(c.WritableLen())
				if l > 0 {
					l -= uint32(p.next()) % (l + 1)
				}
				e.dev.Push(c.ID, l)
				model[c.ID].pushed = int64(l)
				recent = 0
				spare = append(spare, c)
			}
		case 5:
			e.dev.PublishUsed()
		case 6:
			reap(int(op&15)*4 + 1)
		case 7: // the device gives back its latest pops
			if recent > 0 {
				k := int(p.next())%min(recent, unpopDepth) + 1
				e.dev.Unpop(k)
				held = held[:len(held)-k]
				recent -= k
				waiting = false // it has buffers again
			}
		default: // the device enables or disables notifications
			on := op&1 != 0
			e.dev.SetNotify(on)
			waiting = on && !e.dev.HasAvail()
		}
		if int(e.drv.InFlight()) != len(model) {
			fail("InFlight %d, model %d", e.drv.InFlight(), len(model))
		}
	}
	// Drain: everything added comes back.
	publish()
	for round := 0; len(model) > 0; round++ {
		if round > int(size)+2 {
			fail("%d buffers never came back", len(model))
		}
		for pop() {
		}
		for _, c := range held {
			e.dev.Push(c.ID, 0)
			model[c.ID].pushed = 0
		}
		held = held[:0]
		e.dev.PublishUsed()
		for reap(len(out)) > 0 {
		}
	}
	if completed != added || e.drv.NumFree() != size {
		fail("%d added, %d completed, %d free", added, completed, e.drv.NumFree())
	}
}
