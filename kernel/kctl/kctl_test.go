package kctl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nke-harness/nke/kernel/kevent"
	"github.com/nke-harness/nke/nke"
)

const owner = "com.example.echo"

// echo is an endpoint that replies to each message with "re:" and the
// message, and records its callbacks.
type echo struct {
	ctl nke.Control
	mu  sync.Mutex
	log []string
}

func (e *echo) note(f string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.log = append(e.log, fmt.Sprintf(f, args...))
}

func (e *echo) calls() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.log...)
}

func (e *echo) spec(name string) nke.ControlSpec {
	return nke.ControlSpec{
		Name:     name,
		RecvSize: 256,
		Connect: func(unit uint32) (any, error) {
			e.note("connect %d", unit)
			return fmt.Sprintf("cookie%d", unit), nil
		},
		Disconnect: func(unit uint32, cookie any) { e.note("disconnect %d %v", unit, cookie) },
		Send: func(unit uint32, cookie any, data []byte) error {
			e.note("send %d %v %s", unit, cookie, data)
			switch string(data) {
			case "panic":
				panic("asked to")
			case "fail":
				return errors.New("no thanks")
			}
			return e.ctl.Enqueue(unit, append([]byte("re:"), data...))
		},
	}
}

func register(t *testing.T, r *Registry, name string) *echo {
	t.Helper()
	e := &echo{}
	ctl, err := r.Hook(owner).RegisterControl(e.spec(name))
	if err != nil {
		t.Fatal(err)
	}
	e.ctl = ctl
	return e
}

func recvString(t *testing.T, c *Client) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := c.RecvMsg(ctx)
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	return string(m)
}

