package netstack

import (
	"sync"
	"testing"
	"time"

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
