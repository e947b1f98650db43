package guest

import (
	"bytes"
	"context"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket/pcapgo"

	"github.com/nke-harness/nke/kernel/ctlchan"
	"github.com/nke-harness/nke/kernel/kctl"
	"github.com/nke-harness/nke/kernel/kerneltest"
	"github.com/nke-harness/nke/kernel/kevent"
	"github.com/nke-harness/nke/kernel/sockfilter"
	"github.com/nke-harness/nke/nke/bundle"
	"github.com/nke-harness/nke/nke/bundles"
	"github.com/nke-harness/nke/nke/frametest"
)

// syncBuffer is a capture's output, read while it is written.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.b.Bytes()...)
}

// The control channel's backend over the real hooks (the device model's
// NIC, gVisor's stack): a bundle loaded from its archive, its dependency
// form, stat with the resolved order and every hook, kernel control to
// the firewall, a capture at the IP hook after it with its verdicts,
// unload refused while the control client is connected, then forced.
func TestBackend(t *testing.T) {
	r := kerneltest.New(t, kerneltest.WithStack())
	bus := &kevent.Bus{}
	g := &Guest{ifp: r.Ifp, st: r.Stack, events: bus, ctl: kctl.New(kctl.Config{Events: bus}),
		sockets: sockfilter.New(nil)}
	var err error
	if g.loader, err = g.newLoader(t.Logf); err != nil {
		t.Fatal(err)
	}
	r.Start()
	ctx := context.Background()
	b := g.Backend()

	fw, err := bundles.Find("IPFirewall.nke")
	if err != nil {
		t.Fatal(err)
	}
	archive, err := bundle.Pack(fw)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := b.Load(ctx, ctlchan.LoadRequest{Name: fw.Name, Archive: archive})
	if err != nil || rep.ID != "com.example.ipfw" || rep.Index != 1 {
		t.Fatalf("load: %+v, %v", rep, err)
	}
	if _, err := b.Load(ctx, ctlchan.LoadRequest{Name: fw.Name, Archive: archive}); ctlchan.CodeOf(err) != ctlchan.CodeExists {
		t.Errorf("load again: %v, want EEXIST", err)
	}
	if rep, err := b.Load(ctx, ctlchan.LoadRequest{Name: fw.Name, Archive: archive, Dependency: true}); err != nil || !rep.Already {
		t.Errorf("load as a dependency: %+v, %v; want Already", rep, err)
	}
	if _, err := b.Load(ctx, ctlchan.LoadRequest{Name: "junk.nke", Archive: []byte("not a tar")}); ctlchan.CodeOf(err) != ctlchan.CodeInvalid {
		t.Errorf("garbage archive: %v, want EINVAL", err)
	}

	st, err := b.Stat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var hooks []string
	for _, c := range st.Chains {
		hooks = append(hooks, c.Hook)
	}
	if want := []string{"vtnet0 raw", "vtnet0 filters", "vtnet0 protocols", "inet filters", "inet6 filters", "socket filters"}; !slices.Equal(hooks, want) {
		t.Errorf("chains %v, want %v", hooks, want)
	}
	if len(st.NKEs) != 1 || !strings.HasPrefix(st.NKEs[0].Order, "1 of 1 in inet filters, 1 of 1 in inet6 filters") {
		t.Errorf("stat: %+v", st.NKEs)
	}

	conn, cr, err := b.CtlConnect(ctx, ctlchan.CtlConnectRequest{Name: "com.nke-harness.ipfw"})
	if err != nil || cr.Unit == 0 {
		t.Fatalf("ctl connect: %+v, %v", cr, err)
	}
	if err := conn.Send(ctx, []byte("add drop udp dport 9")); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	reply, err := conn.Recv(rctx)
	cancel()
	if err != nil || string(reply) != "ok 1: block proto udp to port 9" {
		t.Fatalf("ctl add: %q, %v", reply, err)
	}

	// A capture after the firewall: the datagram to port 9, dropped.
	var out syncBuffer
	capDone := make(chan error, 1)
	cctx, ccancel := context.WithTimeout(ctx, 20*time.Second)
	defer ccancel()
	go func() {
		capDone <- b.Capture(cctx, ctlchan.CaptureRequest{Hook: "inet filters", After: "com.example.ipfw", Count: 1}, &out)
	}()
	for deadline := time.Now().Add(10 * time.Second); len(out.Bytes()) == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no pcapng header from the capture")
		}
	}
	r.Send(frametest.NewUDP(r.Peer, r.Guest, 4000, 9, []byte("to the discard port")))
	if err := <-capDone; err != nil {
		t.Fatal(err)
	}
	rd, err := pcapgo.NewNgReader(bytes.NewReader(out.Bytes()), pcapgo.NgReaderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, _, opts, err := rd.ReadPacketDataWithOptions()
	if err != nil || len(opts.Comments) != 1 || opts.Comments[0] != "inet filters in com.example.ipfw after: drop" {
		t.Errorf("captured: %v, %v", opts.Comments, err)
	}
	if _, _, err := rd.ReadPacketData(); err != io.EOF {
		t.Errorf("more than Count packets: %v", err)
	}
	if err := b.Capture(ctx, ctlchan.CaptureRequest{Hook: "nowhere"}, io.Discard); ctlchan.CodeOf(err) != ctlchan.CodeNotFound || !strings.Contains(err.Error(), "inet filters") {
		t.Errorf("capture at an unknown hook: %v, want ENOENT listing the hooks", err)
	}
	if st, _ := b.Stat(ctx); st.NKEs[0].Counters.Drop != 1 {
		t.Errorf("drop counter %d, want 1", st.NKEs[0].Counters.Drop)
	}

	if _, err := b.Unload(ctx, ctlchan.UnloadRequest{ID: "com.example.ipfw"}); ctlchan.CodeOf(err) != ctlchan.CodeBusy {
		t.Errorf("unload with a control client: %v, want EBUSY", err)
	}
	ur, err := b.Unload(ctx, ctlchan.UnloadRequest{ID: "com.example.ipfw", Force: true})
	if err != nil || !ur.Forced {
		t.Fatalf("forced unload: %+v, %v", ur, err)
	}
	if _, err := conn.Recv(ctx); err != io.EOF {
		t.Errorf("the control client after a forced unload: %v, want EOF", err)
	}
	conn.Close()
	if _, err := b.Unload(ctx, ctlchan.UnloadRequest{ID: "com.example.ipfw"}); ctlchan.CodeOf(err) != ctlchan.CodeNotFound {
		t.Errorf("unload again: %v, want ENOENT", err)
	}
	if r.Ifp.Stats().RxPackets == 0 {
		t.Error("the rig received nothing")
	}
}