func TestConnectSendRecv(t *testing.T) {
	r := New(Config{})
	e := register(t, r, "com.example.echo.ctl")
	a, err := r.Connect("com.example.echo.ctl")
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.Connect("com.example.echo.ctl")
	if err != nil {
		t.Fatal(err)
	}
	if a.Unit() == b.Unit() || a.Unit() == 0 || b.Unit() == 0 {
		t.Fatalf("units %d and %d: want distinct non-zero", a.Unit(), b.Unit())
	}
	for _, m := range []string{"one", "two", ""} {
		if err := a.Send([]byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send([]byte("bee")); err != nil {
		t.Fatal(err)
	}
	var got []string
	for range 3 {
		got = append(got, recvString(t, a))
	}
	if d := cmp.Diff([]string{"re:one", "re:two", "re:"}, got); d != "" {
		t.Errorf("a's messages (-want +got):\n%s", d)
	}
	if m := recvString(t, b); m != "re:bee" {
		t.Errorf("b got %q", m)
	}
	if err := a.Send([]byte("fail")); err == nil || err.Error() != "kctl: send com.example.echo.ctl unit 1: no thanks" {
		t.Errorf("a refused send: %v", err)
	}
	if d := cmp.Diff([]ClientInfo{{"com.example.echo.ctl", owner, 1}, {"com.example.echo.ctl", owner, 2}}, r.Clients(owner)); d != "" {
		t.Errorf("Clients (-want +got):\n%s", d)
	}
	a.Close()
	b.Close()
	a.Close()
	want := []string{"connect 1", "connect 2", "send 1 cookie1 one", "send 1 cookie1 two", "send 1 cookie1 ",
		"send 2 cookie2 bee", "send 1 cookie1 fail", "disconnect 1 cookie1", "disconnect 2 cookie2"}
	if d := cmp.Diff(want, e.calls()); d != "" {
		t.Errorf("callbacks (-want +got):\n%s", d)
	}
	if err := a.Send([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("send after close: %v, want ErrClosed", err)
	}
	if len(r.Clients("")) != 0 {
		t.Errorf("clients left: %v", r.Clients(""))
	}
}

func TestRegisterErrors(t *testing.T) {
	r := New(Config{})
	register(t, r, "com.example.one")
	ok := func(uint32) (any, error) { return nil, nil }
	for _, tc := range []struct {
		name string
		spec nke.ControlSpec
		want error
	}{
		{"duplicate", nke.ControlSpec{Name: "com.example.one", Connect: ok}, nke.ErrControlExists},
		{"no name", nke.ControlSpec{Connect: ok}, nil},
		{"space in name", nke.ControlSpec{Name: "a b", Connect: ok}, nil},
		{"no connect", nke.ControlSpec{Name: "com.example.two"}, nil},
		{"huge recv", nke.ControlSpec{Name: "com.example.two", Connect: ok, RecvSize: nke.MaxControlBufSize + 1}, nil},
		{"tiny recv", nke.ControlSpec{Name: "com.example.two", Connect: ok, RecvSize: 4}, nil},
		{"negative send", nke.ControlSpec{Name: "com.example.two", Connect: ok, SendSize: -1}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := r.Hook(owner).RegisterControl(tc.spec)
			if err == nil {
				t.Fatal("registered")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := r.Connect("com.example.nothing"); !errors.Is(err, ErrNoEndpoint) {
		t.Errorf("connect to nothing: %v, want ErrNoEndpoint", err)
	}
}

func TestConnectRefused(t *testing.T) {
	r := New(Config{})
	var disconnects atomic.Int32
	refusal := errors.New("only one client")
	var n atomic.Int32
	ctl, err := r.Hook(owner).RegisterControl(nke.ControlSpec{Name: "com.example.one",
		Connect: func(uint32) (any, error) {
			if n.Add(1) > 1 {
				return nil, refusal
			}
			return nil, nil
		},
		Disconnect: func(uint32, any) { disconnects.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	a, err := r.Connect("com.example.one")
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Connect("com.example.one")
	if !errors.Is(err, ErrRefused) || !errors.Is(err, refusal) {
		t.Fatalf("second connect: %v, want ErrRefused wrapping the NKE's error", err)
	}
	if d := cmp.Diff([]uint32{a.Unit()}, ctl.Units()); d != "" {
		t.Errorf("units (-want +got):\n%s", d)
	}
	if disconnects.Load() != 0 {
		t.Error("a refused client got Disconnect")
	}
}

func TestFlowControl(t *testing.T) {
	r := New(Config{})
	var rcvd atomic.Int32
	ctl, err := r.Hook(owner).RegisterControl(nke.ControlSpec{Name: "com.example.flow", RecvSize: 64,
		Connect: func(uint32) (any, error) { return nil, nil },
		Rcvd:    func(uint32, any) { rcvd.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	c, err := r.Connect("com.example.flow")
	if err != nil {
		t.Fatal(err)
	}
	u := c.Unit()
	space := func() int {
		n, err := ctl.EnqueueSpace(u)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if got := space(); got != 60 {
		t.Errorf("space of an empty 64-byte queue: %d, want 60", got)
	}
	if err := ctl.Enqueue(u, make([]byte, 61)); !errors.Is(err, nke.ErrMsgSize) {
		t.Errorf("61 bytes into 64: %v, want ErrMsgSize", err)
	}
	msg := bytes.Repeat([]byte{'x'}, 16) // 20 bytes queued each
	for i := range 3 {
		if err := ctl.Enqueue(u, msg); err != nil {
			t.Fatalf("enqueue %d: %v", i, err)
		}
	}
	if got := space(); got != 0 {
		t.Errorf("space with 60 of 64 used: %d, want 0", got)
	}
	if err := ctl.Enqueue(u, []byte{1}); !errors.Is(err, nke.ErrNoBufs) {
		t.Errorf("enqueue into a full queue: %v, want ErrNoBufs", err)
	}
	buf := make([]byte, 64)
	if n, err := c.TryRecv(buf); err != nil || n != 16 {
		t.Fatalf("TryRecv: %d, %v", n, err)
	}
	if rcvd.Load() != 1 {
		t.Errorf("Rcvd called %d times, want 1", rcvd.Load())
	}
	if got := space(); got != 20 {
		t.Errorf("space after one read: %d, want 20", got)
	}
	if err := ctl.Enqueue(u, msg); err != nil {
		t.Errorf("enqueue after a read made room: %v", err)
	}
	for range 3 {
		if _, err := c.TryRecv(buf); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.TryRecv(buf); !errors.Is(err, ErrWouldBlock) {
		t.Errorf("TryRecv on empty: %v, want ErrWouldBlock", err)
	}
	if err := ctl.Enqueue(99, msg); !errors.Is(err, nke.ErrNoUnit) {
		t.Errorf("enqueue to unit 99: %v, want ErrNoUnit", err)
	}
	if _, err := ctl.EnqueueSpace(99); !errors.Is(err, nke.ErrNoUnit) {
		t.Errorf("space of unit 99: %v, want ErrNoUnit", err)
	}
	// Truncation: the rest of the message is gone, the next is whole.
	ctl.Enqueue(u, []byte("abcdef"))
	ctl.Enqueue(u, []byte("gh"))
	small := make([]byte, 3)
	if n, err := c.TryRecv(small); n != 3 || !errors.Is(err, ErrTruncated) || string(small) != "abc" {
		t.Errorf("truncated read: %d %q %v", n, small, err)
	}
	if n, err := c.TryRecv(small); n != 2 || err != nil || string(small[:n]) != "gh" {
		t.Errorf("read after truncation: %d %q %v", n, small[:n], err)
	}
}

// TestRingModel checks the ring against a plain queue over many wraps.
func TestRingModel(t *testing.T) {
	r := New(Config{})
	ctl, err := r.Hook(owner).RegisterControl(nke.ControlSpec{Name: "com.example.ring", RecvSize: 97,
		Connect: func(uint32) (any, error) { return nil, nil }})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := r.Connect("com.example.ring")
	rng := rand.New(rand.NewSource(1))
	var model [][]byte
	queued := 0
	buf := make([]byte, 100)
	for i := range 20000 {
		if rng.Intn(2) == 0 {
			m := make([]byte, rng.Intn(40))
			rng.Read(m)
			err := ctl.Enqueue(c.Unit(), m)
			fits := queued+len(m)+hdrLen <= 97
			if fits != (err == nil) {
				t.Fatalf("step %d: enqueue %d bytes with %d queued: %v", i, len(m), queued, err)
			}
			if err == nil {
				model = append(model, m)
				queued += len(m) + hdrLen
			}
			continue
		}
		n, err := c.TryRecv(buf)
		if len(model) == 0 {
			if !errors.Is(err, ErrWouldBlock) {
				t.Fatalf("step %d: empty read: %v", i, err)
			}
			continue
		}
		if err != nil || !bytes.Equal(buf[:n], model[0]) {
			t.Fatalf("step %d: read %x (%v), want %x", i, buf[:n], err, model[0])
		}
		queued -= len(model[0]) + hdrLen
		model = model[1:]
	}
}

func TestDeregister(t *testing.T) {
	r := New(Config{})
	e := register(t, r, "com.example.dereg")
	c, err := r.Connect("com.example.dereg")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.ctl.Deregister(); !errors.Is(err, nke.ErrBusy) {
		t.Fatalf("deregister with a client: %v, want ErrBusy", err)
	}
	if err := c.Send([]byte("still")); err != nil {
		t.Errorf("the client after a refused deregister: %v", err)
	}
	c.Close()
	if err := e.ctl.Deregister(); err != nil {
		t.Fatalf("deregister with no client: %v", err)
	}
	if err := e.ctl.Deregister(); !errors.Is(err, nke.ErrDeregistered) {
		t.Errorf("deregister twice: %v, want ErrDeregistered", err)
	}
	if _, err := r.Connect("com.example.dereg"); !errors.Is(err, ErrNoEndpoint) {
		t.Errorf("connect after deregister: %v, want ErrNoEndpoint", err)
	}
	register(t, r, "com.example.dereg") // the name is free again
}

func TestPanickingCallbacks(t *testing.T) {
	var bus kevent.Bus
	sub := bus.Subscribe(32)
	defer sub.Close()
	var logged atomic.Int32
	r := New(Config{Events: &bus, Logf: func(string, ...any) { logged.Add(1) }})
	e := register(t, r, "com.example.panic")
	a, _ := r.Connect("com.example.panic")
	b, _ := r.Connect("com.example.panic")
	e.ctl.Enqueue(a.Unit(), []byte("queued before"))
	if err := a.Send([]byte("panic")); !errors.Is(err, ErrFault) {
		t.Fatalf("send that panics: %v, want ErrFault", err)
	}
	if err := a.Send([]byte("again")); !errors.Is(err, ErrFault) {
		t.Errorf("send after the fault: %v, want ErrFault", err)
	}
	// What was queued is still read, then the reason.
	if m := recvString(t, a); m != "queued before" {
		t.Errorf("a read %q", m)
	}
	if _, err := a.TryRecv(make([]byte, 10)); !errors.Is(err, ErrFault) {
		t.Errorf("read after the fault: %v, want ErrFault", err)
	}
	if err := b.Send([]byte("fine")); err != nil {
		t.Errorf("the other client: %v", err)
	}
	if m := recvString(t, b); m != "re:fine" {
		t.Errorf("b read %q", m)
	}
	if logged.Load() != 1 {
		t.Errorf("%d faults logged, want 1", logged.Load())
	}
	calls := e.calls()
	if calls[len(calls)-2] != "disconnect 1 cookie1" {
		t.Errorf("callbacks: %q: want a's disconnect after its panic", calls)
	}
	var kinds []string
	for len(sub.C()) > 0 {
		ev := <-sub.C()
		kinds = append(kinds, fmt.Sprintf("%v %s %d", ev.Kind, ev.NKE, ev.ID))
	}
	want := []string{"ctl-connect com.example.echo 1", "ctl-connect com.example.echo 2",
		"fault com.example.echo 1", "ctl-disconnect com.example.echo 1"}
	if d := cmp.Diff(want, kinds); d != "" {
		t.Errorf("events (-want +got):\n%s", d)
	}

	// A panic in Connect refuses the client; one in Disconnect is
	// contained.
	r2 := New(Config{})
	r2.Hook(owner).RegisterControl(nke.ControlSpec{Name: "com.example.p2",
		Connect:    func(u uint32) (any, error) { panicIf(u == 1); return nil, nil },
		Disconnect: func(uint32, any) { panic("in disconnect") }})
	if _, err := r2.Connect("com.example.p2"); !errors.Is(err, ErrFault) {
		t.Errorf("connect that panics: %v, want ErrFault", err)
	}
	c, err := r2.Connect("com.example.p2")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if len(r2.Clients("")) != 0 {
		t.Errorf("clients left: %v", r2.Clients(""))
	}
}

func panicIf(b bool) {
	if b {
		panic("in connect")
	}
}

func TestForcedDisconnect(t *testing.T) {
	r := New(Config{})
	e := register(t, r, "com.example.a")
	other := &echo{}
	octl, _ := r.Hook("com.example.other").RegisterControl(other.spec("com.example.b"))
	other.ctl = octl
	a, _ := r.Connect("com.example.a")
	b, _ := r.Connect("com.example.b")
	e.ctl.Enqueue(a.Unit(), []byte("last words"))

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r.SetRefusing(owner, true)
	if _, err := r.Connect("com.example.a"); !errors.Is(err, ErrRefused) {
		t.Errorf("connect while refusing: %v, want ErrRefused", err)
	}
	if n := r.DisconnectOwner(owner, errors.New("forced unload")); n != 1 {
		t.Errorf("DisconnectOwner disconnected %d, want 1", n)
	}
	if m := recvString(t, a); m != "last words" {
		t.Errorf("a read %q", m)
	}
	_, err := a.Recv(ctx, make([]byte, 10))
	if !errors.Is(err, ErrDisconnected) || err.Error() != "kctl: recv com.example.a unit 1: kctl: disconnected by the kernel: forced unload" {
		t.Errorf("recv after a forced disconnect: %v", err)
	}
	if len(r.Clients(owner)) != 0 {
		t.Errorf("owner's clients left: %v", r.Clients(owner))
	}
	if err := b.Send([]byte("b")); err != nil {
		t.Errorf("another owner's client: %v", err)
	}
	if err := e.ctl.Deregister(); err != nil {
		t.Errorf("deregister after the forced disconnect: %v", err)
	}
	r.SetRefusing(owner, false)

	if got := r.RemoveOwner("com.example.other"); !cmp.Equal(got, []string{"com.example.b"}) {
		t.Errorf("RemoveOwner: %v", got)
	}
	if _, err := b.TryRecv(make([]byte, 10)); err != nil {
		t.Errorf("b's queued reply: %v", err)
	}
	if _, err := b.TryRecv(make([]byte, 10)); !errors.Is(err, ErrDisconnected) {
		t.Errorf("b after RemoveOwner: %v", err)
	}
	if len(r.Endpoints("")) != 0 {
		t.Errorf("endpoints left: %v", r.Endpoints(""))
	}
}

func TestRecvWaits(t *testing.T) {
	r := New(Config{})
	e := register(t, r, "com.example.wait")
	c, _ := r.Connect("com.example.wait")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := c.Recv(ctx, make([]byte, 10)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("recv past its deadline: %v", err)
	}
	go func() {
		time.Sleep(10 * time.Millisecond)
		e.ctl.Enqueue(c.Unit(), []byte("late"))
	}()
	if m := recvString(t, c); m != "late" {
		t.Errorf("read %q", m)
	}
	errc := make(chan error)
	go func() {
		_, err := c.Recv(context.Background(), make([]byte, 10))
		errc <- err
	}()
	time.Sleep(10 * time.Millisecond)
	c.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("recv woken by close: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("close did not wake a blocked Recv")
	}
}

func TestOptions(t *testing.T) {
	r := New(Config{})
	var level atomic.Int32
	r.Hook(owner).RegisterControl(nke.ControlSpec{Name: "com.example.opt", SendSize: 8,
		Connect: func(uint32) (any, error) { return nil, nil },
		SetOpt: func(_ uint32, _ any, opt int, data []byte) error {
			if opt != 1 || len(data) != 1 {
				return nke.ErrNoOption
			}
			level.Store(int32(data[0]))
			return nil
		},
		GetOpt: func(_ uint32, _ any, opt int, buf []byte) (int, error) {
			switch opt {
			case 1:
				if buf == nil {
					return 1, nil
				}
				buf[0] = byte(level.Load())
				return 1, nil
			case 2:
				return 1 << 30, nil // a liar
			}
			return 0, nke.ErrNoOption
		}})
	c, _ := r.Connect("com.example.opt")
	if err := c.SetOpt(1, []byte{7}); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{0, 4} {
		v, err := c.GetOpt(1, size)
		if err != nil || !bytes.Equal(v, []byte{7}) {
			t.Errorf("GetOpt(1, %d) = %v, %v", size, v, err)
		}
	}
	if err := c.SetOpt(9, nil); !errors.Is(err, nke.ErrNoOption) {
		t.Errorf("SetOpt(9): %v", err)
	}
	if _, err := c.GetOpt(9, 4); !errors.Is(err, nke.ErrNoOption) {
		t.Errorf("GetOpt(9): %v", err)
	}
	if _, err := c.GetOpt(2, 0); err == nil {
		t.Error("GetOpt took a length beyond the receive size")
	}
	if err := c.SetOpt(1, make([]byte, 9)); !errors.Is(err, nke.ErrMsgSize) {
		t.Errorf("SetOpt with 9 bytes over an 8-byte send size: %v", err)
	}
	if err := c.Send(make([]byte, 9)); !errors.Is(err, nke.ErrMsgSize) {
		t.Errorf("Send of 9 bytes over an 8-byte send size: %v", err)
	}
}

// TestConcurrent races clients sending, receiving and closing, the NKE
// enqueuing to every unit, and Deregister: callbacks of one unit never
// overlap, Disconnect comes last, and Deregister succeeds only with no
// client left.
func TestConcurrent(t *testing.T) {
	r := New(Config{})
	var ctl nke.Control
	var inflight sync.Map // unit -> *atomic.Int32
	var gone sync.Map     // unit -> true once disconnected
	enter := func(t *testing.T, u uint32) func() {
		v, _ := inflight.LoadOrStore(u, new(atomic.Int32))
		n := v.(*atomic.Int32)
		if n.Add(1) != 1 {
			t.Errorf("unit %d: callbacks overlap", u)
		}
		if _, ok := gone.Load(u); ok {
			t.Errorf("unit %d: callback after Disconnect", u)
		}
		return func() { n.Add(-1) }
	}
	ctl, err := r.Hook(owner).RegisterControl(nke.ControlSpec{Name: "com.example.race", RecvSize: 512,
		Connect: func(u uint32) (any, error) { defer enter(t, u)(); return nil, nil },
		Send: func(u uint32, _ any, d []byte) error {
			defer enter(t, u)()
			_ = ctl.Enqueue(u, d)
			return nil
		},
		Rcvd:       func(u uint32, _ any) { defer enter(t, u)() },
		Disconnect: func(u uint32, _ any) { defer enter(t, u)(); gone.Store(u, true) },
	})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the NKE pushing to every unit
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, u := range ctl.Units() {
				_ = ctl.Enqueue(u, []byte("push"))
			}
		}
	}()
	var connects atomic.Int32
	var clients sync.WaitGroup
	for g := range 4 {
		clients.Add(1)
		go func() {
			defer clients.Done()
			buf := make([]byte, 600)
			for i := range 100 {
				c, err := r.Connect("com.example.race")
				if err != nil {
					continue // deregistered meanwhile
				}
				connects.Add(1)
				var rw sync.WaitGroup
				rw.Add(1)
				go func() {
					defer rw.Done()
					ctx, cancel := context.WithTimeout(context.Background(), time.Second)
					defer cancel()
					for {
						if _, err := c.Recv(ctx, buf); err != nil && !errors.Is(err, ErrTruncated) {
							return
						}
					}
				}()
				for j := range 5 {
					_ = c.Send(fmt.Appendf(nil, "%d/%d/%d", g, i, j))
				}
				c.Close()
				rw.Wait()
			}
		}()
	}
	// Deregister keeps trying while clients come and go, once they do.
	for connects.Load() < 40 {
		time.Sleep(time.Millisecond)
	}
	var deregistered bool
	for !deregistered {
		err := ctl.Deregister()
		switch {
		case err == nil:
			deregistered = true
		case errors.Is(err, nke.ErrBusy):
			time.Sleep(time.Millisecond)
		default:
			t.Fatalf("deregister: %v", err)
		}
	}
	clients.Wait()
	close(stop)
	wg.Wait()
	if _, err := r.Connect("com.example.race"); !errors.Is(err, ErrNoEndpoint) {
		t.Errorf("connect after deregister: %v", err)
	}
}

func TestEnqueueRecvAllocs(t *testing.T) {
	r := New(Config{})
	ctl, _ := r.Hook(owner).RegisterControl(nke.ControlSpec{Name: "com.example.alloc",
		Connect: func(uint32) (any, error) { return nil, nil }})
	c, _ := r.Connect("com.example.alloc")
	msg := make([]byte, 100)
	buf := make([]byte, 200)
	n := testing.AllocsPerRun(1000, func() {
		if err := ctl.Enqueue(c.Unit(), msg); err != nil {
			t.Fatal(err)
		}
		if _, err := c.TryRecv(buf); err != nil {
			t.Fatal(err)
		}
	})
	if n != 0 {
		t.Errorf("Enqueue + TryRecv: %v allocs, want 0", n)
	}
}

func BenchmarkEnqueueRecv(b *testing.B) {
	r := New(Config{})
	ctl, _ := r.Hook(owner).RegisterControl(nke.ControlSpec{Name: "com.example.bench",
		Connect: func(uint32) (any, error) { return nil, nil }})
	c, _ := r.Connect("com.example.bench")
	msg := make([]byte, 128)
	buf := make([]byte, 256)
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for i := 0; i < b.N; i++ {
		if err := ctl.Enqueue(c.Unit(), msg); err != nil {
			b.Fatal(err)
		}
		if _, err := c.TryRecv(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// A forced disconnect while clients send: once DisconnectOwner has
// returned (new clients refused), no callback of the NKE runs again and
// Deregister succeeds.
func TestForcedDisconnectUnderLoad(t *testing.T) {
	r := New(Config{})
	var after atomic.Bool
	var late atomic.Int32
	var ctl nke.Control
	ctl, err := r.Hook(owner).RegisterControl(nke.ControlSpec{Name: "com.example.load", RecvSize: 256,
		Connect: func(uint32) (any, error) { return nil, nil },
		Send: func(u uint32, _ any, d []byte) error {
			if after.Load() {
				late.Add(1)
			}
			_ = ctl.Enqueue(u, d)
			return nil
		},
		Disconnect: func(uint32, any) {
			if after.Load() {
				late.Add(1)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	started := make(chan struct{}, 8)
	for range 8 {
		c, err := r.Connect("com.example.load")
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			started <- struct{}{}
			for c.Send([]byte("x")) == nil {
			}
		}()
		go func() {
			defer wg.Done()
			for {
				if _, err := c.Recv(context.Background(), make([]byte, 8)); errors.Is(err, ErrDisconnected) {
					return
				}
			}
		}()
	}
	for range 8 {
		<-started
	}
	r.SetRefusing(owner, true)
	if n := r.DisconnectOwner(owner, nil); n != 8 {
		t.Errorf("disconnected %d, want 8", n)
	}
	after.Store(true)
	wg.Wait()
	if late.Load() != 0 {
		t.Errorf("%d callbacks after DisconnectOwner returned", late.Load())
	}
	if err := ctl.Deregister(); err != nil {
		t.Errorf("deregister after the forced disconnect: %v", err)
	}
}
