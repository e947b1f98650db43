package ifnet

import (
	"fmt"
	"sync/atomic"

	"github.com/nke-harness/nke/nke"
)

// demuxKey identifies the protocol a frame belongs to: the descriptor kind
// in the top byte, its bytes below (an EtherType, a 3-byte LLC SAP, or a
// 5-byte SNAP OUI and protocol id).
type demuxKey uint64

func keyOf(d nke.DemuxDesc) demuxKey {
	var k demuxKey
	for _, b := range d.Data {
		k = k<<8 | demuxKey(b)
	}
	return demuxKey(d.Kind)<<56 | k
}

func (k demuxKey) String() string {
	v := uint64(k) & (1<<56 - 1)
	switch nke.DemuxKind(k >> 56) {
	case nke.DemuxEtherType:
		return fmt.Sprintf("ethertype %#04x", v)
	case nke.DemuxSAP:
		return fmt.Sprintf("sap %06x", v)
	case nke.DemuxSNAP:
		return fmt.Sprintf("snap %010x", v)
	}
	return fmt.Sprintf("key %#x", uint64(k))
}

// classify finds a frame's demux key, as xnu's ether_demux does: a type
// field of 0x0600 or more is an Ethernet II EtherType; a smaller one is an
// 802.3 length followed by an 802.2 LLC header, which is SNAP when it is
// AA-AA-03. It reports false for a frame too short for what it says it
// is, an 802.3 length that is not one, or AA-AA without 03.
func classify(frame []byte) (demuxKey, bool) {
	if len(frame) < ethHdrLen {
		return 0, false
	}
	t := uint16(frame[12])<<8 | uint16(frame[13])
	if t >= 0x0600 {
		return demuxKey(nke.DemuxEtherType)<<56 | demuxKey(t), true
	}
	if t > 1500 || len(frame) < ethHdrLen+3 {
		return 0, false
	}
	llc := frame[ethHdrLen:]
	if llc[0] == 0xaa && llc[1] == 0xaa {
		// SNAP, which needs unnumbered information (03) and its header.
		if llc[2] != 0x03 || len(llc) < 8 {
			return 0, false
		}
		var k demuxKey
		for _, b := range llc[3:8] {
			k = k<<8 | demuxKey(b)
		}
		return demuxKey(nke.DemuxSNAP)<<56 | k, true
	}
	return demuxKey(nke.DemuxSAP)<<56 | demuxKey(llc[0])<<16 | demuxKey(llc[1])<<8 | demuxKey(llc[2]), true
}

// unclaimed counts frames no protocol claimed, by demux key: a few keys
// of their own (the first seen), the rest together. Bumped by the poll
// loop, read by anyone.
type unclaimed struct {
	keys   [8]atomic.Uint64 // demuxKey+1; 0 = free slot
	counts [8]atomic.Uint64
	other  atomic.Uint64
}

func (u *unclaimed) add(k demuxKey) {
	for i := range u.keys {
		switch u.keys[i].Load() {
		case uint64(k) + 1:
			u.counts[i].Add(1)
			return
		case 0:
			// Only the poll loop writes: no race for the slot.
			u.keys[i].Store(uint64(k) + 1)
			u.counts[i].Add(1)
			return
		}
	}
	u.other.Add(1)
}

// Unclaimed is a count of frames nobody claimed, by what they were.
type Unclaimed struct {
	Kind  string `json:"kind"` // "ethertype", "sap", "snap", or "other"
	Value uint64 `json:"value"`
	Count uint64 `json:"count"`
}

func (u *unclaimed) read() []Unclaimed {
	var out []Unclaimed
	names := map[nke.DemuxKind]string{nke.DemuxEtherType: "ethertype", nke.DemuxSAP: "sap", nke.DemuxSNAP: "snap"}
	for i := range u.keys {
		k := u.keys[i].Load()
		if k == 0 {
			break
		}
		k--
		out = append(out, Unclaimed{Kind: names[nke.DemuxKind(k>>56)], Value: k & (1<<56 - 1), Count: u.counts[i].Load()})
	}
	if n := u.other.Load(); n > 0 {
		out = append(out, Unclaimed{Kind: "other", Count: n})
	}
	return out
}
