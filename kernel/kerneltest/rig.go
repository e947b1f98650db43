// Package kerneltest is the test rig of the guest's data path, in one
// process on plain memory: the in-process device model
// (virtio/devmodel), the user-space driver (virtio/virtionet) over it, an
// ifnet.Interface, and optionally the netstack.Stack, wired as the guest
// wires them. The test plays the host: it sends frames into the guest's
// rx ring and reads the frames the guest transmits, as bytes or as
// nke/frametest Frames, or puts a second gVisor stack on the wire (Peer).
//
// New registers the teardown with t.Cleanup: the stack is shut down, the
// poll loop stopped, and then every packet buffer must be back in its
// pool (the rx pool less the buffers a reset posts to the ring again); a
// buffer missing fails the test naming the pool. The device model must
// have seen no driver error either.
//
// It is test support: no production package may import it
// (layering_test.go). The internal tests of ifnet and netstack cannot use
// it, since it imports both.
package kerneltest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/nke-harness/nke/kernel/ifnet"
	"github.com/nke-harness/nke/kernel/netstack"
	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/frametest"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/devmodel"
	"github.com/nke-harness/nke/virtio/virtionet"
)

// The addresses of a rig unless options say otherwise: QEMU user
// networking's.
var (
	GuestMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	PeerMAC  = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x02}
	// GuestAddr is the guest's address and subnet, PeerIP its gateway.
	GuestAddr = netip.MustParsePrefix("10.0.2.15/24")
	PeerIP    = netip.MustParseAddr("10.0.2.2")
)

// Option configures a rig.
type Option func(*config)

type config struct {
	dev       devmodel.Options
	drv       virtionet.Options
	ifc       ifnet.Config
	packed    bool
	stack     bool
	addr      netip.Prefix
	gw        netip.Addr
	neighbour bool
	heap      int
	txBuf     int
	logf      func(format string, args ...any)
}

// QueueSize is the rx and tx queue size the device offers (the driver
// takes it); the default is 256.
func QueueSize(n uint16) Option { return func(c *config) { c.dev.QueueMax = n } }

// Features replaces the offered feature set (default
// devmodel.QEMUFeatures).
func Features(fs virtio.Features) Option { return func(c *config) { c.dev.Features = fs } }

// MTU offers VIRTIO_NET_F_MTU with mtu.
func MTU(mtu uint16) Option { return func(c *config) { c.dev.MTU = mtu } }

// Packed offers packed rings and has the driver insist on them; the
// default is split rings.
func Packed() Option { return func(c *config) { c.packed = true } }

// MAC is the device's configured address (default GuestMAC).
func MAC(mac net.HardwareAddr) Option { return func(c *config) { c.dev.MAC = [6]byte(mac) } }

// WithStack puts the netstack.Stack on the interface, addressed
// GuestAddr with PeerIP as gateway unless Addr says otherwise.
func WithStack() Option { return func(c *config) { c.stack = true } }

// Addr is the stack's address and gateway (an invalid gateway: none). It
// implies WithStack.
func Addr(addr netip.Prefix, gateway netip.Addr) Option {
	return func(c *config) { c.stack, c.addr, c.gw = true, addr, gateway }
}

// StaticPeer makes the peer's MAC a static neighbour of the stack's, so
// that the guest answers without ARP first. It implies WithStack.
func StaticPeer() Option { return func(c *config) { c.stack, c.neighbour = true, true } }

// Driver sets the driver's options (Ring is overridden by Packed).
func Driver(o virtionet.Options) Option { return func(c *config) { c.drv = o } }

// Interface sets the interface's configuration.
func Interface(cfg ifnet.Config) Option { return func(c *config) { c.ifc = cfg } }

// Logf receives the interface's and the stack's log lines (link changes,
// recoveries, filters that panicked and were detached), unless Interface
// gives the interface a Logf of its own.
func Logf(f func(format string, args ...any)) Option { return func(c *config) { c.logf = f } }

// TxBuffer bounds the frames the guest sent that wait to be read (4096);
// more are dropped, and counted (TxOverflow).
func TxBuffer(n int) Option { return func(c *config) { c.txBuf = n } }

