package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/nke-harness/nke/kernel/capture"
	"github.com/nke-harness/nke/kernel/ctlchan"
	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/kernel/kctl"
	"github.com/nke-harness/nke/kernel/kevent"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/bundle"
	"github.com/nke-harness/nke/nke/loader"
)

// capturing is the guest's live captures: one Tee on every hook while
// any capture runs, none otherwise (a chain without a capturer costs
// nothing).
type capturing struct {
	tee capture.Tee
	mu  sync.Mutex // serialises installing and removing the Tee
}

// Capture snaplen and queue: whole frames of a 1500-byte MTU, and two
// thousand of them (4 MiB) before a slow reader loses any.
const (
	captureSnap  = 2048
	captureQueue = 2048
)

// codedError gives an error the wire code scripts see.
type codedError struct {
	code ctlchan.Code
	err  error
}

func (e *codedError) Error() string                   { return e.err.Error() }
func (e *codedError) Unwrap() error                   { return e.err }
func (e *codedError) ErrorCode() ctlchan.Code         { return e.code }
func coded(c ctlchan.Code, err error) error           { return &codedError{c, err} }
func codedf(c ctlchan.Code, f string, a ...any) error { return &codedError{c, fmt.Errorf(f, a...)} }

// wireError classifies the kernel's errors for the wire.
func wireError(err error) error {
	if err == nil {
		return nil
	}
	var c ctlchan.Coder
	if errors.As(err, &c) {
		return err
	}
	switch {
	case errors.Is(err, nke.ErrBusy):
		return coded(ctlchan.CodeBusy, err)
	case errors.Is(err, kctl.ErrNoEndpoint):
		return coded(ctlchan.CodeNotFound, err)
	case errors.Is(err, kctl.ErrRefused):
		return coded(ctlchan.CodePerm, err)
	case errors.Is(err, kctl.ErrClosed), errors.Is(err, kctl.ErrDisconnected):
		return coded(ctlchan.CodeNotConn, err)
	case errors.Is(err, nke.ErrNoBufs):
		return coded(ctlchan.CodeNoBufs, err)
	case errors.Is(err, kctl.ErrTruncated):
		return coded(ctlchan.CodeTooLarge, err)
	}
	return err
}

// wireEvent is a kernel event as nkectl shows it.
func wireEvent(e kevent.Event) ctlchan.Event {
	msg := e.Detail
	if msg == "" {
		msg = e.Kind.String()
		if e.NKE != "" {
			msg += " " + e.NKE
		}
		if e.Hook != "" {
			msg += " on " + e.Hook
		}
	}
	f := map[string]string{"seq": strconv.FormatUint(e.Seq, 10)}
	if e.Hook != "" {
		f["hook"] = e.Hook
	}
	if e.Interface != "" {
		f["interface"] = e.Interface
	}
	if e.ID != 0 {
		f["id"] = strconv.FormatUint(e.ID, 10)
	}
	return ctlchan.Event{Time: e.Time, Kind: e.Kind.String(), NKE: e.NKE, Message: msg, Fields: f}
}

// ctlEvents streams the kernel events published from now on. Events a
// slow reader misses are reported as one "lost" event when it catches up.
func (g *Guest) ctlEvents(ctx context.Context, send func(ctlchan.Event) error) error {
	sub := g.events.Subscribe(kevent.DefaultQueue)
	defer sub.Close()
	var lost uint64
	for {
		e, err := sub.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if l := sub.Lost(); l != lost {
			n := l - lost
			lost = l
			if err := send(ctlchan.Event{Time: e.Time, Kind: "lost", Message: fmt.Sprintf("%d events lost: the reader fell behind", n),
				Fields: map[string]string{"lost": strconv.FormatUint(n, 10)}}); err != nil {
				return err
			}
		}
		if err := send(wireEvent(e)); err != nil {
			return err
		}
	}
}

// chain is one hook's attachments, in the order packets meet them, with
// their counters; capture says whether it has capture points, l3 whether
// its packets start at the IP header.
type chain struct {
	hook    string
	capture bool
	l3      bool
	filters []chainFilter
}

