package netstack

import (
	"bytes"
	"encoding/binary"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// FuzzReassemble drives the reassembler with IPv4 and IPv6 fragment
// sequences cut from a model datagram (offsets, order, duplicates and
// overlaps chosen by the input), then with raw bytes as fragments. It
// never panics, never leaks a buffer, and a datagram comes out exactly
// when a simple model says the fragments complete it, equal to the model
// datagram.
func FuzzReassemble(f *testing.F) {
	f.Add([]byte{0, 0x10, 0x00, 1, 2, 3, 4, 0, 0, 0})
	f.Add([]byte{1, 0x0f, 0xa0, 3, 1, 2, 0, 0x81, 5, 0x45, 0, 0, 20})
	f.Add([]byte{0, 0x05, 0xdc, 0xff, 0x80, 0x7f, 2, 2, 2, 0x60, 0, 0, 0, 0, 8, 44})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 3 {
			return
		}
		p := testPool(t, 512)
		r := newReassembler(p, data[0]&2 != 0, ReasmConfig{MaxBytes: 1 << 20})
		v6 := data[0]&1 != 0
		size := 8 + (int(data[1])<<8|int(data[2]))%9000
		dg := datagram(v6, size, data[0])
		want := wantDatagram(dg, v6, 42)
		rest := data[3:]
		// Cut points: each input byte advances by 8*(b%32+1).
		var cuts []int
		for off := 0; off < size && len(cuts) < maxPieces-2; {
			cuts = append(cuts, off)
			step := 8 * 128
			if len(rest) > 0 {
				step = 8 * (int(rest[0]%32) + 1)
				rest = rest[1:]
			}
			off += step
		}
		cuts = append(cuts, size)
		type fr struct {
			off, end int
			more     bool
		}
		var seq []fr
		for i := 0; i+1 < len(cuts); i++ {
			seq = append(seq, fr{cuts[i], cuts[i+1], i+2 < len(cuts)})
		}
		// Permute, duplicate and overlap as the input says.
		for len(rest) >= 2 && rest[0]&0x80 != 0 {
			op, arg := rest[0], int(rest[1])
			rest = rest[2:]
			i, j := arg%len(seq), int(op&0x3f)%len(seq)
			switch op & 0x40 {
			case 0:
				seq[i], seq[j] = seq[j], seq[i]
			default:
				d := seq[i]
				if op&1 != 0 && d.end-d.off > 8 {
					d.end -= 8 // overlapping, not identical
				}
				seq = append(seq, d)
			}
		}
		// The model.
		type iv struct{ off, end int }
		var have []iv
		total, dead := -1, false
		sum := 0
		for k, x := range seq {
			if !v6 && x.off == 0 && !x.more {
				continue // a whole IPv4 datagram is no fragment
			}
			expect, wantLen := false, 0
			switch {
			case dead:
			default:
				dup, over := false, false
				for _, h := range have {
					if h.off == x.off && h.end == x.end {
						dup = true
					} else if x.off < h.end && x.end > h.off {
						over = true
					}
				}
				if dup {
					break
				}
				if over {
					dead, have, sum = true, nil, 0
					break
				}
				bad := false
				if !x.more {
					if total >= 0 && total != x.end {
						bad = true
					}
					for _, h := range have {
						if h.end > x.end {
							bad = true
						}
					}
				} else if total >= 0 && x.end > total {
					bad = true
				}
				if bad {
					have, sum, total = nil, 0, -1
					break
				}
				have = append(have, iv{x.off, x.end})
				sum += x.end - x.off
				if !x.more {
					total = x.end
				}
				hasZero := false
				for _, h := range have {
					hasZero = hasZero || h.off == 0
				}
				if total >= 0 && sum == total && hasZero {
					expect, wantLen = true, total
					have, sum, total = nil, 0, -1
				}
			}
			out, ok := feed(r, p, fragOf(dg, v6, x.off, x.end, x.more, 42), v6)
			if !ok {
				t.Fatalf("step %d: fragment %+v does not parse", k, x)
			}
			if (out != nil) != expect {
				t.Fatalf("step %d (%+v): datagram out %v, model says %v", k, x, out != nil, expect)
			}
			if out != nil {
				if !bytes.Equal(bytesOf(out), truncated(want, v6, wantLen)) {
					t.Fatalf("step %d: reassembled datagram differs from the model", k)
				}
				out.Free()
			}
		}
		// Raw bytes as fragments of either family.
		for len(rest) > 0 {
			n := min(len(rest), 1+int(rest[0]))
			if out, _ := feed(r, p, rest[:n], rest[0]&1 != 0); out != nil {
				out.Free()
			}
			rest = rest[n:]
		}
		r.flush()
		st := r.stats()
		if st.InProgress != 0 {
			t.Fatalf("in progress after flush: %+v", st)
		}
		if p.Avail() != p.Cap() {
			t.Fatalf("leak: %d of %d buffers free", p.Avail(), p.Cap())
		}
	})
}

// truncated is datagram dg cut to n bytes of payload, its length field
// (and IPv4 checksum) fixed.
func truncated(dg []byte, v6 bool, n int) []byte {
	if v6 {
		w := append([]byte(nil), dg[:ipv6HdrLen+n]...)
		binary.BigEndian.PutUint16(w[4:], uint16(n))
		return w
	}
	w := append([]byte(nil), dg[:ipv4MinLen+n]...)
	ip := header.IPv4(w)
	ip.SetTotalLength(uint16(len(w)))
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
	return w
}
