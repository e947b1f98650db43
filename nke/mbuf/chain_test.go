package mbuf_test

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nke-harness/nke/nke/mbuf"
)

func TestPullup(t *testing.T) {
	for _, sh := range chainShapes {
		for _, n := range []int{-1, 0, 1, 5, 9, 10, 11, 30, 36, 37, 48, 65} {
			t.Run(fmt.Sprintf("%s/%d", sh.name, n), func(t *testing.T) {
				p := pools(t, 8)
				m := chain(t, p, data36, sh.segs...)
				defer m.Free()
				ok := m.Pullup(n)
				want := n >= 0 && n <= 36
				if ok != want {
					t.Fatalf("Pullup(%d) = %v, want %v", n, ok, want)
				}
				checkPkt(t, "after", m, data36)
				if ok && m.Len() < n {
					t.Fatalf("first buffer holds %d < %d", m.Len(), n)
				}
				if !ok && m.Segs() != len(sh.segs) {
					t.Fatal("failed Pullup changed the chain")
				}
			})
		}
	}
}

func TestPullupSlidesFrameHeader(t *testing.T) {
	p := pools(t, 4)
	m := p.Get()
	defer m.Free()
	m.SetData(40, 20) // 4 bytes of tailroom
	copy(m.Raw()[26:60], "EEEEEEEEEEEEEE"+"01234567890123456789")
	if !m.SetFrameHeader(-14) {
		t.Fatal("SetFrameHeader")
	}
	n := p.Get()
	n.SetData(0, 20)
	copy(n.Bytes(), "abcdefghijklmnopqrst")
	m.SetNext(n)
	if !m.Pullup(30) || m.Len() != 30 || m.Segs() != 2 {
		t.Fatalf("Pullup(30): len %d segs %d", m.Len(), m.Segs())
	}
	checkPkt(t, "after slide", m, "01234567890123456789abcdefghijklmnopqrst")
	if got := string(m.FrameHeader()); got != "EEEEEEEEEEEEEE" {
		t.Fatalf("frame header after slide %q", got)
	}
	if !m.Pullup(40) || m.Segs() != 1 {
		t.Fatalf("Pullup(40): segs %d", m.Segs())
	}
	if p.InUse() != 1 {
		t.Fatalf("emptied buffer not freed: %d in use", p.InUse())
	}
	// Not enough room in front for the frame header: it is dropped.
	m.SetFrameHeader(-4)
	m.AdjPkt(-30)
	n = p.Get()
	n.SetData(0, 60)
	m.SetNext(n)
	if !m.Pullup(64) || m.FrameHeader() != nil || m.Headroom() != 0 {
		t.Fatalf("Pullup(64): frame %q headroom %d", m.FrameHeader(), m.Headroom())
	}
}

func TestPullupShared(t *testing.T) {
	p := pools(t, 4)
	m := chain(t, p, data36, 10, 26)
	m.Ref()
	if !m.Pullup(10) {
		t.Fatal("Pullup within the first buffer of a shared chain failed")
	}
	if m.Pullup(11) {
		t.Fatal("Pullup moved bytes in a shared chain")
	}
	m.Free()
	m.Free()
}

func TestCopyData(t *testing.T) {
	for _, sh := range chainShapes {
		t.Run(sh.name, func(t *testing.T) {
			p := pools(t, 8)
			m := chain(t, p, data36, sh.segs...)
			defer m.Free()
			for off := -1; off <= 37; off++ {
				for n := 0; n <= 37; n++ {
					dst := make([]byte, n)
					for i := range dst {
						dst[i] = '.'
					}
					err := m.CopyData(off, dst)
					if off < 0 || off+n > 36 {
						if !errors.Is(err, mbuf.ErrRange) || string(dst) != strings.Repeat(".", n) {
							t.Fatalf("CopyData(%d, %d) = %v, dst %q", off, n, err, dst)
						}
						continue
					}
					if err != nil || string(dst) != data36[off:off+n] {
						t.Fatalf("CopyData(%d, %d) = %v, %q", off, n, err, dst)
					}
				}
			}
		})
	}
}

