package netstack

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/kernel/ifnet"
	"github.com/nke-harness/nke/kernel/kevent"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/virtio/devmodel"
)

// rig is a stack over the device model whose wire output is recorded.
type rig struct {
	s   *Stack
	ifp *ifnet.Interface
	dev *devmodel.Net
	mu  sync.Mutex
	tx  [][]byte
}

var guestLL = header.LinkLocalAddr(tcpip.LinkAddress(guestMAC))

func newRig(t testing.TB) *rig {
	r := &rig{}
	r.s, r.ifp, r.dev = newStackOn(t, devmodel.Options{Tx: func(f []byte) {
		r.mu.Lock()
		r.tx = append(r.tx, append([]byte(nil), f...))
		r.mu.Unlock()
	}})
	r.s.AddStaticNeighbor(NICID, header.IPv6ProtocolNumber, tcpip.AddrFrom16(src6), tcpip.LinkAddress(peerMAC))
	return r
}

// rx puts frames on the wire to the guest and runs the poll loop.
func (r *rig) rx(t testing.TB, frames ...[]byte) {
	t.Helper()
	for _, f := range frames {
		if err := r.dev.Deliver(f); err != nil {
			t.Fatal(err)
		}
	}
	r.ifp.PollOnce()
	r.ifp.PollOnce()
}

func (r *rig) sent() [][]byte {
	r.ifp.PollOnce()
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.tx
	r.tx = nil
	return t
}

// frame wraps an IP packet in an Ethernet header to the guest.
func frame(ip []byte) []byte {
	f := make([]byte, ethHdrLen+len(ip))
	copy(f, guestMAC)
	copy(f[6:], peerMAC)
	et := uint16(header.IPv4ProtocolNumber)
	if ip[0]>>4 == 6 {
		et = uint16(header.IPv6ProtocolNumber)
	}
	binary.BigEndian.PutUint16(f[12:], et)
	copy(f[ethHdrLen:], ip)
	return f
}

// echo is an ICMP echo request to the guest with size bytes of data.
func echo(v6 bool, seq uint16, size int) []byte {
	data := make([]byte, 8+size)
	for i := 8; i < len(data); i++ {
		data[i] = byte(i)
	}
	if v6 {
		b := make([]byte, ipv6HdrLen+len(data))
		ip := header.IPv6(b)
		ip.Encode(&header.IPv6Fields{PayloadLength: uint16(len(data)), TransportProtocol: header.ICMPv6ProtocolNumber,
			HopLimit: 64, SrcAddr: tcpip.AddrFrom16(src6), DstAddr: guestLL})
		ic := header.ICMPv6(b[ipv6HdrLen:])
		copy(ic, data)
		ic.SetType(header.ICMPv6EchoRequest)
		ic.SetIdent(7)
		ic.SetSequence(seq)
		ic.SetChecksum(0)
		ic.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: ic, Src: tcpip.AddrFrom16(src6), Dst: guestLL}))
		return b
	}
	b := make([]byte, ipv4MinLen+len(data))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber), ID: seq,
		SrcAddr: addr4(src4), DstAddr: addr4(dst4)})
	ip.SetChecksum(^ip.CalculateChecksum())
	ic := header.ICMPv4(b[ipv4MinLen:])
	copy(ic, data)
	ic.SetType(header.ICMPv4Echo)
	ic.SetIdent(7)
	ic.SetSequence(seq)
	ic.SetChecksum(0)
	ic.SetChecksum(^checksum.Checksum(ic, 0))
	return b
}

