package virtioconsole

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nke-harness/nke/virtio/virtqueue"
)

// Port is one virtio-serial port, a byte stream to the host. It is an
// io.ReadWriteCloser.
//
// Read blocks until bytes arrive. Write blocks until every byte is on the
// transmitq, waiting while the host side is disconnected (QEMU discards
// what a port without a host connection transmits) and while the transmitq
// is full (the host reads slowly: QEMU throttles the port and leaves
// buffers unused until its chardev takes more). A host that disconnects
// and reconnects finds the port still open: bytes written after it
// reconnected reach it; bytes on the ring when it left may be lost or
// delivered to the next connection. Neither Read nor Write returns io.EOF
// when the host disconnects; both honour deadlines.
//
// Idle waits poll the rings, sleeping from Config.MinSleep doubling up to
// Config.IdleSleep, then Config.DeepSleep once idle for Config.DeepAfter,
// and handle control messages.
type Port struct {
	d  *Device
	id uint32

	added        atomic.Bool
	console      atomic.Bool
	hostOpen     atomic.Bool
	guestOpen    atomic.Bool
	closed       atomic.Bool
	name         atomic.Pointer[string]
	hostConnects atomic.Uint64
	// Deadlines in unix nanoseconds; 0: none.
	readDeadline  atomic.Int64
	writeDeadline atomic.Int64

	rxMu sync.Mutex
	// +checklocks:rxMu
	rx *queue
	// +checklocks:rxMu
	rxUsed []virtqueue.Used // reaped, not yet read: rxUsed[rxNext:]
	// +checklocks:rxMu
	rxNext int
	// +checklocks:rxMu
	rxOff uint32 // bytes of rxUsed[rxNext] already read

	txMu sync.Mutex
	// +checklocks:txMu
	tx *queue
}

var _ io.ReadWriteCloser = (*Port)(nil)

// ID is the port's id.
func (p *Port) ID() uint32 { return p.id }

// Name is the name the device gave the port, or "".
func (p *Port) Name() string {
	if n := p.name.Load(); n != nil {
		return *n
	}
	return ""
}

// HostConnected reports whether the host side is open, as the device last
// said (PORT_OPEN).
func (p *Port) HostConnected() bool { return p.hostOpen.Load() }

// HostConnects counts the host side's connections (PORT_OPEN 1 after
// 0): a server that keeps per-connection state (a framing decoder) resets
// it when this moves.
func (p *Port) HostConnects() uint64 { return p.hostConnects.Load() }

// Info describes the port.
func (p *Port) Info() PortInfo {
	return PortInfo{ID: p.id, Name: p.Name(), Added: p.added.Load(), Console: p.console.Load(),
		HostConnected: p.hostOpen.Load(), GuestOpen: p.guestOpen.Load()}
}

// SetReadDeadline makes Read fail with os.ErrDeadlineExceeded from t on;
// the zero time means none.
func (p *Port) SetReadDeadline(t time.Time) error { p.readDeadline.Store(unixNano(t)); return nil }

// SetWriteDeadline makes Write fail with os.ErrDeadlineExceeded from t on.
func (p *Port) SetWriteDeadline(t time.Time) error { p.writeDeadline.Store(unixNano(t)); return nil }

// SetDeadline sets both deadlines.
func (p *Port) SetDeadline(t time.Time) error {
	p.SetReadDeadline(t)
	return p.SetWriteDeadline(t)
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// backoff is an idle wait's growing sleep.
type backoff struct {
	sleep time.Duration
	since time.Time // when this idle spell began
}

// idle handles control messages, checks the port and the deadline, and
// sleeps. It returns why the wait must end, or nil.
func (p *Port) idle(b *backoff, deadline *atomic.Int64) error {
	d := p.d
	if err := p.check(deadline); err != nil {
		return err
	}
	if d.Poll() > 0 {
		b.sleep = 0
		return nil
	}
	switch {
	case b.sleep == 0:
		b.sleep, b.since = d.cfg.MinSleep, time.Now()
	case b.sleep >= d.cfg.IdleSleep && time.Since(b.since) >= d.cfg.DeepAfter:
		// A quiet spell: under TCG every wakeup costs the host
		// hundreds of microseconds of CPU.
		b.sleep = d.cfg.DeepSleep
	default:
		b.sleep = min(2*b.sleep, d.cfg.IdleSleep)
	}
	d.stats.idle.Add(1)
	time.Sleep(b.sleep)
	return nil
}

func (p *Port) check(deadline *atomic.Int64) error {
	if p.closed.Load() || p.d.closed.Load() {
		return ErrClosed
	}
	if e := p.d.broken.Load(); e != nil {
		return e
	}
	if dl := deadline.Load(); dl != 0 && time.Now().UnixNano() >= dl {
		return os.ErrDeadlineExceeded
	}
	return nil
}

// Read reads what the host sent, blocking until at least one byte is
// there. It does not allocate.
func (p *Port) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, p.check(&p.readDeadline)
	}
	p.rxMu.Lock()
	defer p.rxMu.Unlock()
	var bo backoff
	for {
		if err := p.check(&p.readDeadline); err != nil {
			return 0, err
		}
		if n := p.readBuffered(b); n > 0 {
			return n, nil
		}
		if p.reapRx() {
			continue
		}
		// Nothing to read: give the device the buffers read so far
		// before waiting, in case it waits for them.
		if p.rx.flush() {
			p.d.stats.rxKicks.Add(1)
		}
		if err := p.idle(&bo, &p.readDeadline); err != nil {
			return 0, err
		}
	}
}