func TestAdjPkt(t *testing.T) {
	for _, sh := range chainShapes {
		for _, n := range []int{0, 1, 5, 10, 20, 35, 36, 37, -1, -5, -26, -31, -36, -37, math.MinInt, math.MaxInt} {
			t.Run(fmt.Sprintf("%s/%d", sh.name, n), func(t *testing.T) {
				p := pools(t, 8)
				m := chain(t, p, data36, sh.segs...)
				defer m.Free()
				m.SetVLAN(7)
				ok := m.AdjPkt(n)
				want := data36
				switch {
				case n >= 0 && n <= 36:
					want = data36[n:]
				case n < 0 && n >= -36:
					want = data36[:36+n]
				}
				if wantOK := n >= -36 && n <= 36; ok != wantOK {
					t.Fatalf("AdjPkt(%d) = %v", n, ok)
				}
				checkPkt(t, "after", m, want)
				if m.Segs() != len(sh.segs) {
					t.Fatalf("AdjPkt dropped buffers: %d", m.Segs())
				}
				if v, ok := m.VLAN(); !ok || v != 7 {
					t.Fatal("AdjPkt lost the header")
				}
			})
		}
	}
}

func TestAdjPktShared(t *testing.T) {
	p := pools(t, 4)
	m := chain(t, p, data36, 10, 26)
	m.Ref()
	if m.AdjPkt(3) || m.AdjPkt(-3) {
		t.Fatal("AdjPkt changed a shared chain")
	}
	checkPkt(t, "shared", m, data36)
	m.Free()
	m.Free()
}

func TestSplit(t *testing.T) {
	id, _ := mbuf.TagID("com.example.split")
	for _, sh := range chainShapes {
		for off := -1; off <= 37; off++ {
			t.Run(fmt.Sprintf("%s/%d", sh.name, off), func(t *testing.T) {
				p := pools(t, 8)
				m := chain(t, p, data36, sh.segs...)
				defer m.Free()
				m.RcvIf, m.Flags = 3, mbuf.FlagMulticast
				if err := mbuf.TagPut(m, id, 1, uint32(0xfeed)); err != nil {
					t.Fatal(err)
				}
				rest, err := m.Split(off, p)
				if off <= 0 || off >= 36 {
					if !errors.Is(err, mbuf.ErrRange) || rest != nil {
						t.Fatalf("Split(%d) = %v, %v", off, rest, err)
					}
					checkPkt(t, "unchanged", m, data36)
					return
				}
				if err != nil {
					t.Fatalf("Split(%d): %v", off, err)
				}
				defer rest.Free()
				checkPkt(t, "head", m, data36[:off])
				checkPkt(t, "rest", rest, data36[off:])
				if v, ok := mbuf.TagGet[uint32](m, id, 1); !ok || v != 0xfeed || m.RcvIf != 3 || m.Flags != mbuf.FlagMulticast {
					t.Fatal("head lost its header")
				}
				if rest.Tags() != 0 || rest.RcvIf != 3 || rest.Flags != 0 {
					t.Fatalf("rest header: tags %d rcvif %d flags %v", rest.Tags(), rest.RcvIf, rest.Flags)
				}
			})
		}
	}
}