// Rig is the guest's data path under test.
type Rig struct {
	T     testing.TB
	Heap  *dma.Heap
	Dev   *devmodel.Net
	Drv   *virtionet.Device
	Ifp   *ifnet.Interface
	Stack *netstack.Stack // nil without WithStack

	// Guest and Peer are the two ends of the wire, for frametest.
	Guest, Peer frametest.Host

	sent     chan []byte
	overflow atomic.Uint64
	sink     atomic.Pointer[func([]byte)] // a Peer's, replacing sent
	started  atomic.Bool
	shutdown sync.Once
}

// New builds a rig; its teardown and checks run at t.Cleanup. The poll
// loop does not run until Start: until then Recv, Expect and Sent poll
// the interface themselves, and Poll runs one iteration.
func New(tb testing.TB, opts ...Option) *Rig {
	tb.Helper()
	c := config{addr: GuestAddr, gw: PeerIP, heap: 32 << 20, txBuf: 4096}
	for _, o := range opts {
		o(&c)
	}
	if c.dev.MAC == [6]byte{} {
		c.dev.MAC = [6]byte(GuestMAC)
	}
	if c.dev.Features == 0 {
		c.dev.Features = devmodel.QEMUFeatures
	}
	if c.dev.MTU != 0 {
		c.dev.Features |= 1 << virtionet.FMTU
	}
	c.drv.Ring = virtionet.RingSplit
	if c.packed {
		c.dev.Features |= 1 << virtio.FRingPacked
		c.drv.Ring = virtionet.RingPacked
	}
	r := &Rig{T: tb, Heap: dma.NewHeap(c.heap), sent: make(chan []byte, c.txBuf),
		Guest: frametest.Host{MAC: net.HardwareAddr(c.dev.MAC[:]), IP: c.addr.Addr()},
		Peer:  frametest.Host{MAC: PeerMAC, IP: c.gw}}
	if !r.Peer.IP.IsValid() {
		r.Peer.IP = c.addr.Masked().Addr().Next().Next()
	}
	c.dev.Tx = r.transmitted
	r.Dev = devmodel.New(r.Heap, c.dev)
	drv, err := virtionet.Open(r.Dev, r.Heap, c.drv)
	if err != nil {
		tb.Fatalf("kerneltest: virtionet.Open: %v", err)
	}
	r.Drv = drv
	if c.ifc.Logf == nil {
		c.ifc.Logf = c.logf
	}
	if r.Ifp, err = ifnet.New(drv, c.ifc); err != nil {
		tb.Fatalf("kerneltest: ifnet.New: %v", err)
	}
	if c.stack {
		if r.Stack, err = netstack.New(r.Ifp, netstack.Config{Addr: c.addr, Gateway: c.gw, Logf: c.logf}); err != nil {
			tb.Fatalf("kerneltest: netstack.New: %v", err)
		}
		if c.neighbour {
			proto, a := header.IPv4ProtocolNumber, tcpip.AddrFrom4(r.Peer.IP.As4())
			if err := r.Stack.AddStaticNeighbor(netstack.NICID, proto, a, tcpip.LinkAddress(r.Peer.MAC)); err != nil {
				tb.Fatalf("kerneltest: static neighbour: %v", err)
			}
		}
	}
	tb.Cleanup(r.close)
	return r
}

// transmitted is the device model's Tx: it runs on the poll loop, so it
// never blocks.
func (r *Rig) transmitted(f []byte) {
	b := append([]byte(nil), f...)
	if s := r.sink.Load(); s != nil {
		(*s)(b)
		return
	}
	select {
	case r.sent <- b:
	default:
		r.overflow.Add(1)
	}
}

// TxOverflow counts frames the guest sent that were dropped because the
// test did not read them (see TxBuffer).
func (r *Rig) TxOverflow() uint64 { return r.overflow.Load() }

// Start runs the interface's poll loop on its own thread.
func (r *Rig) Start() {
	r.started.Store(true)
	r.Ifp.Start()
}

// Poll runs one iteration of the poll loop (before Start) and reports
// whether there was work.
func (r *Rig) Poll() bool { return r.Ifp.PollOnce() }

// PollIdle polls until an iteration finds no work (at most 1000).
func (r *Rig) PollIdle() {
	for i := 0; i < 1000 && r.Ifp.PollOnce(); i++ {
	}
}

