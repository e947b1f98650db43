package kctl

import (
	"bytes"
	"errors"
	"testing"

	"github.com/nke-harness/nke/nke"
)

// FuzzQueue drives a client's receive queue with a script (each byte an
// enqueue of b/2 bytes if even, a read into a b/2-byte buffer if odd)
// and checks it against a plain queue: every message comes back whole
// and in order (cut to the buffer, ErrTruncated, if it is shorter),
// ErrNoBufs exactly when it does not fit, ErrMsgSize when it never would.
func FuzzQueue(f *testing.F) {
	f.Add([]byte{20, 20, 21, 80, 41, 41, 2, 0, 1, 1})
	f.Add(bytes.Repeat([]byte{30, 31}, 40))
	f.Add([]byte{122, 124, 1, 255})
	f.Fuzz(func(t *testing.T, script []byte) {
		const size = 61 // odd, so messages wrap at every offset
		r := New(Config{})
		ctl, err := r.Hook(owner).RegisterControl(nke.ControlSpec{Name: "com.example.fuzz", RecvSize: size,
			Connect: func(uint32) (any, error) { return nil, nil }})
		if err != nil {
			t.Fatal(err)
		}
		c, _ := r.Connect("com.example.fuzz")
		var model [][]byte
		queued, seq := 0, byte(0)
		for i, b := range script {
			n := int(b >> 1)
			if b&1 == 0 {
				m := make([]byte, n)
				for j := range m {
					seq++
					m[j] = seq
				}
				err := ctl.Enqueue(c.Unit(), m)
				switch {
				case n+hdrLen > size:
					if !errors.Is(err, nke.ErrMsgSize) {
						t.Fatalf("op %d: %d bytes: %v, want ErrMsgSize", i, n, err)
					}
				case queued+n+hdrLen > size:
					if !errors.Is(err, nke.ErrNoBufs) {
						t.Fatalf("op %d: %d bytes with %d queued: %v, want ErrNoBufs", i, n, queued, err)
					}
				case err != nil:
					t.Fatalf("op %d: %d bytes with %d queued: %v", i, n, queued, err)
				default:
					model = append(model, m)
					queued += n + hdrLen
				}
				continue
			}
			buf := make([]byte, n)
			got, err := c.TryRecv(buf)
			if len(model) == 0 {
				if !errors.Is(err, ErrWouldBlock) {
					t.Fatalf("op %d: read of an empty queue: %v", i, err)
				}
				continue
			}
			want := model[0]
			model, queued = model[1:], queued-len(want)-hdrLen
			if len(want) > n {
				if !errors.Is(err, ErrTruncated) || got != n || !bytes.Equal(buf, want[:n]) {
					t.Fatalf("op %d: truncated read %x (%d, %v), want %x", i, buf[:got], got, err, want[:n])
				}
				continue
			}
			if err != nil || !bytes.Equal(buf[:got], want) {
				t.Fatalf("op %d: read %x (%v), want %x", i, buf[:got], err, want)
			}
		}
		if space, _ := ctl.EnqueueSpace(c.Unit()); space != max(0, size-queued-hdrLen) {
			t.Fatalf("space %d with %d queued", space, queued)
		}
	})
}
