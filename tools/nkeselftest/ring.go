package main

import (
	"encoding/binary"
	"fmt"

	"github.com/nke-harness/nke/kernel/dma"
	"github.com/nke-harness/nke/virtio"
)

// splitRing is just enough of a split virtqueue (spec 2.7) to push frames
// through the real device; virtio/virtqueue is the real implementation.
type splitRing struct {
	size   uint16
	desc   dma.Block // 16*size: le64 addr, le32 len, le16 flags, le16 next
	avail  dma.Block // le16 flags, le16 idx, le16 ring[size], le16 used_event
	used   dma.Block // le16 flags, le16 idx, {le32 id, le32 len}[size], le16 avail_event
	bufs   []dma.Block
	next   uint16 // avail.idx to publish next
	seen   uint16 // used.idx consumed so far
	notify virtio.Notifier
}

const descFWrite = 2 // VIRTQ_DESC_F_WRITE: device writes this buffer

func newRing(a dma.Allocator, size uint16, nbuf, bufLen int) (*splitRing, error) {
	r := &splitRing{size: size}
	var err error
	if r.desc, err = a.Alloc(16*int(size), 16); err != nil {
		return nil, err
	}
	if r.avail, err = a.Alloc(6+2*int(size), 4); err != nil { // 4 for the 32-bit idx word
		return nil, err
	}
	if r.used, err = a.Alloc(6+8*int(size), 4); err != nil {
		return nil, err
	}
	for range nbuf {
		b, err := a.Alloc(bufLen, 64)
		if err != nil {
			return nil, err
		}
		r.bufs = append(r.bufs, b)
	}
	return r, nil
}

func (r *splitRing) addrs() virtio.QueueAddrs {
	return virtio.QueueAddrs{Desc: r.desc.Addr, Driver: r.avail.Addr, Device: r.used.Addr}
}

// post makes buffer i (descriptor i) available with length n.
func (r *splitRing) post(i int, n int, flags uint16) {
	d := r.desc.Buf[16*i:]
	binary.LittleEndian.PutUint64(d[0:], r.bufs[i].Addr)
	binary.LittleEndian.PutUint32(d[8:], uint32(n))
	binary.LittleEndian.PutUint16(d[12:], flags)
	binary.LittleEndian.PutUint16(d[14:], 0)
	binary.LittleEndian.PutUint16(r.avail.Buf[4+2*int(r.next%r.size):], uint16(i))
	r.next++
}

// publish stores avail.idx; the device may then use the posted buffers.
func (r *splitRing) publish() { storeIdx(r.avail.Buf, 0, r.next) }

// reap returns the used elements since the last call, validated: the id
// must name a posted descriptor and len must fit its buffer.
func (r *splitRing) reap() ([][2]uint32, error) {
	var out [][2]uint32
	end := loadIdx(r.used.Buf)
	if n := end - r.seen; n > r.size {
		return nil, fmt.Errorf("used.idx jumped from %d to %d on a %d-entry ring", r.seen, end, r.size)
	}
	for ; r.seen != end; r.seen++ {
		e := r.used.Buf[4+8*int(r.seen%r.size):]
		id, n := binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:])
		if id >= uint32(len(r.bufs)) || n > uint32(len(r.bufs[id].Buf)) {
			return nil, fmt.Errorf("used element {id %d, len %d} names no posted buffer", id, n)
		}
		out = append(out, [2]uint32{id, n})
	}
	return out, nil
}
