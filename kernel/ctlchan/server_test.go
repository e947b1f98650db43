package ctlchan_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/nke-harness/nke/kernel/ctlchan"
	"github.com/nke-harness/nke/kernel/ctlchan/ctlchantest"
)

// serve runs a server for b on one end of a pipe and returns a client on
// the other; the test's end stops both.
func serve(t testing.TB, b ctlchan.Backend) (*ctlchan.Client, net.Conn) {
	t.Helper()
	g, h := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctlchan.Serve(ctx, g, b) }()
	c := ctlchan.NewClient(h)
	t.Cleanup(func() {
		cancel()
		c.Close()
		g.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after its context ended")
		}
	})
	return c, h
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestLoadStatUnload(t *testing.T) {
	fake := ctlchantest.New()
	c, _ := serve(t, fake)
	cx := ctx(t)
	h, err := c.Hello(cx, "test")
	if err != nil || h.Version != ctlchan.Version {
		t.Fatalf("Hello: %+v, %v", h, err)
	}
	lib := ctlchantest.Archive("com.example.lib", "1.0", nil, 0)
	fw := ctlchantest.Archive("com.example.fw", "2.0", map[string]string{"com.example.lib": "1.0", "com.nke-harness.kpi.ip": "1"}, 0)

	if _, err := c.Load(cx, ctlchan.LoadRequest{Name: "fw.nke", Archive: fw}); !errors.Is(err, syscall.ENOENT) || !strings.Contains(err.Error(), "com.example.lib is not loaded") {
		t.Errorf("load without its dependency: %v, want ENOENT naming it", err)
	}
	if r, err := c.Load(cx, ctlchan.LoadRequest{Name: "lib.nke", Archive: lib, Dependency: true}); err != nil || r.Already {
		t.Fatalf("load lib: %+v, %v", r, err)
	}
	if r, err := c.Load(cx, ctlchan.LoadRequest{Name: "lib.nke", Archive: lib, Dependency: true}); err != nil || !r.Already {
		t.Errorf("load lib again as a dependency: %+v, %v; want Already", r, err)
	}
	if _, err := c.Load(cx, ctlchan.LoadRequest{Name: "lib.nke", Archive: lib}); !errors.Is(err, syscall.EEXIST) {
		t.Errorf("load lib again: %v, want EEXIST", err)
	}
	r, err := c.Load(cx, ctlchan.LoadRequest{Name: "fw.nke", Archive: fw})
	if d := cmp.Diff(ctlchan.LoadReply{ID: "com.example.fw", Version: "2.0", Index: 2}, r); err != nil || d != "" {
		t.Fatalf("load fw: %v (-want +got):\n%s", err, d)
	}
	st, err := c.Stat(cx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, n := range st.NKEs {
		ids = append(ids, n.ID+" "+n.Version)
	}
	if d := cmp.Diff([]string{"com.example.lib 1.0", "com.example.fw 2.0"}, ids); d != "" {
		t.Errorf("stat (-want +got):\n%s", d)
	}
	if _, err := c.Unload(cx, ctlchan.UnloadRequest{ID: "com.example.lib"}); !errors.Is(err, syscall.EBUSY) || ctlchan.CodeOf(err) != ctlchan.CodeBusy {
		t.Errorf("unload lib with a dependant: %v, want EBUSY", err)
	}
	if rr, err := c.Replace(cx, ctlchan.ReplaceRequest{Name: "fw.nke", Archive: ctlchantest.Archive("com.example.fw", "2.1", map[string]string{"com.example.lib": "1.0"}, 0), Handover: true}); err != nil || rr.OldVersion != "2.0" || rr.NewVersion != "2.1" || !rr.HandedOver {
		t.Errorf("replace: %+v, %v", rr, err)
	}
	u, err := c.Unload(cx, ctlchan.UnloadRequest{ID: "com.example.lib", Force: true})
	if err != nil || !u.Forced || !cmp.Equal(u.Detached, []string{"com.example.fw"}) {
		t.Errorf("forced unload: %+v, %v", u, err)
	}
	if _, err := c.Unload(cx, ctlchan.UnloadRequest{}); ctlchan.CodeOf(err) != ctlchan.CodeBadMessage {
		t.Errorf("unload without an id: %v, want %s", err, ctlchan.CodeBadMessage)
	}
	if _, err := c.Load(cx, ctlchan.LoadRequest{Name: "junk.nke", Archive: []byte("not a tar")}); err == nil || !strings.Contains(err.Error(), "junk.nke") {
		t.Errorf("load junk: %v, want an error naming the file", err)
	}
}

func TestCtl(t *testing.T) {
	fake := ctlchantest.New()
	c, _ := serve(t, fake)
	cx := ctx(t)
	if _, err := c.CtlConnect(cx, ctlchan.CtlConnectRequest{Name: "com.example.none"}); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("connect to nothing: %v, want ENOENT", err)
	}
	k, err := c.CtlConnect(cx, ctlchan.CtlConnectRequest{Name: ctlchantest.CtlName})
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"add drop tcp dport 23", "add pass all", "list"} {
		if err := k.Send(cx, []byte(cmd)); err != nil {
			t.Fatalf("send %q: %v", cmd, err)
		}
	}
	if err := k.Send(cx, []byte("frob")); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("send frob: %v, want EINVAL", err)
	}
	var got []string
	for range 5 {
		b, err := k.Recv(cx)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(b))
	}
	want := []string{"rule 1: drop tcp dport 23", "rule 2: pass all", "rule 1: drop tcp dport 23", "rule 2: pass all", "2 rules"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("received (-want +got):\n%s", d)
	}
	if err := k.SetOpt(cx, 1, []byte("value")); err != nil {
		t.Fatal(err)
	}
	if v, err := k.GetOpt(cx, 1, 3); err != nil || string(v) != "val" {
		t.Errorf("getopt 1 size 3: %q, %v", v, err)
	}
	if _, err := k.GetOpt(cx, 9, 8); !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Errorf("getopt 9: %v, want EOPNOTSUPP", err)
	}
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Recv(cx); err != io.EOF {
		t.Errorf("Recv after Close: %v, want EOF", err)
	}
	waitFor(t, "the control connection to close", func() bool { return fake.CtlClients() == 0 })
	if err := k.Send(cx, []byte("list")); !errors.Is(err, syscall.ENOTCONN) {
		t.Errorf("send after close: %v, want ENOTCONN", err)
	}

	// The NKE closing its side ends the stream.
	k, err = c.CtlConnect(cx, ctlchan.CtlConnectRequest{Name: ctlchantest.CtlName})
	if err != nil {
		t.Fatal(err)
	}
	k.Send(cx, []byte("close"))
	if _, err := k.Recv(cx); err != io.EOF {
		t.Errorf("Recv after the NKE closed: %v, want EOF", err)
	}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// Events streams while other requests run beside it on the same
