package socket_test

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/google/go-cmp/cmp"

	"github.com/nke-harness/nke/kernel/socket"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/cmsg"
	"github.com/nke-harness/nke/nke/mbuf"
)

// ctlFilter records the control messages of data in and out, and sets
// the TTL of what goes out to setTTL (in place: the same messages).
type ctlFilter struct {
	v6     bool
	setTTL uint8

	mu  sync.Mutex
	in  []cmsg.Control
	out []cmsg.Control
}

func (f *ctlFilter) SockAttach(nke.Socket) (any, error) { return nil, nil }
func (f *ctlFilter) SockDetach(any, nke.Socket)         {}

func (f *ctlFilter) parse(m *mbuf.Mbuf) (cmsg.Control, []byte) {
	var c cmsg.Control
	if m == nil {
		return c, nil
	}
	b := make([]byte, m.PktLen())
	_ = m.CopyData(0, b)
	if err := c.Parse(b, f.v6); err != nil {
		panic(err)
	}
	return c, b
}

func (f *ctlFilter) SockDataIn(_ any, _ nke.Socket, _ netip.AddrPort, _, control **mbuf.Mbuf, _ nke.DataFlags) error {
	c, _ := f.parse(*control)
	f.mu.Lock()
	f.in = append(f.in, c)
	f.mu.Unlock()
	return nil
}

func (f *ctlFilter) SockDataOut(_ any, _ nke.Socket, _ netip.AddrPort, _, control **mbuf.Mbuf, _ nke.DataFlags) error {
	c, b := f.parse(*control)
	f.mu.Lock()
	f.out = append(f.out, c)
	f.mu.Unlock()
	if c.HasTTL && f.setTTL != 0 {
		c.TTL = f.setTTL
		nb := c.Append(nil, f.v6)
		if len(nb) != len(b) {
			panic("re-encoded control changed size")
		}
		if n := (*control).CopyBack(0, nb); n != len(nb) {
			panic("control chain shorter than its bytes")
		}
	}
	return nil
}

// peerUDP is a UDP endpoint on the peer stack that reports each
// datagram's TTL or hop limit.
type peerUDP struct {
	ep tcpip.Endpoint
	wq *waiter.Queue
}

func newPeerUDP(t *testing.T, e *env, f family, port uint16) *peerUDP {
	t.Helper()
	wq := new(waiter.Queue)
	ep, terr := e.p.Stack.NewEndpoint(udp.ProtocolNumber, f.proto, wq)
	if terr != nil {
		t.Fatal(terr)
	}
	t.Cleanup(ep.Close)
	if f.udp == "udp6" {
		ep.SocketOptions().SetReceiveHopLimit(true)
	} else {
		ep.SocketOptions().SetReceiveTTL(true)
	}
	if terr := ep.Bind(tcpip.FullAddress{Port: port}); terr != nil {
		t.Fatal(terr)
	}
	return &peerUDP{ep: ep, wq: wq}
}

func (p *peerUDP) send(t *testing.T, to tcpip.FullAddress, b []byte) {
	t.Helper()
	var r bytes.Reader
	r.Reset(b)
	if _, terr := p.ep.Write(&r, tcpip.WriteOptions{To: &to}); terr != nil {
		t.Fatal(terr)
	}
}

// recvTTL waits for a datagram and returns its payload and TTL.
func (p *peerUDP) recvTTL(t *testing.T) ([]byte, uint8) {
	t.Helper()
	we, ch := waiter.NewChannelEntry(waiter.ReadableEvents)
	p.wq.EventRegister(&we)
	defer p.wq.EventUnregister(&we)
	deadline := time.After(5 * time.Second)
	for {
		var w bytes.Buffer
		res, terr := p.ep.Read(&w, tcpip.ReadOptions{})
		if terr == nil {
			cm := res.ControlMessages
			switch {
			case cm.HasTTL:
				return w.Bytes(), cm.TTL
			case cm.HasHopLimit:
				return w.Bytes(), cm.HopLimit
			}
			t.Fatalf("datagram without TTL: %+v", cm)
		}
		if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
			t.Fatal(terr)
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatal("no datagram at the peer")
		}
	}
}

func ttlControl(ttl uint8, v6 bool) []byte {
	return (&cmsg.Control{HasTTL: true, TTL: ttl}).Append(nil, v6)
}