type chainFilter struct {
	name string
	c    hook.Counters
}

// chains lists every hook, in a fixed order, empty ones too: what
// nkectl stat shows and capture names.
func (g *Guest) chains() []chain {
	ifn := g.ifp.Name()
	out := []chain{{hook: ifn + " raw", capture: true}, {hook: ifn + " filters", capture: true},
		{hook: ifn + " protocols", capture: true}, {hook: "inet filters", capture: true, l3: true},
		{hook: "inet6 filters", capture: true, l3: true}, {hook: "socket filters"}}
	for _, f := range g.ifp.RawHooks() {
		out[0].filters = append(out[0].filters, chainFilter{f.Name, f.Counters})
	}
	for _, f := range g.ifp.Filters() {
		out[1].filters = append(out[1].filters, chainFilter{f.Name, f.Counters})
	}
	for _, p := range g.ifp.Protocols() {
		out[2].filters = append(out[2].filters, chainFilter{p.Name, p.Counters})
	}
	for _, f := range g.st.IPFilters() {
		i := 3
		if f.Family == nke.IPv6.String() {
			i = 4
		}
		out[i].filters = append(out[i].filters, chainFilter{f.Name, f.Counters})
	}
	if g.sockets != nil {
		for _, f := range g.sockets.Filters() {
			out[5].filters = append(out[5].filters, chainFilter{f.Name, f.Counters})
		}
	}
	return out
}

// names are a chain's filter names.
func (c chain) names() []string {
	out := make([]string, len(c.filters))
	for i, f := range c.filters {
		out[i] = f.name
	}
	return out
}

// ctlCapture streams the packets at one hook's capture points as pcapng.
func (g *Guest) ctlCapture(ctx context.Context, req ctlchan.CaptureRequest, w io.Writer) error {
	var l3, found bool
	var filters, all []string
	for _, c := range g.chains() {
		if !c.capture {
			continue
		}
		all = append(all, strconv.Quote(c.hook))
		if c.hook == req.Hook {
			found, l3, filters = true, c.l3, c.names()
		}
	}
	if !found {
		return codedf(ctlchan.CodeNotFound, "no hook %q: the hooks are %s (nkectl stat lists their chains)", req.Hook, strings.Join(all, ", "))
	}
	if req.Before != "" && req.After != "" {
		return codedf(ctlchan.CodeInvalid, "capture: --before and --after together: choose one point")
	}
	for _, f := range []string{req.Before, req.After} {
		if f != "" && !slices.Contains(filters, f) {
			return codedf(ctlchan.CodeNotFound, "capture: %q is not attached to %s (attached: %s)", f, req.Hook, strings.Join(filters, ", "))
		}
	}
	if req.Count < 0 {
		return codedf(ctlchan.CodeInvalid, "capture: count %d: want 0 (no limit) or more", req.Count)
	}
	s := capture.NewStream(capture.Match{Hook: req.Hook, Before: req.Before, After: req.After}, captureQueue, captureSnap)
	g.capture.mu.Lock()
	remove, before := g.capture.tee.Add(s)
	if before == 0 {
		g.ifp.Capture(&g.capture.tee)
		g.st.CaptureIP(&g.capture.tee)
	}
	g.capture.mu.Unlock()
	defer func() {
		g.capture.mu.Lock()
		defer g.capture.mu.Unlock()
		if remove() == 0 {
			g.ifp.Capture(nil)
			g.st.CaptureIP(nil)
		}
	}()
	return s.WritePcapng(ctx, w, l3, req.Count)
}

// ctlConnect connects to a kernel-control endpoint.
func (g *Guest) ctlConnect(_ context.Context, req ctlchan.CtlConnectRequest) (ctlchan.CtlConn, ctlchan.CtlConnectReply, error) {
	if req.Unit != 0 {
		return nil, ctlchan.CtlConnectReply{}, codedf(ctlchan.CodeUnsupported,
			"ctl %s: unit %d: the endpoint chooses the unit (connect without one)", req.Name, req.Unit)
	}
	c, err := g.ctl.Connect(req.Name)
	if err != nil {
		return nil, ctlchan.CtlConnectReply{}, wireError(err)
	}
	return ctlConn{c}, ctlchan.CtlConnectReply{Name: req.Name, Unit: c.Unit()}, nil
}