// connection; cancelling it ends it in the guest.
func TestEventsBesideRequests(t *testing.T) {
	fake := ctlchantest.New()
	c, _ := serve(t, fake)
	cx := ctx(t)
	ectx, stop := context.WithCancel(cx)
	events := make(chan ctlchan.Event, 10)
	done := make(chan error, 1)
	go func() {
		done <- c.Events(ectx, func(e ctlchan.Event) error { events <- e; return nil })
	}()
	waitFor(t, "the subscription", func() bool { return fake.Subscribers() == 1 })
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := "com.example.n" + string(rune('a'+i))
			if _, err := c.Load(cx, ctlchan.LoadRequest{Name: id, Archive: ctlchantest.Archive(id, "1", nil, 1000)}); err != nil {
				t.Error(err)
			}
			if _, err := c.Stat(cx); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for range 8 {
		select {
		case e := <-events:
			if e.Kind != "load" {
				t.Errorf("event %+v, want a load", e)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("missing load events")
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Errorf("Events after cancel: %v", err)
	}
	waitFor(t, "the guest to end the stream", func() bool { return fake.Subscribers() == 0 })
}

func TestCapture(t *testing.T) {
	c, _ := serve(t, ctlchantest.New())
	cx := ctx(t)
	var buf bytes.Buffer
	if err := c.Capture(cx, ctlchan.CaptureRequest{Hook: ctlchantest.Hook, After: "com.example.fw", Count: 3}, &buf); err != nil {
		t.Fatal(err)
	}
	r, err := pcapgo.NewNgReader(&buf, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		data, ci, err := r.ReadPacketData()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(rune('0'+data[len(data)-1]))+" "+ci.Timestamp.UTC().Format("15:04:05.000"))
	}
	if d := cmp.Diff([]string{"0 09:00:00.000", "1 09:00:00.001", "2 09:00:00.002"}, got); d != "" {
		t.Errorf("captured (-want +got):\n%s", d)
	}
	if err := c.Capture(cx, ctlchan.CaptureRequest{Hook: "nowhere", Count: 1}, io.Discard); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("capture at no hook: %v, want ENOENT", err)
	}
	if err := c.Capture(cx, ctlchan.CaptureRequest{Hook: ctlchantest.Hook, Before: "a", After: "b"}, io.Discard); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("capture before and after: %v, want EINVAL", err)
	}
	// Until cancelled.
	cc, stop := context.WithTimeout(cx, 100*time.Millisecond)
	defer stop()
	var n countWriter
	if err := c.Capture(cc, ctlchan.CaptureRequest{Hook: ctlchantest.Hook}, &n); err != nil || n == 0 {
		t.Errorf("capture until cancelled: %d bytes, %v", n, err)
	}
}

