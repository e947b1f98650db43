package loader

import (
	"errors"
	"sync/atomic"
	"testing"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/bundle"
	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/nke/nketest"
)

// ifFilter is an interface filter with a per-packet input, a burst
// output, events and ioctls.
type ifFilter struct {
	verdict nke.Verdict
	in, out atomic.Uint64
	events  atomic.Uint64
}

func (f *ifFilter) FilterInput(nke.Interface, uint16, **mbuf.Mbuf, []byte) nke.Verdict {
	f.in.Add(1)
	return f.verdict
}

func (f *ifFilter) FilterOutputBurst(_ nke.Interface, pkts []*mbuf.Mbuf, verdicts []nke.Verdict) {
	f.out.Add(uint64(len(pkts)))
	for i := range verdicts {
		verdicts[i] = f.verdict
	}
}

func (f *ifFilter) FilterEvent(nke.Interface, uint16, nke.Event) { f.events.Add(1) }

func (f *ifFilter) FilterIoctl(nke.Interface, uint16, uint32, []byte) error { return nke.ErrSwallowed }

// rawHook drops or transmits every frame.
type rawHook struct{ v nke.RawVerdict }

func (h rawHook) FilterRawBurst(_ nke.Interface, frames [][]byte, verdicts []nke.RawVerdict) {
	for i := range verdicts {
		verdicts[i] = h.v
	}
}

func TestInterfaceAndRawWrappers(t *testing.T) {
	r := newRig(t, 0)
	link := &nketest.Link{Interface: nketest.DefaultInterface}
	r.kernel.LinkList = []nke.Link{link}
	f := &ifFilter{verdict: nke.Drop}
	pool, err := mbuf.NewPool(dma.NewHeap(1<<20), "loader-test", 16, 2048, 128)
	if err != nil {
		t.Fatal(err)
	}
	var injectErr error
	r.register(nke.Module{Name: "if", ID: "com.if", Start: func(k nke.Kernel, _ string) (func() error, error) {
		var d nke.Detacher
		for _, l := range k.Links() {
			a, err := l.AttachFilter(nke.InterfaceFilterSpec{Name: "com.if", Protocol: 0x0800, Filter: f})
			if err != nil {
				return nil, err
			}
			d.Add(a)
			ra, err := l.AttachRawHook(nke.RawHookSpec{Name: "com.if.raw", Filter: rawHook{nke.RawTransmit}})
			if err != nil {
				d.DetachAll()
				return nil, err
			}
			d.Add(ra)
			injectErr = l.InjectOutput(pool.AllocPacket(60), a)
		}
		return func() error { d.DetachAll(); return nil }, nil
	}})
	b := mk("com.if", "1.0", "1.0", "if", nil, bundle.CapObserve, bundle.CapDrop)
	b.Manifest.Harness.Layer = bundle.LayerInterface
	b.Manifest.Harness.Priority = 4
	must(t, r.l.Load(ctx, b, Options{}))
	if !errors.Is(injectErr, ErrCapability) || link.Injected() != 0 || pool.InUse() != 0 {
		t.Errorf("inject without the capability: %v, %d injected, %d buffers in use (InjectOutput consumes)", injectErr, link.Injected(), pool.InUse())
	}
	specs := link.Filters()
	if len(specs) != 1 || specs[0].Protocol != 0x0800 || specs[0].Order.Priority != 4 {
		t.Fatalf("filters %+v", specs)
	}
	w := specs[0].Filter
	in, ok1 := w.(nke.InputFilter)
	out, ok2 := w.(nke.OutputBurstFilter)
	_, no1 := w.(nke.InputBurstFilter)
	_, no2 := w.(nke.OutputFilter)
	if !ok1 || !ok2 || no1 || no2 {
		t.Fatalf("wrapper %T does not mirror the filter's forms", w)
	}
	m := &mbuf.Mbuf{}
	if v := in.FilterInput(nketest.DefaultInterface, 0x0800, &m, nil); v != nke.Drop {
		t.Errorf("input verdict %v (drop allowed)", v)
	}
	vs := make([]nke.Verdict, 3)
	out.FilterOutputBurst(nketest.DefaultInterface, []*mbuf.Mbuf{{}, {}, {}}, vs)
	if vs[0] != nke.Drop || vs[2] != nke.Drop || f.out.Load() != 3 {
		t.Errorf("output burst %v, seen %d", vs, f.out.Load())
	}
	w.(nke.EventFilter).FilterEvent(nketest.DefaultInterface, 0, nke.EventLinkUp)
	if err := w.(nke.IoctlFilter).FilterIoctl(nketest.DefaultInterface, 0, 1, nil); !errors.Is(err, nke.ErrSwallowed) || f.events.Load() != 1 {
		t.Errorf("ioctl %v, events %d", err, f.events.Load())
	}
	raws := link.RawHooks()
	if len(raws) != 1 {
		t.Fatalf("raw hooks %+v", raws)
	}
	rv := make([]nke.RawVerdict, 2)
	raws[0].Filter.(nke.RawBurstFilter).FilterRawBurst(nketest.DefaultInterface, [][]byte{{1}, {2}}, rv)
	if rv[0] != nke.RawPass || rv[1] != nke.RawPass {
		t.Errorf("raw transmit without inject: %v, want pass", rv)
	}
	// Paused (as during an unload's drain) the wrappers pass without
	// calling in.
	inst := r.l.find("com.if")
	inst.paused.Store(true)
	if v := in.FilterInput(nketest.DefaultInterface, 0x0800, &m, nil); v != nke.Continue || f.in.Load() != 1 {
		t.Errorf("paused: %v, seen %d", v, f.in.Load())
	}
	if err := w.(nke.IoctlFilter).FilterIoctl(nketest.DefaultInterface, 0, 1, nil); !errors.Is(err, nke.ErrNotMine) {
		t.Errorf("paused ioctl: %v", err)
	}
	inst.paused.Store(false)
	if rows := r.l.Stat(); rows[0].Refused != 3 || rows[0].Attached != 2 || rows[0].Attachment != "interface every interface" {
		t.Errorf("Stat %+v", rows)
	}
	must2(r.l.Unload(ctx, "com.if", false))
	if len(link.Filters())+len(link.RawHooks()) != 0 {
		t.Error("left attached")
	}
}

