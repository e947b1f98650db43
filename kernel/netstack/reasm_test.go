package netstack

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/mbuf"
)

func testPool(tb testing.TB, n int) *mbuf.Pool {
	tb.Helper()
	p, err := mbuf.NewPool(dma.NewHeap(n*2048+4096), "test", n, 2048, 128)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

var (
	src4 = [4]byte{10, 0, 2, 2}
	dst4 = [4]byte{10, 0, 2, 15}
	src6 = [16]byte{0xfe, 0x80, 15: 2}
	dst6 = [16]byte{0xfe, 0x80, 15: 15}
)

// datagram is an IP datagram of the family: header, then payload bytes
// that depend on seed.
func datagram(v6 bool, payload int, seed byte) []byte {
	hl := ipv4MinLen
	if v6 {
		hl = ipv6HdrLen
	}
	b := make([]byte, hl+payload)
	for i := hl; i < len(b); i++ {
		b[i] = byte(i*7) + seed
	}
	if v6 {
		b[0] = 0x60
		binary.BigEndian.PutUint16(b[4:], uint16(payload))
		b[6], b[7] = 17, 64
		copy(b[8:], src6[:])
		copy(b[24:], dst6[:])
		return b
	}
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: 17, ID: 0x1234,
		SrcAddr: addr4(src4), DstAddr: addr4(dst4)})
	ip.SetChecksum(^ip.CalculateChecksum())
	return b
}

// fragOf is the fragment of dg (a datagram built by datagram) holding
// payload bytes [off, end), with id.
func fragOf(dg []byte, v6 bool, off, end int, more bool, id uint32) []byte {
	if v6 {
		f := make([]byte, ipv6HdrLen+fragHdrLen+end-off)
		copy(f, dg[:ipv6HdrLen])
		binary.BigEndian.PutUint16(f[4:], uint16(fragHdrLen+end-off))
		f[6] = protoFragment
		f[40] = dg[6]
		ff := uint16(off)
		if more {
			ff |= 1
		}
		binary.BigEndian.PutUint16(f[42:], ff)
		binary.BigEndian.PutUint32(f[44:], id)
		copy(f[48:], dg[ipv6HdrLen+off:ipv6HdrLen+end])
		return f
	}
	f := make([]byte, ipv4MinLen+end-off)
	copy(f, dg[:ipv4MinLen])
	ip := header.IPv4(f)
	ip.SetTotalLength(uint16(len(f)))
	ip.SetID(uint16(id))
	var fl uint8
	if more {
		fl = header.IPv4FlagMoreFragments
	}
	ip.SetFlagsFragmentOffset(fl, uint16(off))
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(f[ipv4MinLen:], dg[ipv4MinLen+off:ipv4MinLen+end])
	return f
}

// wantDatagram is dg as the reassembler returns it (IPv4: id as the
// fragments had it, the checksum fixed).
func wantDatagram(dg []byte, v6 bool, id uint32) []byte {
	w := append([]byte(nil), dg...)
	if !v6 {
		ip := header.IPv4(w)
		ip.SetID(uint16(id))
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	return w
}

func packet(tb testing.TB, p *mbuf.Pool, b []byte) *mbuf.Mbuf {
	m := p.AllocPacket(len(b))
	if m == nil {
		tb.Fatal("pool empty")
	}
	m.CopyBack(0, b)
	return m
}

func bytesOf(m *mbuf.Mbuf) []byte {
	b := make([]byte, m.PktLen())
	m.CopyOut(b)
	return b
}

// feed parses b and hands it to r as a fragment; it returns the datagram
// completed, if any, and whether b parsed as a fragment (when not, it is
// freed).
func feed(r *reassembler, p *mbuf.Pool, b []byte, v6 bool) (*mbuf.Mbuf, bool) {
	m := p.AllocPacket(max(len(b), 1))
	if m == nil {
		return nil, false
	}
	m.CopyBack(0, b)
	if len(b) == 0 {
		m.Free()
		return nil, false
	}
	var scratch [maxParseHead]byte
	in, ok := parseIP(head(m, &scratch), m.PktLen(), v6)
	if !ok || !in.frag {
		m.Free()
		return nil, false
	}
	return r.add(m, &in, nil), true
}

func TestReassembleInAndOutOfOrder(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		for _, order := range [][]int{{0, 1, 2, 3}, {3, 1, 0, 2}, {2, 3, 1, 0}} {
			p := testPool(t, 64)
			r := newReassembler(p, true, ReasmConfig{})
			dg := datagram(v6, 4000, 1)
			cuts := []int{0, 1000, 2000, 3000, 4000}
			var got *mbuf.Mbuf
			for k, i := range order {
				out, ok := feed(r, p, fragOf(dg, v6, cuts[i], cuts[i+1], i < 3, 77), v6)
				if !ok {
					t.Fatal("fragment did not parse")
				}
				if out != nil && k != len(order)-1 {
					t.Fatalf("datagram out after %d fragments", k+1)
				}
				got = out
			}
			if got == nil {
				t.Fatalf("v6=%v order %v: no datagram", v6, order)
			}
			if b := bytesOf(got); !bytes.Equal(b, wantDatagram(dg, v6, 77)) {
				t.Fatalf("v6=%v order %v: reassembled datagram differs (%d bytes, want %d)", v6, order, len(b), len(dg))
			}
			got.Free()
			st := r.stats()
			if st.Fragments != 4 || st.Reassembled != 1 || st.Dropped() != 0 || st.InProgress != 0 {
				t.Fatalf("stats %+v", st)
			}
			if p.Avail() != p.Cap() {
				t.Fatalf("leak: %d of %d buffers free", p.Avail(), p.Cap())
			}
		}
	}
}