// ctlConn is a kctl client as the control channel serves it.
type ctlConn struct{ c *kctl.Client }

var _ ctlchan.CtlConn = ctlConn{}

func (k ctlConn) Send(_ context.Context, data []byte) error { return wireError(k.c.Send(data)) }

func (k ctlConn) Recv(ctx context.Context) ([]byte, error) {
	b, err := k.c.RecvMsg(ctx)
	if errors.Is(err, kctl.ErrDisconnected) || errors.Is(err, kctl.ErrClosed) {
		return nil, io.EOF
	}
	return b, wireError(err)
}

func (k ctlConn) SetOpt(_ context.Context, opt uint32, val []byte) error {
	return wireError(k.c.SetOpt(int(opt), val))
}

func (k ctlConn) GetOpt(_ context.Context, opt uint32, size int) ([]byte, error) {
	b, err := k.c.GetOpt(int(opt), size)
	return b, wireError(err)
}

func (k ctlConn) Close() error { return k.c.Close() }

// backend is what the control channel serves: the loader, kernel
// control, the event bus and captures.
type backend struct{ g *Guest }

var _ ctlchan.Backend = backend{}

// Backend is the guest's control-channel backend (nkectl's peer).
func (g *Guest) Backend() ctlchan.Backend { return backend{g} }

// loaderError classifies the loader's and the bundle's errors for the
// wire.
func loaderError(err error) error {
	if err == nil {
		return nil
	}
	var me *bundle.ManifestError
	switch {
	case errors.As(err, &me), errors.Is(err, bundle.ErrNoWebAssembly):
		return coded(ctlchan.CodeInvalid, err)
	case errors.Is(err, loader.ErrExists):
		return coded(ctlchan.CodeExists, err)
	case errors.Is(err, loader.ErrNotLoaded):
		return coded(ctlchan.CodeNotFound, err)
	case errors.Is(err, loader.ErrDependency), errors.Is(err, loader.ErrReplace):
		return coded(ctlchan.CodeInvalid, err)
	case errors.Is(err, loader.ErrInUse), errors.Is(err, nke.ErrBusy):
		return coded(ctlchan.CodeBusy, err)
	case errors.Is(err, context.DeadlineExceeded):
		return coded(ctlchan.CodeTimeout, err)
	}
	return wireError(err)
}

// unpack reads a shipped bundle archive.
func unpack(name string, archive []byte) (*bundle.Bundle, error) {
	b, err := bundle.Unpack(archive)
	if err != nil {
		var me *bundle.ManifestError
		if errors.As(err, &me) {
			return nil, coded(ctlchan.CodeInvalid, err)
		}
		return nil, codedf(ctlchan.CodeInvalid, "%s: not a bundle archive: %w", name, err)
	}
	return b, nil
}

func (g *Guest) row(id string) (loader.Row, bool) {
	for _, r := range g.loader.Stat() {
		if r.ID == id {
			return r, true
		}
	}
	return loader.Row{}, false
}

func (b backend) Load(ctx context.Context, req ctlchan.LoadRequest) (ctlchan.LoadReply, error) {
	bu, err := unpack(req.Name, req.Archive)
	if err != nil {
		return ctlchan.LoadReply{}, err
	}
	m := bu.Manifest
	if r, ok := b.g.row(m.ID); ok && req.Dependency {
		// A dependency already loaded at this version or a later one
		// serves; an older one would have to be replaced first.
		if c, err := bundle.CompareVersions(r.Version, m.Version); err == nil && c >= 0 {
			return ctlchan.LoadReply{ID: r.ID, Version: r.Version, Index: r.Index, Already: true}, nil
		}
		return ctlchan.LoadReply{}, codedf(ctlchan.CodeExists, "dependency %s: version %s is loaded, %s was shipped: replace it (nkectl replace) or unload it first", m.ID, r.Version, m.Version)
	}
	if err := b.g.loader.Load(ctx, bu, loader.Options{}); err != nil {
		return ctlchan.LoadReply{}, loaderError(err)
	}
	r, _ := b.g.row(m.ID)
	return ctlchan.LoadReply{ID: m.ID, Version: m.Version, Index: r.Index}, nil
}

