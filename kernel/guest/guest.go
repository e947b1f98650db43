// Package guest is the harness as PID 1: it brings the guest up (mounts,
// hugepages, the NIC through the user-space virtio-net driver, the
// interface poll loop, gVisor's stack, the services), logs each step on the
// console for people and host tests, serves console commands, and takes it
// all down again before powering off.
package guest

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/kernel/hugepage"
	"github.com/nke-harness/nke/kernel/ifnet"
	"github.com/nke-harness/nke/kernel/initproc"
	"github.com/nke-harness/nke/kernel/kctl"
	"github.com/nke-harness/nke/kernel/kevent"
	"github.com/nke-harness/nke/kernel/netstack"
	"github.com/nke-harness/nke/kernel/services"
	"github.com/nke-harness/nke/kernel/sockfilter"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/loader"
	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/virtionet"
	"github.com/nke-harness/nke/virtio/virtiopci"
)

// ReadyLine is logged once every service listens; host tools and tests wait
// for it.
const ReadyLine = "services listening"

// Settings come from the kernel command line (nke.key=value) or the
// environment.
type Settings struct {
	Addr      netip.Prefix    // nke.ip, default 10.0.2.15/24
	Gateway   netip.Addr      // nke.gw, default 10.0.2.2
	Hugepages int             // nke.hugepages, default 16 (32 MiB)
	RxQueue   uint16          // nke.rxq, default: the device's size
	TxQueue   uint16          // nke.txq
	Refuse    virtio.Features // nke.refuse=MRG_RXBUF,EVENT_IDX,...
	// Ring is the virtqueue layout (nke.ring=auto|split|packed, default
	// auto: packed when the device offers it).
	Ring virtionet.RingChoice
	PCI  string // nke.pci: BDF of the NIC, default the first
	// DeepSleep is the poll loop's longest idle sleep (nke.deep_sleep_us,
	// default 4000): receive latency after a quiet spell vs. host CPU.
	DeepSleep time.Duration
	// Load are boot preference lines from the kernel command line, loaded
	// after the image's preference file: nke.load=ethlog,ipfw names
	// bundles (short built-in names, ids or Name.nke folders), each
	// started with its own setting (nke.ipfw=...) if given instead of its
	// manifest's. For tests and one-off boots; `make run NKES=...` writes
	// the image's file.
	Load []loader.Pref
	// Ctl is the control channel's mode (nke.ctl=auto|off|echo,
	// default auto).
	Ctl CtlMode
	// CtlDeepSleep is the control channel's longest idle sleep
	// (nke.ctl_deep_sleep_us; 0: virtioconsole.DefaultDeepSleep).
	CtlDeepSleep time.Duration
}

