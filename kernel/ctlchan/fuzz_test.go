package ctlchan_test

import (
	"context"
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nke-harness/nke/kernel/ctlchan"
	"github.com/nke-harness/nke/kernel/ctlchan/ctlchantest"
)

// FuzzServe feeds a stream to a server: it must not panic, must answer a
// ping sent after the stream (whatever the stream held: garbage,
// truncated and valid frames), and must return once its channel closes.
func FuzzServe(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/streams/*")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		g, h := net.Pipe()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- ctlchan.Config{PartialTimeout: 5 * time.Millisecond}.Serve(ctx, g, ctlchantest.New())
		}()
		pong := make(chan struct{}, 1)
		go func() {
			d := ctlchan.NewDecoder(h, time.Second)
			defer d.Close()
			for {
				fr, err := d.Next()
				if err == nil && fr.Type == ctlchan.TypePing && fr.Session == 0xfffffffe && string(fr.Payload) == "\x00pong?" {
					select {
					case pong <- struct{}{}:
					default:
					}
				} else if err != nil && ctx.Err() != nil {
					return
				} else if err != nil {
					if _, ok := err.(*ctlchan.FrameError); !ok {
						return
					}
				}
			}
		}()
		go h.Write(in)
		deadline := time.After(10 * time.Second)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		var req uint32
	wait:
		for {
			select {
			case <-pong:
				break wait
			case <-tick.C:
				// A ping can be swallowed by a frame the stream began:
				// send another until one is answered.
				req++
				ping, _ := ctlchan.AppendFrame(nil, ctlchan.Frame{Type: ctlchan.TypePing, Session: 0xfffffffe, Request: binary.BigEndian.Uint32([]byte{0xff, 0, 0, byte(req)}), Payload: []byte("\x00pong?")})
				go h.Write(ping)
			case <-deadline:
				t.Fatal("no answer to a ping after the stream")
			}
		}
		cancel()
		h.Close()
		g.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Serve did not return after its channel closed")
		}
	})
}
