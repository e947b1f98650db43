package builtin

import (
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf"
)

// Churn is a diagnostic NKE: it attaches pass-through filters to every
// hook it can reach (raw ring hooks, interface filters in both forms, IP
// filters for IPv4 and IPv6) and detaches them again, over and over, while
// traffic flows, and counts any call a filter gets after its Detached
// callback. Its args are the cycle period in milliseconds (default 5). It
// logs the cycles and the late calls when stopped; a correct kernel shows
// "0 calls after detached" and loses no packet.
var Churn = nke.Module{
	Name:  "churn",
	ID:    "com.nke-harness.churn",
	Doc:   "attaches and detaches pass-through filters at every hook in a loop",
	Start: startChurn,
}

func init() { Modules = append(Modules, Churn) }

// passFilter passes everything and checks it is not called once detached.
type passFilter struct {
	gone *atomic.Bool
	late *atomic.Uint64
}

func (f passFilter) check() {
	if f.gone.Load() {
		f.late.Add(1)
	}
}

func (f passFilter) FilterInput(nke.Interface, uint16, **mbuf.Mbuf, []byte) nke.Verdict {
	f.check()
	return nke.Continue
}
func (f passFilter) FilterOutput(nke.Interface, uint16, **mbuf.Mbuf) nke.Verdict {
	f.check()
	return nke.Continue
}
func (f passFilter) FilterRaw(nke.Interface, []byte) nke.RawVerdict { f.check(); return nke.RawPass }
func (f passFilter) FilterIPInput(**mbuf.Mbuf, int, uint8) nke.Verdict {
	f.check()
	return nke.Continue
}
func (f passFilter) FilterIPOutput(**mbuf.Mbuf) nke.Verdict { f.check(); return nke.Continue }

// passBurst is the burst form.
type passBurst struct{ passFilter }

func (f passBurst) FilterInputBurst(nke.Interface, []*mbuf.Mbuf, [][]byte, []nke.Verdict) {
	f.check()
}
func (f passBurst) FilterOutputBurst(nke.Interface, []*mbuf.Mbuf, []nke.Verdict) { f.check() }

func startChurn(k nke.Kernel, args string) (func() error, error) {
	period := 5 * time.Millisecond
	if args != "" {
		ms, err := strconv.Atoi(args)
		if err != nil || ms < 1 || ms > 60000 {
			return nil, fmt.Errorf("churn: args %q: want a period in milliseconds, 1 to 60000", args)
		}
		period = time.Duration(ms) * time.Millisecond
	}
	var late, cycles, failures atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	attachAll := func(n uint64) nke.Detacher {
		var d nke.Detacher
		add := func(a nke.Attachment, err error) {
			if err != nil {
				failures.Add(1)
				return
			}
			d.Add(a)
		}
		for _, l := range k.Links() {
			mk := func() passFilter { return passFilter{gone: new(atomic.Bool), late: &late} }
			f, b, r := mk(), passBurst{mk()}, mk()
			// Alternate where the new filters go, to exercise ordering.
			order := nke.Order{Priority: int(n % 3)}
			add(l.AttachFilter(nke.InterfaceFilterSpec{Name: "churn.if", Order: order, Filter: f, Detached: func() { f.gone.Store(true) }}))
			add(l.AttachFilter(nke.InterfaceFilterSpec{Name: "churn.if.burst", Filter: b, Detached: func() { b.gone.Store(true) }}))
			add(l.AttachRawHook(nke.RawHookSpec{Name: "churn.raw", Filter: r, Detached: func() { r.gone.Store(true) }}))
		}
		if ip := k.IP(); ip != nil {
			for _, fam := range []nke.IPFamily{nke.IPv4, nke.IPv6} {
				f := passFilter{gone: new(atomic.Bool), late: &late}
				add(ip.AttachIPFilter(nke.IPFilterSpec{Name: "churn.ip", Family: fam, Filter: f, Detached: func() { f.gone.Store(true) }}))
			}
		}
		return d
	}
	go func() {
		defer close(done)
		t := time.NewTicker(period)
		defer t.Stop()
		for n := uint64(0); ; n++ {
			d := attachAll(n)
			select {
			case <-stop:
				d.DetachAll()
				return
			case <-t.C:
			}
			d.DetachAll()
			cycles.Add(1)
		}
	}()
	return func() error {
		close(stop)
		<-done
		k.Logf("%d cycles, %d calls after detached, %d attach failures", cycles.Load(), late.Load(), failures.Load())
		if late.Load() != 0 || failures.Load() != 0 {
			return fmt.Errorf("churn: %d calls after detached, %d attach failures", late.Load(), failures.Load())
		}
		return nil
	}, nil
}
