package loader

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/bundle"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/nke/nketest"
)

// greedy holds all data out, rejects connects, and replaces data in.
type greedy struct{ sockFilter }

func (greedy) SockDataOut(any, nke.Socket, netip.AddrPort, **mbuf.Mbuf, **mbuf.Mbuf, nke.DataFlags) error {
	return nke.ErrSwallowed
}

func (greedy) SockDataIn(_ any, _ nke.Socket, _ netip.AddrPort, data, _ **mbuf.Mbuf, _ nke.DataFlags) error {
	*data = &mbuf.Mbuf{}
	return nil
}

func (greedy) SockConnectOut(any, nke.Socket, netip.AddrPort) error { return errors.New("no") }

func TestSocketFilterCapabilities(t *testing.T) {
	for _, tc := range []struct {
		name             string
		caps             []string
		out, in, connect bool // the NKE's answer stands
		refused          uint64
	}{
		{"observe", []string{bundle.CapObserve}, false, false, false, 3},
		{"drop", []string{bundle.CapObserve, bundle.CapDrop}, true, false, true, 1},
		{"all", []string{bundle.CapObserve, bundle.CapDrop, bundle.CapModify}, true, true, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, 0)
			r.register(nke.Module{Name: "g", ID: "com.g", Start: func(k nke.Kernel, _ string) (func() error, error) {
				a, err := k.Sockets().RegisterSocketFilter(nke.SocketFilterSpec{Name: "com.g", Handle: 9, Type: nke.SockStream, Global: true, Filter: greedy{}})
				if err != nil {
					return nil, err
				}
				return func() error { a.Detach(); <-a.Done(); return nil }, nil
			}})
			b := mk("com.g", "1.0", "1.0", "g", nil, tc.caps...)
			b.Manifest.Harness.Layer = bundle.LayerSocket
			must(t, r.l.Load(ctx, b, Options{}))
			specs := r.sockets.Registered()
			if len(specs) != 1 || specs[0].Handle != 9 || !specs[0].Global {
				t.Fatalf("registered %+v", specs)
			}
			f := specs[0].Filter
			so := nketest.TCP("10.0.2.15:1000", "10.0.2.2:80")
			cookie, err := f.(nke.SocketFilter).SockAttach(so)
			if err != nil {
				t.Fatal(err)
			}
			data := &mbuf.Mbuf{}
			var control *mbuf.Mbuf
			errOut := f.(nke.SockDataOut).SockDataOut(cookie, so, so.Remote, &data, &control, 0)
			errIn := f.(nke.SockDataIn).SockDataIn(cookie, so, so.Remote, &data, &control, 0)
			errConn := f.(nke.SockConnectOut).SockConnectOut(cookie, so, so.Remote)
			if (errOut != nil) != tc.out || (errIn == nil) != tc.in || (errConn != nil) != tc.connect {
				t.Errorf("data out %v, data in %v, connect %v", errOut, errIn, errConn)
			}
			// Callbacks the filter lacks are neutral.
			if err := f.(nke.SockBinder).SockBind(cookie, so, so.Local); err != nil {
				t.Errorf("bind %v", err)
			}
			f.(nke.SocketFilter).SockDetach(cookie, so)
			if rows := r.l.Stat(); rows[0].Refused != tc.refused || rows[0].Attached != 1 {
				t.Errorf("Stat %+v", rows[0])
			}
			must2(r.l.Unload(ctx, "com.g", false))
			if len(r.sockets.Registered()) != 0 {
				t.Error("left registered")
			}
		})
	}
}

// TestSocketWrapperForms: the wrapper has data callbacks only where the
// NKE's filter has them.
func TestSocketWrapperForms(t *testing.T) {
	for _, c := range []struct {
		f       any
		in, out bool
	}{{sockFilter{}, false, false}, {greedy{}, true, true}, {inOnly{}, true, false}} {
		w := sockWrapper(&instance{}, c.f)
		_, in := w.(nke.SockDataIn)
		_, out := w.(nke.SockDataOut)
		_, sf := w.(nke.SocketFilter)
		_, opt := w.(nke.SockOptioner)
		if in != c.in || out != c.out || !sf || !opt {
			t.Errorf("%T: wrapper %T in %v out %v", c.f, w, in, out)
		}
	}
}

type inOnly struct{ sockFilter }

func (inOnly) SockDataIn(any, nke.Socket, netip.AddrPort, **mbuf.Mbuf, **mbuf.Mbuf, nke.DataFlags) error {
	return nil
}
