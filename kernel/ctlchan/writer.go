package ctlchan

import (
	"io"
	"sync"
)

// smallFrame is the payload size up to which a frame goes out in one
// Write (header and payload copied together).
const smallFrame = 4096

// Writer writes whole frames to a byte stream from many goroutines; a
// frame is never interleaved with another. After a write fails every
// later one returns that error. WriteFrame allocates nothing.
type Writer struct {
	mu sync.Mutex
	// +checklocks:mu
	w io.Writer
	// +checklocks:mu
	err error
	// +checklocks:mu
	scratch [HeaderLen + smallFrame]byte
}

// NewWriter writes frames to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// WriteFrame writes f.
func (w *Writer) WriteFrame(f *Frame) error {
	if len(f.Payload) > MaxPayload {
		return ErrTooLarge
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	h := (*[HeaderLen]byte)(w.scratch[:HeaderLen])
	PutHeader(h, f)
	if len(f.Payload) <= smallFrame {
		n := copy(w.scratch[HeaderLen:], f.Payload)
		_, w.err = w.w.Write(w.scratch[:HeaderLen+n])
		return w.err
	}
	if _, w.err = w.w.Write(h[:]); w.err != nil {
		return w.err
	}
	_, w.err = w.w.Write(f.Payload)
	return w.err
}