// TestReplaceInterfaceFilter: a per-packet/burst interface filter goes
// into the old one's place; one of another name goes beside it.
func TestReplaceInterfaceFilter(t *testing.T) {
	r := newRig(t, 0)
	link := &nketest.Link{Interface: nketest.DefaultInterface}
	r.kernel.LinkList = []nke.Link{link}
	f1, f2 := &ifFilter{}, &ifFilter{}
	mod := func(name string, f *ifFilter, extra bool) nke.Module {
		return nke.Module{Name: name, ID: "com.if", Start: func(k nke.Kernel, _ string) (func() error, error) {
			var d nke.Detacher
			l := k.Links()[0]
			a, err := l.AttachFilter(nke.InterfaceFilterSpec{Name: "com.if", Filter: f})
			if err != nil {
				return nil, err
			}
			d.Add(a)
			if extra {
				a, err := l.AttachFilter(nke.InterfaceFilterSpec{Name: "com.if.new", Filter: &ifFilter{}})
				if err != nil {
					d.DetachAll()
					return nil, err
				}
				d.Add(a)
			}
			return func() error { d.DetachAll(); return nil }, nil
		}}
	}
	r.register(mod("v1", f1, false))
	r.register(mod("v2", f2, true))
	must(t, r.l.Load(ctx, mk("com.if", "1.0", "1.0", "v1", nil), Options{}))
	before := link.Filters()[0].Filter
	res, err := r.l.Replace(ctx, mk("com.if", "1.1", "1.0", "v2", nil), false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Swapped != 1 || res.Beside != 1 {
		t.Errorf("result %+v", res)
	}
	specs := link.Filters()
	if len(specs) != 2 || specs[0].Filter != before {
		t.Fatalf("the old filter's place is not kept: %+v", specs)
	}
	m := &mbuf.Mbuf{}
	specs[0].Filter.(nke.InputFilter).FilterInput(nketest.DefaultInterface, 0, &m, nil)
	if f1.in.Load() != 0 || f2.in.Load() != 1 {
		t.Errorf("after the swap v1 saw %d, v2 %d", f1.in.Load(), f2.in.Load())
	}
	must(t, r.l.UnloadAll(ctx))
	if len(link.Filters()) != 0 {
		t.Error("left attached")
	}
}

// TestChurnDoesNotGrow: an NKE attaching and detaching all the time
// leaves the loader's list of its attachments bounded.
func TestChurnDoesNotGrow(t *testing.T) {
	r := newRig(t, 0)
	var k nke.Kernel
	r.register(nke.Module{Name: "c", ID: "com.c", Start: func(kk nke.Kernel, _ string) (func() error, error) {
		k = kk
		return func() error { return nil }, nil
	}})
	must(t, r.l.Load(ctx, mk("com.c", "1.0", "1.0", "c", nil), Options{}))
	for i := 0; i < 1000; i++ {
		a, err := k.IP().AttachIPFilter(nke.IPFilterSpec{Name: "com.c", Family: nke.IPv4, Filter: &counter{}})
		if err != nil {
			t.Fatal(err)
		}
		a.Detach()
		<-a.Done()
	}
	inst := r.l.find("com.c")
	inst.mu.Lock()
	n := len(inst.atts)
	inst.mu.Unlock()
	if n > 32 {
		t.Errorf("%d attachments recorded after 1000 attach-detach cycles", n)
	}
}
