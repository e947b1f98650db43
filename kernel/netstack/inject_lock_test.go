package netstack

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nke-harness/nke/kernel/capture"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// outInjector is an IP output filter that injects a copy of every packet
// it sees as input, from inside WritePackets.
type outInjector struct {
	s    *Stack
	pool *mbuf.Pool
}

func (f outInjector) FilterIPOutput(m **mbuf.Mbuf) nke.Verdict {
	if c, err := (*m).Dup(f.pool); err == nil {
		if f.s.InjectIPInput(c, nil) != nil {
			c.Free()
		}
	}
	return nke.Continue
}

// An output filter injecting input while Shutdown waits for the write
// lock must not deadlock (a second read lock would).
func TestInjectFromOutputFilterDuringShutdown(t *testing.T) {
	for round := 0; round < 20; round++ {
		r := newRig(t)
		if _, err := r.s.AttachIPFilter(nke.IPFilterSpec{Name: "inj", Family: nke.IPv4, Filter: outInjector{r.s, r.ifp.Pool()}}); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		stop := make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := uint16(0); ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				r.dev.Deliver(frame(echo(false, seq, 32)))
				r.ifp.PollOnce()
			}
		}()
		time.Sleep(time.Duration(round%5) * time.Millisecond)
		done := make(chan struct{})
		go func() { r.s.Shutdown(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: Shutdown deadlocked with an output filter injecting", round)
		}
		close(stop)
		wg.Wait()
	}
}

// ifTagger is an interface filter tagging each IP packet with its
// fragment offset field, as a data-link NKE would mark a packet for the
// IP filter of the same product.
type ifTagger struct{ id mbuf.TagIDType }

func (f ifTagger) FilterInput(_ nke.Interface, _ uint16, m **mbuf.Mbuf, _ []byte) nke.Verdict {
	b := (*m).Bytes()
	v := uint32(0xfeed0000)
	if b[0]>>4 == 4 {
		v |= uint32(b[6]&0x1f)<<8 | uint32(b[7])
	}
	if err := mbuf.TagPut(*m, f.id, 1, v); err != nil {
		panic(err)
	}
	return nke.Continue
}

type tagReader struct {
	id  mbuf.TagIDType
	got []uint32
}

func (f *tagReader) FilterIPInput(m **mbuf.Mbuf, _ int, _ uint8) nke.Verdict {
	v, _ := mbuf.TagGet[uint32](*m, f.id, 1)
	f.got = append(f.got, v)
	return nke.Continue
}

// A tag put on the first fragment by an interface filter is on the
// reassembled datagram the IP filter sees (the datagram's header is the
// first fragment's), in whatever order the fragments came.
func TestTagsSurviveReassembly(t *testing.T) {
	id, err := mbuf.TagID("com.example.netstack-test")
	if err != nil {
		t.Fatal(err)
	}
	for _, v6 := range []bool{false, true} {
		r := newRig(t)
		if _, err := r.ifp.AttachFilter(nke.InterfaceFilterSpec{Name: "tagger", Filter: ifTagger{id}}); err != nil {
			t.Fatal(err)
		}
		f := &tagReader{id: id}
		if _, err := r.s.AttachIPFilter(nke.IPFilterSpec{Name: "reader", Family: family(v6), Filter: f}); err != nil {
			t.Fatal(err)
		}
		r.rx(t, fragments(echo(v6, 5, 3000), v6, 1200, []int{2, 0, 1})...)
		if len(f.got) != 1 || f.got[0] != 0xfeed0000 {
			t.Errorf("v6=%v: tags on the datagrams the IP filter saw: %x, want [feed0000] (the first fragment's)", v6, f.got)
		}
	}
}

// The IP chains have capture points too: each datagram before and after
// each filter, at the IP header.
func TestCaptureIP(t *testing.T) {
	r := newRig(t)
	f := &recorder{name: "rec"}
	attach(t, r.s, nke.IPv4, f, nke.Order{})
	ring := capture.NewRing(16, 128)
	r.s.CaptureIP(ring)
	r.rx(t, frame(echo(false, 1, 8)))
	r.sent()
	r.s.CaptureIP(nil)
	recs, _ := ring.Records()
	var got []string
	for _, rec := range recs {
		got = append(got, capture.Comment(rec.Point))
		if !rec.Point.L3 || rec.Data[0]>>4 != 4 {
			t.Errorf("%s: not an IPv4 packet at the IP header: % x", capture.Comment(rec.Point), rec.Data[:4])
		}
	}
	want := []string{"inet filters in rec before", "inet filters in rec after: continue",
		"inet filters out rec before", "inet filters out rec after: continue"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("captured %q, want %q", got, want)
	}
}
