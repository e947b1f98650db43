package virtionet

import (
	"github.com/nke-harness/nke/kernel/mbuf"
)

// rxPost is where an rx buffer starts for the device and how long it is:
// the virtio header lands in the headroom so the frame starts at Headroom.
const (
	rxPostOff = Headroom - HeaderLen
	rxPostLen = BufSize - rxPostOff
)

// RxBurst receives up to len(pkts) frames into pkts and returns how many.
// Each packet's data is the Ethernet frame (no virtio header); the caller
// owns the packets and frees them. The rx ring is refilled from the pool
// with one kick at most. Malformed frames are dropped and counted. An error
// means the device broke the ring contract: call Recover.
func (d *Device) RxBurst(pkts []*mbuf.Mbuf) (int, error) {
	if d.broken != nil {
		return 0, d.broken
	}
	var n, bytes int
	var runt, badHdr uint64
	for n < len(pkts) {
		want := len(pkts) - n
		if d.partialLeft > want {
			want = d.partialLeft
		}
		k, err := d.rx.Reap(d.used[:min(want, len(d.used))])
		for _, u := range d.used[:k] {
			m := d.rxBufs[u.ID]
			d.rxBufs[u.ID] = nil
			if d.partialLeft > 0 {
				// A later buffer of a merged packet: data from the
				// buffer's start, no header.
				m.SetData(rxPostOff, int(u.Len))
				d.partialTail.SetNext(m)
				d.partialTail = m
				if d.partialLeft--; d.partialLeft == 0 {
					pkts[n] = d.partial
					bytes += d.partial.PktLen()
					n++
					d.partial, d.partialTail = nil, nil
				}
				continue
			}
			if int(u.Len) < HeaderLen+ethHdrLen {
				runt++
				m.Free()
				continue
			}
			nb, herr := CheckRxHeader(m.Raw()[rxPostOff:], d.features, int(d.rxRings.Size))
			if herr != nil {
				badHdr++
				m.Free()
				continue
			}
			m.SetData(Headroom, int(u.Len)-HeaderLen)
			m.Flags = classify(m.Bytes())
			if nb > 1 {
				d.partial, d.partialTail, d.partialLeft = m, m, nb-1
				continue
			}
			pkts[n] = m
			bytes += m.Len()
			n++
		}
		if err != nil {
			d.dropPartial()
			d.count(n, bytes, runt, badHdr)
			return n, d.deviceFault("receive", err)
		}
		if k == 0 {
			break
		}
	}
	d.count(n, bytes, runt, badHdr)
	d.fillRx(true)
	return n, nil
}

func (d *Device) count(n, bytes int, runt, badHdr uint64) {
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
}

func (d *Device) dropPartial() {
	if d.partial != nil {
		d.partial.Free()
		d.stats.rxDropHeader.Add(1)
	}
	d.partial, d.partialTail, d.partialLeft = nil, nil, 0
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

// fillRx posts free pool buffers on every free rx descriptor, publishes them
// and, if kick is set, kicks when the device asked for it. Kicking here is also what gets QEMU
// going again after its rx ring ran empty: it then re-enables notifications
// and waits for a kick before delivering queued packets.
func (d *Device) fillRx(kick bool) {
	free := int(d.rx.NumFree())
	if free == 0 || d.broken != nil {
		return
	}
	k := d.pool.GetBatch(d.refill[:free])
	if k < free && d.rx.InFlight() == 0 {
		d.stats.rxRingDry.Add(1)
	}
	for _, m := range d.refill[:k] {
		head, _ := d.rx.Add1(m.BufAddr()+rxPostOff, rxPostLen, true)
		d.rxBufs[head] = m
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
