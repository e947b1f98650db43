// Package ifnet is the interface layer between a NIC driver's rings and the
// protocols above: one poll loop per interface owns the driver's data path,
// receives bursts, demultiplexes frames by EtherType to attached protocols,
// and transmits what other goroutines queued with Output.
//
// This is where xnu's dlil sits. Interface filters and protocol plumbing
// (NKEs) hook in here; the loop reads each hook's filter chain once per
// burst.
package ifnet

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/kernel/kevent"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Driver is what an interface needs from a NIC driver. Its data-path
// methods are called only from the interface's poll loop.
// virtionet.Device implements it.
type Driver interface {
	// RxBurst fills pkts with received frames; the caller owns them.
	RxBurst(pkts []*mbuf.Mbuf) (int, error)
	// TxBurst takes ownership of pkts[:n] and returns n.
	TxBurst(pkts []*mbuf.Mbuf) (int, error)
	// Reclaim frees packets the device has finished sending.
	Reclaim() error
	// TxInFlight is the number of packets in the device's tx ring.
	TxInFlight() int
	// Health reports a device that needs Recover.
	Health() error
	// Recover resets and restarts the device.
	Recover() error
	// LinkUp reads the link state.
	LinkUp() (bool, error)
	// MAC is the hardware address.
	MAC() []byte
	// MTU is the IP MTU.
	MTU() int
	// Pool is where transmitted packets should come from.
	Pool() *mbuf.Pool
}

// EtherTypes the stack attaches by default.
const (
	EtherTypeIPv4 uint16 = 0x0800
	EtherTypeARP  uint16 = 0x0806
	EtherTypeIPv6 uint16 = 0x86dd
)

// Errors.
var (
	ErrNoBufs  = errors.New("ifnet: output queue full, packet dropped")
	ErrStopped = errors.New("ifnet: interface stopped")
)

// Config tunes an interface. Zero values take the defaults.
type Config struct {
	Name  string // e.g. "vtnet0"
	Index uint16 // interface index, stamped on received packets
	// Burst is the most frames received or sent per driver call (32).
	Burst int
	// TxQueueLen bounds packets waiting for the poll loop (1024).
	TxQueueLen int
	// IdleSpin is how many empty polls pass before the loop sleeps (64).
	IdleSpin int
	// MaxSleep bounds an idle sleep while traffic is recent, and so the
	// receive latency of a briefly idle interface (500µs). Output wakes
	// the loop at once whatever it sleeps.
	MaxSleep time.Duration
	// DeepSleep bounds an idle sleep once the interface has seen no
	// traffic for DeepAfter (4ms after 100ms): fewer wake-ups of an idle
	// guest, at the price of the first packet's latency after a quiet
	// spell.
	DeepSleep, DeepAfter time.Duration
	// CheckEvery is how often device health and link are read (20ms).
	CheckEvery time.Duration
	// Logf reports link changes and device recoveries.
	Logf func(format string, args ...any)
	// Events, if set, receives link changes, injections stopped by the
	// hop limit, and the attaches, detaches and faults of the
	// interface's filters, raw hooks and protocols.
	Events *kevent.Bus
}

