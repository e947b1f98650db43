package mbuf_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/nke/mbuf/mbuftest"
)

// prog reads a fuzz program's bytes; past the end it reads zeros.
type prog struct{ b []byte }

func (p *prog) more() bool { return len(p.b) > 0 }
func (p *prog) next() int {
	if len(p.b) == 0 {
		return 0
	}
	v := p.b[0]
	p.b = p.b[1:]
	return int(v)
}

// FuzzChainOps runs a program of chain operations on a packet and a plain
// []byte model side by side, checking contents and PktLen after every
// operation, that the packet header and tag stay on the head, and that
// nothing leaks.
func FuzzChainOps(f *testing.F) {
	f.Add([]byte{3, 10, 20, 5, 0, 30, 1, 5, 1, 251, 3, 17, 1, 4, 0})
	f.Add([]byte{1, 40, 2, 30, 7, 3, 9, 6, 5, 3, 5, 10, 0, 60})
	f.Add([]byte{0, 48, 9, 40, 9, 40, 0, 100, 3, 60, 0, 4, 1, 10, 2, 1, 11})
	f.Fuzz(func(t *testing.T, data []byte) {
		p := mbuftest.NewPool(t, "fuzz", 24, testBuf, testHead)
		mbuftest.CheckPools(t, p)
		pr := &prog{data}
		id, _ := mbuf.TagID("com.example.fuzz")
		fill := byte(0)
		pattern := func(n int) []byte {
			b := make([]byte, n)
			for i := range b {
				fill++
				b[i] = fill
			}
			return b
		}

		// The initial chain: 1..4 buffers of 0..48 bytes.
		nsegs := 1 + pr.next()%4
		var m, last *mbuf.Mbuf
		var model []byte
		for i := 0; i < nsegs; i++ {
			b := p.Get()
			n := pr.next() % (testBuf - testHead + 1)
			off := testHead
			if i > 0 {
				off = pr.next() % (testBuf - n + 1)
			}
			b.SetData(off, n)
			pat := pattern(n)
			copy(b.Bytes(), pat)
			model = append(model, pat...)
			if m == nil {
				m = b
			} else {
				last.SetNext(b)
			}
			last = b
		}
		m.RcvIf = 7
		if err := mbuf.TagPut(m, id, 1, uint64(0x1234)); err != nil {
			t.Fatal(err)
		}
		defer func() { m.Free() }()

		check := func(step int, what string) {
			t.Helper()
			got := make([]byte, m.PktLen())
			m.CopyOut(got)
			if m.PktLen() != len(model) || !bytes.Equal(got, model) {
				t.Fatalf("step %d %s: packet %x (PktLen %d), model %x", step, what, got, m.PktLen(), model)
			}
			if v, ok := mbuf.TagGet[uint64](m, id, 1); !ok || v != 0x1234 || m.RcvIf != 7 {
				t.Fatalf("step %d %s: header lost (tag %v %v, rcvif %d)", step, what, v, ok, m.RcvIf)
			}
		}
		check(-1, "build")
		for step := 0; pr.more() && step < 64; step++ {
			op, a := pr.next()%12, pr.next()
			var what string
			switch op {
			case 0:
				what = fmt.Sprintf("Pullup(%d)", a)
				want := a <= len(model) && a <= testBuf
				if ok := m.Pullup(a); ok != want || ok && m.Len() < a {
					t.Fatalf("%s = %v, want %v (first len %d)", what, ok, want, m.Len())
				}
			case 1:
				n := int(int8(a))
				what = fmt.Sprintf("AdjPkt(%d)", n)
				want := n >= -len(model) && n <= len(model)
				if ok := m.AdjPkt(n); ok != want {
					t.Fatalf("%s = %v", what, ok)
				}
				if want && n >= 0 {
					model = model[n:]
				} else if want {
					model = model[:len(model)+n]
				}
			case 2:
				n := a % (testBuf + 8)
				what = fmt.Sprintf("PrependPkt(%d)", n)
				nm, err := m.PrependPkt(n, p)
				switch {
				case n > testBuf:
					if !errors.Is(err, mbuf.ErrBufSize) {
						t.Fatalf("%s: %v", what, err)
					}
				case errors.Is(err, mbuf.ErrNoBuffers) && p.Avail() == 0:
				case err != nil:
					t.Fatalf("%s: %v", what, err)
				default:
					m = nm
					pat := pattern(n)
					if m.Len() < n || m.CopyBack(0, pat) != n {
						t.Fatalf("%s: first buffer holds %d", what, m.Len())
					}
					model = append(pat, model...)
				}
			case 3:
				what = fmt.Sprintf("Split(%d)", a)
				rest, err := m.Split(a, p)
				switch {
				case a <= 0 || a >= len(model):
					if !errors.Is(err, mbuf.ErrRange) {
						t.Fatalf("%s: %v", what, err)
					}
				case errors.Is(err, mbuf.ErrNoBuffers) && p.Avail() == 0:
				case err != nil:
					t.Fatalf("%s: %v", what, err)
				default:
					got := make([]byte, rest.PktLen())
					rest.CopyOut(got)
					if !bytes.Equal(got, model[a:]) || rest.Tags() != 0 || rest.RcvIf != 7 {
						t.Fatalf("%s: rest %x, want %x (tags %d)", what, got, model[a:], rest.Tags())
					}
					if pr.next()%2 == 0 {
						m.Last().SetNext(rest)
					} else {
						rest.Free()
						model = model[:a]
					}
				}
			case 4:
				what = "Dup"
				d, err := m.Dup(p)
				if errors.Is(err, mbuf.ErrNoBuffers) {
					break
				}
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				if a%2 == 0 {
					m, d = d, m
				}
				d.Free()
			case 5:
				off, n := a%(len(model)+2), pr.next()%(len(model)+2)
				what = fmt.Sprintf("Copy(%d, %d)", off, n)
				c, err := m.Copy(off, n, p)
				switch {
				case off+n > len(model):
					if !errors.Is(err, mbuf.ErrRange) {
						t.Fatalf("%s: %v", what, err)
					}
				case errors.Is(err, mbuf.ErrNoBuffers):
				case err != nil:
					t.Fatalf("%s: %v", what, err)
				default:
					got := make([]byte, c.PktLen())
					c.CopyOut(got)
					if !bytes.Equal(got, model[off:off+n]) {
						t.Fatalf("%s: %x, want %x", what, got, model[off:off+n])
					}
					c.Free()
				}
			case 6:
				off, n := a%(len(model)+2), pr.next()%(len(model)+2)
				what = fmt.Sprintf("CopyData(%d, %d)", off, n)
				dst := make([]byte, n)
				err := m.CopyData(off, dst)
				if off+n > len(model) {
					if !errors.Is(err, mbuf.ErrRange) {
						t.Fatalf("%s: %v", what, err)
					}
				} else if err != nil || !bytes.Equal(dst, model[off:off+n]) {
					t.Fatalf("%s: %v %x", what, err, dst)
				}
			case 7:
				off, n := a%(len(model)+2), pr.next()%16
				what = fmt.Sprintf("CopyBack(%d, %d)", off, n)
				pat := pattern(n)
				k := m.CopyBack(off, pat)
				want := 0
				if off < len(model) {
					want = min(n, len(model)-off)
				}
				if k != want {
					t.Fatalf("%s = %d, want %d", what, k, want)
				}
				copy(model[min(off, len(model)):], pat[:k])
			case 8:
				l := m.Last()
				n := a % (l.TrailingSpace() + 1)
				what = fmt.Sprintf("Append(%d)", n)
				b, ok := l.Append(n)
				if !ok {
					t.Fatalf("%s failed", what)
				}
				pat := pattern(n)
				copy(b, pat)
				model = append(model, pat...)
			case 9:
				b := p.Get()
				if b == nil {
					break
				}
				n := a % (testBuf + 1)
				what = fmt.Sprintf("link buffer of %d", n)
				b.SetData(testBuf-n, n)
				pat := pattern(n)
				copy(b.Bytes(), pat)
				m.Last().SetNext(b)
				model = append(model, pat...)
			case 10:
				what = "Ref"
				m.Ref()
				if m.LeadingSpace() != 0 || m.Last().TrailingSpace() != 0 || !m.Shared() {
					t.Fatal("shared chain has writable space")
				}
				if len(model) > 0 && (m.AdjPkt(1) || m.Pullup(m.Len()+1)) {
					t.Fatal("shared chain changed")
				}
				if _, err := m.Split(1, p); len(model) > 1 && !errors.Is(err, mbuf.ErrShared) {
					t.Fatalf("Split of a shared chain: %v", err)
				}
				m.Free()
			case 11:
				what = "tags"
				if _, err := m.TagAllocate(id, uint16(2+a%6), 1+a%mbuf.TagSize); err != nil &&
					!errors.Is(err, mbuf.ErrTagSpace) && !errors.Is(err, mbuf.ErrTagExists) {
					t.Fatal(err)
				}
				m.TagDelete(id, uint16(2+pr.next()%6))
			}
			check(step, what)
		}
	})
}