// echoReplies returns the sequence numbers of the echo replies in frames.
func echoReplies(frames [][]byte) []uint16 {
	var seqs []uint16
	for _, f := range frames {
		ip := f[ethHdrLen:]
		switch {
		case ip[0]>>4 == 4 && ip[9] == 1 && ip[ipv4MinLen] == byte(header.ICMPv4EchoReply):
			seqs = append(seqs, binary.BigEndian.Uint16(ip[ipv4MinLen+6:]))
		case ip[0]>>4 == 6 && ip[6] == 58 && ip[ipv6HdrLen] == byte(header.ICMPv6EchoReply):
			seqs = append(seqs, binary.BigEndian.Uint16(ip[ipv6HdrLen+6:]))
		}
	}
	return seqs
}

// recorder is an IP filter that logs each call and returns its verdict.
type recorder struct {
	name     string
	log      *[]string
	mu       *sync.Mutex
	in, out  nke.Verdict
	held     []*mbuf.Mbuf // swallowed
	seen     [][]byte     // packets as it saw them
	panicIn  bool
	replace  func(m *mbuf.Mbuf) *mbuf.Mbuf
	detached atomic.Bool
	late     atomic.Int32 // calls after Detached
}

func (f *recorder) note(dir string, m *mbuf.Mbuf) {
	if f.detached.Load() {
		f.late.Add(1)
	}
	if f.mu != nil {
		f.mu.Lock()
		defer f.mu.Unlock()
	}
	if f.log != nil {
		*f.log = append(*f.log, f.name+" "+dir)
	}
	f.seen = append(f.seen, bytesOf(m))
}

func (f *recorder) FilterIPInput(m **mbuf.Mbuf, off int, proto uint8) nke.Verdict {
	f.note("in", *m)
	if f.panicIn {
		panic("boom")
	}
	if f.replace != nil {
		*m = f.replace(*m)
	}
	if f.in == nke.Swallow {
		f.held = append(f.held, *m)
	}
	return f.in
}

func (f *recorder) FilterIPOutput(m **mbuf.Mbuf) nke.Verdict {
	f.note("out", *m)
	if f.out == nke.Swallow {
		f.held = append(f.held, *m)
	}
	return f.out
}

func (f *recorder) free() {
	for _, m := range f.held {
		m.Free()
	}
	f.held = nil
}

func attach(t testing.TB, s *Stack, fam nke.IPFamily, f *recorder, o nke.Order) nke.Attachment {
	t.Helper()
	a, err := s.AttachIPFilter(nke.IPFilterSpec{Name: f.name, Family: fam, Order: o, Filter: f,
		Detached: func() { f.detached.Store(true) }})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func family(v6 bool) nke.IPFamily {
	if v6 {
		return nke.IPv6
	}
	return nke.IPv4
}

func counters(t *testing.T, s *Stack, name string, fam nke.IPFamily) hook.Counters {
	t.Helper()
	for _, st := range s.IPFilters() {
		if st.Name == name && st.Family == fam.String() {
			return st.Counters
		}
	}
	t.Fatalf("no filter %s", name)
	return hook.Counters{}
}

// Every verdict in each direction, IPv4 and IPv6: the packet bytes the
// filter saw, what reached the wire, the counters, no leak.
func TestIPFilterVerdicts(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		for _, dir := range []string{"in", "out"} {
			for _, vd := range []nke.Verdict{nke.Continue, nke.Swallow, nke.Drop} {
				t.Run(fmt.Sprintf("v6=%v/%s/%v", v6, dir, vd), func(t *testing.T) {
					r := newRig(t)
					free := r.ifp.Pool().Avail()
					f := &recorder{name: "com.example.f"}
					if dir == "in" {
						f.in = vd
					} else {
						f.out = vd
					}
					attach(t, r.s, family(v6), f, nke.Order{})
					req := echo(v6, 1, 32)
					r.rx(t, frame(req))
					replies := echoReplies(r.sent())
					wantReply := vd == nke.Continue
					if (len(replies) == 1) != wantReply {
						t.Fatalf("replies %v, want a reply: %v", replies, wantReply)
					}
					if !bytes.Equal(f.seen[0], req) {
						t.Fatalf("the input filter saw %x, want %x", f.seen[0], req)
					}
					c := counters(t, r.s, f.name, family(v6))
					want := hook.Counters{Packets: 1, Bytes: uint64(len(f.seen[0]))}
					switch vd {
					case nke.Continue:
						want.Continue = 2 // the request in, the reply out
						want.Packets, want.Bytes = 2, uint64(len(f.seen[0])+len(f.seen[1]))
					case nke.Swallow:
						want.Swallow = 1
					case nke.Drop:
						want.Drop = 1
					}
					if dir == "out" && vd != nke.Continue {
						want.Continue = 1 // the request, in
						want.Packets, want.Bytes = 2, uint64(len(f.seen[0])+len(f.seen[1]))
					}
					c.NsPerPacket = 0
					if c != want {
						t.Fatalf("counters %+v, want %+v", c, want)
					}
					if st := r.s.IPStats(); (vd == nke.Drop) != (st.FilterDropped == 1) || (vd == nke.Swallow) != (st.FilterSwallow == 1) {
						t.Fatalf("IP stats %+v", st)
					}
					f.free()
					if got := r.ifp.Pool().Avail(); got != free {
						t.Fatalf("pool: %d free, want %d", got, free)
					}
				})
			}
		}
	}
}