// Inject hands the device a frame from the wire, as the host would; it is
// in the guest's rx ring when Inject returns, or queued until the driver
// kicks rx (as QEMU does). A full backlog is waited out while the loop
// runs, and polled away before Start. Other refusals (link down, filtered,
// too big, device not running) are returned.
func (r *Rig) Inject(frame []byte) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := r.Dev.Deliver(frame)
		switch {
		case err == nil, errors.Is(err, devmodel.ErrNoBuffers):
			return nil
		case !errors.Is(err, devmodel.ErrBacklog) || time.Now().After(deadline):
			return err
		case r.started.Load():
			time.Sleep(50 * time.Microsecond)
		default:
			r.Ifp.PollOnce()
		}
	}
}

// Send injects f, failing the test if it cannot be encoded or delivered.
func (r *Rig) Send(f frametest.Frame) {
	r.T.Helper()
	b, err := f.Marshal()
	if err != nil {
		r.T.Fatalf("kerneltest: Send: %v", err)
	}
	if err := r.Inject(b); err != nil {
		r.T.Fatalf("kerneltest: Send: %v", err)
	}
}

// Recv returns the next frame the guest transmitted, waiting up to
// timeout; before Start it polls the interface while it waits.
func (r *Rig) Recv(timeout time.Duration) ([]byte, bool) {
	if r.started.Load() {
		select {
		case f := <-r.sent:
			return f, true
		case <-time.After(timeout):
			return nil, false
		}
	}
	deadline := time.Now().Add(timeout)
	for {
		select {
		case f := <-r.sent:
			return f, true
		default:
		}
		if time.Now().After(deadline) {
			return nil, false
		}
		if !r.Ifp.PollOnce() {
			time.Sleep(20 * time.Microsecond)
		}
	}
}

// Expect returns the next transmitted frame match accepts, parsed,
// skipping others (neighbour discovery and the like) and frames that do
// not parse; it fails the test after timeout.
func (r *Rig) Expect(what string, timeout time.Duration, match func(frametest.Frame) bool) frametest.Frame {
	r.T.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, ok := r.Recv(time.Until(deadline))
		if !ok {
			r.T.Fatalf("kerneltest: the guest sent no %s within %v", what, timeout)
		}
		if f, err := frametest.Parse(b); err == nil && match(f) {
			return f
		}
	}
}

// Sent returns the frames transmitted so far and not yet read (polling
// until idle first, before Start).
func (r *Rig) Sent() [][]byte {
	if !r.started.Load() {
		r.PollIdle()
	}
	var out [][]byte
	for {
		select {
		case f := <-r.sent:
			out = append(out, f)
		default:
			return out
		}
	}
}

// ShutdownStack shuts the stack down (once; teardown does it otherwise).
func (r *Rig) ShutdownStack() {
	if r.Stack != nil {
		r.shutdown.Do(r.Stack.Shutdown)
	}
}

func (r *Rig) close() {
	t := r.T
	r.ShutdownStack()
	if r.started.Load() {
		r.Ifp.Stop()
	} else {
		r.PollIdle() // sends what is queued, so its buffers come back
	}
	if err := r.Dev.Err(); err != nil {
		t.Errorf("kerneltest: the device model saw a driver error: %v", err)
	}
	// A reset returns every rx buffer and every tx packet in flight; the
	// rx ring is then refilled from the rx pool.
	if err := r.Drv.Recover(); err != nil {
		t.Errorf("kerneltest: the final reset failed: %v", err)
	} else if err := CheckPools(r.Drv); err != nil {
		t.Error(err)
	}
	r.Drv.Close()
}

// CheckPools reports a packet buffer missing from drv's pools, naming the
// pool: the tx pool must be full, the rx pool full but for the buffers
// posted in the rx ring. Call it with nothing in flight (after a reset).
func CheckPools(drv *virtionet.Device) error {
	rxq, _ := drv.QueueSizes()
	var errs []error
	for _, p := range []struct {
		pool   *mbuf.Pool
		posted int
	}{{drv.RxPool(), int(rxq)}, {drv.Pool(), 0}} {
		if got := p.pool.Avail() + p.posted; got != p.pool.Cap() {
			errs = append(errs, fmt.Errorf("kerneltest: pool %q: %d of %d buffers back (%d free, %d in the rx ring): %d leaked",
				p.pool.Name(), got, p.pool.Cap(), p.pool.Avail(), p.posted, p.pool.Cap()-got))
		}
	}
	return errors.Join(errs...)
}
