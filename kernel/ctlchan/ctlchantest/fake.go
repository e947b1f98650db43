// Package ctlchantest is an in-memory ctlchan.Backend for tests of the
// protocol and of nkectl: a loader that reads bundle archives (tar of
// Name.nke/Contents/Info.plist), a kernel-control endpoint that keeps
// rules, an event bus and a capture that writes real pcapng.
package ctlchantest

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"howett.net/plist"

	"github.com/nke-harness/nke/kernel/capture"
	"github.com/nke-harness/nke/kernel/ctlchan"
	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/nke"
)

// CtlName is the fake's one control endpoint. Send "add RULE" appends a
// rule and replies "rule N: RULE"; "list" replies with every rule, one
// message each; option 1 holds any bytes.
const CtlName = "com.nke-harness.ipfw"

// Hook is the fake's one chain.
const Hook = "vtnet0 filters"

// Manifest is what the fake reads of an Info.plist.
type Manifest struct {
	ID        string            `plist:"CFBundleIdentifier"`
	Version   string            `plist:"CFBundleVersion"`
	Libraries map[string]string `plist:"OSBundleLibraries"`
}

type loaded struct {
	Manifest
	index int
}

// Fake is a ctlchan.Backend. The zero value is not ready: use New.
type Fake struct {
	// Epoch is the time stamped on events and captured packets.
	Epoch time.Time

	mu sync.Mutex
	// +checklocks:mu
	nkes []*loaded
	// +checklocks:mu
	next int
	// +checklocks:mu
	subs map[chan ctlchan.Event]struct{}
	// +checklocks:mu
	clients int
	// +checklocks:mu
	rules []string
	// +checklocks:mu
	opts map[uint32][]byte
	// +checklocks:mu
	archives []int // sizes of the archives loaded, in order
}

var _ ctlchan.Backend = (*Fake)(nil)

// New returns an empty fake.
func New() *Fake {
	return &Fake{
		Epoch: time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC),
		subs:  map[chan ctlchan.Event]struct{}{},
		opts:  map[uint32][]byte{},
	}
}

// ArchiveSizes returns the sizes of the archives loaded, in order.
func (f *Fake) ArchiveSizes() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.archives)
}

// Subscribers is how many Events streams are open.
func (f *Fake) Subscribers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

// CtlClients is how many control connections are open.
func (f *Fake) CtlClients() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.clients
}

// Emit sends e to every Events stream.
func (f *Fake) Emit(e ctlchan.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.emitLocked(e)
}

// +checklocks:f.mu
func (f *Fake) emitLocked(e ctlchan.Event) {
	if e.Time.IsZero() {
		e.Time = f.Epoch
	}
	for ch := range f.subs {
		select {
		case ch <- e:
		default: // a slow subscriber loses events, as on the real bus
		}
	}
}

// ReadManifest finds and decodes the Info.plist in a bundle archive.
func ReadManifest(archive []byte) (Manifest, error) {
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if err != nil {
			return Manifest{}, fmt.Errorf("archive: no Contents/Info.plist (%v)", err)
		}
		if !strings.HasSuffix(h.Name, "Contents/Info.plist") {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return Manifest{}, fmt.Errorf("archive: %s: %w", h.Name, err)
		}
		var m Manifest
		if _, err := plist.Unmarshal(b, &m); err != nil {
			return Manifest{}, fmt.Errorf("%s: %w", h.Name, err)
		}
		if m.ID == "" || m.Version == "" {
			return Manifest{}, fmt.Errorf("%s: CFBundleIdentifier and CFBundleVersion are required: %w", h.Name, syscall.EINVAL)
		}
		return m, nil
	}
}

// +checklocks:f.mu
func (f *Fake) find(id string) (int, *loaded) {
	for i, n := range f.nkes {
		if n.ID == id {
			return i, n
		}
	}
	return -1, nil
}