// Without copying, the fragments' own chains are trimmed and linked.
func TestReassembleHoldsChains(t *testing.T) {
	p := testPool(t, 64)
	r := newReassembler(p, false, ReasmConfig{})
	dg := datagram(false, 3000, 2)
	f1, f2 := fragOf(dg, false, 0, 1600, true, 5), fragOf(dg, false, 1600, 3000, false, 5)
	if out, _ := feed(r, p, f2, false); out != nil {
		t.Fatal("early")
	}
	out, _ := feed(r, p, f1, false)
	if out == nil || !bytes.Equal(bytesOf(out), wantDatagram(dg, false, 5)) {
		t.Fatal("bad datagram")
	}
	out.Free()
	if p.Avail() != p.Cap() {
		t.Fatalf("leak: %d of %d", p.Avail(), p.Cap())
	}
}

// RFC 5722: an overlap discards the datagram, and its later fragments too;
// an exact duplicate is dropped alone.
func TestReassembleOverlapAndDuplicate(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		p := testPool(t, 64)
		r := newReassembler(p, true, ReasmConfig{})
		dg := datagram(v6, 3000, 3)
		feed(r, p, fragOf(dg, v6, 0, 1000, true, 9), v6)
		feed(r, p, fragOf(dg, v6, 0, 1000, true, 9), v6) // duplicate
		if st := r.stats(); st.DropDuplicate != 1 || st.InProgress != 1 {
			t.Fatalf("duplicate: %+v", st)
		}
		feed(r, p, fragOf(dg, v6, 992, 2000, true, 9), v6) // overlaps [0,1000)
		if st := r.stats(); st.DropOverlap != 2 {
			t.Fatalf("overlap: %+v", st)
		}
		// The rest of the datagram never completes it.
		out1, _ := feed(r, p, fragOf(dg, v6, 1000, 2000, true, 9), v6)
		out2, _ := feed(r, p, fragOf(dg, v6, 2000, 3000, false, 9), v6)
		if out1 != nil || out2 != nil {
			t.Fatal("a datagram came out of overlapping fragments")
		}
		if st := r.stats(); st.DropOverlap != 4 || st.Reassembled != 0 || st.Fragments != 5 {
			t.Fatalf("after overlap: %+v", st)
		}
		if p.Avail() != p.Cap() {
			t.Fatalf("leak: %d of %d", p.Avail(), p.Cap())
		}
	}
}

func TestReassembleTimeout(t *testing.T) {
	p := testPool(t, 64)
	r := newReassembler(p, true, ReasmConfig{Timeout: time.Second})
	var now int64
	r.now = func() int64 { return now }
	dg := datagram(true, 3000, 4)
	feed(r, p, fragOf(dg, true, 0, 1000, true, 1), true)
	feed(r, p, fragOf(dg, true, 2000, 3000, false, 1), true)
	now = int64(999 * time.Millisecond)
	r.expire()
	if st := r.stats(); st.Timeouts != 0 || st.InProgress != 1 {
		t.Fatalf("early timeout: %+v", st)
	}
	now = int64(time.Second)
	r.expire()
	st := r.stats()
	if st.Timeouts != 1 || st.DropTimeout != 2 || st.InProgress != 0 || p.Avail() != p.Cap() {
		t.Fatalf("timeout: %+v, %d of %d free", st, p.Avail(), p.Cap())
	}
	// The missing fragment, late, starts a datagram of its own.
	if out, _ := feed(r, p, fragOf(dg, true, 1000, 2000, true, 1), true); out != nil {
		t.Fatal("completed after timeout")
	}
	r.flush()
	if p.Avail() != p.Cap() {
		t.Fatal("leak after flush")
	}
}