// ReadSettings parses the settings through lookup (initproc.Setting in the
// guest). Bad values are errors that name the setting.
func ReadSettings(lookup func(string) (string, bool)) (Settings, error) {
	s := Settings{
		Addr:      netip.MustParsePrefix("10.0.2.15/24"),
		Gateway:   netip.MustParseAddr("10.0.2.2"),
		Hugepages: 16, // rings and pool for 1024/1024 queues need ~9 MiB
	}
	var errs []error
	if v, ok := lookup("nke.ip"); ok {
		p, err := netip.ParsePrefix(v)
		if err != nil || !p.Addr().Is4() {
			errs = append(errs, fmt.Errorf("nke.ip=%q: want an IPv4 address with prefix, like 10.0.2.15/24", v))
		}
		s.Addr = p
	}
	if v, ok := lookup("nke.gw"); ok {
		if v == "none" {
			s.Gateway = netip.Addr{}
		} else if a, err := netip.ParseAddr(v); err != nil || !a.Is4() {
			errs = append(errs, fmt.Errorf("nke.gw=%q: want an IPv4 address or none", v))
		} else {
			s.Gateway = a
		}
	}
	num := func(key string, max int, dst func(int)) {
		if v, ok := lookup(key); ok {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > max {
				errs = append(errs, fmt.Errorf("%s=%q: want a number from 0 to %d", key, v, max))
				return
			}
			dst(n)
		}
	}
	num("nke.hugepages", 4096, func(n int) { s.Hugepages = n })
	num("nke.rxq", 32768, func(n int) { s.RxQueue = uint16(n) })
	num("nke.txq", 32768, func(n int) { s.TxQueue = uint16(n) })
	num("nke.deep_sleep_us", 1000000, func(n int) { s.DeepSleep = time.Duration(n) * time.Microsecond })
	num("nke.ctl_deep_sleep_us", 1000000, func(n int) { s.CtlDeepSleep = time.Duration(n) * time.Microsecond })
	if v, ok := lookup("nke.refuse"); ok && v != "" {
		for _, name := range strings.Split(v, ",") {
			f, ok := featureByName(name)
			if !ok {
				errs = append(errs, fmt.Errorf("nke.refuse: unknown feature %q", name))
				continue
			}
			s.Refuse = s.Refuse.With(f)
		}
	}
	if v, ok := lookup("nke.ring"); ok {
		r, err := virtionet.ParseRingChoice(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("nke.ring: %w", err))
		}
		s.Ring = r
	}
	if v, ok := lookup("nke.pci"); ok {
		s.PCI = v
	}
	if v, ok := lookup("nke.ctl"); ok {
		m, err := ParseCtlMode(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("nke.ctl=%w", err))
		}
		s.Ctl = m
	}
	if v, ok := lookup("nke.load"); ok {
		seen := map[string]bool{}
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name == "" {
				continue
			}
			if err := nke.CheckName(name); err != nil || seen[name] {
				errs = append(errs, fmt.Errorf("nke.load: %q: want distinct bundle names (ipfw, com.example.ipfw or IPFirewall.nke)", name))
				continue
			}
			seen[name] = true
			p := loader.Pref{Line: len(s.Load) + 1, Name: name}
			if args, ok := lookup("nke." + name); ok {
				p.Settings, p.HasSettings = args, true
			}
			s.Load = append(s.Load, p)
		}
	}
	return s, errors.Join(errs...)
}

func featureByName(name string) (virtio.Feature, bool) {
	name = strings.ToUpper(strings.TrimSpace(name))
	for f := virtio.Feature(0); f < 64; f++ {
		if n := virtio.Features(1 << f).Names(virtionet.FeatureNames); len(n) == 1 && n[0] == name {
			return f, true
		}
	}
	return 0, false
}

// Version is the harness version with the VCS revision it was built from.
func Version() string {
	v := "nke-harness 0.1"
	if bi, ok := debug.ReadBuildInfo(); ok {
		var rev, dirty string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+dirty"
				}
			}
		}
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if rev != "" {
			v += " (" + rev + dirty + ")"
		}
	}
	return v
}

// Guest is the running harness.
type Guest struct {
	Settings Settings
	Version  string
	PCI      string
	Booted   time.Duration // kernel start to services listening

	mem *hugepage.Memory
	drv *virtionet.Device
	ifp *ifnet.Interface
	st  *netstack.Stack
	svc *services.Services
	// sockets is the socket layer's filter registry; loader the loaded
	// NKEs.
	sockets *sockfilter.Registry
	loader  *loader.Loader
	// builtins replaces builtin.Lookup in tests.
	builtins func(string) (nke.Module, error)
	// events is the kernel event stream; ctl the kernel-control
	// endpoints NKEs register.
	events *kevent.Bus
	ctl    *kctl.Registry
	// capture is the live captures nkectl runs.
	capture capturing
	// control is the out-of-band control channel, if open.
	control *controlChan
}

// Events is the kernel event stream (`nkectl events`): the loader
// publishes loads and unloads on it, the control channel subscribes.
func (g *Guest) Events() *kevent.Bus { return g.events }