func (c *Config) defaults() {
	if c.Name == "" {
		c.Name = "vtnet0"
	}
	if c.Burst <= 0 {
		c.Burst = 32
	}
	if c.TxQueueLen <= 0 {
		c.TxQueueLen = 1024
	}
	if c.IdleSpin <= 0 {
		c.IdleSpin = 64
	}
	if c.MaxSleep <= 0 {
		c.MaxSleep = 500 * time.Microsecond
	}
	if c.DeepSleep <= 0 {
		c.DeepSleep = 4 * time.Millisecond
	}
	if c.DeepAfter <= 0 {
		c.DeepAfter = 100 * time.Millisecond
	}
	if c.CheckEvery <= 0 {
		c.CheckEvery = 20 * time.Millisecond
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
}

// Interface is one network interface driven by a poll loop.
type Interface struct {
	cfg Config
	drv Driver
	mac atomic.Pointer[[6]byte] // the driver's, re-read after each recovery
	mtu atomic.Int32

	// protos are the attached protocols (proto.go); protoMu serialises
	// their attach, which checks descriptors against the others.
	protoMu   sync.Mutex
	protos    *hook.Chain[*ifProto]
	unclaimed unclaimed

	txq   *mbuf.Queue
	injq  *mbuf.Queue  // frames injected as received, for the loop
	inj   []*mbuf.Mbuf // the loop's scratch for them
	waker waker
	// sleeping is set while the loop is (about to be) asleep, so Output
	// knows to wake it; cleared by the loop.
	sleeping atomic.Bool

	// filters are the interface filters, in and out (filter.go); raw
	// the raw ring hooks (raw.go).
	filters *hook.Chain[*ifFilter]
	raw     *hook.Chain[*rawFilter]
	bounce  []*mbuf.Mbuf // frames raw hooks send back, for the next TxBurst

	// Owned by the poller (the loop, or PollOnce's caller).
	rx, tx  []*mbuf.Mbuf
	pending int       // tx[:pending] wait for ring space (filters have seen them)
	linkErr string    // the link-status error last logged
	fv      filterVec // the input and output filters' scratch (never both at once)

	link    atomic.Bool
	running atomic.Bool
	stop    chan struct{}
	done    chan struct{}

	stats counters
}

type counters struct {
	rxPackets, rxBytes, rxUnknown, rxShort    atomic.Uint64
	txPackets, txBytes, txQueueDrops          atomic.Uint64
	recoveries, linkChanges, polls, idleWaits atomic.Uint64
	rxFilterDrops, rxSwallowed                atomic.Uint64
	rxRawDrops, rxBounced                     atomic.Uint64
	txFilterDrops, txSwallowed                atomic.Uint64
	txPreOutputErrors                         atomic.Uint64
	rxInjected, txInjected, injectDrops       atomic.Uint64
}

// Stats count what the interface layer did (the driver has its own).
type Stats struct {
	RxPackets uint64 `json:"rx_packets"`
	RxBytes   uint64 `json:"rx_bytes"`
	RxUnknown uint64 `json:"rx_unknown_proto"`
	RxShort   uint64 `json:"rx_short"`
	// TxPackets and TxBytes count frames accepted by Output.
	TxPackets    uint64 `json:"tx_packets"`
	TxBytes      uint64 `json:"tx_bytes"`
	TxQueueDrops uint64 `json:"tx_queue_drops"`
	Recoveries   uint64 `json:"recoveries"`
	LinkChanges  uint64 `json:"link_changes"`
	Polls        uint64 `json:"polls"`
	IdleWaits    uint64 `json:"idle_waits"`
	// Packets interface filters dropped or swallowed, each way.
	RxRawDrops    uint64 `json:"rx_raw_drops"`
	RxBounced     uint64 `json:"rx_bounced"`
	RxFilterDrops uint64 `json:"rx_filter_drops"`
	RxSwallowed   uint64 `json:"rx_swallowed"`
	TxFilterDrops uint64 `json:"tx_filter_drops"`
	TxSwallowed   uint64 `json:"tx_swallowed"`
	// TxPreOutputErrors counts packets a protocol's pre-output refused.
	TxPreOutputErrors uint64 `json:"tx_pre_output_errors"`
	// Frames filters injected each way, and injections refused (a full
	// queue, a re-injection loop).
	RxInjected  uint64 `json:"rx_injected"`
	TxInjected  uint64 `json:"tx_injected"`
	InjectDrops uint64 `json:"inject_drops"`
}

// New returns an interface over drv. Start runs its poll loop.
func New(drv Driver, cfg Config) (*Interface, error) {
	cfg.defaults()
	w, err := newWaker()
	if err != nil {
		return nil, fmt.Errorf("ifnet %s: %w", cfg.Name, err)
	}
	ifp := &Interface{cfg: cfg, drv: drv, txq: mbuf.NewQueue(cfg.TxQueueLen), waker: w,
		injq: mbuf.NewQueue(cfg.TxQueueLen), inj: make([]*mbuf.Mbuf, cfg.Burst),
		rx: make([]*mbuf.Mbuf, cfg.Burst), tx: make([]*mbuf.Mbuf, cfg.Burst),
		stop: make(chan struct{}), done: make(chan struct{}), fv: newFilterVec(cfg.Burst)}
	report := func(f hook.Fault) { cfg.Logf("%s\n%s", f, f.Stack) }
	ifp.filters = hook.New[*ifFilter](cfg.Name+" filters", hook.FIFO, report)
	ifp.raw = hook.New[*rawFilter](cfg.Name+" raw", hook.FIFO, report)
	ifp.protos = hook.New[*ifProto](cfg.Name+" protocols", hook.FIFO, report)
	ifp.filters.SetEvents(cfg.Events)
	ifp.raw.SetEvents(cfg.Events)
	ifp.protos.SetEvents(cfg.Events)
	ifp.bounce = make([]*mbuf.Mbuf, 0, cfg.Burst)
	ifp.learnIdentity()
	return ifp, nil
}

// Name is the interface's name.
func (ifp *Interface) Name() string { return ifp.cfg.Name }

// Index is the interface's index.
func (ifp *Interface) Index() uint16 { return ifp.cfg.Index }

// MAC is the interface's hardware address.
func (ifp *Interface) MAC() [6]byte { return *ifp.mac.Load() }

// MTU is the IP MTU.
func (ifp *Interface) MTU() int { return int(ifp.mtu.Load()) }

// learnIdentity takes the driver's MAC and MTU, which a device may change
// across a reset, and says whether they changed.
func (ifp *Interface) learnIdentity() bool {
	var mac [6]byte
	copy(mac[:], ifp.drv.MAC())
	mtu := int32(ifp.drv.MTU())
	changed := false
	if old := ifp.mac.Load(); old != nil && (*old != mac || ifp.mtu.Load() != mtu) {
		ifp.cfg.Logf("%s: the device came back with MAC %x, MTU %d (was %x, %d)", ifp.cfg.Name, mac, mtu, *old, ifp.mtu.Load())
		changed = true
	}
	ifp.mac.Store(&mac)
	ifp.mtu.Store(mtu)
	return changed
}

// Pool is where packets for Output should come from.
func (ifp *Interface) Pool() *mbuf.Pool { return ifp.drv.Pool() }

// LinkUp is the link state last read by the poll loop.
func (ifp *Interface) LinkUp() bool { return ifp.link.Load() }

// Output queues a whole Ethernet frame for transmission and wakes the poll
// loop. It always takes ownership of m; a full queue drops it (counted) and
// returns ErrNoBufs.
func (ifp *Interface) Output(m *mbuf.Mbuf) error {
	m.ClearHolder() // a swallowed packet sent on is the kernel's again
	n := m.PktLen()
	if !ifp.txq.Enqueue(m) {
		m.Free()
		ifp.stats.txQueueDrops.Add(1)
		return ErrNoBufs
	}
	ifp.stats.txPackets.Add(1)
	ifp.stats.txBytes.Add(uint64(n))
	if ifp.sleeping.Load() {
		ifp.waker.Wake()
	}
	return nil
}

// InjectInput hands m, a whole Ethernet frame, to the interface as if it
// had been received (Apple's ifnet_input): on the poll loop it goes
// through demux, every interface filter (the injector's too) and its
// protocol. from, the injecting filter's attachment or nil, is recorded
// in the packet's provenance (nke.InjectedBy), so the injector can
// recognise it. m is consumed, whatever happens; a full queue or a
// re-injection loop drops it, counted.
func (ifp *Interface) InjectInput(m *mbuf.Mbuf, from nke.Attachment) error {
	if err := ifp.stamp(m, from); err != nil {
		return err
	}
	if !ifp.injq.Enqueue(m) {
		m.Free()
		ifp.stats.injectDrops.Add(1)
		return fmt.Errorf("ifnet %s: inject input: %w", ifp.cfg.Name, ErrNoBufs)
	}
	ifp.stats.rxInjected.Add(1)
	if ifp.sleeping.Load() {
		ifp.waker.Wake()
	}
	return nil
}

// InjectOutput sends m, a whole Ethernet frame, out of the interface
// (Apple's ifnet_output_raw): every interface filter's output sees it
// (the injector's too), then the driver. Provenance and ownership as
// for InjectInput.
func (ifp *Interface) InjectOutput(m *mbuf.Mbuf, from nke.Attachment) error {
	if err := ifp.stamp(m, from); err != nil {
		return err
	}
	if err := ifp.Output(m); err != nil {
		ifp.stats.injectDrops.Add(1)
		return fmt.Errorf("ifnet %s: inject output: %w", ifp.cfg.Name, err)
	}
	ifp.stats.txInjected.Add(1)
	return nil
}

func (ifp *Interface) stamp(m *mbuf.Mbuf, from nke.Attachment) error {
	var id uint64
	if from != nil {
		id = from.ID()
	}
	if _, err := nke.StampInjection(m, id); err != nil {
		m.Free()
		ifp.stats.injectDrops.Add(1)
		if errors.Is(err, nke.ErrInjectLoop) {
			name := ""
			if from != nil {
				name = from.Name()
			}
			ifp.cfg.Events.Publish(kevent.Event{Kind: kevent.InjectLoop, NKE: name, Interface: ifp.cfg.Name, ID: id, Detail: err.Error()})
		}
		return fmt.Errorf("ifnet %s: %w", ifp.cfg.Name, err)
	}
	return nil
}

// Start runs the poll loop on its own locked OS thread.
func (ifp *Interface) Start() {
	if ifp.running.Swap(true) {
		return
	}
	if up, err := ifp.drv.LinkUp(); err == nil {
		ifp.link.Store(up)
	}
	go ifp.loop()
}

// Stop ends the poll loop and waits for it. Queued packets are freed.
func (ifp *Interface) Stop() {
	if !ifp.running.Load() {
		return
	}
	select {
	case <-ifp.stop:
	default:
		close(ifp.stop)
	}
	ifp.waker.Wake()
	<-ifp.done
	ifp.txq.Drain()
	ifp.injq.Drain()
	ifp.waker.Close()
	ifp.detachFilters()
	ifp.detachProtos()
}

// detachFilters tells every filter the interface is going away, then
// detaches them and the raw ring hooks (their Detached callbacks follow)
// and waits for that.
func (ifp *Interface) detachFilters() {
	ifp.event(nke.EventDetaching)
	ifp.filters.DetachAll()
	ifp.raw.DetachAll()
}

// Stats returns the interface counters. Safe from any goroutine.
func (ifp *Interface) Stats() Stats {
	c := &ifp.stats
	return Stats{
		RxPackets: c.rxPackets.Load(), RxBytes: c.rxBytes.Load(), RxUnknown: c.rxUnknown.Load(), RxShort: c.rxShort.Load(),
		TxPackets: c.txPackets.Load(), TxBytes: c.txBytes.Load(), TxQueueDrops: c.txQueueDrops.Load(),
		Recoveries: c.recoveries.Load(), LinkChanges: c.linkChanges.Load(),
		Polls: c.polls.Load(), IdleWaits: c.idleWaits.Load(),
		RxFilterDrops: c.rxFilterDrops.Load(), RxSwallowed: c.rxSwallowed.Load(),
		RxRawDrops: c.rxRawDrops.Load(), RxBounced: c.rxBounced.Load(),
		TxFilterDrops: c.txFilterDrops.Load(), TxSwallowed: c.txSwallowed.Load(),
		TxPreOutputErrors: c.txPreOutputErrors.Load(),
		RxInjected:        c.rxInjected.Load(), TxInjected: c.txInjected.Load(), InjectDrops: c.injectDrops.Load(),
	}
}

func (ifp *Interface) loop() {
	// The loop owns the driver's rings; a locked thread keeps it on one
	// CPU's worth of caches and lets it block in ppoll without stalling
	// other goroutines.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer close(ifp.done)
	idle := 0
	sleep := time.Duration(0)
	lastWork := time.Now()
	nextCheck := lastWork.Add(ifp.cfg.CheckEvery)
	for {
		select {
		case <-ifp.stop:
			mbuf.FreeBatch(ifp.tx[:ifp.pending])
			ifp.pending = 0
			return
		default:
		}
		work := ifp.poll()

		now := time.Now()
		if now.After(nextCheck) {
			nextCheck = now.Add(ifp.cfg.CheckEvery)
			ifp.check()
		}

		if work {
			idle, sleep, lastWork = 0, 0, now
			continue
		}
		if idle++; idle < ifp.cfg.IdleSpin {
			continue
		}
		// Idle: sleep with exponential backoff, woken early by Output.
		limit := ifp.cfg.MaxSleep
		if now.Sub(lastWork) > ifp.cfg.DeepAfter {
			limit = ifp.cfg.DeepSleep
		}
		if sleep == 0 {
			sleep = 10 * time.Microsecond
		} else if sleep *= 2; sleep > limit {
			sleep = limit
		}
		ifp.sleeping.Store(true)
		if ifp.txq.Len() == 0 {
			ifp.stats.idleWaits.Add(1)
			ifp.waker.Wait(sleep)
		}
		ifp.sleeping.Store(false)
	}
}

// PollOnce runs one iteration of the poll loop on the calling goroutine:
// one receive burst through the protocols, one transmit burst from the
// output queue (or a reclaim). It reports whether there was work. It is for
// tests and for callers that drive the interface themselves.
//
// Precondition: Start has not been called.
func (ifp *Interface) PollOnce() bool {
	if ifp.running.Load() {
		panic("ifnet: PollOnce on a started interface")
	}
	return ifp.poll()
}

// CheckOnce runs the loop's periodic device health and link check on the
// calling goroutine, recovering the device if it needs it.
//
// Precondition: Start has not been called.
func (ifp *Interface) CheckOnce() {
	if ifp.running.Load() {
		panic("ifnet: CheckOnce on a started interface")
	}
	ifp.check()
}

// poll is one iteration of the loop. A device error is handled by
// recovering the device, and counts as work.
//
// Precondition: called by the interface's one poller.
func (ifp *Interface) poll() bool {
	ifp.stats.polls.Add(1)
	work := false
	n, err := ifp.drv.RxBurst(ifp.rx)
	if n > 0 {
		work = true
		if !ifp.raw.Empty() {
			n = ifp.rawInput(ifp.rx[:n])
		}
		ifp.input(ifp.rx[:n])
	}
	if ifp.injq.Len() > 0 {
		if k := ifp.injq.DequeueBatch(ifp.inj); k > 0 {
			work = true
			ifp.input(ifp.inj[:k])
			clear(ifp.inj[:k])
		}
	}
	if len(ifp.bounce) > 0 {
		sent, err := ifp.drv.TxBurst(ifp.bounce)
		// What the ring cannot take now is dropped, as XDP_TX does.
		if unsent := len(ifp.bounce) - sent; unsent > 0 {
			mbuf.FreeBatch(ifp.bounce[sent:])
			ifp.stats.rxRawDrops.Add(uint64(unsent))
		}
		clear(ifp.bounce[:sent])
		ifp.bounce = ifp.bounce[:0]
		if err != nil {
			ifp.recover(err)
			return true
		}
	}
	if err != nil {
		ifp.recover(err)
		return true
	}
	if k := ifp.txq.DequeueBatch(ifp.tx[ifp.pending:]); k > 0 {
		if !ifp.filters.Empty() {
			k = ifp.filterOutput(ifp.tx[ifp.pending : ifp.pending+k])
		}
		ifp.pending += k
	}
	if ifp.pending > 0 {
		sent, err := ifp.drv.TxBurst(ifp.tx[:ifp.pending])
		if sent > 0 {
			work = true
			copy(ifp.tx, ifp.tx[sent:ifp.pending])
			ifp.pending -= sent
		}
		if err != nil {
			ifp.recover(err)
			return true
		}
	} else if ifp.drv.TxInFlight() > 0 {
		if err := ifp.drv.Reclaim(); err != nil {
			ifp.recover(err)
			return true
		}
	}
	return work
}

// input counts and demultiplexes a burst, runs it through the interface
// filters, and hands each frame left to the protocol that claims it, data
// at the network header, the Ethernet header beside it. A frame no
// protocol claims is seen by the filters too (Apple's order: demux,
// filters, then unmatched frames dropped) and then dropped and counted by
// what it was.
func (ifp *Interface) input(pkts []*mbuf.Mbuf) {
	ps := ifp.protos.Acquire() // one snapshot per burst
	filtering := !ifp.filters.Empty()
	v := &ifp.fv
	var bytes, unknown, short uint64
	n := 0
	for _, m := range pkts {
		m.RcvIf = ifp.cfg.Index
		bytes += uint64(m.PktLen())
		k, ok := classify(m.Bytes())
		if !ok {
			short++
			m.Free()
			continue
		}
		e := lookupProto(ps, k)
		if e == nil && !filtering {
			unknown++
			ifp.unclaimed.add(k)
			m.Free()
			continue
		}
		v.frames[n] = m.Bytes()[:ethHdrLen:ethHdrLen]
		m.Adj(ethHdrLen)
		m.SetFrameHeader(-ethHdrLen)
		v.pkts[n], v.ps[n], v.lens[n], v.keys[n] = m, e, m.PktLen(), k
		v.ets[n] = 0
		if k>>56 == demuxKey(nke.DemuxEtherType) {
			v.ets[n] = uint16(k)
		}
		n++
	}
	if filtering && n > 0 {
		n = ifp.filterInput(n)
	}
	// Runs of frames for the same protocol go to it in one call.
	for i := 0; i < n; {
		e := v.ps[i]
		j := i + 1
		for j < n && v.ps[j] == e {
			j++
		}
		if e == nil {
			for k := i; k < j; k++ {
				unknown++
				ifp.unclaimed.add(v.keys[k])
				v.pkts[k].Free()
			}
		} else {
			ifp.deliver(e, v.pkts[i:j], v.frames[i:j], v.lens[i:j])
		}
		i = j
	}
	clear(v.pkts[:n])
	clear(v.ps[:n])
	ps.Release()
	ifp.stats.rxPackets.Add(uint64(len(pkts)))
	ifp.stats.rxBytes.Add(bytes)
	if unknown > 0 {
		ifp.stats.rxUnknown.Add(unknown)
	}
	if short > 0 {
		ifp.stats.rxShort.Add(short)
	}
}

func (ifp *Interface) recover(cause error) {
	ifp.stats.recoveries.Add(1)
	ifp.cfg.Logf("%s: device error, resetting: %v", ifp.cfg.Name, cause)
	if err := ifp.drv.Recover(); err != nil {
		ifp.cfg.Logf("%s: recovery failed: %v", ifp.cfg.Name, err)
		// Back off before trying again; the device may come back.
		ifp.waker.Wait(100 * time.Millisecond)
		return
	}
	ifp.cfg.Logf("%s: device reset and running again", ifp.cfg.Name)
	if ifp.learnIdentity() {
		ifp.event(nke.EventAddressChanged)
	}
}

func (ifp *Interface) check() {
	if err := ifp.drv.Health(); err != nil {
		ifp.recover(err)
		return
	}
	up, err := ifp.drv.LinkUp()
	if err != nil {
		// Said once, not every check: the link state stays as last read.
		if msg := err.Error(); msg != ifp.linkErr {
			ifp.linkErr = msg
			ifp.cfg.Logf("%s: %v", ifp.cfg.Name, err)
		}
		return
	}
	ifp.linkErr = ""
	if ifp.link.Swap(up) != up {
		ifp.stats.linkChanges.Add(1)
		state := "down"
		if up {
			state = "up"
		}
		ifp.cfg.Logf("%s: link %s", ifp.cfg.Name, state)
		ev, kind := nke.EventLinkDown, kevent.LinkDown
		if up {
			ev, kind = nke.EventLinkUp, kevent.LinkUp
		}
		ifp.cfg.Events.Publish(kevent.Event{Kind: kind, Interface: ifp.cfg.Name})
		ifp.event(ev)
	}
}

// waker lets the poll loop sleep for a bounded time and be woken early.
type waker interface {
	Wait(d time.Duration)
	Wake()
	Close()
}