// Load implements ctlchan.Backend.
func (f *Fake) Load(ctx context.Context, r ctlchan.LoadRequest) (ctlchan.LoadReply, error) {
	m, err := ReadManifest(r.Archive)
	if err != nil {
		return ctlchan.LoadReply{}, fmt.Errorf("load %s: %w", r.Name, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, n := f.find(m.ID); n != nil {
		if r.Dependency {
			return ctlchan.LoadReply{ID: n.ID, Version: n.Version, Index: n.index, Already: true}, nil
		}
		return ctlchan.LoadReply{}, fmt.Errorf("load %s: %s %s is already loaded: unload it or use replace: %w", r.Name, m.ID, n.Version, syscall.EEXIST)
	}
	for lib := range m.Libraries {
		if strings.HasPrefix(lib, "com.nke-harness.kpi.") {
			continue
		}
		if _, n := f.find(lib); n == nil {
			return ctlchan.LoadReply{}, fmt.Errorf("load %s: OSBundleLibraries: %s is not loaded: load it first: %w", r.Name, lib, syscall.ENOENT)
		}
	}
	f.next++
	n := &loaded{Manifest: m, index: f.next}
	f.nkes = append(f.nkes, n)
	f.archives = append(f.archives, len(r.Archive))
	f.emitLocked(ctlchan.Event{Kind: "load", NKE: m.ID, Message: "loaded " + m.ID + " " + m.Version})
	return ctlchan.LoadReply{ID: m.ID, Version: m.Version, Index: n.index}, nil
}

// +checklocks:f.mu
func (f *Fake) dependants(id string) []string {
	var ds []string
	for _, n := range f.nkes {
		if _, ok := n.Libraries[id]; ok {
			ds = append(ds, n.ID)
		}
	}
	return ds
}

// Unload implements ctlchan.Backend.
func (f *Fake) Unload(ctx context.Context, r ctlchan.UnloadRequest) (ctlchan.UnloadReply, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, n := f.find(r.ID)
	if n == nil {
		return ctlchan.UnloadReply{}, fmt.Errorf("unload %s: not loaded (see nkectl stat): %w", r.ID, syscall.ENOENT)
	}
	ds := f.dependants(r.ID)
	if len(ds) > 0 && !r.Force {
		return ctlchan.UnloadReply{}, fmt.Errorf("unload %s: %s depend on it: unload them first or use --force: %w", r.ID, strings.Join(ds, ", "), syscall.EBUSY)
	}
	f.nkes = slices.Delete(f.nkes, i, i+1)
	for _, d := range ds {
		j, _ := f.find(d)
		f.nkes = slices.Delete(f.nkes, j, j+1)
	}
	f.emitLocked(ctlchan.Event{Kind: "unload", NKE: r.ID, Message: "unloaded " + r.ID})
	return ctlchan.UnloadReply{ID: r.ID, Drain: 1500 * time.Microsecond, Forced: r.Force && len(ds) > 0, Detached: ds}, nil
}

// Replace implements ctlchan.Backend.
func (f *Fake) Replace(ctx context.Context, r ctlchan.ReplaceRequest) (ctlchan.ReplaceReply, error) {
	m, err := ReadManifest(r.Archive)
	if err != nil {
		return ctlchan.ReplaceReply{}, fmt.Errorf("replace %s: %w", r.Name, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	_, n := f.find(m.ID)
	if n == nil {
		return ctlchan.ReplaceReply{}, fmt.Errorf("replace %s: %s is not loaded: load it: %w", r.Name, m.ID, syscall.ENOENT)
	}
	old := n.Version
	n.Manifest = m
	return ctlchan.ReplaceReply{ID: m.ID, OldVersion: old, NewVersion: m.Version, HandedOver: r.Handover, Swap: 40 * time.Microsecond}, nil
}

// Stat implements ctlchan.Backend: counters are made up from the index.
func (f *Fake) Stat(ctx context.Context) (ctlchan.Stat, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := ctlchan.Stat{NKEs: []ctlchan.NKEStat{}, Chains: []ctlchan.Chain{{Hook: Hook, Filters: []string{}}}}
	for i, n := range f.nkes {
		refs := len(f.dependants(n.ID))
		if n.ID == CtlName {
			refs += f.clients
		}
		var deps []string
		for lib := range n.Libraries {
			deps = append(deps, lib)
		}
		slices.Sort(deps)
		k := uint64(n.index)
		st.NKEs = append(st.NKEs, ctlchan.NKEStat{
			Index: n.index, Refs: refs, ID: n.ID, Version: n.Version, Kind: "builtin",
			Layer: "interface", Attachment: "vtnet0 all", Order: fmt.Sprintf("%d of %d", i+1, len(f.nkes)),
			Depends:  deps,
			Counters: ctlchan.Counters{Packets: 100 * k, Bytes: 6400 * k, Continue: 90 * k, Drop: 10 * k, NsPerPacket: 12.5 * float64(k)},
		})
		st.Chains[0].Filters = append(st.Chains[0].Filters, n.ID)
	}
	return st, nil
}

// Events implements ctlchan.Backend.
func (f *Fake) Events(ctx context.Context, send func(ctlchan.Event) error) error {
	ch := make(chan ctlchan.Event, 64)
	f.mu.Lock()
	f.subs[ch] = struct{}{}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.subs, ch)
		f.mu.Unlock()
	}()
	for {
		select {
		case e := <-ch:
			if err := send(e); err != nil {
				return err
			}
		case <-ctx.Done():
			return nil
		}
	}
}

// CapturePacket is the i-th packet the fake captures: a UDP datagram
// from 10.0.2.2 to 10.0.2.15 port 7 whose payload is i.
func CapturePacket(i int) []byte {
	src, dst := netip.MustParseAddr("10.0.2.2").As4(), netip.MustParseAddr("10.0.2.15").As4()
	b := []byte{
		0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x52, 0x55, 10, 0, 2, 2, 0x08, 0x00, // Ethernet
		0x45, 0, 0, 29, 0, 0, 0, 0, 64, 17, 0, 0, // IPv4, total length 29, no checksum
	}
	b = append(b, src[:]...)
	b = append(b, dst[:]...)
	b = append(b, 0x30, 0x39, 0, 7, 0, 9, 0, 0, byte(i)) // UDP
	return b
}

// Capture implements ctlchan.Backend: Count packets (0: one every 10 ms
// until cancelled) at the chain Hook, before or after the filter named,
// each verdict continue, written with kernel/capture's pcapng writer.
func (f *Fake) Capture(ctx context.Context, r ctlchan.CaptureRequest, w io.Writer) error {
	if r.Hook != Hook {
		return fmt.Errorf("capture: no hook %q (the hooks are in nkectl stat; this one has %q): %w", r.Hook, Hook, syscall.ENOENT)
	}
	p := hook.Point{Hook: Hook, Filter: r.Before, Dir: hook.In}
	if r.After != "" {
		p = hook.Point{Hook: Hook, Filter: r.After, Dir: hook.In, After: true, Verdict: nke.Continue}
	}
	var buf bytes.Buffer
	for i := 0; r.Count == 0 || i < r.Count; i++ {
		rec := capture.Record{Point: p, Time: f.Epoch.Add(time.Duration(i) * time.Millisecond), Data: CapturePacket(i)}
		rec.Len = len(rec.Data)
		buf.Reset()
		if err := capture.WritePcapng(&buf, []capture.Record{rec}, 256); err != nil {
			return err
		}
		b := buf.Bytes()
		if i > 0 {
			b = stripSection(b) // one section: later packets only add their block
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		if r.Count == 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	return nil
}

// stripSection drops a pcapng section's header and interface blocks,
// leaving its packet blocks.
func stripSection(b []byte) []byte {
	for len(b) >= 12 {
		typ := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
		n := int(uint32(b[4]) | uint32(b[5])<<8 | uint32(b[6])<<16 | uint32(b[7])<<24)
		if typ == 6 || n <= 0 || n > len(b) { // enhanced packet block
			return b
		}
		b = b[n:]
	}
	return b
}

// CtlConnect implements ctlchan.Backend.
func (f *Fake) CtlConnect(ctx context.Context, r ctlchan.CtlConnectRequest) (ctlchan.CtlConn, ctlchan.CtlConnectReply, error) {
	if r.Name != CtlName {
		return nil, ctlchan.CtlConnectReply{}, fmt.Errorf("connect %s: no control endpoint by that name (nkectl stat lists the NKEs): %w", r.Name, syscall.ENOENT)
	}
	f.mu.Lock()
	f.clients++
	f.mu.Unlock()
	return &conn{f: f, q: make(chan []byte, 64), done: make(chan struct{})}, ctlchan.CtlConnectReply{Name: r.Name, Unit: 1}, nil
}

type conn struct {
	f    *Fake
	q    chan []byte
	done chan struct{}
	once sync.Once
}

func (c *conn) Send(ctx context.Context, data []byte) error {
	cmd := string(data)
	var out []string
	c.f.mu.Lock()
	switch {
	case strings.HasPrefix(cmd, "add "):
		c.f.rules = append(c.f.rules, strings.TrimPrefix(cmd, "add "))
		out = []string{fmt.Sprintf("rule %d: %s", len(c.f.rules), strings.TrimPrefix(cmd, "add "))}
	case cmd == "list":
		for i, r := range c.f.rules {
			out = append(out, fmt.Sprintf("rule %d: %s", i+1, r))
		}
		out = append(out, fmt.Sprintf("%d rules", len(c.f.rules)))
	case cmd == "close":
		c.f.mu.Unlock()
		c.Close()
		return nil
	default:
		c.f.mu.Unlock()
		return fmt.Errorf("%q: want add RULE or list: %w", cmd, syscall.EINVAL)
	}
	c.f.mu.Unlock()
	for _, o := range out {
		select {
		case c.q <- []byte(o):
		default:
			return fmt.Errorf("reply queue full: %w", syscall.ENOBUFS)
		}
	}
	return nil
}

func (c *conn) Recv(ctx context.Context) ([]byte, error) {
	select {
	case b := <-c.q:
		return b, nil
	case <-c.done:
		return nil, io.EOF
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *conn) SetOpt(ctx context.Context, opt uint32, val []byte) error {
	if opt != 1 {
		return fmt.Errorf("option %d: %w", opt, syscall.EOPNOTSUPP)
	}
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	c.f.opts[opt] = bytes.Clone(val)
	return nil
}

func (c *conn) GetOpt(ctx context.Context, opt uint32, size int) ([]byte, error) {
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	v, ok := c.f.opts[opt]
	if !ok {
		return nil, fmt.Errorf("option %d: %w", opt, syscall.EOPNOTSUPP)
	}
	return v[:min(len(v), size)], nil
}

func (c *conn) Close() error {
	c.once.Do(func() {
		close(c.done)
		c.f.mu.Lock()
		c.f.clients--
		c.f.mu.Unlock()
	})
	return nil
}

// ErrPanic is what Panicky's methods panic with.
var ErrPanic = errors.New("ctlchantest: backend panic")

// Panicky is a backend whose Stat panics, the rest from Fake.
type Panicky struct{ *Fake }

// Stat panics.
func (Panicky) Stat(context.Context) (ctlchan.Stat, error) { panic(ErrPanic) }

// InfoPlist is a minimal Info.plist for a bundle.
func InfoPlist(id, version string, libs map[string]string) []byte {
	m := Manifest{ID: id, Version: version, Libraries: libs}
	b, err := plist.MarshalIndent(m, plist.XMLFormat, "\t")
	if err != nil {
		panic(err)
	}
	return b
}

// Archive is a bundle archive (tar of NAME.nke/Contents/Info.plist and
// pad bytes of Contents/Resources/pad) of the bundle id.
func Archive(id, version string, libs map[string]string, pad int) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	name := id[strings.LastIndex(id, ".")+1:] + ".nke/"
	for _, file := range []struct {
		name string
		data []byte
	}{
		{name + "Contents/Info.plist", InfoPlist(id, version, libs)},
		{name + "Contents/Resources/pad", make([]byte, pad)},
	} {
		tw.WriteHeader(&tar.Header{Name: file.name, Mode: 0o644, Size: int64(len(file.data)), Typeflag: tar.TypeReg})
		tw.Write(file.data)
	}
	tw.Close()
	return buf.Bytes()
}