// FuzzTags runs a program of tag operations against a map model.
func FuzzTags(f *testing.F) {
	f.Add([]byte{0, 1, 4, 0, 2, 8, 1, 1, 0, 2, 1, 3, 0, 3, 32, 0, 4, 1, 0, 5, 1, 3, 2, 0})
	f.Add([]byte{3, 1, 3, 2, 4, 1, 0, 1, 33, 0, 1, 0, 2, 1, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		p := mbuftest.NewPool(t, "tags", 2, testBuf, testHead)
		mbuftest.CheckPools(t, p)
		ids := [2]mbuf.TagIDType{}
		ids[0], _ = mbuf.TagID("com.example.fuzztags0")
		ids[1], _ = mbuf.TagID("com.example.fuzztags1")
		type key struct {
			id  mbuf.TagIDType
			typ uint16
		}
		model := map[key][]byte{}
		m := p.Get()
		defer func() { m.Free() }()
		pr := &prog{data}
		for pr.more() {
			op, k := pr.next()%6, key{ids[pr.next()%2], uint16(pr.next() % 6)}
			switch op {
			case 0: // allocate
				size := pr.next() % (mbuf.TagSize + 2)
				b, err := m.TagAllocate(k.id, k.typ, size)
				_, exists := model[k]
				switch {
				case size < 1 || size > mbuf.TagSize:
					if !errors.Is(err, mbuf.ErrTagSize) {
						t.Fatalf("size %d: %v", size, err)
					}
				case exists:
					if !errors.Is(err, mbuf.ErrTagExists) {
						t.Fatalf("exists: %v", err)
					}
				case len(model) == mbuf.TagSlots:
					if !errors.Is(err, mbuf.ErrTagSpace) {
						t.Fatalf("full: %v", err)
					}
				case err != nil:
					t.Fatal(err)
				default:
					if !bytes.Equal(b, make([]byte, size)) {
						t.Fatalf("new tag not zeroed: %x", b)
					}
					for i := range b {
						b[i] = byte(pr.next())
					}
					model[k] = append([]byte(nil), b...)
				}
			case 1: // delete
				m.TagDelete(k.id, k.typ)
				delete(model, k)
			case 2: // put a uint32
				v := uint32(pr.next()) << 8
				err := mbuf.TagPut(m, k.id, k.typ, v)
				if _, exists := model[k]; !exists && len(model) == mbuf.TagSlots {
					if !errors.Is(err, mbuf.ErrTagSpace) {
						t.Fatalf("put into full table: %v", err)
					}
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				model[k] = binary.NativeEndian.AppendUint32(nil, v)
			case 3: // move the packet: Dup, or free and get a fresh one
				if pr.next()%2 == 0 {
					d, err := m.Dup(p)
					if err != nil {
						t.Fatal(err)
					}
					m.Free()
					m = d
				} else {
					m.Free()
					m = p.Get()
					clear(model)
				}
			case 4: // CopyPktHdr onto a fresh buffer
				d := p.Get()
				mbuf.CopyPktHdr(d, m)
				m.Free()
				m = d
			}
			if m.Tags() != len(model) {
				t.Fatalf("packet has %d tags, model %d", m.Tags(), len(model))
			}
			for _, id := range ids {
				for typ := uint16(0); typ < 6; typ++ {
					got, ok := m.TagFind(id, typ)
					want, wok := model[key{id, typ}]
					if ok != wok || !bytes.Equal(got, want) {
						t.Fatalf("tag %d/%d: %x %v, model %x %v", id, typ, got, ok, want, wok)
					}
				}
			}
		}
	})
}