// Controls is the kernel-control registry (`nkectl ctl`): the control
// channel connects clients through it, the loader asks it for an NKE's
// clients before an unload.
func (g *Guest) Controls() *kctl.Registry { return g.ctl }

// Main runs the harness as PID 1 and never returns.
func Main() { MainWith(Config{}) }

// MainWith is Main with cfg plugged in.
func MainWith(cfg Config) {
	logf := initproc.Logf
	logf("%s starting", Version())
	g, err := BootWith(cfg, logf)
	if err != nil {
		logf("boot failed: %v", err)
		initproc.Poweroff(1)
	}
	initproc.AtShutdown(g.Shutdown)
	if err := initproc.ServeConsole(os.Stdin, g.command); err != nil {
		logf("console: %v", err)
	}
	// Console closed (not a terminal): keep serving until powered off.
	select {}
}

// Boot brings everything up and returns once the services listen.
func Boot(logf func(string, ...any)) (*Guest, error) { return BootWith(Config{}, logf) }

// BootWith is Boot with cfg plugged in: the control channel, when there
// is one, is served before the ready line.
func BootWith(cfg Config, logf func(string, ...any)) (*Guest, error) {
	// The settings are on the kernel command line, which /proc shows:
	// mount first (Setup's mounts are idempotent), or every nke.* setting
	// is silently ignored.
	if err := initproc.MountAll(initproc.DefaultMounts()); err != nil {
		return nil, err
	}
	set, err := ReadSettings(initproc.Setting)
	if err != nil {
		return nil, err
	}
	events := &kevent.Bus{}
	g := &Guest{Settings: set, Version: Version(), events: events,
		ctl: kctl.New(kctl.Config{Events: events, Logf: logf})}
	if err := initproc.Setup(initproc.Config{Hostname: "nke", Hugepages: set.Hugepages}); err != nil {
		return nil, err
	}
	fn, err := findNIC(set.PCI)
	if err != nil {
		return nil, err
	}
	g.PCI = fn.BDF
	logf("NIC found at %s [%04x:%04x] rev %d", fn.BDF, fn.Vendor, fn.Device, fn.Revision)
	t, err := virtiopci.Open(fn)
	if err != nil {
		return nil, err
	}
	if g.mem, err = hugepage.Open(hugepage.DefaultDir, set.Hugepages*2<<20); err != nil {
		t.Close()
		return nil, err
	}
	segs := g.mem.Segments()
	logf("DMA memory: %d MiB of hugepages in %d segment(s), first at %#x", set.Hugepages*2, len(segs), segs[0].Addr)
	g.drv, err = virtionet.Open(t, g.mem, virtionet.Options{RxQueueSize: set.RxQueue, TxQueueSize: set.TxQueue, Refuse: set.Refuse, Ring: set.Ring})
	if err != nil {
		t.Close()
		return nil, err
	}
	rx, tx := g.drv.QueueSizes()
	for _, d := range g.drv.Declined() {
		name, why, _ := strings.Cut(d.String(), ": ")
		logf("feature %s declined: %s", name, why)
	}
	logf("features negotiated: %s", strings.Join(virtionet.FeatureList(g.drv.Features()), ","))
	logf("queues: %s rings, rx %d, tx %d; MAC %s; MTU %d", g.drv.Layout(), rx, tx, netMAC(g.drv.MAC()), g.drv.MTU())
	if g.drv.Features().Has(virtionet.FCtrlRx) {
		// Our own unicast, broadcast and all multicast (IPv6 neighbour
		// discovery): no promiscuous copies of other hosts' traffic.
		if err := g.drv.SetPromisc(false); err != nil {
			return nil, err
		}
		if err := g.drv.SetAllMulti(true); err != nil {
			return nil, err
		}
		logf("rx mode: promiscuous off, all-multicast on")
	}
	if g.ifp, err = ifnet.New(g.drv, ifnet.Config{Name: "vtnet0", Index: 1, Logf: logf, DeepSleep: set.DeepSleep, Events: g.events}); err != nil {
		return nil, err
	}
	if g.st, err = netstack.New(g.ifp, netstack.Config{Addr: set.Addr, Gateway: set.Gateway, Events: g.events}); err != nil {
		return nil, err
	}
	// A socket's own chain is made per socket: its faults reach the
	// event stream through the report.
	g.sockets = sockfilter.New(func(f hook.Fault) {
		logf("%s\n%s", f, f.Stack)
		g.events.Publish(kevent.Event{Kind: kevent.Fault, NKE: f.Filter, Hook: f.Hook, Detail: fmt.Sprint(f.Value)})
	})
	g.sockets.SetEvents(g.events)
	if g.loader, err = g.newLoader(logf); err != nil {
		return nil, err
	}
	if err := g.bootNKEs(); err != nil {
		return nil, err
	}
	g.ifp.Start()
	if !waitLink(g.ifp, 5*time.Second) {
		logf("link down: continuing, traffic flows once it comes up")
	} else {
		logf("link up")
	}
	gw := "no gateway"
	if set.Gateway.IsValid() {
		gw = "gateway " + set.Gateway.String()
	}
	logf("address %s, %s", set.Addr, gw)
	if g.svc, err = services.Start(g.st, services.Config{Status: func() any { return g.Status() }, Text: writeText, Logf: logf, Filters: g.sockets}); err != nil {
		return nil, err
	}
	if g.control, err = g.startControl(cfg, logf); err != nil {
		// The network is up: a broken control channel is not worth
		// losing the guest over.
		logf("control channel: %v", err)
	}
	if up, err := initproc.Uptime(); err == nil {
		g.Booted = up
	}
	logf("%s: http :80, tcp echo :7, udp echo :7 (boot %.3fs)", ReadyLine, g.Booted.Seconds())
	return g, nil
}

