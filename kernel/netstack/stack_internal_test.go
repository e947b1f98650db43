package netstack

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/nke-harness/nke/kernel/ifnet"
	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/virtio/devmodel"
	"github.com/nke-harness/nke/virtio/virtionet"
)

// The internal tests (the IP filter dispatcher's, which reach the
// endpoint's vectors) cannot use kernel/kerneltest, which imports this
// package: this is the rig's stack-building part, for them only.

var (
	guestMAC = []byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	peerMAC  = []byte{0x02, 0, 0, 0, 0, 2}
)

// newStack is the stack over a real driver and interface whose loop the
// test drives with PollOnce; replies go to a device model that drops them.
func newStack(tb testing.TB) (*Stack, *ifnet.Interface, *devmodel.Net) {
	return newStackOn(tb, devmodel.Options{Tx: func([]byte) {}})
}

func newStackOn(tb testing.TB, opts devmodel.Options) (*Stack, *ifnet.Interface, *devmodel.Net) {
	tb.Helper()
	heap := dma.NewHeap(32 << 20)
	dev := devmodel.New(heap, opts)
	drv, err := virtionet.Open(dev, heap, virtionet.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	ifp, err := ifnet.New(drv, ifnet.Config{})
	if err != nil {
		tb.Fatal(err)
	}
	s, err := New(ifp, Config{Addr: netip.MustParsePrefix("10.0.2.15/24"), Gateway: netip.MustParseAddr("10.0.2.2")})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Close)
	// The peer's MAC is known, so replies need no ARP.
	s.AddStaticNeighbor(NICID, header.IPv4ProtocolNumber, tcpip.AddrFrom4([4]byte{10, 0, 2, 2}), tcpip.LinkAddress(peerMAC))
	return s, ifp, dev
}
