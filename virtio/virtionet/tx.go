package virtionet

import (
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/virtqueue"
)

// TxBurst queues pkts (whole Ethernet frames) for transmission, with one
// kick at most, and returns how many it consumed: sent, or dropped and
// counted (too short, longer than the MTU allows, or taking more
// descriptors than the ring holds even when copied into fewer buffers). It
// stops early only when the tx ring has no room for the next packet right
// now; the caller keeps pkts[n:] and retries once the device completes
// some, so no packet can wedge the ring. Consumed packets belong to the
// driver, which frees them once the device is done. An error means the
// device broke the ring contract: call Recover.
func (d *Device) TxBurst(pkts []*mbuf.Mbuf) (int, error) {
	if d.broken != nil {
		return 0, d.broken
	}
	if err := d.reclaim(); err != nil {
		return 0, err
	}
	indirect := d.features.Has(virtio.FIndirectDesc)
	// Spec 2.7.5.3.1: no chain, an indirect one included, longer than
	// the queue.
	limit := int(d.tx.Size())
	if indirect {
		limit = min(limit, d.txTableSize)
	}
	var sent, bytes, badSize, noBuf, badChain int
	i := 0
loop:
	for ; i < len(pkts); i++ {
		m := pkts[i]
		l := m.PktLen()
		if l < ethHdrLen || l > d.maxFrame(taggedChain(m)) {
			m.Free()
			badSize++
			continue
		}
		// The header goes in the headroom unless another owner may see
		// the bytes there.
		inPlace := m.Headroom() >= HeaderLen && !m.Shared()
		if m.Next() == nil && inPlace {
			// Common case: one descriptor.
			id, ok := d.tx.PeekID()
			if !ok {
				break loop
			}
			hdr, _ := m.Prepend(HeaderLen)
			clear(hdr)
			d.tx.Add1(m.Addr(), uint32(m.Len()), false)
			m.Adj(HeaderLen)
			d.txBufs[id] = m
			sent++
			bytes += l
			continue
		}
		descs := descsFor(m, inPlace)
		if descs > limit {
			c := d.compact(m)
			if c == nil {
				noBuf++
				continue
			}
			pkts[i], m, inPlace = c, c, true
			if descs = descsFor(m, true); descs > limit {
				m.Free()
				badChain++
				continue
			}
		}
		id, ok := d.tx.PeekID()
		if !ok || (!indirect && descs > int(d.tx.NumFree())) {
			break loop
		}
		segs := d.segs[:0]
		if inPlace {
			hdr, _ := m.Prepend(HeaderLen)
			clear(hdr)
		} else {
			segs = append(segs, virtqueue.Seg{Addr: d.zeroHdr.Addr, Len: HeaderLen})
		}
		for b := m; b != nil; b = b.Next() {
			if b.Len() > 0 || (b == m && inPlace) {
				segs = append(segs, virtqueue.Seg{Addr: b.Addr(), Len: uint32(b.Len())})
			}
		}
		if indirect {
			_, ok = d.tx.AddIndirect(d.txTables[id], segs)
		} else {
			_, ok = d.tx.AddChain(segs)
		}
		if inPlace {
			m.Adj(HeaderLen)
		}
		if !ok {
			// Room was checked: only a broken ring refuses, and the
			// next reclaim reports it.
			break loop
		}
		d.txBufs[id] = m
		sent++
		bytes += l
	}
	if i < len(pkts) {
		d.stats.txRingFull.Add(1)
	}
	if sent > 0 {
		d.tx.Publish()
		if d.tx.NeedsKick() {
			d.stats.txKicks.Add(1)
			d.txKick.Notify()
		}
		d.stats.txPackets.Add(uint64(sent))
		d.stats.txBytes.Add(uint64(bytes))
	}
	if badSize > 0 {
		d.stats.txDropSize.Add(uint64(badSize))
	}
	if noBuf > 0 {
		d.stats.txDropNoBuf.Add(uint64(noBuf))
	}
	if badChain > 0 {
		d.stats.txDropChain.Add(uint64(badChain))
	}
	return i, nil
}

// descsFor is how many descriptors a chained packet takes: one per
// non-empty buffer, plus the header (in the first buffer's headroom when
// inPlace, a descriptor of its own otherwise).
func descsFor(m *mbuf.Mbuf, inPlace bool) int {
	n := 0
	if !inPlace {
		n++
	}
	for b := m; b != nil; b = b.Next() {
		if b.Len() > 0 || (b == m && inPlace) {
			n++
		}
	}
	return n
}

// taggedChain reports whether a frame, possibly split across buffers,
// carries an 802.1Q tag.
func taggedChain(m *mbuf.Mbuf) bool {
	if m.Len() >= ethHdrLen {
		return tagged(m)
	}
	var h [ethHdrLen]byte
	m.CopyOut(h[:])
	return h[12] == 0x81 && h[13] == 0x00
}

// compact copies a packet into as few fresh tx pool buffers as hold it and
// frees the original. It returns nil (the original freed) when the pool has
// too few buffers.
func (d *Device) compact(m *mbuf.Mbuf) *mbuf.Mbuf {
	defer m.Free()
	c := d.txPool.AllocPacket(m.PktLen())
	if c == nil {
		return nil
	}
	off := 0
	for b := m; b != nil; b = b.Next() {
		off += c.CopyBack(off, b.Bytes())
	}
	c.Flags, c.RcvIf = m.Flags, m.RcvIf
	return c
}

// Reclaim frees the packets the device has finished sending. TxBurst does
// it too; call Reclaim when there is nothing to send, so that buffers return
// to the pool.
func (d *Device) Reclaim() error {
	if d.broken != nil {
		return d.broken
	}
	return d.reclaim()
}

func (d *Device) reclaim() error {
	for {
		k, err := d.tx.Reap(d.used)
		done := d.txDone[:0] // freed as a batch: one pool lock
		for _, u := range d.used[:k] {
			done = append(done, d.txBufs[u.ID])
			d.txBufs[u.ID] = nil
		}
		mbuf.FreeBatch(done)
		if err != nil {
			return d.deviceFault("transmit", err)
		}
		if k < len(d.used) {
			return nil
		}
	}
}

// TxInFlight is the number of packets in the tx ring.
func (d *Device) TxInFlight() int { return int(d.tx.InFlight()) }

// RxPending reports whether the device has published rx buffers the driver
// has not reaped: a cheap check for a poll loop deciding whether to sleep.
func (d *Device) RxPending() bool { return d.rx.HasUsed() }
