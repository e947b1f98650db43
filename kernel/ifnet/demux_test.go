package ifnet

import (
	"testing"

	"github.com/nke-harness/nke/nke"
)

func TestClassify(t *testing.T) {
	eth := func(rest ...byte) []byte { return append(make([]byte, 12), rest...) }
	cases := []struct {
		name  string
		frame []byte
		want  nke.DemuxDesc
		ok    bool
	}{
		{"IPv4", eth(0x08, 0x00), nke.EtherType(0x0800), true},
		{"experimental", eth(0x88, 0xb5, 1, 2), nke.EtherType(0x88b5), true},
		{"802.1Q is its own type", eth(0x81, 0x00, 0, 5, 0x08, 0), nke.EtherType(0x8100), true},
		{"802.2 SAP (STP)", eth(0x00, 0x26, 0x42, 0x42, 0x03), nke.DemuxDesc{Kind: nke.DemuxSAP, Data: []byte{0x42, 0x42, 0x03}}, true},
		{"SNAP", eth(0x00, 0x30, 0xaa, 0xaa, 0x03, 0x00, 0x00, 0x0c, 0x20, 0x00), nke.DemuxDesc{Kind: nke.DemuxSNAP, Data: []byte{0, 0, 0x0c, 0x20, 0}}, true},
		{"SNAP cut short", eth(0x00, 0x30, 0xaa, 0xaa, 0x03, 0x00), nke.DemuxDesc{}, false},
		{"LLC cut short", eth(0x00, 0x30, 0x42), nke.DemuxDesc{}, false},
		{"a length that is no length", eth(0x05, 0xff, 1, 2, 3), nke.DemuxDesc{}, false},
		{"runt", make([]byte, 13), nke.DemuxDesc{}, false},
	}
	for _, c := range cases {
		k, ok := classify(c.frame)
		if ok != c.ok || (ok && k != keyOf(c.want)) {
			t.Errorf("%s: classify = %#x, %v; want %#x (%v), %v", c.name, k, ok, keyOf(c.want), c.want, c.ok)
		}
	}
}

func TestUnclaimedCounts(t *testing.T) {
	var u unclaimed
	for i := 0; i < 3; i++ {
		u.add(keyOf(nke.EtherType(0x1234)))
	}
	u.add(keyOf(nke.DemuxDesc{Kind: nke.DemuxSAP, Data: []byte{0x42, 0x42, 3}}))
	for i := 0; i < 20; i++ {
		u.add(keyOf(nke.EtherType(0x9000 + uint16(i))))
	}
	got := u.read()
	if len(got) != 9 || got[0] != (Unclaimed{"ethertype", 0x1234, 3}) || got[1] != (Unclaimed{"sap", 0x424203, 1}) ||
		got[8] != (Unclaimed{"other", 0, 14}) {
		t.Fatalf("unclaimed %+v", got)
	}
}

// FuzzClassify: any frame is classified or refused without panicking, and
// an accepted key names the bytes the frame holds.
func FuzzClassify(f *testing.F) {
	f.Add(append(make([]byte, 12), 0x08, 0x00))
	f.Add(append(make([]byte, 12), 0x00, 0x30, 0xaa, 0xaa, 0x03, 0x00, 0x00, 0x0c, 0x20, 0x00))
	f.Add(append(make([]byte, 12), 0x00, 0x26, 0x42, 0x42, 0x03))
	f.Fuzz(func(t *testing.T, frame []byte) {
		k, ok := classify(frame)
		if !ok {
			return
		}
		kind := nke.DemuxKind(k >> 56)
		var d nke.DemuxDesc
		switch kind {
		case nke.DemuxEtherType:
			d = nke.DemuxDesc{Kind: kind, Data: frame[12:14]}
		case nke.DemuxSAP:
			d = nke.DemuxDesc{Kind: kind, Data: frame[14:17]}
		case nke.DemuxSNAP:
			d = nke.DemuxDesc{Kind: kind, Data: frame[17:22]}
		default:
			t.Fatalf("kind %d", kind)
		}
		if keyOf(d) != k {
			t.Fatalf("key %#x for %v", k, d)
		}
		if err := d.Check(); err != nil {
			t.Fatalf("classify accepted %v, which a protocol cannot claim: %v", d, err)
		}
	})
}

// FuzzDemuxDesc: a descriptor that passes Check claims exactly the frames
// that carry it: a frame built to carry it classifies to its key, and its
// key gives back its kind and bytes.
func FuzzDemuxDesc(f *testing.F) {
	f.Add(uint8(nke.DemuxEtherType), []byte{0x88, 0xb5})
	f.Add(uint8(nke.DemuxSAP), []byte{0x42, 0x42, 0x03})
	f.Add(uint8(nke.DemuxSNAP), []byte{0x00, 0x00, 0x0c, 0x20, 0x00})
	f.Add(uint8(nke.DemuxSAP), []byte{0xaa, 0xaa, 0x03})
	f.Add(uint8(nke.DemuxEtherType), []byte{0x05, 0xdc})
	f.Add(uint8(9), []byte{1})
	f.Fuzz(func(t *testing.T, kind uint8, data []byte) {
		d := nke.DemuxDesc{Kind: nke.DemuxKind(kind), Data: data}
		_ = d.String()
		if d.Check() != nil {
			return
		}
		frame := make([]byte, 12, 64)
		switch d.Kind {
		case nke.DemuxEtherType:
			frame = append(frame, data...)
		case nke.DemuxSAP:
			frame = append(frame, 0, 3+40)
			frame = append(frame, data...)
		case nke.DemuxSNAP:
			frame = append(frame, 0, 8+40)
			frame = append(frame, 0xaa, 0xaa, 0x03)
			frame = append(frame, data...)
		}
		frame = append(frame, make([]byte, 40)...)
		k, ok := classify(frame)
		if !ok || k != keyOf(d) {
			t.Fatalf("%v: a frame carrying it classifies to %#x, %v; its key is %#x", d, k, ok, keyOf(d))
		}
		if nke.DemuxKind(k>>56) != d.Kind {
			t.Fatalf("%v: key %#x has kind %d", d, k, k>>56)
		}
		var back []byte
		for i := len(data) - 1; i >= 0; i-- {
			back = append([]byte{byte(k >> (8 * uint(len(data)-1-i)))}, back...)
		}
		if string(back) != string(data) {
			t.Fatalf("%v: key %#x gives back % x", d, k, back)
		}
	})
}
