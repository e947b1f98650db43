// Package mbuftest holds test helpers for code that uses mbuf pools: pools
// on plain heap memory and a leak check that fails the test when buffers
// are not returned.
package mbuftest

import (
	"testing"

	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/mbuf"
)

// align is the buffer alignment mbuf.NewPool asks its allocator for.
const align = 64

// NewPool returns a pool of count buffers of bufSize bytes (headroom
// reserved in front) on plain heap memory, failing the test on bad
// geometry. It does not check for leaks: pass it to CheckPools.
func NewPool(t testing.TB, name string, count, bufSize, headroom int) *mbuf.Pool {
	t.Helper()
	size := align
	if count > 0 && bufSize > 0 {
		size += count * ((bufSize + align - 1) / align * align)
	}
	p, err := mbuf.NewPool(dma.NewHeap(size), name, count, bufSize, headroom)
	if err != nil {
		t.Fatalf("mbuftest.NewPool: %v", err)
	}
	return p
}

// CheckPools registers a cleanup that fails the test for every pool that
// does not have all its buffers back when the test (and the cleanups
// registered after this call) end, naming the pool and how many buffers
// are missing.
func CheckPools(t testing.TB, pools ...*mbuf.Pool) {
	t.Helper()
	t.Cleanup(func() {
		for _, p := range pools {
			if n := p.InUse(); n != 0 {
				t.Errorf("mbuf pool %q leaked %d of %d buffers", p.Name(), n, p.Cap())
			}
		}
	})
}
