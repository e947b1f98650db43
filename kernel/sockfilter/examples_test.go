package sockfilter_test

import (
	"bytes"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/kernel/sockfilter"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/examples/contentfilter"
	"github.com/nke-harness/nke/nke/examples/tcplog"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/nke/mbuf/mbuftest"
	"github.com/nke-harness/nke/nke/nketest"
)

// tcplog through the real dispatcher: a connection made after
// registration and one open before it (extended: attached and told it is
// connected), each reported once with its bytes; unregistering reports
// the open one at its detach.
func TestTCPLogThroughRegistry(t *testing.T) {
	pool := mbuftest.NewPool(t, "tcplog", 8, 2048, 64)
	mbuftest.CheckPools(t, pool)
	r := sockfilter.New(func(f hook.Fault) { t.Errorf("fault %v", f) })
	old := nketest.TCP("[fd00::15]:22", "[fd00::2]:50000")
	ofs := r.NewSocket(old, &endpoint{state: sockfilter.StateBound | sockfilter.StateConnected})
	defer ofs.Close()

	l := tcplog.New(16, nil)
	a := mustRegister(t, r, l.Spec(0x7c9))
	if got := ofs.Names(); !slices.Equal(got, []string{tcplog.Name}) {
		t.Fatalf("existing socket's filters %q", got)
	}
	so := nketest.TCP("10.0.2.15:40000", "10.0.2.2:80")
	so.Remote = netip.AddrPort{}
	fs := r.NewSocket(so, &endpoint{})
	fs.Notify(nke.SockEventConnecting)
	so.Remote = netip.MustParseAddrPort("10.0.2.2:80")
	fs.Notify(nke.SockEventConnected)
	send := func(fs *sockfilter.Filters, out bool, s string) {
		m := packet(t, pool, s)
		var err error
		if out {
			_, err = fs.DataOut(so.Remote, &m, nil, 0)
		} else {
			_, err = fs.DataIn(so.Remote, &m, nil, 0)
		}
		if err != nil {
			t.Fatal(err)
		}
		m.Free()
	}
	send(fs, true, "GET / HTTP/1.0\r\n\r\n")
	send(fs, false, strings.Repeat("x", 1000))
	send(ofs, false, "ssh")
	fs.Notify(nke.SockEventDisconnecting)
	fs.Notify(nke.SockEventDisconnected)
	fs.Notify(nke.SockEventClosing)
	fs.Close()
	waitDone(t, a) // reports the ssh connection at its detach
	recs, lost := l.Records()
	if lost != 0 || len(recs) != 2 {
		t.Fatalf("records %v, %d lost", recs, lost)
	}
	if r := recs[0]; r.Socket != so.ID() || r.Local != so.Local || r.Remote != so.Remote || r.Out != 18 || r.In != 1000 {
		t.Errorf("http record %+v", r)
	}
	if r := recs[1]; r.Socket != old.ID() || r.In != 3 || r.Out != 0 {
		t.Errorf("ssh record %+v", r)
	}
	if st := r.Filters(); len(st) != 0 {
		t.Errorf("still registered: %+v", st)
	}
}

// The content filter through the real dispatcher, re-injecting with
// Registry.InjectDataOut: chunks are held until their verdict, the
// allowed ones reach the transport in order and the blocked one never;
// tcplog, registered before it (so running after it), counts each sent
// byte once. Nothing leaks.
func TestContentFilterThroughRegistry(t *testing.T) {
	pool := mbuftest.NewPool(t, "cf", 32, 2048, 64)
	mbuftest.CheckPools(t, pool)
	r := sockfilter.New(func(f hook.Fault) { t.Errorf("fault %v", f) })
	l := tcplog.New(4, nil)
	la := mustRegister(t, r, l.Spec(0x7c9))
	release := make(chan struct{})
	cf := contentfilter.New(r, func(_ nke.Socket, chunk []byte) bool {
		<-release
		return !bytes.Contains(chunk, []byte("secret"))
	})
	ca := mustRegister(t, r, cf.Spec(0xcf))
	cf.SetAttachment(ca)
	so := nketest.TCP("10.0.2.15:7", "10.0.2.2:5000")
	ep := &endpoint{}
	fs := r.NewSocket(so, ep)
	if got := fs.Names(); !slices.Equal(got, []string{contentfilter.Name, tcplog.Name}) {
		t.Fatalf("order %q", got)
	}
	for _, s := range []string{"one ", "two ", "the secret ", "three"} {
		m := packet(t, pool, s)
		var ctl *mbuf.Mbuf
		if sw, err := fs.DataOut(so.Remote, &m, &ctl, 0); !sw || err != nil {
			t.Fatalf("%q: swallowed %v, err %v", s, sw, err)
		}
	}
	time.Sleep(10 * time.Millisecond)
	if _, out := ep.got(); len(out) != 0 {
		t.Fatalf("sent %q before a verdict", out)
	}
	for i := 0; i < 4; i++ {
		release <- struct{}{}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, out := ep.got()
		if len(out) == 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if _, out := ep.got(); !slices.Equal(out, []string{"one ", "two ", "three"}) {
		t.Fatalf("sent %q", out)
	}
	// One more held when the socket closes: freed by the filter's detach.
	m := packet(t, pool, "late")
	fs.DataOut(so.Remote, &m, nil, 0)
	go func() { release <- struct{}{} }()
	fs.Notify(nke.SockEventClosing)
	fs.Close()
	waitDone(t, ca)
	waitDone(t, la)
	if st := cf.Stats(); st.Held != 5 || st.Allowed+st.Blocked+st.Dropped != 5 || st.Blocked < 1 {
		t.Errorf("content filter stats %+v", st)
	}
	recs, _ := l.Records()
	if len(recs) != 1 || recs[0].Out != uint64(len("one two three")) && recs[0].Out != uint64(len("one two threelate")) {
		t.Errorf("tcplog records %+v", recs)
	}
}
