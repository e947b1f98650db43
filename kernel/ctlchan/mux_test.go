package ctlchan_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nke-harness/nke/kernel/ctlchan"
	"github.com/nke-harness/nke/kernel/ctlchan/ctlchantest"
)

// muxVM is a guest server behind a multiplexer on a unix socket in a
// runtime directory under t.TempDir.
func muxVM(t *testing.T, b ctlchan.Backend) (sock string) {
	t.Helper()
	t.Setenv(ctlchan.EnvRuntimeDir, filepath.Join(t.TempDir(), "run"))
	dir, err := ctlchan.MakeVMDir("vm1")
	if err != nil {
		t.Fatal(err)
	}
	sock = filepath.Join(dir, ctlchan.SocketName)
	ln, err := ctlchan.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	g, h := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); ctlchan.Serve(ctx, g, b) }()
	m := ctlchan.NewMux(h)
	m.Logf = t.Logf
	go func() { defer wg.Done(); m.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); g.Close(); h.Close(); wg.Wait() })
	return sock
}

func TestMuxPermissions(t *testing.T) {
	sock := muxVM(t, ctlchantest.New())
	for _, c := range []struct {
		path string
		want os.FileMode
	}{{filepath.Dir(filepath.Dir(sock)), 0o700}, {filepath.Dir(sock), 0o700}, {sock, 0o600}} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != c.want {
			t.Errorf("%s: mode %v, want %v", c.path, fi.Mode().Perm(), c.want)
		}
	}
	if got, err := ctlchan.FindSocket(); err != nil || got != sock {
		t.Errorf("FindSocket: %q, %v; want %q", got, err, sock)
	}
	if _, err := ctlchan.ListenUnix(sock); err == nil {
		t.Error("a second listener on a live socket was allowed")
	}
	os.Chmod(filepath.Dir(filepath.Dir(sock)), 0o755)
	if _, err := ctlchan.MakeVMDir("vm2"); err == nil {
		t.Error("MakeVMDir accepted a runtime directory others can enter")
	}
}

func TestFindSocketNoVM(t *testing.T) {
	t.Setenv(ctlchan.EnvRuntimeDir, t.TempDir())
	t.Setenv(ctlchan.EnvSocket, "")
	if _, err := ctlchan.FindSocket(); !errors.Is(err, ctlchan.ErrNoVM) {
		t.Errorf("FindSocket with no VM: %v, want ErrNoVM", err)
	}
}

// Two clients at once through the multiplexer: one streams events while
// the other loads and stats; the streaming client going away ends its
// stream in the guest.
func TestMuxSessions(t *testing.T) {
	fake := ctlchantest.New()
	sock := muxVM(t, fake)
	cx := ctx(t)
	a, _, err := ctlchan.Dial(cx, sock)
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := ctlchan.Dial(cx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got := make(chan ctlchan.Event, 16)
	go a.Events(cx, func(e ctlchan.Event) error { got <- e; return nil })
	waitFor(t, "a's subscription", func() bool { return fake.Subscribers() == 1 })
	for _, id := range []string{"com.example.a", "com.example.b"} {
		if _, err := b.Load(cx, ctlchan.LoadRequest{Name: id, Archive: ctlchantest.Archive(id, "1", nil, 0)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"com.example.a", "com.example.b"} {
		select {
		case e := <-got:
			if e.NKE != want {
				t.Errorf("event for %s, want %s", e.NKE, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no event through the multiplexer")
		}
	}
	// Both sessions used request ids from 1: replies went to the right one.
	if st, err := b.Stat(cx); err != nil || len(st.NKEs) != 2 {
		t.Errorf("stat: %+v, %v", st, err)
	}
	a.Close()
	waitFor(t, "the guest to end a's stream", func() bool { return fake.Subscribers() == 0 })
	if _, err := b.Ping(cx, []byte("still here")); err != nil {
		t.Errorf("b after a left: %v", err)
	}
}

// Garbage from one client is answered to that client; the guest and the
// other clients see nothing of it.
func TestMuxGarbage(t *testing.T) {
	sock := muxVM(t, ctlchantest.New())
	cx := ctx(t)
	raw, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.Write([]byte("this is not a frame"))
	d := ctlchan.NewDecoder(raw, time.Second)
	defer d.Close()
	f, err := d.Next()
	if err != nil {
		t.Fatal(err)
	}
	if e := decodeError(t, f.Payload); f.Type != ctlchan.TypeError || e.Code != ctlchan.CodeBadMessage {
		t.Errorf("reply to garbage: %s %+v", f.Type, e)
	}
	writeFrame(t, raw, ctlchan.Frame{Type: ctlchan.TypePing, Request: 3}, nil)
	if f, err := d.Next(); err != nil || f.Type != ctlchan.TypePing || f.Request != 3 || f.Session != 0 {
		t.Errorf("ping after garbage: %+v, %v", f, err)
	}
	c, _, err := ctlchan.Dial(cx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Stat(cx); err != nil {
		t.Error(err)
	}
}

// failingUpstream reads nothing until closed and refuses every write.
type failingUpstream struct{ done chan struct{} }

func (u failingUpstream) Read([]byte) (int, error) { <-u.done; return 0, errors.New("closed") }
func (failingUpstream) Write([]byte) (int, error)  { return 0, errors.New("broken pipe") }

// A request the multiplexer cannot pass on gets EHOSTUNREACH, its own
// code, not one the guest could have answered with.
func TestMuxUpstreamUnreachable(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, ctlchan.SocketName)
	ln, err := ctlchan.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	up := failingUpstream{done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); ctlchan.NewMux(up).Serve(ctx, ln) }()
	defer func() { cancel(); close(up.done); <-done }()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c := ctlchan.NewClient(conn)
	defer c.Close()
	_, err = c.Stat(ctx)
	if ctlchan.CodeOf(err) != ctlchan.CodeUnreachable {
		t.Errorf("stat through a broken upstream: %v, want EHOSTUNREACH", err)
	}
}