// readBuffered copies from reaped buffers into b, reposting each buffer
// read to its end.
//
// +checklocks:p.rxMu
func (p *Port) readBuffered(b []byte) int {
	n := 0
	for n < len(b) && p.rxNext < len(p.rxUsed) {
		u := p.rxUsed[p.rxNext]
		c := copy(b[n:], p.rx.bufs[u.ID].Buf[p.rxOff:u.Len])
		n += c
		p.rxOff += uint32(c)
		if p.rxOff >= u.Len {
			p.rxNext++
			p.rxOff = 0
		}
	}
	if p.rxNext == len(p.rxUsed) && p.rxNext > 0 {
		// The batch is read: post its buffers again. Not before: Reap
		// freed every id of the batch, and the ring may hand any of
		// them out next.
		for range p.rxNext {
			p.rx.postNext()
		}
		p.rxUsed, p.rxNext = p.rxUsed[:0], 0
		p.rx.publish()
		// Kick in batches; Read kicks the rest before it waits.
		if p.rx.unkicked >= 2 && p.rx.flush() {
			p.d.stats.rxKicks.Add(1)
		}
	}
	p.d.stats.rxBytes.Add(uint64(n))
	return n
}

// reapRx takes the buffers the device filled. It reports whether there
// were any.
//
// +checklocks:p.rxMu
func (p *Port) reapRx() bool {
	if !p.rx.q.HasUsed() {
		return false
	}
	n, err := p.rx.q.Reap(p.rx.used[:max(1, len(p.rx.used)/4)])
	p.rxUsed, p.rxNext, p.rxOff = p.rx.used[:n], 0, 0
	p.d.stats.rxBufs.Add(uint64(n))
	if err != nil {
		p.d.fail(fmt.Sprintf("port %d receiveq", p.id), err)
	}
	return n > 0
}

// Write sends b to the host, split into buffers of at most
// Config.TxBufSize. It returns once every byte is on the transmitq (not
// once the host has read it), or with an error and how many bytes were
// queued. It does not allocate.
func (p *Port) Write(b []byte) (int, error) {
	p.txMu.Lock()
	defer p.txMu.Unlock()
	q := p.tx
	var bo backoff
	done := 0
	for done < len(b) {
		if err := p.check(&p.writeDeadline); err != nil {
			p.flushTx()
			return done, err
		}
		if !p.hostOpen.Load() {
			p.flushTx()
			if err := p.idle(&bo, &p.writeDeadline); err != nil {
				return done, err
			}
			continue
		}
		p.reapTx()
		id, ok := q.q.PeekID()
		if !ok {
			if q.q.Broken() != nil {
				continue // check reports it
			}
			p.flushTx()
			if err := p.idle(&bo, &p.writeDeadline); err != nil {
				return done, err
			}
			continue
		}
		bo.sleep = 0
		buf := q.bufs[id]
		n := copy(buf.Buf[:q.size], b[done:])
		if _, ok := q.q.Add1(buf.Addr, uint32(n), false); !ok {
			continue
		}
		q.publish()
		done += n
		p.d.stats.txBytes.Add(uint64(n))
		if q.unkicked >= len(q.bufs)/4 {
			p.flushTx()
		}
	}
	p.flushTx()
	return done, nil
}

// +checklocks:p.txMu
func (p *Port) flushTx() {
	if p.tx.flush() {
		p.d.stats.txKicks.Add(1)
	}
}

// reapTx frees the buffers the device has read.
//
// +checklocks:p.txMu
func (p *Port) reapTx() {
	for p.tx.q.HasUsed() {
		n, err := p.tx.q.Reap(p.tx.used)
		p.d.stats.txBufs.Add(uint64(n))
		if err != nil {
			p.d.fail(fmt.Sprintf("port %d transmitq", p.id), err)
			return
		}
		if n < len(p.tx.used) {
			return
		}
	}
}

// Flush waits until the device has taken every buffer written (the host
// has read them, or QEMU dropped them), or the write deadline.
func (p *Port) Flush() error {
	p.txMu.Lock()
	defer p.txMu.Unlock()
	var bo backoff
	for {
		p.reapTx()
		if p.tx.q.InFlight() == 0 {
			return nil
		}
		p.flushTx()
		if err := p.idle(&bo, &p.writeDeadline); err != nil {
			return err
		}
	}
}

// WaitHost waits until the host side is connected, or the deadline (zero:
// none).
func (p *Port) WaitHost(deadline time.Time) error {
	var dl atomic.Int64
	dl.Store(unixNano(deadline))
	var bo backoff
	for !p.hostOpen.Load() {
		if err := p.idle(&bo, &dl); err != nil {
			return err
		}
	}
	return nil
}

// Close tells the device the guest side is closed (PORT_OPEN 0); Reads and
// Writes in progress return ErrClosed. Device.Port opens it again.
func (p *Port) Close() error {
	if p.closed.Swap(true) {
		return nil
	}
	d := p.d
	if d.closed.Load() {
		return nil
	}
	d.ctrlMu.Lock()
	defer d.ctrlMu.Unlock()
	if p.guestOpen.Swap(false) && p.added.Load() && d.broken.Load() == nil {
		return d.sendLocked(p.id, EventPortOpen, 0)
	}
	return nil
}
