package sockfilter

import (
	"testing"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/nketest"
)

type nop struct{}

func (nop) SockAttach(nke.Socket) (any, error) { return nil, nil }
func (nop) SockDetach(any, nke.Socket)         {}

// The registry forgets a filter, its handle and its name only once it
// has finished unregistering, and a closed socket at once.
func TestRegistryForgets(t *testing.T) {
	r := New(nil)
	a, err := r.RegisterSocketFilter(nke.SocketFilterSpec{Name: "com.test.n", Handle: 3, Type: nke.SockStream, Global: true, Filter: nop{}})
	if err != nil {
		t.Fatal(err)
	}
	so := nketest.TCP("10.0.2.15:1", "10.0.2.2:2")
	fs := r.NewSocket(so, nil)
	r.mu.Lock()
	f := r.byHandle[3]
	r.mu.Unlock()
	if f == nil {
		t.Fatal("not registered")
	}
	f.mu.Lock()
	n := len(f.live)
	f.mu.Unlock()
	if r.Socket(so.ID()) != fs || n != 1 {
		t.Fatalf("socket %p, filter on %d sockets", r.Socket(so.ID()), n)
	}
	fs.Close()
	if r.Socket(so.ID()) != nil {
		t.Error("closed socket still known")
	}
	a.Detach()
	<-a.Done()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.byHandle) != 0 || len(r.byName) != 0 || len(r.globals) != 0 || len(r.sockets) != 0 {
		t.Errorf("registry keeps %v %v %v %v", r.byHandle, r.byName, r.globals, r.sockets)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.finished || f.attaching != 0 || len(f.live) != 0 {
		t.Errorf("filter state %+v", f)
	}
}

func TestAcceptResultString(t *testing.T) {
	for r, s := range map[AcceptResult]string{AcceptOK: "ok", AcceptDisconnect: "disconnect", AcceptClose: "close", 9: "accept(9)"} {
		if r.String() != s {
			t.Errorf("%d: %q", r, r.String())
		}
	}
}
