package mbuf_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/nke-harness/nke/nke/mbuf"
)

func TestFrameHeader(t *testing.T) {
	p := pools(t, 2)
	m := chain(t, p, "EEEEEEEEEEEEEEIPIPIP", 20)
	defer m.Free()
	if m.FrameHeader() != nil {
		t.Fatal("fresh packet has a frame header")
	}
	if !m.SetFrameHeader(0) || m.FrameHeader() != nil {
		t.Fatal("frame header at the data start is not before it yet")
	}
	m.Adj(14) // demux
	if got := string(m.FrameHeader()); got != "EEEEEEEEEEEEEE" {
		t.Fatalf("after demux %q", got)
	}
	for _, off := range []int{-testHead - 15, testBuf} {
		if m.SetFrameHeader(off) {
			t.Fatalf("SetFrameHeader(%d) succeeded", off)
		}
	}
	if len(m.FrameHeader()) != 14 {
		t.Fatal("bad SetFrameHeader changed it")
	}
	m.Prepend(15) // data now starts before the frame header
	if m.FrameHeader() != nil {
		t.Fatal("frame header after the data start")
	}
	m.ClearFrameHeader()
	m.Adj(15)
	if m.FrameHeader() != nil {
		t.Fatal("cleared frame header")
	}
	m.SetFrameHeader(-14)
	m.Free()
	m = p.Get() // the same buffer, reset
	if m.FrameHeader() != nil {
		t.Fatal("pool did not reset the frame header")
	}
}

func TestCsum(t *testing.T) {
	p := pools(t, 1)
	m := p.Get()
	defer m.Free()
	for _, c := range []struct {
		r  mbuf.CsumRequest
		ok bool
	}{
		{mbuf.CsumRequest{}, true},
		{mbuf.CsumRequest{Flags: mbuf.CsumReqIP}, true},
		{mbuf.CsumRequest{Flags: mbuf.CsumReqIP | mbuf.CsumReqTCP, CsumStart: 34, CsumOffset: 16}, true},
		{mbuf.CsumRequest{Flags: mbuf.CsumReqUDP, CsumStart: 34, CsumOffset: 6}, true},
		{mbuf.CsumRequest{Flags: mbuf.CsumReqTCPv6, CsumStart: 54, CsumOffset: 16}, true},
		{mbuf.CsumRequest{Flags: mbuf.CsumReqUDPv6, CsumStart: 54, CsumOffset: 6}, true},
		{mbuf.CsumRequest{Flags: mbuf.CsumReqUDPv6, CsumStart: 54, CsumOffset: 16}, false},
		{mbuf.CsumRequest{Flags: mbuf.CsumReqTCP | mbuf.CsumReqUDP, CsumStart: 34, CsumOffset: 16}, false},
		{mbuf.CsumRequest{Flags: mbuf.CsumReqIP, CsumStart: 34}, false},
		{mbuf.CsumRequest{Flags: 1 << 7}, false},
	} {
		before := m.CsumRequested()
		if ok := m.SetCsumRequested(c.r); ok != c.ok {
			t.Errorf("SetCsumRequested(%+v) = %v", c.r, ok)
		}
		want := c.r
		if !c.ok {
			want = before
		}
		if got := m.CsumRequested(); got != want {
			t.Errorf("CsumRequested() = %+v, want %+v", got, want)
		}
	}
	for _, c := range []struct {
		f  mbuf.CsumPerformedFlags
		ok bool
	}{
		{mbuf.CsumIPChecked, true},
		{mbuf.CsumIPChecked | mbuf.CsumIPValid | mbuf.CsumDataValid | mbuf.CsumPseudoHdr, true},
		{mbuf.CsumDataValid, true},
		{mbuf.CsumIPValid, false},
		{mbuf.CsumPseudoHdr, false},
		{1 << 6, false},
	} {
		before, _ := m.CsumPerformed()
		ok := m.SetCsumPerformed(c.f, 0xabcd)
		got, v := m.CsumPerformed()
		if ok != c.ok || ok && (got != c.f || v != 0xabcd) || !ok && got != before {
			t.Errorf("SetCsumPerformed(%#x) = %v; now %#x %#x", c.f, ok, got, v)
		}
	}
}