// Newest first in both directions; Order moves a filter.
func TestIPFilterOrder(t *testing.T) {
	r := newRig(t)
	var log []string
	var mu sync.Mutex
	mk := func(n string) *recorder { return &recorder{name: n, log: &log, mu: &mu} }
	attach(t, r.s, nke.IPv4, mk("a"), nke.Order{})
	attach(t, r.s, nke.IPv4, mk("b"), nke.Order{})
	attach(t, r.s, nke.IPv4, mk("c"), nke.Order{After: []string{"a"}})
	r.rx(t, frame(echo(false, 1, 8)))
	r.sent()
	want := []string{"b in", "a in", "c in", "b out", "a out", "c out"}
	if fmt.Sprint(log) != fmt.Sprint(want) {
		t.Fatalf("calls %v, want %v", log, want)
	}
}

// A filter may replace the packet: the stack answers the replacement.
func TestIPFilterReplace(t *testing.T) {
	r := newRig(t)
	pool := r.ifp.Pool()
	f := &recorder{name: "rewrite", replace: func(m *mbuf.Mbuf) *mbuf.Mbuf {
		n := pool.AllocPacket(m.PktLen())
		b := bytesOf(m)
		m.Free()
		ic := header.ICMPv4(b[ipv4MinLen:])
		ic.SetSequence(99)
		ic.SetChecksum(0)
		ic.SetChecksum(^checksum.Checksum(ic, 0))
		n.CopyBack(0, b)
		return n
	}}
	attach(t, r.s, nke.IPv4, f, nke.Order{})
	r.rx(t, frame(echo(false, 1, 8)))
	if got := echoReplies(r.sent()); fmt.Sprint(got) != "[99]" {
		t.Fatalf("replies %v, want [99]", got)
	}
}

// fragments cuts ip (an echo request) into fragments of at most chunk
// payload bytes, in the order given (nil: in order).
func fragments(ip []byte, v6 bool, chunk int, order []int) [][]byte {
	hl := ipv4MinLen
	if v6 {
		hl = ipv6HdrLen
	}
	payload := len(ip) - hl
	var fs [][]byte
	for off := 0; off < payload; off += chunk {
		end := min(off+chunk, payload)
		fs = append(fs, frame(fragOf(ip, v6, off, end, end < payload, 0x4242)))
	}
	if order != nil {
		o := make([][]byte, len(fs))
		for i, j := range order {
			o[i] = fs[j]
		}
		fs = o
	}
	return fs
}

