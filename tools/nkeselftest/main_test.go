package main

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nke-harness/nke/kernel/dma"
)

func TestARPFrames(t *testing.T) {
	mac := [6]byte{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	req := arpRequest(mac, [4]byte{10, 0, 2, 15}, [4]byte{10, 0, 2, 2})
	if len(req) != 60 || binary.BigEndian.Uint16(req[12:]) != 0x0806 || binary.BigEndian.Uint16(req[20:]) != 1 {
		t.Fatalf("request % x", req)
	}
	if _, ok := arpReplyFrom(req, [4]byte{10, 0, 2, 2}); ok {
		t.Errorf("a request taken for a reply")
	}
	// Turn it into the gateway's reply.
	rep := append([]byte(nil), req...)
	binary.BigEndian.PutUint16(rep[20:], 2)
	copy(rep[22:], []byte{0x52, 0x55, 10, 0, 2, 2})
	copy(rep[28:], []byte{10, 0, 2, 2})
	from, ok := arpReplyFrom(rep, [4]byte{10, 0, 2, 2})
	if !ok || from != "52:55:0a:00:02:02" {
		t.Errorf("reply from %q, %v", from, ok)
	}
	if _, ok := arpReplyFrom(rep[:41], [4]byte{10, 0, 2, 2}); ok {
		t.Errorf("short frame accepted")
	}
}

func TestRingReapValidates(t *testing.T) {
	h := dma.NewHeap(1 << 20)
	r, err := newRing(h, 8, 2, 100)
	if err != nil {
		t.Fatal(err)
	}
	if a := r.addrs(); a.Desc%16 != 0 || a.Driver%4 != 0 || a.Device%4 != 0 {
		t.Fatalf("misaligned rings %+v", a)
	}
	r.post(0, 100, descFWrite)
	r.post(1, 100, descFWrite)
	r.publish()
	if idx := binary.LittleEndian.Uint16(r.avail.Buf[2:]); idx != 2 {
		t.Fatalf("avail.idx = %d", idx)
	}
	use := func(slot int, id, n uint32, idx uint16) {
		binary.LittleEndian.PutUint32(r.used.Buf[4+8*slot:], id)
		binary.LittleEndian.PutUint32(r.used.Buf[8+8*slot:], n)
		binary.LittleEndian.PutUint16(r.used.Buf[2:], idx)
	}
	use(0, 1, 60, 1)
	got, err := r.reap()
	if err != nil || !cmp.Equal(got, [][2]uint32{{1, 60}}) {
		t.Fatalf("reap = %v, %v", got, err)
	}
	for _, bad := range []struct {
		id, n uint32
		idx   uint16
		want  string
	}{{2, 10, 2, "names no posted buffer"}, {0, 101, 2, "names no posted buffer"}, {0, 1, 10, "jumped"}} {
		use(1, bad.id, bad.n, bad.idx)
		if _, err := r.reap(); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("used {%d %d} idx %d: err %v", bad.id, bad.n, bad.idx, err)
		}
	}
}
