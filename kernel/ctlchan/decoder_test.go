package ctlchan

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// results reads d to its end: "frame R" per frame, the error otherwise.
func results(d *Decoder) []string {
	var out []string
	for {
		f, err := d.Next()
		var fe *FrameError
		switch {
		case err == nil:
			out = append(out, fmt.Sprintf("frame %d %q", f.Request, f.Payload))
		case errors.As(err, &fe):
			out = append(out, fmt.Sprintf("skip %v header=%v request %d: %d bytes", fe.Err, fe.Header, fe.Request, fe.Skipped))
		default:
			return append(out, err.Error())
		}
	}
}

func TestDecoderResync(t *testing.T) {
	f1 := mustFrame(t, Frame{Type: TypePing, Request: 1, Payload: bytes.Repeat([]byte{'a'}, 100)})
	f2 := mustFrame(t, Frame{Type: TypePing, Request: 2, Payload: []byte("two")})
	corrupt := bytes.Clone(f1)
	corrupt[HeaderLen+50] ^= 1
	v2 := bytes.Clone(f1)
	v2[4] = 2
	reheader(v2)
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	two := `frame 2 "two"`
	for _, c := range []struct {
		name     string
		in       []byte
		closeNow bool // end the stream at once, not after the partial timeout
		want     []string
	}{
		{"clean", cat(f2, f2), false, []string{two, two, "EOF"}},
		{"garbage first", cat([]byte("hello"), f2), false, []string{"skip " + ErrBadMagic.Error() + " header=false request 0: 5 bytes", two, "EOF"}},
		{"garbage with magic prefixes", cat(f2, []byte("NKNKENKE"), f2), false, []string{two, "skip " + ErrBadMagic.Error() + " header=false request 0: 8 bytes", two, "EOF"}},
		{"joined mid-frame", cat(f1[10:], f2), false, []string{"skip " + ErrBadMagic.Error() + fmt.Sprintf(" header=false request 0: %d bytes", len(f1)-10), two, "EOF"}},
		{"header damaged", cat(f1[:20], []byte("xxxxxxxx"), f1[28:], f2), false, []string{"skip " + ErrHeaderChecksum.Error() + fmt.Sprintf(" header=false request 0: %d bytes", len(f1)), two, "EOF"}},
		{"payload damaged", cat(corrupt, f2), false, []string{"skip " + ErrPayloadChecksum.Error() + fmt.Sprintf(" header=true request 1: %d bytes", len(f1)), two, "EOF"}},
		{"truncated, then a frame", cat(f1[:HeaderLen+50], f2), false, []string{"skip " + ErrTruncated.Error() + fmt.Sprintf(" header=true request 1: %d bytes", HeaderLen+50), two, "EOF"}},
		{"other version", cat(v2, f2), false, []string{"skip " + ErrVersion.Error() + fmt.Sprintf(" header=true request 1: %d bytes", len(f1)), two, "EOF"}},
		{"stalls inside a frame", f1[:40], false, []string{"skip " + ErrTruncated.Error() + " header=true request 1: 40 bytes", "EOF"}},
		{"ends inside a frame", f1[:40], true, []string{io.ErrUnexpectedEOF.Error()}},
	} {
		t.Run(c.name, func(t *testing.T) {
			pr, pw := io.Pipe()
			go func() {
				pw.Write(c.in)
				if !c.closeNow {
					time.Sleep(100 * time.Millisecond) // past the partial timeout
				}
				pw.Close()
			}()
			d := NewDecoder(pr, 30*time.Millisecond)
			defer d.Close()
			if diff := cmp.Diff(c.want, results(d)); diff != "" {
				t.Errorf("Next (-want +got):\n%s", diff)
			}
		})
	}
}

// A frame split across many reads, byte by byte, is one frame.
func TestDecoderByteByByte(t *testing.T) {
	f := mustFrame(t, Frame{Type: TypeLoad, Request: 3, Payload: bytes.Repeat([]byte{7}, 70000)})
	d := NewDecoder(io.MultiReader(&oneByte{f}), time.Second)
	defer d.Close()
	want := []string{fmt.Sprintf("frame 3 %q", bytes.Repeat([]byte{7}, 70000)), "EOF"}
	if diff := cmp.Diff(want, results(d)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

type oneByte struct{ b []byte }

func (r *oneByte) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	p[0] = r.b[0]
	r.b = r.b[1:]
	return 1, nil
}

// loop is an endless stream of one frame.
type loop struct {
	b   []byte
	off int
}

func (l *loop) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		k := copy(p[n:], l.b[l.off:])
		n += k
		l.off = (l.off + k) % len(l.b)
	}
	return n, nil
}

func TestDecoderAllocs(t *testing.T) {
	f := mustFrame(t, Frame{Type: TypeCaptureData, Flags: FlagReply, Request: 1, Payload: make([]byte, 1500)})
	d := NewDecoder(&loop{b: f}, time.Second)
	defer d.Close()
	for range 100 {
		d.Next()
	}
	if a := testing.AllocsPerRun(1000, func() {
		if _, err := d.Next(); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("Next: %v allocations per frame, want 0", a)
	}
}

func BenchmarkDecoder(b *testing.B) {
	f := mustFrame(b, Frame{Type: TypeCaptureData, Flags: FlagReply, Request: 1, Payload: make([]byte, 64<<10)})
	d := NewDecoder(&loop{b: f}, time.Second)
	defer d.Close()
	b.SetBytes(int64(len(f)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.Next(); err != nil {
			b.Fatal(err)
		}
	}
}