func TestVLANAndPktList(t *testing.T) {
	p := pools(t, 3)
	a, b, c := p.Get(), p.Get(), p.Get()
	if _, ok := a.VLAN(); ok {
		t.Fatal("fresh packet has a VLAN tag")
	}
	a.SetVLAN(0xe064)
	if v, ok := a.VLAN(); !ok || v != 0xe064 {
		t.Fatal("SetVLAN")
	}
	a.ClearVLAN()
	if _, ok := a.VLAN(); ok {
		t.Fatal("ClearVLAN")
	}
	a.SetNextPkt(b)
	b.SetNextPkt(c)
	if a.NextPkt() != b || b.NextPkt() != c || c.NextPkt() != nil {
		t.Fatal("packet list")
	}
	a.FreeList()
}

func TestCopyPktHdr(t *testing.T) {
	p := pools(t, 3)
	id, _ := mbuf.TagID("com.example.copyhdr")
	src := chain(t, p, "FFFFdata", 8)
	src.Adj(4)
	src.SetFrameHeader(-4)
	src.RcvIf, src.Flags = 9, mbuf.FlagPromisc
	src.SetVLAN(3)
	src.SetCsumRequested(mbuf.CsumRequest{Flags: mbuf.CsumReqUDP, CsumStart: 20, CsumOffset: 6})
	mbuf.TagPut(src, id, 1, int64(-5))
	dst, other := p.Get(), p.Get()
	dst.SetNextPkt(other)
	mbuf.CopyPktHdr(dst, src)
	if dst.RcvIf != 9 || dst.Flags != mbuf.FlagPromisc || dst.NextPkt() != other || string(dst.FrameHeader()) != "FFFF" {
		t.Fatalf("CopyPktHdr: rcvif %d flags %v frame %q", dst.RcvIf, dst.Flags, dst.FrameHeader())
	}
	if v, ok := mbuf.TagGet[int64](dst, id, 1); !ok || v != -5 {
		t.Fatal("tag not copied")
	}
	if v, _ := dst.VLAN(); v != 3 || dst.CsumRequested().CsumStart != 20 {
		t.Fatal("vlan/csum not copied")
	}
	// Changing the copy leaves the source alone.
	b, _ := dst.TagFind(id, 1)
	b[0] = 0
	if v, _ := mbuf.TagGet[int64](src, id, 1); v != -5 {
		t.Fatal("tags shared")
	}
	// No room for the frame header: it is cleared.
	dst.SetData(0, 4)
	mbuf.CopyPktHdr(dst, src)
	if dst.FrameHeader() != nil {
		t.Fatal("frame header copied without room")
	}
	mbuf.CopyPktHdr(src, src)
	src.Free()
	dst.Free()
	other.Free()
}

func TestTagID(t *testing.T) {
	a, err := mbuf.TagID("com.example.a")
	if err != nil || a == 0 {
		t.Fatal(a, err)
	}
	b, _ := mbuf.TagID("com.example.b")
	a2, _ := mbuf.TagID("com.example.a")
	if a2 != a || b == a || b == 0 {
		t.Fatalf("ids %d %d %d", a, a2, b)
	}
	for _, bad := range []string{"", "has space", "tab\t", "caf\u00e9", strings.Repeat("x", 97), "nul\x00"} {
		if _, err := mbuf.TagID(bad); !errors.Is(err, mbuf.ErrTagName) {
			t.Errorf("TagID(%q) = %v", bad, err)
		}
	}
	if _, err := mbuf.TagID(strings.Repeat("x", 96)); err != nil {
		t.Error(err)
	}
	var wg sync.WaitGroup
	ids := make([][8]mbuf.TagIDType, 4)
	for g := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ids[g] {
				ids[g][i], _ = mbuf.TagID(fmt.Sprintf("com.example.concurrent%d", i))
			}
		}()
	}
	wg.Wait()
	for g := range ids {
		if ids[g] != ids[0] {
			t.Fatalf("goroutines got different ids: %v %v", ids[g], ids[0])
		}
	}
}

type flowInfo struct {
	Hash  uint32
	Port  uint16
	Proto uint8
	_     uint8
	Bytes [8]uint8
}