// A fragmented echo request, out of order: the input filter sees one whole
// datagram; the reply, bigger than the MTU, is seen whole by the output
// filter and goes on the wire as fragments that reassemble to it.
func TestIPFilterReassemblyAndFragmentation(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		r := newRig(t)
		f := &recorder{name: "whole"}
		attach(t, r.s, family(v6), f, nke.Order{})
		req := echo(v6, 5, 3000)
		r.rx(t, fragments(req, v6, 1200, []int{2, 0, 1})...)
		wire := r.sent()
		if len(f.seen) != 2 {
			t.Fatalf("v6=%v: the filter saw %d packets, want the request and the reply", v6, len(f.seen))
		}
		if !bytes.Equal(f.seen[0], wantDatagram(req, v6, 0x4242)) {
			t.Fatalf("v6=%v: input filter saw %d bytes, not the reassembled request", v6, len(f.seen[0]))
		}
		reply := f.seen[1]
		if len(reply) != len(req) {
			t.Fatalf("v6=%v: output filter saw %d bytes, want the whole %d-byte reply", v6, len(reply), len(req))
		}
		if st := r.s.IPStats(); st.RxReassembly.Reassembled != 1 || st.Fragmented != 1 || st.Fragments != uint64(len(wire)) {
			t.Fatalf("v6=%v: stats %+v, %d frames", v6, st, len(wire))
		}
		p := testPool(t, 64)
		re := newReassembler(p, true, ReasmConfig{})
		var got *mbuf.Mbuf
		for _, w := range wire {
			if len(w) > ethHdrLen+1500 {
				t.Fatalf("a %d-byte frame", len(w))
			}
			if o, _ := feed(re, p, w[ethHdrLen:], v6); o != nil {
				got = o
			}
		}
		if got == nil {
			t.Fatalf("v6=%v: %d frames on the wire do not reassemble", v6, len(wire))
		}
		b := bytesOf(got)
		got.Free()
		if !v6 {
			// The wire's datagram is the filter's with its checksum
			// recomputed after the fragment fields were cleared.
			header.IPv4(reply).SetChecksum(0)
			header.IPv4(reply).SetChecksum(^header.IPv4(reply).CalculateChecksum())
		}
		if !bytes.Equal(b, reply) {
			t.Fatalf("v6=%v: the fragments reassemble to something else than the filtered reply", v6)
		}
	}
}

// Inject input with and without a reference: which filters ran; a
// reference no longer attached is refused and the packet stays the
// caller's.
func TestInjectIPInput(t *testing.T) {
	r := newRig(t)
	var log []string
	var mu sync.Mutex
	a := &recorder{name: "a", log: &log, mu: &mu}
	b := &recorder{name: "b", log: &log, mu: &mu}
	c := &recorder{name: "c", log: &log, mu: &mu}
	attach(t, r.s, nke.IPv4, a, nke.Order{})
	hb := attach(t, r.s, nke.IPv4, b, nke.Order{})
	hc := attach(t, r.s, nke.IPv4, c, nke.Order{}) // runs c, b, a
	pool := r.ifp.Pool()
	inj := func(ref nke.Attachment) error {
		m := packet(t, pool, echo(false, 3, 8))
		err := r.s.InjectIPInput(m, ref)
		if err != nil {
			m.Free() // still ours
		}
		return err
	}
	if err := inj(hb); err != nil {
		t.Fatal(err)
	}
	// Input: only a (after b); the reply goes out through all of them.
	if fmt.Sprint(log) != "[a in c out b out a out]" {
		t.Fatalf("after b: %v", log)
	}
	if got := echoReplies(r.sent()); len(got) != 1 {
		t.Fatalf("replies %v", got)
	}
	log = nil
	if err := inj(nil); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(log) != "[c in b in a in c out b out a out]" {
		t.Fatalf("nil ref: %v", log)
	}
	hc.Detach()
	log = nil
	if err := inj(hc); err == nil {
		t.Fatal("inject after a detached filter accepted")
	}
	if len(log) != 0 {
		t.Fatalf("filters ran on a refused inject: %v", log)
	}
	r.sent()
}