// Control messages both ways, on both families, with and without a
// filter: the receiver's options produce packet info, TOS and TTL in
// ReadMsgUDP's oob, a filter sees them as data in's control; the
// sender's TTL reaches the wire, as a filter on data out rewrote it.
func TestUDPControlMessages(t *testing.T) {
	for _, fam := range families {
		for _, filtered := range []bool{false, true} {
			name := fam.name + "/plain"
			if filtered {
				name = fam.name + "/filtered"
			}
			t.Run(name, func(t *testing.T) {
				var e *env
				v6 := fam.udp == "udp6"
				cf := &ctlFilter{v6: v6, setTTL: 9}
				if filtered {
					fe, r := newFilteredEnv(t, nil)
					e = fe
					register(t, r, nke.SocketFilterSpec{Name: "com.test.cmsg", Handle: 31, Type: nke.SockDgram, Protocol: 17, Global: true, Filter: cf})
				} else {
					e = newEnv(t)
				}
				f := e.fam(t, fam)
				pc, err := e.l.ListenPacket(f.udp, net.JoinHostPort("", "71"))
				if err != nil {
					t.Fatal(err)
				}
				defer pc.Close()
				u := pc.(*socket.UDPConn)
				for _, o := range []socket.Option{socket.OptRecvPktInfo, socket.OptRecvTOS, socket.OptRecvTTL} {
					if err := u.SetOption(o, 1); err != nil {
						t.Fatalf("%v: %v", o, err)
					}
					if v, err := u.GetOption(o); v != 1 || err != nil {
						t.Fatalf("%v reads %d, %v", o, v, err)
					}
				}
				peer := newPeerUDP(t, e, f, 7100)
				peer.send(t, e.peerAddr(f, f.guest, 71), []byte("ping"))

				u.SetReadDeadline(time.Now().Add(5 * time.Second))
				buf, oob := make([]byte, 64), make([]byte, 128)
				n, oobn, flags, from, err := u.ReadMsgUDP(buf, oob)
				if err != nil || string(buf[:n]) != "ping" || flags != 0 {
					t.Fatalf("ReadMsgUDP: %q, flags %#x, %v", buf[:n], flags, err)
				}
				var got cmsg.Control
				if err := got.Parse(oob[:oobn], v6); err != nil {
					t.Fatal(err)
				}
				want := cmsg.Control{HasPacketInfo: true, Addr: netip.MustParseAddr(f.guest), IfIndex: 1, HasTOS: true, HasTTL: true, TTL: 64}
				addrEq := cmp.Comparer(func(a, b netip.Addr) bool { return a == b })
				if d := cmp.Diff(want, got, addrEq); d != "" {
					t.Errorf("control read (-want +got):\n%s", d)
				}
				// Too small an oob: cut, and said.
				peer.send(t, e.peerAddr(f, f.guest, 71), []byte("again"))
				if _, oobn, flags, _, err := u.ReadMsgUDP(buf, oob[:8]); err != nil || oobn != 8 || flags&syscall.MSG_CTRUNC == 0 {
					t.Errorf("small oob: %d bytes, flags %#x, %v", oobn, flags, err)
				}

				// Out: the TTL asked for, or the filter's.
				if _, _, err := u.WriteMsgUDP([]byte("pong"), ttlControl(5, v6), from); err != nil {
					t.Fatal(err)
				}
				b, ttl := peer.recvTTL(t)
				wantTTL := uint8(5)
				if filtered {
					wantTTL = 9
				}
				if string(b) != "pong" || ttl != wantTTL {
					t.Errorf("peer got %q with TTL %d, want TTL %d", b, ttl, wantTTL)
				}
				// What cannot be applied is refused, and nothing is sent.
				tos := (&cmsg.Control{HasTOS: true, TOS: 4}).Append(nil, v6)
				if _, _, err := u.WriteMsgUDP([]byte("no"), tos, from); !errors.Is(err, syscall.EINVAL) || !errors.Is(err, cmsg.ErrUnsupported) {
					t.Errorf("TOS per datagram: %v, want EINVAL", err)
				}
				if _, _, err := u.WriteMsgUDP([]byte("no"), []byte{1, 2, 3}, from); !errors.Is(err, cmsg.ErrMalformed) {
					t.Errorf("garbage control: %v, want ErrMalformed", err)
				}
				if filtered {
					cf.mu.Lock()
					defer cf.mu.Unlock()
					if len(cf.in) != 2 || !cmp.Equal(cf.in[0], want, addrEq) {
						t.Errorf("filter's data in saw %+v, want %+v twice", cf.in, want)
					}
					if len(cf.out) != 1 || !cf.out[0].HasTTL || cf.out[0].TTL != 5 {
						t.Errorf("filter's data out saw %+v, want TTL 5", cf.out)
					}
				}
			})
		}
	}
}