type countWriter int

func (w *countWriter) Write(p []byte) (int, error) { *w += countWriter(len(p)); return len(p), nil }

// After garbage, a damaged frame and a truncated one, the server answers
// each with an error and then answers a ping.
func TestGarbageThenPing(t *testing.T) {
	g, h := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go ctlchan.Config{PartialTimeout: 20 * time.Millisecond}.Serve(ctx, g, ctlchantest.New())
	defer g.Close()
	defer h.Close()
	ping, _ := ctlchan.AppendFrame(nil, ctlchan.Frame{Type: ctlchan.TypePing, Session: 5, Request: 9, Payload: []byte{0, 'h', 'i'}})
	bad := bytes.Clone(ping)
	bad[len(bad)-1] ^= 1
	stat, _ := ctlchan.AppendFrame(nil, ctlchan.Frame{Type: ctlchan.TypeStat, Session: 5, Request: 7, Payload: []byte{0, 1, 2, 3, 4}})
	go func() {
		h.Write([]byte("garbage!"))
		h.Write(bad)
		h.Write(stat[:len(stat)-3]) // truncated
		time.Sleep(60 * time.Millisecond)
		h.Write(ping)
	}()
	d := ctlchan.NewDecoder(h, time.Second)
	defer d.Close()
	var got []string
	for len(got) < 4 {
		f, err := d.Next()
		if err != nil {
			t.Fatal(err)
		}
		var e ctlchan.ErrorBody
		if f.Type == ctlchan.TypeError {
			e = decodeError(t, f.Payload)
		}
		got = append(got, strings.Join([]string{f.Type.String(), string(e.Code), e.Op, itoa(f.Session), itoa(f.Request)}, " "))
	}
	want := []string{
		"error EBADMSG frame 0 0", // the garbage, on the channel
		"error EBADMSG ping 5 9",  // the damaged ping
		"error EBADMSG stat 5 7",  // the truncated stat
		"ping   5 9",              // no code, no op
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("replies (-want +got):\n%s", d)
	}
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

func decodeError(t testing.TB, p []byte) ctlchan.ErrorBody {
	t.Helper()
	e, err := ctlchan.DecodeError(p)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// rawServe is a server for a test that writes frames itself.
func rawServe(t *testing.T) (net.Conn, *ctlchan.Decoder) {
	g, h := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ctlchan.Serve(ctx, g, ctlchantest.New()); close(done) }()
	d := ctlchan.NewDecoder(h, time.Second)
	t.Cleanup(func() { cancel(); h.Close(); g.Close(); d.Close(); <-done })
	return h, d
}

func writeFrame(t *testing.T, w io.Writer, f ctlchan.Frame, body any) {
	t.Helper()
	p, err := ctlchan.AppendMessage(nil, body, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.Payload = p
	b, err := ctlchan.AppendFrame(nil, f)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
}

func TestRefusedRequests(t *testing.T) {
	for _, c := range []struct {
		name  string
		frame ctlchan.Frame
		body  any
		want  ctlchan.Code
	}{
		{"hello from the future", ctlchan.Frame{Type: ctlchan.TypeHello, Request: 1}, ctlchan.Hello{Versions: []int{2, 3}}, ctlchan.CodeVersion},
		{"unknown type", ctlchan.Frame{Type: 99, Request: 1}, nil, ctlchan.CodeUnsupported},
		{"a reply sent to the guest", ctlchan.Frame{Type: ctlchan.TypeStat, Flags: ctlchan.FlagReply, Request: 1}, nil, ctlchan.CodeInvalid},
		{"ctl send without connect", ctlchan.Frame{Type: ctlchan.TypeCtlSend, Request: 1}, ctlchan.CtlOp{Conn: 4}, ctlchan.CodeNotConn},
		{"capture without a hook", ctlchan.Frame{Type: ctlchan.TypeCapture, Request: 1}, ctlchan.CaptureRequest{}, ctlchan.CodeInvalid},
		{"body that is not JSON", ctlchan.Frame{Type: ctlchan.TypeUnload, Request: 1}, nil, ctlchan.CodeBadMessage},
	} {
		t.Run(c.name, func(t *testing.T) {
			h, d := rawServe(t)
			f := c.frame
			if c.name == "body that is not JSON" {
				f.Payload = []byte{3, '{', '{', '{'}
				b, _ := ctlchan.AppendFrame(nil, f)
				h.Write(b)
			} else {
				writeFrame(t, h, f, c.body)
			}
			r, err := d.Next()
			if err != nil {
				t.Fatal(err)
			}
			e := decodeError(t, r.Payload)
			if r.Type != ctlchan.TypeError || e.Code != c.want || r.Request != 1 || e.Message == "" {
				t.Errorf("reply %s %+v, want an error %s for request 1", r.Type, e, c.want)
			}
		})
	}
}

// A request id still in flight cannot be reused in its session, and the
// limit of requests in flight per session holds.
func TestRequestLimits(t *testing.T) {
	h, d := rawServe(t)
	writeFrame(t, h, ctlchan.Frame{Type: ctlchan.TypeEvents, Session: 1, Request: 1}, nil)
	writeFrame(t, h, ctlchan.Frame{Type: ctlchan.TypeEvents, Session: 1, Request: 1}, nil)
	r, err := d.Next()
	if err != nil {
		t.Fatal(err)
	}
	if e := decodeError(t, r.Payload); e.Code != ctlchan.CodeInvalid {
		t.Errorf("reused request id: %s %+v, want EINVAL", r.Type, e)
	}
	for i := range ctlchan.DefaultMaxRequests {
		writeFrame(t, h, ctlchan.Frame{Type: ctlchan.TypeEvents, Session: 1, Request: uint32(i + 2)}, nil)
	}
	r, err = d.Next()
	if err != nil {
		t.Fatal(err)
	}
	if e := decodeError(t, r.Payload); e.Code != ctlchan.CodeBusy || r.Request != ctlchan.DefaultMaxRequests+1 {
		t.Errorf("request %d over the limit: %s %+v, want EBUSY", r.Request, r.Type, e)
	}
	// Another session is not limited by this one; closing the session
	// ends every stream it had.
	writeFrame(t, h, ctlchan.Frame{Type: ctlchan.TypePing, Session: 2, Request: 1}, nil)
	if r, err = d.Next(); err != nil || r.Type != ctlchan.TypePing || r.Session != 2 {
		t.Fatalf("ping in session 2: %s, %v", r.Type, err)
	}
	writeFrame(t, h, ctlchan.Frame{Type: ctlchan.TypeSessionClose, Session: 1}, nil)
	ends := 0
	for ends < ctlchan.DefaultMaxRequests {
		r, err := d.Next()
		if err != nil {
			t.Fatal(err)
		}
		if r.Type != ctlchan.TypeEnd {
			t.Fatalf("after session close: %s", r.Type)
		}
		ends++
	}
}

func TestBackendPanic(t *testing.T) {
	c, _ := serve(t, ctlchantest.Panicky{Fake: ctlchantest.New()})
	cx := ctx(t)
	if _, err := c.Stat(cx); ctlchan.CodeOf(err) != ctlchan.CodeFailed || !strings.Contains(err.Error(), "panic") {
		t.Errorf("stat on a panicking backend: %v", err)
	}
	if _, err := c.Ping(cx, []byte("x")); err != nil {
		t.Errorf("ping after a backend panic: %v", err)
	}
}

// BenchmarkLoadTransfer is the protocol's bundle transfer rate: a 2 MiB
// archive loaded through client, frames and server over an in-memory
// pipe (the backend only reads its manifest).
func BenchmarkLoadTransfer(b *testing.B) {
	fake := ctlchantest.New()
	c, _ := serve(b, fake)
	cx := context.Background()
	arc := ctlchantest.Archive("com.example.big", "1", nil, 2<<20)
	b.SetBytes(int64(len(arc)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Load(cx, ctlchan.LoadRequest{Name: "big.nke", Archive: arc}); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Unload(cx, ctlchan.UnloadRequest{ID: "com.example.big"}); err != nil {
			b.Fatal(err)
		}
	}
}
