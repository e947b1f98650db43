package mbuf_test

import (
	"testing"

	"github.com/nke-harness/nke/nke/mbuf"
)

func TestZeroAllocs(t *testing.T) {
	p := pools(t, 16)
	id, _ := mbuf.TagID("com.example.allocs")
	dst := make([]byte, 30)
	for _, c := range []struct {
		name string
		fn   func()
	}{
		{"GetFree", func() { p.Get().Free() }},
		{"TagPutFindDelete", func() {
			m := p.Get()
			if err := mbuf.TagPut(m, id, 1, flowInfo{Hash: 1}); err != nil {
				panic(err)
			}
			if _, ok := mbuf.TagGet[flowInfo](m, id, 1); !ok {
				panic("TagGet")
			}
			if _, err := m.TagAllocate(id, 2, 8); err != nil {
				panic(err)
			}
			if _, ok := m.TagFind(id, 2); !ok {
				panic("TagFind")
			}
			m.TagDelete(id, 1)
			if _, err := m.TagAllocate(id, 2, 8); err == nil { // error path too
				panic("dup tag")
			}
			m.Free()
		}},
		{"Pullup", func() {
			m := chain(t, p, data36, 9, 9, 9, 9)
			m.Pullup(30)
			m.Free()
		}},
		{"AdjPkt", func() {
			m := chain(t, p, data36, 9, 9, 9, 9)
			m.AdjPkt(12)
			m.AdjPkt(-12)
			m.AdjPkt(100)
			m.Free()
		}},
		{"PrependPktHeadroom", func() {
			m := chain(t, p, data36, 36)
			if nm, err := m.PrependPkt(14, p); err != nil || nm != m {
				panic("PrependPkt")
			}
			if _, err := m.PrependPkt(-1, p); err == nil {
				panic("PrependPkt(-1)")
			}
			m.Free()
		}},
		{"CopyData", func() {
			m := chain(t, p, data36, 9, 9, 9, 9)
			if m.CopyData(3, dst) != nil || m.CopyData(30, dst) == nil {
				panic("CopyData")
			}
			m.Free()
		}},
		{"SplitIntoPool", func() {
			m := chain(t, p, data36, 10, 26)
			rest, err := m.Split(20, p)
			if err != nil {
				panic(err)
			}
			rest.Free()
			m.Free()
		}},
	} {
		if a := testing.AllocsPerRun(200, c.fn); a != 0 {
			t.Errorf("%s: %v allocs per run", c.name, a)
		}
	}
}

func BenchmarkTagFind(b *testing.B) {
	p := pools(b, 1)
	m := p.Get()
	defer m.Free()
	var ids [mbuf.TagSlots]mbuf.TagIDType
	for i := range ids {
		ids[i], _ = mbuf.TagID("com.example.bench" + string(rune('a'+i)))
		mbuf.TagPut(m, ids[i], 7, uint64(i))
	}
	b.Run("TagFind", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, ok := m.TagFind(ids[mbuf.TagSlots-1], 7); !ok {
				b.Fatal("miss")
			}
		}
	})
	b.Run("TagGet", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := mbuf.TagGet[uint64](m, ids[mbuf.TagSlots-1], 7); !ok {
				b.Fatal("miss")
			}
		}
	})
	b.Run("TagPut", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := mbuf.TagPut(m, ids[0], 7, uint64(1)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkPullup(b *testing.B) {
	p := pools(b, 8)
	b.ReportAllocs()
	for b.Loop() {
		m := chain(b, p, data36, 9, 9, 9, 9)
		if !m.Pullup(34) {
			b.Fatal("Pullup")
		}
		m.Free()
	}
}

func BenchmarkPullupNoop(b *testing.B) {
	p := pools(b, 8)
	m := chain(b, p, data36, 36)
	defer m.Free()
	b.ReportAllocs()
	for b.Loop() {
		if !m.Pullup(34) {
			b.Fatal("Pullup")
		}
	}
}

func BenchmarkChainBuild(b *testing.B) { // the fixed cost inside BenchmarkPullup
	p := pools(b, 8)
	b.ReportAllocs()
	for b.Loop() {
		chain(b, p, data36, 9, 9, 9, 9).Free()
	}
}
