package netstack

import (
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/mbuf"
)

// This internal test reaches the endpoint's own check of the link header
// it is handed, which no frame can fail through the interface (ifnet
// drops runts first). It cannot
// use kernel/kerneltest (which imports this package), and needs no
// device: a pool and a dispatcher that must not be called are enough.

type noDispatch struct{ stack.NetworkDispatcher }

func TestShortFrameIsMalformed(t *testing.T) {
	pool, err := mbuf.NewPool(dma.NewHeap(1<<20), "test", 4, 2048, 128)
	if err != nil {
		t.Fatal(err)
	}
	e := &endpoint{pool: pool}
	e.Attach(noDispatch{})
	m := pool.Get()
	m.Append(10)
	e.deliver(m, make([]byte, 10))
	if e.rxMalformed.Load() != 1 || e.rxDelivered.Load() != 0 {
		t.Fatalf("short frame: %d malformed, %d delivered", e.rxMalformed.Load(), e.rxDelivered.Load())
	}
	if pool.Avail() != pool.Cap() {
		t.Fatalf("the short frame's buffer was not freed")
	}
}