func (b backend) Unload(ctx context.Context, req ctlchan.UnloadRequest) (ctlchan.UnloadReply, error) {
	res, err := b.g.loader.Unload(ctx, req.ID, req.Force)
	if err != nil {
		return ctlchan.UnloadReply{}, loaderError(err)
	}
	return ctlchan.UnloadReply{ID: res.ID, Drain: res.Drain, Forced: req.Force,
		Detached: append(append([]string(nil), res.Dependants...), res.Disconnected...)}, nil
}

func (b backend) Replace(ctx context.Context, req ctlchan.ReplaceRequest) (ctlchan.ReplaceReply, error) {
	bu, err := unpack(req.Name, req.Archive)
	if err != nil {
		return ctlchan.ReplaceReply{}, err
	}
	res, err := b.g.loader.Replace(ctx, bu, req.Handover)
	if err != nil {
		return ctlchan.ReplaceReply{}, loaderError(err)
	}
	return ctlchan.ReplaceReply{ID: res.ID, OldVersion: res.OldVersion, NewVersion: res.Version,
		HandedOver: req.Handover, Swap: res.Swap}, nil
}

// Stat is the loader's table with each NKE's counters summed over its
// filters at every hook, and every hook's chain in the order packets
// meet it.
func (b backend) Stat(context.Context) (ctlchan.Stat, error) {
	g := b.g
	// Per filter name: its entries' counters, and where each is in its
	// chain (the resolved order).
	type place struct {
		hook   string
		at, of int
	}
	counters := map[string][]hook.Counters{}
	places := map[string][]place{}
	var st ctlchan.Stat
	for _, c := range g.chains() {
		for i, f := range c.filters {
			counters[f.name] = append(counters[f.name], f.c)
			places[f.name] = append(places[f.name], place{c.hook, i + 1, len(c.filters)})
		}
		st.Chains = append(st.Chains, ctlchan.Chain{Hook: c.hook, Filters: c.names()})
	}
	for _, r := range g.loader.Stat() {
		order := r.Order
		var at []string
		for _, f := range r.Filters {
			for _, p := range places[f] {
				at = append(at, fmt.Sprintf("%d of %d in %s", p.at, p.of, p.hook))
			}
		}
		if len(at) > 0 {
			order = strings.Join(at, ", ") + " (" + r.Order + ")"
		}
		n := ctlchan.NKEStat{Index: r.Index, Refs: r.Refs, ID: r.ID, Version: r.Version, Kind: r.Kind, Layer: r.Layer,
			Attachment: r.Attachment, Order: order, Depends: r.Depends}
		var ns, sampled float64
		for _, f := range r.Filters {
			for _, c := range counters[f] {
				n.Counters.Packets += c.Packets
				n.Counters.Bytes += c.Bytes
				n.Counters.Continue += c.Continue
				n.Counters.Swallow += c.Swallow
				n.Counters.Drop += c.Drop
				n.Counters.Faults += c.Faults
				if c.NsPerPacket > 0 {
					ns += c.NsPerPacket * float64(c.Packets)
					sampled += float64(c.Packets)
				}
			}
		}
		if sampled > 0 {
			n.Counters.NsPerPacket = ns / sampled
		}
		n.Counters.Refused = r.Refused
		st.NKEs = append(st.NKEs, n)
	}
	return st, nil
}

func (b backend) CtlConnect(ctx context.Context, req ctlchan.CtlConnectRequest) (ctlchan.CtlConn, ctlchan.CtlConnectReply, error) {
	return b.g.ctlConnect(ctx, req)
}

func (b backend) Events(ctx context.Context, send func(ctlchan.Event) error) error {
	return b.g.ctlEvents(ctx, send)
}

func (b backend) Capture(ctx context.Context, req ctlchan.CaptureRequest, w io.Writer) error {
	return b.g.ctlCapture(ctx, req, w)
}