// Inject output: the filters after the reference, then the wire.
func TestInjectIPOutput(t *testing.T) {
	r := newRig(t)
	var log []string
	var mu sync.Mutex
	a := &recorder{name: "a", log: &log, mu: &mu}
	b := &recorder{name: "b", log: &log, mu: &mu}
	attach(t, r.s, nke.IPv4, a, nke.Order{})
	hb := attach(t, r.s, nke.IPv4, b, nke.Order{}) // b, a
	pool := r.ifp.Pool()
	// An echo request from the guest to the peer.
	out := echo(false, 9, 2000)
	ip := header.IPv4(out)
	ip.SetSourceAddress(addr4(dst4))
	ip.SetDestinationAddress(addr4(src4))
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
	if err := r.s.InjectIPOutput(packet(t, pool, out), hb); err != nil {
		t.Fatal(err)
	}
	wire := r.sent()
	if fmt.Sprint(log) != "[a out]" || len(wire) != 2 {
		t.Fatalf("with b: calls %v, %d frames (want a only, 2 fragments)", log, len(wire))
	}
	log = nil
	if err := r.s.InjectIPOutput(packet(t, pool, out), nil); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(log) != "[b out a out]" {
		t.Fatalf("nil ref: %v", log)
	}
	// A malformed packet is consumed with an error.
	free := pool.Avail()
	if err := r.s.InjectIPOutput(packet(t, pool, []byte{0x45, 0, 0}), nil); err == nil || pool.Avail() != free {
		t.Fatalf("malformed inject: %v, %d free of %d", err, pool.Avail(), free)
	}
	r.sent()
}

// A filter that panics is detached, its packet dropped and counted; the
// next packet goes through.
func TestIPFilterPanic(t *testing.T) {
	r := newRig(t)
	f := &recorder{name: "bad", panicIn: true}
	a := attach(t, r.s, nke.IPv4, f, nke.Order{})
	r.rx(t, frame(echo(false, 1, 8)))
	if got := echoReplies(r.sent()); len(got) != 0 {
		t.Fatal("the faulting packet was delivered")
	}
	<-a.Done()
	r.rx(t, frame(echo(false, 2, 8)))
	if got := echoReplies(r.sent()); fmt.Sprint(got) != "[2]" {
		t.Fatalf("after the fault: replies %v", got)
	}
	if len(r.s.IPFilters()) != 0 {
		t.Fatal("still attached")
	}
}

// Filters come and go while packets flow: none is called after its
// Detached.
func TestIPFilterDetachWhileFlowing(t *testing.T) {
	r := newRig(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			r.rx(t, frame(echo(i%2 == 1, uint16(i), 16)))
			r.sent()
		}
	}()
	var all []*recorder
	for i := 0; i < 50; i++ {
		f := &recorder{name: fmt.Sprintf("f%d", i), mu: &sync.Mutex{}}
		all = append(all, f)
		a := attach(t, r.s, family(i%2 == 1), f, nke.Order{})
		for j := 0; j < 1000; j++ {
			f.mu.Lock()
			n := len(f.seen)
			f.mu.Unlock()
			if n > 0 {
				break
			}
		}
		a.(interface{ Close() error }).Close()
	}
	close(stop)
	wg.Wait()
	for _, f := range all {
		if f.late.Load() != 0 {
			t.Fatalf("%s called after Detached", f.name)
		}
	}
}

