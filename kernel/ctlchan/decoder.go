package ctlchan

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// DefaultPartialTimeout is how long a Decoder waits for the rest of a
// frame whose header arrived before it calls the frame truncated.
const DefaultPartialTimeout = 2 * time.Second

const chunkSize = 64 << 10

// FrameError is a frame a Decoder did not accept, or a run of bytes that
// were no frame. The channel goes on after it: reply (Header says whether
// Type, Session and Request are known) and call Next again.
type FrameError struct {
	Err     error // ErrBadMagic, ErrHeaderChecksum, ErrVersion, ErrTooLarge, ErrPayloadChecksum, ErrTruncated
	Header  bool
	Type    Type
	Session uint32
	Request uint32
	Skipped int // bytes discarded
}

func (e *FrameError) Error() string {
	if e.Header {
		return fmt.Sprintf("%v (%s, session %d, request %d; %d bytes skipped)", e.Err, e.Type, e.Session, e.Request, e.Skipped)
	}
	return fmt.Sprintf("%v (%d bytes skipped)", e.Err, e.Skipped)
}

func (e *FrameError) Unwrap() error { return e.Err }

var errStalled = errors.New("stalled")

// ErrClosed is what Next returns once Close was called.
var ErrClosed = errors.New("ctlchan: decoder closed")

// Decoder reads frames from a byte stream that may hold garbage: it skips
// to the next valid header, and a frame whose payload stops arriving for
// PartialTimeout is reported truncated and the bytes after its header
// searched for the next frame, so that a peer that restarted mid-frame is
// answered. A goroutine reads the stream; it ends when a read fails or
// Close is called and the read in progress returns.
//
// Next allocates nothing once its buffer has grown to the largest frame.
type Decoder struct {
	data    chan []byte // filled chunks, from the reader
	free    chan []byte // chunks back to the reader
	done    chan struct{}
	rerr    error // the reader's error, set before data is closed
	closeMu sync.Once

	timeout time.Duration
	timer   *time.Timer
	buf     []byte
	off     int
	skipped int
	first   error // why the skipped bytes were skipped
}

// NewDecoder starts reading frames from r; timeout 0 means
// DefaultPartialTimeout.
func NewDecoder(r io.Reader, timeout time.Duration) *Decoder {
	if timeout <= 0 {
		timeout = DefaultPartialTimeout
	}
	d := &Decoder{
		data:    make(chan []byte),
		free:    make(chan []byte, 2),
		done:    make(chan struct{}),
		timeout: timeout,
		timer:   time.NewTimer(timeout),
		buf:     make([]byte, 0, chunkSize),
	}
	d.timer.Stop()
	for range cap(d.free) {
		d.free <- make([]byte, chunkSize)
	}
	go d.read(r)
	return d
}

func (d *Decoder) read(r io.Reader) {
	for {
		var b []byte
		select {
		case b = <-d.free:
		case <-d.done:
			return
		}
		n, err := r.Read(b[:cap(b)])
		if n > 0 {
			select {
			case d.data <- b[:n]:
			case <-d.done:
				return
			}
		} else {
			d.free <- b // never blocks: at most cap(free) chunks exist
		}
		if err != nil {
			d.rerr = err
			close(d.data)
			return
		}
	}
}

// Close stops the reading goroutine once its read in progress returns.
func (d *Decoder) Close() { d.closeMu.Do(func() { close(d.done) }) }

// Next returns the next frame, whose Payload is valid until the next call,
// or a *FrameError for bytes it skipped (the stream goes on), or the
// stream's error (io.EOF at a clean end, io.ErrUnexpectedEOF inside a
// frame).
func (d *Decoder) Next() (Frame, error) {
	for {
		f, n, err := DecodeFrame(d.buf[d.off:])
		switch err {
		case nil:
			if e := d.garbage(); e != nil {
				return Frame{}, e
			}
			d.off += n
			return f, nil
		case ErrShort:
			if e := d.garbage(); e != nil {
				return Frame{}, e
			}
			need := n
			if need == 0 {
				need = HeaderLen
			}
			switch err := d.fill(need, n > 0); err {
			case nil:
			case errStalled:
				d.off++
				d.skipped++
				d.resync()
				return Frame{}, d.faulty(ErrTruncated, f)
			default:
				if len(d.buf) > d.off {
					return Frame{}, io.ErrUnexpectedEOF
				}
				return Frame{}, err
			}
		case ErrBadMagic, ErrHeaderChecksum:
			if d.skipped == 0 {
				d.first = err
			}
			d.resync()
		case ErrVersion:
			if e := d.garbage(); e != nil {
				return Frame{}, e
			}
			d.off += n // the header is sound: skip the frame whole
			d.skipped += n
			return Frame{}, d.faulty(err, f)
		default: // ErrTooLarge, ErrPayloadChecksum: look for a frame after the header's first byte
			if e := d.garbage(); e != nil {
				return Frame{}, e
			}
			d.off++
			d.skipped++
			d.resync()
			return Frame{}, d.faulty(err, f)
		}
	}
}

func (d *Decoder) faulty(err error, f Frame) *FrameError {
	e := &FrameError{Err: err, Header: true, Type: f.Type, Session: f.Session, Request: f.Request, Skipped: d.skipped}
	d.skipped = 0
	return e
}

// garbage reports the bytes skipped since the last frame, once.
func (d *Decoder) garbage() *FrameError {
	if d.skipped == 0 {
		return nil
	}
	e := &FrameError{Err: d.first, Skipped: d.skipped}
	d.skipped = 0
	return e
}

// resync drops bytes up to the next possible frame start after d.off
// (counting them as skipped), keeping a tail that may begin a magic.
func (d *Decoder) resync() {
	b := d.buf[d.off:]
	i := 1
	for ; i < len(b); i++ {
		k := min(len(b)-i, len(Magic))
		if b[i] == Magic[0] && string(b[i:i+k]) == Magic[:k] {
			break
		}
	}
	i = min(i, len(b))
	d.skipped += i
	d.off += i
}

// fill reads the next chunk (Next decodes again after each: garbage is
// seen before a header's worth of bytes came), making room for need
// bytes from d.off; timed, it gives up with errStalled when no byte
// arrives for the partial timeout.
func (d *Decoder) fill(need int, timed bool) error {
	if d.off > 0 {
		n := copy(d.buf, d.buf[d.off:])
		d.buf, d.off = d.buf[:n], 0
	}
	if cap(d.buf) < need {
		nb := make([]byte, len(d.buf), max(need, 2*cap(d.buf)))
		copy(nb, d.buf)
		d.buf = nb
	}
	var stall <-chan time.Time
	if timed {
		d.timer.Reset(d.timeout)
		defer d.timer.Stop()
		stall = d.timer.C
	}
	select {
	case c, ok := <-d.data:
		if !ok {
			return d.rerr
		}
		if len(d.buf)+len(c) > cap(d.buf) {
			nb := make([]byte, len(d.buf), len(d.buf)+max(len(c), cap(d.buf)))
			copy(nb, d.buf)
			d.buf = nb
		}
		d.buf = append(d.buf, c...)
		d.free <- c[:cap(c)]
		return nil
	case <-stall:
		return errStalled
	case <-d.done:
		return ErrClosed
	}
}
