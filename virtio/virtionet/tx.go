package virtionet

import (
	"github.com/nke-harness/nke/kernel/mbuf"
	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/virtqueue"
)

// TxBurst queues pkts (whole Ethernet frames) for transmission, with one
// kick at most, and returns how many it consumed: sent, or dropped and
// counted (too short, too long). It stops early when the tx ring is full;
// the caller keeps pkts[n:]. Consumed packets belong to the driver, which
// frees them once the device is done. An error means the device broke the
// ring contract: call Recover.
func (d *Device) TxBurst(pkts []*mbuf.Mbuf) (int, error) {
	if d.broken != nil {
		return 0, d.broken
	}
	if err := d.reclaim(); err != nil {
		return 0, err
	}
	var sent, bytes, badSize, noBuf int
	i := 0
loop:
	for ; i < len(pkts); i++ {
		m := pkts[i]
		l := m.PktLen()
		if l < ethHdrLen || l > d.maxFrame {
			m.Free()
			badSize++
			continue
		}
		switch {
		case m.Next() == nil && m.Headroom() >= HeaderLen:
			// Common case: the header goes in the headroom, one descriptor.
			head, ok := d.tx.PeekID()
			if !ok {
				break loop
			}
			hdr, _ := m.Prepend(HeaderLen)
			clear(hdr)
			d.tx.Add1(m.Addr(), uint32(m.Len()), false)
			m.Adj(HeaderLen)
			d.txBufs[head] = m
		default:
			if m.Segs() > MaxTxSegs {
				lin := d.linearize(m)
				if lin == nil {
					noBuf++
					continue
				}
				pkts[i], m = lin, lin
			}
			segs := d.segs[:0]
			segs = append(segs, virtqueue.Seg{Addr: d.zeroHdr.Addr, Len: HeaderLen})
			for b := m; b != nil; b = b.Next() {
				if b.Len() > 0 {
					segs = append(segs, virtqueue.Seg{Addr: b.Addr(), Len: uint32(b.Len())})
				}
			}
			head, ok := d.tx.PeekID()
			if !ok {
				break loop
			}
			if d.features.Has(virtio.FIndirectDesc) {
				_, ok = d.tx.AddIndirect(d.txTables[head], segs)
			} else {
				_, ok = d.tx.AddChain(segs)
			}
			if !ok {
				break loop
			}
			d.txBufs[head] = m
		}
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
	return i, nil
}

// linearize copies a long chain into one fresh buffer and frees the chain.
// It returns nil (chain freed) when no buffer is free.
func (d *Device) linearize(m *mbuf.Mbuf) *mbuf.Mbuf {
	defer m.Free()
	lin := d.pool.Get()
	if lin == nil {
		return nil
	}
	b, ok := lin.Append(m.PktLen())
	if !ok {
		lin.Free()
		return nil
	}
	m.CopyOut(b)
	lin.Flags, lin.RcvIf = m.Flags, m.RcvIf
	return lin
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