// IP inject stamps provenance: the reference's id (0 without one), a
// generation per injection, and past nke.MaxInjections nke.ErrInjectLoop
// with Apple's ownership rules (input: the caller's; output: freed).
func TestInjectIPProvenance(t *testing.T) {
	r := newRig(t)
	var bus kevent.Bus
	loops := bus.Subscribe(8, kevent.InjectLoop)
	defer loops.Close()
	r.s.ep.events = &bus
	var prov []nke.Provenance
	var self nke.Attachment
	f := &provFilter{seen: func(m *mbuf.Mbuf) {
		p, _ := nke.InjectedBy(m)
		prov = append(prov, p)
	}}
	self = attachFilter(t, r.s, f)
	pool := r.ifp.Pool()
	m := packet(t, pool, echo(false, 4, 8))
	if err := r.s.InjectIPInput(m, nil); err != nil {
		t.Fatal(err)
	}
	if len(prov) != 1 || prov[0] != (nke.Provenance{Injector: 0, Generation: 1}) {
		t.Fatalf("inject without a reference: the filter saw provenance %v", prov)
	}
	// With the reference the filter is skipped, but the stamp is there:
	// a second filter attached before it sees it.
	prov = nil
	g := &provFilter{seen: func(m *mbuf.Mbuf) {
		p, _ := nke.InjectedBy(m)
		prov = append(prov, p)
	}}
	if _, err := r.s.AttachIPFilter(nke.IPFilterSpec{Name: "after", Family: nke.IPv4, Filter: g,
		Order: nke.Order{After: []string{"prov"}}}); err != nil {
		t.Fatal(err)
	}
	m = packet(t, pool, echo(false, 5, 8))
	if err := r.s.InjectIPInput(m, self); err != nil {
		t.Fatal(err)
	}
	if len(prov) != 1 || prov[0] != (nke.Provenance{Injector: self.ID(), Generation: 1}) {
		t.Fatalf("inject with a reference: provenance %v, want injector %d", prov, self.ID())
	}
	r.sent()
	// The hop limit: input leaves the packet to the caller.
	m = packet(t, pool, echo(false, 6, 8))
	for i := 0; i < nke.MaxInjections; i++ {
		if _, err := nke.StampInjection(m, 0); err != nil {
			t.Fatal(err)
		}
	}
	prov = nil
	if err := r.s.InjectIPInput(m, nil); !errors.Is(err, nke.ErrInjectLoop) {
		t.Fatalf("input past the hop limit: %v, want ErrInjectLoop", err)
	}
	if len(prov) != 0 {
		t.Fatalf("filters ran on a refused inject: %v", prov)
	}
	m.Free() // still ours
	// Output frees it.
	m = packet(t, pool, echo(false, 7, 8))
	for i := 0; i < nke.MaxInjections; i++ {
		nke.StampInjection(m, 0)
	}
	free := pool.Avail()
	if err := r.s.InjectIPOutput(m, nil); !errors.Is(err, nke.ErrInjectLoop) || pool.Avail() != free+1 {
		t.Fatalf("output past the hop limit: %v, %d free (want %d)", err, pool.Avail(), free+1)
	}
	if len(prov) != 0 {
		t.Fatalf("filters ran on a refused inject: %v", prov)
	}
	r.sent()
	var got []string
	for len(loops.C()) > 0 {
		e := <-loops.C()
		got = append(got, e.Hook+" "+e.Interface)
	}
	if d := cmp.Diff([]string{"inet filters vtnet0", "inet filters vtnet0"}, got); d != "" {
		t.Errorf("inject-loop events (-want +got):\n%s", d)
	}
}

// provFilter passes everything, showing each packet to seen.
type provFilter struct{ seen func(*mbuf.Mbuf) }

func (f *provFilter) FilterIPInput(m **mbuf.Mbuf, _ int, _ uint8) nke.Verdict {
	f.seen(*m)
	return nke.Continue
}

func (f *provFilter) FilterIPOutput(m **mbuf.Mbuf) nke.Verdict { return nke.Continue }

func attachFilter(t *testing.T, s *Stack, f *provFilter) nke.Attachment {
	t.Helper()
	a, err := s.AttachIPFilter(nke.IPFilterSpec{Name: "prov", Family: nke.IPv4, Filter: f})
	if err != nil {
		t.Fatal(err)
	}
	return a
}