func findNIC(bdf string) (virtiopci.Function, error) {
	if bdf != "" {
		return virtiopci.Lookup(virtiopci.DefaultRoot, bdf)
	}
	fns, err := virtiopci.FindVirtioNet(virtiopci.DefaultRoot)
	if err != nil {
		return virtiopci.Function{}, err
	}
	return fns[0], nil
}

func waitLink(ifp *ifnet.Interface, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for !ifp.LinkUp() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

func netMAC(b []byte) string {
	if len(b) != 6 {
		return "none"
	}
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4], b[5])
}

// Shutdown closes the services, detaches the stack (so that no late timer
// writes into packet buffers), stops the poll loop and resets the NIC (so
// that the device stops touching guest memory), and only then unmaps the
// DMA memory.
func (g *Guest) Shutdown() {
	if g.svc != nil {
		g.svc.Close()
	}
	if g.control != nil {
		g.control.stop()
	}
	g.unloadAll()
	if g.st != nil {
		g.st.Shutdown()
	}
	if g.ifp != nil {
		g.ifp.Stop()
	}
	if g.drv != nil {
		g.drv.Close()
	}
	if g.mem != nil {
		g.mem.Close()
	}
	s := g.drv.Stats()
	initproc.Logf("stopped: rx %d packets, tx %d packets, %d drops", s.RxPackets, s.TxPackets, s.RxDrops()+s.TxDrops())
}

// command handles a console line (poweroff, halt and reboot are built in).
func (g *Guest) command(line string) {
	switch line {
	case "stats", "status":
		var b strings.Builder
		writeText(&b, g.Status())
		initproc.Logf("%s", b.String())
	case "help":
		initproc.Logf("commands: stats, nke [list | load NAME [SETTINGS] | unload NAME [force]], help, poweroff, reboot")
	default:
		if f := strings.Fields(line); len(f) > 0 && f[0] == "nke" {
			g.nkeCommand(f[1:])
			return
		}
		initproc.Logf("unknown command %q: try help", line)
	}
}
