package virtionet

import (
	"fmt"

	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/virtio/virtqueue"
)

// rxPostOff is where an rx buffer starts for the device: the virtio header
// lands in the headroom so the frame starts at Headroom.
const rxPostOff = Headroom - HeaderLen

// RxBurst receives up to len(pkts) frames into pkts and returns how many.
// Each packet's data is the Ethernet frame (no virtio header); the caller
// owns the packets and frees them. The rx ring is refilled from the rx
// pool with one kick at most. Malformed frames are dropped and counted. An
// error means the device broke the ring contract: call Recover.
func (d *Device) RxBurst(pkts []*mbuf.Mbuf) (int, error) {
	if d.broken != nil {
		return 0, d.broken
	}
	var n, bytes int
	var runt, badHdr, oversize uint64
	count := func() {
		if n > 0 {
			d.stats.rxPackets.Add(uint64(n))
			d.stats.rxBytes.Add(uint64(bytes))
		}
		if runt > 0 {
			d.stats.rxDropRunt.Add(runt)
		}
		if badHdr > 0 {
			d.stats.rxDropHeader.Add(badHdr)
		}
		if oversize > 0 {
			d.stats.rxDropOversize.Add(oversize)
		}
	}
	mrg := d.features.Has(FMrgRxbuf)
	for n < len(pkts) {
		want := max(len(pkts)-n, d.partialLeft)
		k, err := d.rx.Reap(d.used[:min(want, len(d.used))])
		for i, u := range d.used[:k] {
			m := d.rxBufs[u.ID]
			d.rxBufs[u.ID] = nil
			if d.partialLeft > 0 {
				// A later buffer of a merged packet: data from the
				// buffer's start, no header. Spec 5.1.6.4.1: all but the
				// last are filled to the end.
				if d.partialLeft > 1 && u.Len != d.rxPostLen {
					m.Free()
					d.freeUsed(d.used[i+1 : k])
					count()
					return n, d.rxFault(fmt.Errorf("merged packet: buffer %d of %d holds %d of %d bytes (spec 5.1.6.4.1)",
						d.partial.Segs()+1, d.partial.Segs()+d.partialLeft, u.Len, d.rxPostLen))
				}
				m.SetData(rxPostOff, int(u.Len))
				d.partialTail.SetNext(m)
				d.partialTail = m
				d.partialLen += int(u.Len)
				if d.partialLeft--; d.partialLeft > 0 {
					continue
				}
				p := d.partial
				d.partial, d.partialTail = nil, nil
				if d.partialDrop || d.partialLen > d.maxFrame(tagged(p)) {
					oversize++
					p.Free()
					continue
				}
				pkts[n] = p
				bytes += d.partialLen
				n++
				continue
			}
			var nb int
			var herr error
			if int(u.Len) >= HeaderLen {
				nb, herr = CheckRxHeader(m.Raw()[rxPostOff:], d.features, int(d.rxRings.Size))
			}
			switch {
			case mrg && (int(u.Len) < HeaderLen || herr != nil):
				// The header says how many buffers follow: without it
				// the rest of the stream cannot be parsed.
				m.Free()
				d.freeUsed(d.used[i+1 : k])
				count()
				if herr == nil {
					herr = fmt.Errorf("%w: %d bytes", ErrShortHeader, u.Len)
				}
				return n, d.rxFault(fmt.Errorf("merged rx: %w", herr))
			case mrg && nb > 1 && u.Len != d.rxPostLen:
				m.Free()
				d.freeUsed(d.used[i+1 : k])
				count()
				return n, d.rxFault(fmt.Errorf("merged packet of %d buffers: the first holds %d of %d bytes (spec 5.1.6.4.1)", nb, u.Len, d.rxPostLen))
			case int(u.Len) < HeaderLen+ethHdrLen:
				// (A merged packet's first buffer is full, so not here.)
				runt++
				m.Free()
				continue
			case herr != nil:
				badHdr++
				m.Free()
				continue
			}
			m.SetData(Headroom, int(u.Len)-HeaderLen)
			m.Flags = classify(m.Bytes())
			if nb > 1 {
				d.partial, d.partialTail, d.partialLeft = m, m, nb-1
				d.partialLen, d.partialDrop = m.Len(), nb > d.maxRxBufs
				continue
			}
			pkts[n] = m
			bytes += m.Len()
			n++
		}
		if err != nil {
			count()
			return n, d.rxFault(err)
		}
		if k == 0 {
			break
		}
	}
	count()
	d.fillRx(true)
	return n, nil
}

// tagged reports whether a frame carries an 802.1Q tag.
func tagged(m *mbuf.Mbuf) bool {
	b := m.Bytes()
	return len(b) >= ethHdrLen && b[12] == 0x81 && b[13] == 0x00
}

// freeUsed returns the buffers of used entries not yet looked at.
func (d *Device) freeUsed(rest []virtqueue.Used) {
	for _, u := range rest {
		d.rxBufs[u.ID].Free()
		d.rxBufs[u.ID] = nil
	}
}

func (d *Device) rxFault(err error) error {
	d.dropPartial()
	return d.deviceFault("receive", err)
}

func (d *Device) dropPartial() {
	if d.partial != nil {
		d.partial.Free()
		d.stats.rxDropHeader.Add(1)
	}
	d.partial, d.partialTail, d.partialLeft, d.partialLen, d.partialDrop = nil, nil, 0, 0, false
}

// classify sets the broadcast and multicast flags from the destination MAC.
func classify(frame []byte) mbuf.Flags {
	if frame[0]&1 == 0 {
		return 0
	}
	if frame[0]&frame[1]&frame[2]&frame[3]&frame[4]&frame[5] == 0xff {
		return mbuf.FlagBroadcast
	}
	return mbuf.FlagMulticast
}

// fillRx posts free rx pool buffers on every free rx descriptor, publishes
// them and, if kick is set, kicks when the device asked for it. Kicking
// here is also what gets QEMU going again after its rx ring ran empty: it
// then re-enables notifications and waits for a kick before delivering
// queued packets.
func (d *Device) fillRx(kick bool) {
	free := int(d.rx.NumFree())
	if free == 0 || d.broken != nil {
		return
	}
	k := d.rxPool.GetBatch(d.refill[:free])
	if k < free && d.rx.InFlight() == 0 {
		d.stats.rxRingDry.Add(1)
	}
	for _, m := range d.refill[:k] {
		id, _ := d.rx.Add1(m.BufAddr()+rxPostOff, d.rxPostLen, true)
		d.rxBufs[id] = m
	}
	clear(d.refill[:k])
	if k == 0 {
		return
	}
	d.rx.Publish()
	if kick && d.rx.NeedsKick() {
		d.stats.rxKicks.Add(1)
		d.rxKick.Notify()
	}
}
