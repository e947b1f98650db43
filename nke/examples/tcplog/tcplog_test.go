package tcplog

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/nke/mbuf/mbuftest"
	"github.com/nke-harness/nke/nke/nketest"
)

// clock is a fake time source stepping a millisecond per call.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { c.t = c.t.Add(time.Millisecond); return c.t }

func data(t *testing.T, p *mbuf.Pool, n int) *mbuf.Mbuf {
	m := p.AllocPacket(n)
	if m == nil {
		t.Fatal("pool empty")
	}
	return m
}

// A connection made by the guest (attach before connect) and one
// accepted (attach while connected): each reported once at close with
// its addresses, bytes each way and duration; a socket that never
// connected is not reported.
func TestLogsConnections(t *testing.T) {
	pool := mbuftest.NewPool(t, "tcplog", 16, 2048, 128)
	mbuftest.CheckPools(t, pool)
	var reported []Record
	l := New(8, func(r Record) { reported = append(reported, r) })
	c := &clock{t: time.Unix(1000, 0)}
	l.now = c.now
	if err := l.Spec(0x7c9).Check(); err != nil {
		t.Fatal(err)
	}

	out := nketest.TCP("10.0.2.15:40000", "10.0.2.2:80")
	out.Remote = netip.AddrPort{} // not connected yet
	ck, err := l.SockAttach(out)
	if err != nil {
		t.Fatal(err)
	}
	l.SockNotify(ck, out, nke.SockEventConnecting)
	out.Remote = netip.MustParseAddrPort("10.0.2.2:80")
	l.SockNotify(ck, out, nke.SockEventConnected) // t=1001.001
	for _, n := range []int{100, 1400} {
		m := data(t, pool, n)
		if err := l.SockDataOut(ck, out, out.Remote, &m, nil, 0); err != nil {
			t.Fatal(err)
		}
		m.Free()
	}
	m := data(t, pool, 3000)
	l.SockDataIn(ck, out, out.Remote, &m, nil, 0)
	m.Free()
	l.SockNotify(ck, out, nke.SockEventDisconnecting)
	l.SockNotify(ck, out, nke.SockEventDisconnected) // reported, t=1000.002
	l.SockNotify(ck, out, nke.SockEventClosing)      // not again
	l.SockDetach(ck, out)

	in := nketest.TCP("[fe80::1]:7", "[fe80::2]:5555")
	ck2, _ := l.SockAttach(in) // accepted: starts now, t=1000.003
	m = data(t, pool, 10)
	l.SockDataIn(ck2, in, in.Remote, &m, nil, 0)
	m.Free()
	l.SockDetach(ck2, in) // no close event: reported at detach, t=1000.004

	never := nketest.TCP("10.0.2.15:40001", "10.0.2.2:81")
	never.Remote = netip.AddrPort{}
	ck3, _ := l.SockAttach(never)
	l.SockNotify(ck3, never, nke.SockEventClosing)
	l.SockDetach(ck3, never)

	want := []Record{
		{Socket: out.ID(), Local: out.Local, Remote: out.Remote, Start: time.Unix(1000, 1e6), End: time.Unix(1000, 2e6), In: 3000, Out: 1500},
		{Socket: in.ID(), Local: in.Local, Remote: in.Remote, Start: time.Unix(1000, 3e6), End: time.Unix(1000, 4e6), In: 10},
	}
	recs, lost := l.Records()
	if diff := cmp.Diff(want, recs, cmpopts.EquateComparable(netip.AddrPort{})); diff != "" || lost != 0 {
		t.Errorf("records (-want +got), %d lost:\n%s", lost, diff)
	}
	if diff := cmp.Diff(want, reported, cmpopts.EquateComparable(netip.AddrPort{})); diff != "" {
		t.Errorf("reported (-want +got):\n%s", diff)
	}
	if lines := l.Lines(); len(lines) != 0 {
		t.Errorf("records handed out twice: %q", lines)
	}
	if got := want[0].String(); got != "tcp 10.0.2.15:40000 <-> 10.0.2.2:80: 3000 bytes in, 1500 out, 1ms" {
		t.Errorf("String = %q", got)
	}
}

func TestRingLosesOldest(t *testing.T) {
	l := New(2, nil)
	for i := 0; i < 5; i++ {
		so := nketest.TCP("10.0.2.15:1", "10.0.2.2:2")
		ck, _ := l.SockAttach(so)
		l.SockDetach(ck, so)
	}
	lines := l.Lines()
	if len(lines) != 3 || lines[0] != "(3 records lost)" {
		t.Errorf("lines %q", lines)
	}
}

// Counting data allocates nothing.
func TestDataDoesNotAllocate(t *testing.T) {
	pool := mbuftest.NewPool(t, "tcplog", 4, 2048, 128)
	l := New(4, nil)
	so := nketest.TCP("10.0.2.15:1", "10.0.2.2:2")
	ck, _ := l.SockAttach(so)
	m := data(t, pool, 100)
	defer m.Free()
	if a := testing.AllocsPerRun(100, func() {
		l.SockDataIn(ck, so, so.Remote, &m, nil, 0)
		l.SockDataOut(ck, so, so.Remote, &m, nil, 0)
	}); a != 0 {
		t.Fatalf("%v allocations per call", a)
	}
}