func TestSplitErrors(t *testing.T) {
	p := pools(t, 3)
	m := chain(t, p, data36, 10, 26)
	defer m.Free()
	if _, err := m.Split(5, nil); !errors.Is(err, mbuf.ErrNoPool) {
		t.Fatalf("nil pool: %v", err)
	}
	small := pools(t, 1)
	tiny := chainPool(t, 1, 8)
	if _, err := m.Split(12, tiny); !errors.Is(err, mbuf.ErrBufSize) {
		t.Fatalf("small pool: %v", err)
	}
	hold := small.Get()
	if _, err := m.Split(5, small); !errors.Is(err, mbuf.ErrNoBuffers) {
		t.Fatalf("empty pool: %v", err)
	}
	hold.Free()
	m.Ref()
	if _, err := m.Split(10, p); !errors.Is(err, mbuf.ErrShared) {
		t.Fatalf("shared: %v", err)
	}
	m.Free()
	checkPkt(t, "unchanged", m, data36)
	// On a boundary no buffer is needed.
	rest, err := m.Split(10, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkPkt(t, "rest", rest, data36[10:])
	m.Last().SetNext(rest)
	checkPkt(t, "rejoined", m, data36)
}

func chainPool(t testing.TB, count, size int) *mbuf.Pool {
	t.Helper()
	p := mbuftestPool(t, count, size)
	return p
}

func TestDupAndCopy(t *testing.T) {
	id, _ := mbuf.TagID("com.example.dup")
	for _, sh := range chainShapes {
		t.Run(sh.name, func(t *testing.T) {
			p := pools(t, 8)
			dst := pools(t, 64)
			m := chain(t, p, data36, sh.segs...)
			defer m.Free()
			m.RcvIf, m.Flags = 2, mbuf.FlagBroadcast|mbuf.FlagFragment
			m.SetVLAN(0x2005)
			m.SetCsumPerformed(mbuf.CsumIPChecked|mbuf.CsumIPValid, 0)
			mbuf.TagPut(m, id, 9, [3]uint16{1, 2, 3})
			copy(m.Raw()[m.Headroom()-2:], "LL")
			m.SetFrameHeader(-2)
			d, err := m.Dup(dst)
			if err != nil {
				t.Fatal(err)
			}
			checkPkt(t, "dup", d, data36)
			checkHdrEqual(t, d, m)
			if string(d.FrameHeader()) != "LL" {
				t.Fatalf("dup frame header %q", d.FrameHeader())
			}
			d.CopyBack(0, []byte("XYZ"))
			checkPkt(t, "original after writing dup", m, data36)
			d.Free()
			for off := 0; off <= 36; off += 3 {
				for n := 0; off+n <= 36; n += 5 {
					c, err := m.Copy(off, n, dst)
					if err != nil {
						t.Fatalf("Copy(%d, %d): %v", off, n, err)
					}
					checkPkt(t, fmt.Sprintf("Copy(%d, %d)", off, n), c, data36[off:off+n])
					if off == 0 {
						checkHdrEqual(t, c, m)
					} else if c.Tags() != 0 || c.RcvIf != 0 {
						t.Fatal("Copy from off > 0 copied the header")
					}
					c.Free()
				}
			}
			for _, r := range [][2]int{{-1, 3}, {0, 37}, {36, 1}, {5, -1}, {math.MaxInt, 1}, {1, math.MaxInt}} {
				if _, err := m.Copy(r[0], r[1], dst); !errors.Is(err, mbuf.ErrRange) {
					t.Fatalf("Copy(%d, %d) = %v", r[0], r[1], err)
				}
			}
		})
	}
}

func TestDupNoBuffers(t *testing.T) {
	p := pools(t, 8)
	m := chain(t, p, data36, 9, 9, 9, 9)
	defer m.Free()
	small := pools(t, 1) // 48 bytes in the first buffer, 36 needed
	hold := small.Get()
	if _, err := m.Dup(small); !errors.Is(err, mbuf.ErrNoBuffers) {
		t.Fatalf("Dup into an empty pool: %v", err)
	}
	hold.Free()
	if _, err := m.Dup(nil); !errors.Is(err, mbuf.ErrNoPool) {
		t.Fatalf("Dup(nil): %v", err)
	}
}

func checkHdrEqual(t testing.TB, got, want *mbuf.Mbuf) {
	t.Helper()
	type hdr struct {
		Flags        mbuf.Flags
		RcvIf        uint16
		VLAN         uint16
		HasVLAN      bool
		Req          mbuf.CsumRequest
		Done         mbuf.CsumPerformedFlags
		Value        uint16
		Tags         int
		Frame        string
		FrameNil     bool
		Tag0, Tag1   []byte
		Tag0k, Tag1k bool
	}
	mk := func(m *mbuf.Mbuf) hdr {
		h := hdr{Flags: m.Flags, RcvIf: m.RcvIf, Req: m.CsumRequested(), Tags: m.Tags()}
		h.VLAN, h.HasVLAN = m.VLAN()
		h.Done, h.Value = m.CsumPerformed()
		h.Frame, h.FrameNil = string(m.FrameHeader()), m.FrameHeader() == nil
		id, _ := mbuf.TagID("com.example.dup")
		h.Tag0, h.Tag0k = m.TagFind(id, 9)
		id, _ = mbuf.TagID("com.example.split")
		h.Tag1, h.Tag1k = m.TagFind(id, 1)
		return h
	}
	if diff := cmp.Diff(mk(want), mk(got)); diff != "" {
		t.Errorf("header (-want +got):\n%s", diff)
	}
}

func TestPrependPkt(t *testing.T) {
	for _, sh := range chainShapes {
		for _, n := range []int{0, 1, 16, 17, 64, 65, -1} {
			t.Run(fmt.Sprintf("%s/%d", sh.name, n), func(t *testing.T) {
				p := pools(t, 8)
				m := chain(t, p, data36, sh.segs...)
				m.RcvIf = 5
				m.SetVLAN(1)
				m.SetFrameHeader(-2)
				nm, err := m.PrependPkt(n, p)
				switch {
				case n < 0:
					if !errors.Is(err, mbuf.ErrRange) {
						t.Fatal(err)
					}
					nm = m
				case n > testBuf:
					if !errors.Is(err, mbuf.ErrBufSize) {
						t.Fatal(err)
					}
					nm = m
				default:
					if err != nil {
						t.Fatal(err)
					}
					nm.CopyBack(0, []byte(fmt.Sprintf("%064d", 0)[:n]))
				}
				defer nm.Free()
				want := data36
				if n > 0 && n <= testBuf {
					want = fmt.Sprintf("%064d", 0)[:n] + data36
				}
				checkPkt(t, "after", nm, want)
				if v, ok := nm.VLAN(); !ok || v != 1 || nm.RcvIf != 5 {
					t.Fatal("header did not move")
				}
				grew := n > testHead && n <= testBuf
				if grew != (nm != m) || grew && (nm.Next() != m || m.Tags() != 0 || m.RcvIf != 0 || nm.FrameHeader() != nil) {
					t.Fatalf("new first buffer %v, want %v", nm != m, grew)
				}
				if nm.Len() < n && n >= 0 && n <= testBuf {
					t.Fatal("prepended bytes not contiguous")
				}
			})
		}
	}
}

func TestPrependPktShared(t *testing.T) {
	p := pools(t, 4)
	m := chain(t, p, data36, 36)
	m.RcvIf = 4
	m.Ref()
	nm, err := m.PrependPkt(4, p)
	if err != nil || nm == m || nm.Next() != m || nm.RcvIf != 4 || m.RcvIf != 4 {
		t.Fatalf("PrependPkt on shared: %v", err)
	}
	nm.Free() // frees the new buffer and one reference of m
	if m.LeadingSpace() != testHead {
		t.Fatal("m still shared")
	}
	m.Free()
	e := chain(t, p, "", 0)
	defer e.Free()
	if _, err := e.PrependPkt(20, nil); !errors.Is(err, mbuf.ErrNoPool) {
		t.Fatal(err)
	}
}

func TestSpaceAndLast(t *testing.T) {
	p := pools(t, 4)
	m := chain(t, p, data36, 10, 26)
	defer m.Free()
	if m.LeadingSpace() != testHead || m.TrailingSpace() != testBuf-testHead-10 || m.Last().Len() != 26 || m.Last().Next() != nil {
		t.Fatal("space/last")
	}
	m.Ref()
	if m.LeadingSpace() != 0 || m.TrailingSpace() != 0 || m.Headroom() != testHead {
		t.Fatal("shared buffer has writable space")
	}
	m.Free()
}