func TestReassembleBounds(t *testing.T) {
	p := testPool(t, 256)
	r := newReassembler(p, true, ReasmConfig{MaxDatagrams: 4, MaxBytes: 8000})
	dg := datagram(false, 3000, 5)
	for id := uint32(1); id <= 5; id++ {
		feed(r, p, fragOf(dg, false, 0, 1000, true, id), false)
	}
	if st := r.stats(); st.DropNoSlot != 1 || st.InProgress != 4 {
		t.Fatalf("too many datagrams: %+v", st)
	}
	// 4000 bytes held; 4 more of 1000 fit, the next kills its datagram.
	for id := uint32(1); id <= 4; id++ {
		feed(r, p, fragOf(dg, false, 1000, 2000, true, id), false)
	}
	feed(r, p, fragOf(dg, false, 2000, 2008, true, 1), false)
	if st := r.stats(); st.DropMemory != 3 || st.InProgress != 3 {
		t.Fatalf("memory: %+v", st)
	}
	// Too many fragments for one datagram.
	r2 := newReassembler(p, true, ReasmConfig{})
	big := datagram(false, 8*(maxPieces+1), 6)
	for i := 0; i <= maxPieces; i++ {
		feed(r2, p, fragOf(big, false, 8*i, 8*i+8, true, 3), false)
	}
	if st := r2.stats(); st.DropTooManyFrags != maxPieces+1 || st.InProgress != 0 {
		t.Fatalf("too many fragments: %+v", st)
	}
	// Malformed: not a multiple of 8 with more to come; past 64 KiB.
	feed(r2, p, fragOf(dg, false, 0, 1001, true, 4), false)
	feed(r2, p, fragOf(datagram(false, 65535-ipv4MinLen, 0), false, 65512, 65515, false, 4), false)
	if st := r2.stats(); st.DropMalformed != 1 {
		t.Fatalf("malformed: %+v", st)
	}
	r.flush()
	r2.flush()
	if p.Avail() != p.Cap() {
		t.Fatalf("leak: %d of %d", p.Avail(), p.Cap())
	}
}

// fragment's output reassembles to the datagram, and each fragment fits
// the MTU.
func TestFragmentRoundTrip(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		for _, size := range []int{1481, 3000, 9000, 65000} {
			p := testPool(t, 256)
			dg := datagram(v6, size, 7)
			if !v6 {
				dg = wantDatagram(dg, false, 0x1234)
			}
			m := packet(t, p, dg)
			var scratch [maxParseHead]byte
			in, _ := parseIP(head(m, &scratch), m.PktLen(), v6)
			link := [ethHdrLen]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x86, 0xdd}
			frags, why := fragment(nil, p, m, &in, 1500, link[:], 99)
			m.Free()
			if why != fragOK {
				t.Fatalf("fragment: %d", why)
			}
			r := newReassembler(p, true, ReasmConfig{MaxBytes: 1 << 20})
			var out *mbuf.Mbuf
			for i, f := range frags {
				b := bytesOf(f)
				if len(b) > ethHdrLen+1500 || !bytes.Equal(b[:ethHdrLen], link[:]) {
					t.Fatalf("fragment %d: %d bytes, link %x", i, len(b), b[:ethHdrLen])
				}
				f.Free()
				o, ok := feed(r, p, b[ethHdrLen:], v6)
				if !ok {
					t.Fatalf("fragment %d does not parse", i)
				}
				if o != nil {
					out = o
				}
			}
			if out == nil || !bytes.Equal(bytesOf(out), dg) {
				t.Fatalf("v6=%v size %d: %d fragments do not reassemble to the datagram", v6, size, len(frags))
			}
			out.Free()
			if p.Avail() != p.Cap() {
				t.Fatal("leak")
			}
		}
	}
	// DF set: refused.
	p := testPool(t, 16)
	dg := datagram(false, 3000, 1)
	dg[6] |= 0x40
	m := packet(t, p, dg)
	var scratch [maxParseHead]byte
	in, _ := parseIP(head(m, &scratch), m.PktLen(), false)
	if _, why := fragment(nil, p, m, &in, 1500, nil, 0); why != fragDontFrag {
		t.Fatalf("DF: %d", why)
	}
	m.Free()
}

func TestReassembleAllocs(t *testing.T) {
	p := testPool(t, 64)
	r := newReassembler(p, true, ReasmConfig{})
	dg := datagram(false, 3000, 1)
	f1, f2 := fragOf(dg, false, 0, 1600, true, 5), fragOf(dg, false, 1600, 3000, false, 5)
	var scratch [maxParseHead]byte
	n := testing.AllocsPerRun(100, func() {
		for _, f := range [][]byte{f2, f1} {
			m := p.AllocPacket(len(f))
			m.CopyBack(0, f)
			in, _ := parseIP(head(m, &scratch), m.PktLen(), false)
			if out := r.add(m, &in, nil); out != nil {
				out.Free()
			}
		}
	})
	if n != 0 {
		t.Fatalf("%v allocations per datagram", n)
	}
}

func addr4(a [4]byte) tcpip.Address { return tcpip.AddrFrom4(a) }
