package ctlchan

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func mustFrame(t testing.TB, f Frame) []byte {
	t.Helper()
	b, err := AppendFrame(nil, f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// reheader recomputes a header's checksum after a test changed it.
func reheader(b []byte) []byte {
	binary.BigEndian.PutUint32(b[24:28], crcOf(b[0:24]))
	return b
}

func TestDecodeFrame(t *testing.T) {
	good := mustFrame(t, Frame{Type: TypeStat, Session: 7, Request: 9, Payload: []byte{0, 'x', 'y'}})
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	type result struct {
		Type    Type
		Session uint32
		Request uint32
		Payload string
		N       int
		Err     string
	}
	for _, c := range []struct {
		name string
		in   []byte
		want result
	}{
		{"whole", good, result{TypeStat, 7, 9, "\x00xy", len(good), ""}},
		{"with what follows", append(bytes.Clone(good), "NKEC"...), result{TypeStat, 7, 9, "\x00xy", len(good), ""}},
		{"empty", nil, result{Err: ErrShort.Error()}},
		{"magic prefix", []byte("NK"), result{Err: ErrShort.Error()}},
		{"header only", good[:HeaderLen], result{TypeStat, 7, 9, "", len(good), ErrShort.Error()}},
		{"garbage", []byte("GET / HTTP/1.1\r\n\r\n0123456789"), result{Err: ErrBadMagic.Error()}},
		{"garbage prefix", []byte("NX"), result{Err: ErrBadMagic.Error()}},
		{"header bit flip", mod(func(b []byte) []byte { b[10] ^= 1; return b }), result{Err: ErrHeaderChecksum.Error()}},
		{"payload bit flip", mod(func(b []byte) []byte { b[HeaderLen+1] ^= 0x80; return b }), result{TypeStat, 7, 9, "", len(good), ErrPayloadChecksum.Error()}},
		{"version 2", mod(func(b []byte) []byte { b[4] = 2; return reheader(b) }), result{TypeStat, 7, 9, "", len(good), ErrVersion.Error()}},
		{"length over the limit", mod(func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[16:20], MaxPayload+1)
			return reheader(b)
		}), result{TypeStat, 7, 9, "", HeaderLen, ErrTooLarge.Error()}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f, n, err := DecodeFrame(c.in)
			got := result{f.Type, f.Session, f.Request, string(f.Payload), n, ""}
			if err != nil {
				got.Err = err.Error()
			}
			if d := cmp.Diff(c.want, got); d != "" {
				t.Errorf("DecodeFrame (-want +got):\n%s", d)
			}
		})
	}
}

func TestAppendFrameLimit(t *testing.T) {
	if _, err := AppendFrame(nil, Frame{Payload: make([]byte, MaxPayload+1)}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("AppendFrame of MaxPayload+1 bytes: %v, want ErrTooLarge", err)
	}
	b := mustFrame(t, Frame{Type: TypeLoad, Payload: make([]byte, MaxPayload)})
	if _, n, err := DecodeFrame(b); err != nil || n != len(b) {
		t.Errorf("DecodeFrame of a MaxPayload frame: n %d, %v", n, err)
	}
}

func TestWriterAllocs(t *testing.T) {
	var buf bytes.Buffer
	buf.Grow(1 << 20)
	w := NewWriter(&buf)
	small := Frame{Type: TypeCaptureData, Flags: FlagReply, Payload: make([]byte, 200)}
	big := Frame{Type: TypeCaptureData, Flags: FlagReply, Payload: make([]byte, 60000)}
	if a := testing.AllocsPerRun(100, func() {
		buf.Reset()
		w.WriteFrame(&small)
		w.WriteFrame(&big)
	}); a != 0 {
		t.Errorf("WriteFrame: %v allocations per run, want 0", a)
	}
}

// FuzzDecodeFrame: DecodeFrame never panics, never claims more bytes than
// it was given (but for ErrShort), and what it accepts re-encodes to the
// same bytes.
func FuzzDecodeFrame(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/frames/*")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add(mustFrame(f, Frame{Type: TypePing, Session: 1, Request: 2, Payload: []byte("ping")}))
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, n, err := DecodeFrame(b)
		switch {
		case err == nil:
			if n > len(b) || n < HeaderLen {
				t.Fatalf("n %d of %d bytes", n, len(b))
			}
			again := mustFrame(t, fr)
			// Flags and version are in the header; the rest must match.
			if !bytes.Equal(again, b[:n]) {
				t.Fatalf("re-encoded %x, decoded from %x", again, b[:n])
			}
		case errors.Is(err, ErrShort):
			if n != 0 && n <= len(b) {
				t.Fatalf("ErrShort with n %d of %d bytes", n, len(b))
			}
		case errors.Is(err, ErrVersion), errors.Is(err, ErrPayloadChecksum), errors.Is(err, ErrTooLarge):
			if n > len(b) {
				t.Fatalf("%v with n %d of %d bytes", err, n, len(b))
			}
		case errors.Is(err, ErrBadMagic), errors.Is(err, ErrHeaderChecksum):
		default:
			t.Fatalf("unexpected error %v", err)
		}
	})
}