func TestTags(t *testing.T) {
	p := pools(t, 2)
	id, _ := mbuf.TagID("com.example.tags")
	m := p.Get()
	defer m.Free()
	if _, err := m.TagAllocate(0, 1, 4); !errors.Is(err, mbuf.ErrTagID) {
		t.Fatal(err)
	}
	if _, err := m.TagAllocate(mbuf.TagIDType(1<<31), 1, 4); !errors.Is(err, mbuf.ErrTagID) {
		t.Fatal(err)
	}
	for _, size := range []int{0, -1, mbuf.TagSize + 1} {
		if _, err := m.TagAllocate(id, 1, size); !errors.Is(err, mbuf.ErrTagSize) {
			t.Fatalf("size %d: %v", size, err)
		}
	}
	b, err := m.TagAllocate(id, 1, mbuf.TagSize)
	if err != nil || len(b) != mbuf.TagSize || b[0] != 0 {
		t.Fatal(err)
	}
	copy(b, "hello")
	if _, err := m.TagAllocate(id, 1, 4); !errors.Is(err, mbuf.ErrTagExists) {
		t.Fatal(err)
	}
	for typ := uint16(2); typ <= mbuf.TagSlots; typ++ {
		if _, err := m.TagAllocate(id, typ, 1); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.TagAllocate(id, 99, 1); !errors.Is(err, mbuf.ErrTagSpace) {
		t.Fatal(err)
	}
	if err := mbuf.TagPut(m, id, 99, uint8(1)); !errors.Is(err, mbuf.ErrTagSpace) {
		t.Fatal(err)
	}
	if f, ok := m.TagFind(id, 1); !ok || string(f[:5]) != "hello" {
		t.Fatal("TagFind")
	}
	m.TagDelete(id, 2)
	m.TagDelete(id, 2)
	if _, ok := m.TagFind(id, 2); ok || m.Tags() != mbuf.TagSlots-1 {
		t.Fatal("TagDelete")
	}
	want := flowInfo{Hash: 0xdeadbeef, Port: 443, Proto: 6, Bytes: [8]uint8{1, 2, 3}}
	if err := mbuf.TagPut(m, id, 2, want); err != nil {
		t.Fatal(err)
	}
	if got, ok := mbuf.TagGet[flowInfo](m, id, 2); !ok || got != want {
		t.Fatalf("TagGet = %+v, %v", got, ok)
	}
	if _, ok := mbuf.TagGet[[16]uint8](m, id, 2); ok {
		t.Fatal("TagGet with another type of the same size")
	}
	if _, ok := mbuf.TagGet[flowInfo](m, id, 1); ok {
		t.Fatal("TagGet of a byte tag")
	}
	want.Port = 80
	if err := mbuf.TagPut(m, id, 2, want); err != nil { // replaces
		t.Fatal(err)
	}
	if got, _ := mbuf.TagGet[flowInfo](m, id, 2); got.Port != 80 || m.Tags() != mbuf.TagSlots {
		t.Fatal("TagPut did not replace")
	}
	checkTagType := func(name string, err error, want error) {
		t.Helper()
		if !errors.Is(err, want) {
			t.Errorf("TagPut(%s) = %v, want %v", name, err, want)
		}
	}
	m.TagDelete(id, 1)
	checkTagType("*int", mbuf.TagPut(m, id, 1, new(int)), mbuf.ErrTagType)
	checkTagType("string", mbuf.TagPut(m, id, 1, "x"), mbuf.ErrTagType)
	checkTagType("[]byte", mbuf.TagPut(m, id, 1, []byte{1}), mbuf.ErrTagType)
	checkTagType("bool", mbuf.TagPut(m, id, 1, true), mbuf.ErrTagType)
	checkTagType("uintptr", mbuf.TagPut(m, id, 1, uintptr(0)), mbuf.ErrTagType)
	checkTagType("any", mbuf.TagPut[any](m, id, 1, 1), mbuf.ErrTagType)
	checkTagType("struct with a map", mbuf.TagPut(m, id, 1, struct{ M map[int]int }{}), mbuf.ErrTagType)
	checkTagType("[33]byte", mbuf.TagPut(m, id, 1, [33]byte{}), mbuf.ErrTagSize)
	checkTagType("struct{}", mbuf.TagPut(m, id, 1, struct{}{}), mbuf.ErrTagSize)
	checkTagType("bad id", mbuf.TagPut(m, 0, 1, 1), mbuf.ErrTagID)
	checkTagType("[4]float64 again", mbuf.TagPut(m, id, 1, [4]float64{1}), nil)
	if _, ok := mbuf.TagGet[*int](m, id, 1); ok {
		t.Fatal("TagGet[*int]")
	}
	// Freed with the packet.
	m.Free()
	m = p.Get()
	m2 := p.Get()
	defer m2.Free()
	if m.Tags() != 0 || m2.Tags() != 0 {
		t.Fatal("pool did not clear tags")
	}
}
