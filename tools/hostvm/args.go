package hostvm

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Defaults for the guest machine. Boot (QEMU start to the ready line)
// under TCG on a 2-core host, medians: tiny init -smp 1 4.2 s, -smp 2
// 3.8 s; nkeinit 5.0 s either way. Two vCPUs leave the guest one CPU
// beside its busy-polling driver loop, at no extra host CPU when idle.
const (
	DefaultMemoryMB = 512
	DefaultCPUs     = 2
	// BaseAppend is always on the kernel command line: the serial
	// console, and a panic that ends the VM at once (with -no-reboot)
	// instead of hanging it.
	BaseAppend = "console=ttyS0 panic=-1 quiet"
	// TCGAppend follows BaseAppend under TCG. tsc=reliable keeps the
	// clocksource watchdog from demoting the TSC when emulation stalls
	// (HPET/ACPI PM reads are VM exits, and Go reads the clock a lot);
	// the other two skip work that only costs time when emulated.
	// Together about 0.3 s off the boot.
	TCGAppend = "tsc=reliable no_timer_check mitigations=off"
)

// Slirp addressing used by NetUser NICs; the guest configures itself
// statically with these.
const (
	GuestIP     = "10.0.2.15"
	GuestPrefix = 24
	GatewayIP   = "10.0.2.2"
	GuestNet    = "10.0.2.0/24"
	// Guest service ports forwarded by DefaultOptions.
	GuestHTTPPort = 80
	GuestEchoPort = 7
)

// Accel selects how QEMU executes guest code.
type Accel string

const (
	AccelTCG Accel = "tcg" // software emulation, always available
	AccelKVM Accel = "kvm" // hardware virtualisation; see CheckKVM
)

// Switch is a tri-state virtio device property: Default leaves QEMU's
// own default in place, so a test only pins what it cares about.
type Switch uint8

const (
	Default Switch = iota
	On
	Off
)

func (s Switch) String() string {
	switch s {
	case On:
		return "on"
	case Off:
		return "off"
	}
	return "default"
}

// NetBackend is the QEMU -netdev type behind a NIC.
type NetBackend string

const (
	// NetUser is slirp NAT: the guest is GuestIP behind GatewayIP and
	// host programs reach it through Forwards.
	NetUser NetBackend = "user"
	// NetStream is a unix stream socket on which QEMU listens; a host
	// program connects and exchanges frames, each a 4-byte big-endian
	// length then the Ethernet frame. QEMU must be the server: 7.2 has
	// no client reconnect.
	NetStream NetBackend = "stream"
	// NetDgram is a pair of unix datagram sockets, one datagram per
	// Ethernet frame; either side may start first.
	NetDgram NetBackend = "dgram"
	// NetTap is an existing tap interface (NIC.Ifname) in the network
	// namespace QEMU runs in: the guest is a host on that wire. QEMU
	// runs no ifup/ifdown scripts, so whoever created the tap configures
	// it (address, MTU, link up).
	NetTap NetBackend = "tap"
)

// ifnameMax is the longest Linux interface name (IFNAMSIZ - 1).
const ifnameMax = 15

// Proto is a transport protocol for a host forward.
type Proto string

const (
	TCP Proto = "tcp"
	UDP Proto = "udp"
)

// Forward makes guest port GuestPort reachable on 127.0.0.1:HostPort.
type Forward struct {
	Proto     Proto // "" means TCP
	HostPort  int
	GuestPort int
}

// NIC is one modern (virtio 1.x only) virtio-net PCI device and its
// backend. Zero values mean QEMU's defaults.
type NIC struct {
	Backend NetBackend // "" means NetUser
	// Forwards are NetUser host forwards, bound to 127.0.0.1 only.
	Forwards []Forward
	// SocketPath is where QEMU listens (NetStream) or QEMU's own
	// datagram socket (NetDgram).
	SocketPath string
	// PeerPath is the host program's datagram socket (NetDgram only).
	PeerPath string
	// Ifname is the tap interface (NetTap only).
	Ifname string
	// Pcap, if set, captures the backend's traffic with QEMU's
	// filter-dump: a witness independent of the guest driver.
	Pcap string

	MAC          string // e.g. "52:54:00:12:34:56"; "" lets QEMU pick
	MrgRxbuf     Switch // VIRTIO_NET_F_MRG_RXBUF
	EventIdx     Switch // VIRTIO_RING_F_EVENT_IDX
	IndirectDesc Switch // VIRTIO_RING_F_INDIRECT_DESC
	Packed       Switch // VIRTIO_F_RING_PACKED
	// CtrlVQ is VIRTIO_NET_F_CTRL_VQ. Off, QEMU still offers the
	// features that need it (CTRL_RX and the like), which the driver
	// must then decline.
	CtrlVQ Switch
	// HostMTU, if set, offers VIRTIO_NET_F_MTU with this MTU (QEMU's
	// host_mtu, 68..65535); 0 offers no MTU.
	HostMTU int
	// Queue sizes: powers of two in [256, 1024]; 0 keeps QEMU's 256.
	// QEMU clamps tx to 256 for every backend but vhost-user.
	RxQueueSize int
	TxQueueSize int
}

// Options is one guest VM. Args renders it as a QEMU command line.
type Options struct {
	QEMU      string // qemu-system-x86_64 binary
	Accel     Accel  // "" means AccelTCG
	MemoryMB  int    // 0 means DefaultMemoryMB
	CPUs      int    // 0 means DefaultCPUs
	Kernel    string // bzImage
	Initramfs string // newc cpio holding /init

	// Append is extra kernel parameters, after BaseAppend (so e.g.
	// "loglevel=7" overrides its "quiet").
	Append []string
	// InitEnv entries, KEY=VALUE, become the environment of /init. Keys
	// may not contain '.', which the kernel reserves for module options.
	InitEnv []string
	// InitArgs become argv[1:] of /init (they follow "--").
	InitArgs []string

	NICs []NIC

	// Control, if set, adds the out-of-band control channel (see
	// ControlChannel); DefaultOptions sets it.
	Control *ControlChannel

	// ExtraArgs are appended verbatim, for devices this type does not
	// model.
	ExtraArgs []string
}

// Args returns the full command line, Args()[0] being the QEMU binary.
// Serial is the guest console on stdio; there is no monitor and no
// display.
func (o Options) Args() ([]string, error) {
	if o.QEMU == "" {
		return nil, fmt.Errorf("QEMU command line: no QEMU binary given")
	}
	if o.Kernel == "" {
		return nil, fmt.Errorf("QEMU command line: no kernel given")
	}
	if o.Initramfs == "" {
		return nil, fmt.Errorf("QEMU command line: no initramfs given")
	}
	machine, err := o.MachineArgs()
	if err != nil {
		return nil, err
	}
	cmdline, err := o.KernelCmdline()
	if err != nil {
		return nil, err
	}
	args := append([]string{o.QEMU}, machine...)
	args = append(args, "-serial", "stdio",
		"-kernel", o.Kernel, "-initrd", o.Initramfs, "-append", cmdline)
	for i, n := range o.NICs {
		a, err := n.Args(i)
		if err != nil {
			return nil, err
		}
		args = append(args, a...)
	}
	if o.Control != nil {
		a, err := o.Control.Args()
		if err != nil {
			return nil, err
		}
		args = append(args, a...)
	}
	return append(args, o.ExtraArgs...), nil
}

// MachineArgs returns the accelerator, CPU, memory and minimal-device
// flags without console, kernel or NICs: the part of the command line
// that other launchers (vmtest's VMTEST_QEMU) can share.
func (o Options) MachineArgs() ([]string, error) {
	mem, cpus := o.MemoryMB, o.CPUs
	if mem == 0 {
		mem = DefaultMemoryMB
	}
	if cpus == 0 {
		cpus = DefaultCPUs
	}
	if mem < 64 {
		return nil, fmt.Errorf("QEMU command line: %d MiB of guest memory is too little; use at least 64", mem)
	}
	if cpus < 1 || cpus > 64 {
		return nil, fmt.Errorf("QEMU command line: %d CPUs is out of range 1..64", cpus)
	}
	var accel []string
	switch o.Accel {
	case "", AccelTCG:
		accel = []string{"-accel", "tcg", "-cpu", TCGCPU}
	case AccelKVM:
		accel = []string{"-accel", "kvm", "-cpu", "host"}
	default:
		return nil, fmt.Errorf("QEMU command line: unknown accelerator %q; use %q or %q", o.Accel, AccelTCG, AccelKVM)
	}
	return append(accel,
		"-m", strconv.Itoa(mem),
		"-smp", strconv.Itoa(cpus),
		"-nodefaults", "-no-user-config",
		"-display", "none",
		"-no-reboot",
	), nil
}

// VMTestQEMU is the VMTEST_QEMU value for hugelgupf/vmtest: QEMU and
// MachineArgs, with the console on stdio (vmtest adds -nographic, which
// attaches no serial port once -nodefaults is given).
func (o Options) VMTestQEMU() (string, error) {
	if o.QEMU == "" {
		return "", fmt.Errorf("VMTEST_QEMU: no QEMU binary given")
	}
	m, err := o.MachineArgs()
	if err != nil {
		return "", err
	}
	for _, a := range append([]string{o.QEMU}, m...) {
		if strings.ContainsAny(a, " \t\n") {
			return "", fmt.Errorf("VMTEST_QEMU: %q contains whitespace, which vmtest splits on", a)
		}
	}
	return strings.Join(append(append([]string{o.QEMU}, m...), "-serial", "stdio"), " "), nil
}

// KernelCmdline renders BaseAppend (and TCGAppend under TCG), Append,
// InitEnv and InitArgs.
func (o Options) KernelCmdline() (string, error) {
	parts := []string{BaseAppend}
	if o.Accel == "" || o.Accel == AccelTCG {
		parts = append(parts, TCGAppend)
	}
	for _, a := range o.Append {
		if err := paramWord(a); err != nil {
			return "", err
		}
		if a == "--" {
			return "", fmt.Errorf("kernel parameter %q: use InitArgs for init's arguments", a)
		}
		parts = append(parts, a)
	}
	for _, e := range o.InitEnv {
		if err := cmdlineWord("init environment entry", e); err != nil {
			return "", err
		}
		k, _, ok := strings.Cut(e, "=")
		if !ok || k == "" || strings.Contains(k, ".") {
			return "", fmt.Errorf("init environment entry %q: want KEY=VALUE with no '.' in KEY (the kernel treats dotted keys as module options)", e)
		}
		parts = append(parts, e)
	}
	if len(o.InitArgs) > 0 {
		parts = append(parts, "--")
		for _, a := range o.InitArgs {
			if err := cmdlineWord("init argument", a); err != nil {
				return "", err
			}
			parts = append(parts, a)
		}
	}
	return strings.Join(parts, " "), nil
}

// cmdlineWord rejects what the kernel's parser would split or strip.
func cmdlineWord(what, w string) error {
	if w == "" || strings.ContainsAny(w, " \t\n\"") {
		return fmt.Errorf("%s %q: must be non-empty, without spaces or quotes", what, w)
	}
	return nil
}

// paramWord is cmdlineWord for a kernel parameter, which may also be
// key="value with spaces": the kernel keeps the value whole and strips
// the quotes (nke.ipfw="block in proto icmp").
func paramWord(w string) error {
	k, v, ok := strings.Cut(w, "=")
	if ok && k != "" && len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' &&
		!strings.ContainsAny(k, " \t\n\"") && !strings.ContainsAny(v[1:len(v)-1], "\"\n") {
		return nil
	}
	return cmdlineWord("kernel parameter", w)
}

// SplitCmdline splits kernel parameters as the kernel does: at spaces,
// except inside double quotes, which stay in the word
// (`nke.load=ipfw nke.ipfw="block in proto icmp"` is two words). An
// unclosed quote is an error.
func SplitCmdline(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	quoted, inWord := false, false
	for _, r := range s {
		switch {
		case r == '"':
			quoted = !quoted
			cur.WriteRune(r)
			inWord = true
		case !quoted && (r == ' ' || r == '\t' || r == '\n'):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quoted {
		return nil, fmt.Errorf("kernel parameters %q: a quote is not closed", s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// Args returns the -netdev/-device (and capture) flags for the NIC with
// the given index; its netdev is "n<index>", its device "nic<index>".
func (n NIC) Args(index int) ([]string, error) {
	id := fmt.Sprintf("n%d", index)
	errf := func(format string, a ...any) error {
		return fmt.Errorf("NIC %d: "+format, append([]any{index}, a...)...)
	}
	var netdev string
	switch n.Backend {
	case "", NetUser:
		if n.SocketPath != "" || n.PeerPath != "" {
			return nil, errf("socket paths are for %q and %q backends, not %q", NetStream, NetDgram, NetUser)
		}
		if n.Ifname != "" {
			return nil, errf("Ifname is for %q backends, not %q", NetTap, NetUser)
		}
		_, ipnet, _ := net.ParseCIDR(GuestNet)
		netdev = fmt.Sprintf("user,id=%s,net=%s,host=%s,dhcpstart=%s,ipv6=off",
			id, ipnet, GatewayIP, GuestIP)
		seen := map[string]bool{}
		for _, f := range n.Forwards {
			proto := f.Proto
			if proto == "" {
				proto = TCP
			}
			if proto != TCP && proto != UDP {
				return nil, errf("forward protocol %q: use %q or %q", f.Proto, TCP, UDP)
			}
			if !validPort(f.HostPort) || !validPort(f.GuestPort) {
				return nil, errf("forward %s %d→%d: ports must be in 1..65535", proto, f.HostPort, f.GuestPort)
			}
			key := fmt.Sprintf("%s:%d", proto, f.HostPort)
			if seen[key] {
				return nil, errf("host port %s/%d forwarded twice", proto, f.HostPort)
			}
			seen[key] = true
			netdev += fmt.Sprintf(",hostfwd=%s:127.0.0.1:%d-:%d", proto, f.HostPort, f.GuestPort)
		}
	case NetStream:
		if n.SocketPath == "" || n.PeerPath != "" || n.Ifname != "" || len(n.Forwards) > 0 {
			return nil, errf("%q needs SocketPath (QEMU listens there) and nothing else", NetStream)
		}
		netdev = fmt.Sprintf("stream,id=%s,server=on,addr.type=unix,addr.path=%s", id, n.SocketPath)
	case NetDgram:
		if n.SocketPath == "" || n.PeerPath == "" || n.Ifname != "" || len(n.Forwards) > 0 {
			return nil, errf("%q needs SocketPath (QEMU's socket) and PeerPath (yours)", NetDgram)
		}
		netdev = fmt.Sprintf("dgram,id=%s,local.type=unix,local.path=%s,remote.type=unix,remote.path=%s",
			id, n.SocketPath, n.PeerPath)
	case NetTap:
		if n.SocketPath != "" || n.PeerPath != "" || len(n.Forwards) > 0 {
			return nil, errf("%q needs Ifname (an existing tap interface) and nothing else", NetTap)
		}
		if n.Ifname == "" || len(n.Ifname) > ifnameMax || strings.ContainsAny(n.Ifname, ",/: \t\n") {
			return nil, errf("tap interface name %q: want 1 to %d characters without ',', '/', ':' or spaces", n.Ifname, ifnameMax)
		}
		netdev = fmt.Sprintf("tap,id=%s,ifname=%s,script=no,downscript=no", id, n.Ifname)
	default:
		return nil, errf("unknown backend %q; use %q, %q, %q or %q", n.Backend, NetUser, NetStream, NetDgram, NetTap)
	}
	for _, p := range []string{n.SocketPath, n.PeerPath, n.Pcap} {
		if strings.Contains(p, ",") {
			return nil, errf("path %q contains ',', which QEMU's option parser splits on", p)
		}
	}

	dev := []string{"virtio-net-pci", "netdev=" + id, "id=nic" + strconv.Itoa(index),
		"disable-legacy=on", "romfile="}
	if n.MAC != "" {
		hw, err := net.ParseMAC(n.MAC)
		if err != nil || len(hw) != 6 {
			return nil, errf("MAC %q: want six colon-separated hex bytes like 52:54:00:12:34:56", n.MAC)
		}
		if hw[0]&1 != 0 {
			return nil, errf("MAC %q is a multicast address; the first byte must be even", n.MAC)
		}
		dev = append(dev, "mac="+hw.String())
	}
	for _, sw := range []struct {
		name string
		v    Switch
	}{
		{"mrg_rxbuf", n.MrgRxbuf},
		{"event_idx", n.EventIdx},
		{"indirect_desc", n.IndirectDesc},
		{"packed", n.Packed},
		{"ctrl_vq", n.CtrlVQ},
	} {
		switch sw.v {
		case Default:
		case On, Off:
			dev = append(dev, sw.name+"="+sw.v.String())
		default:
			return nil, errf("%s: invalid switch value %d", sw.name, sw.v)
		}
	}
	for _, q := range []struct {
		name string
		v    int
	}{
		{"rx_queue_size", n.RxQueueSize},
		{"tx_queue_size", n.TxQueueSize},
	} {
		if q.v == 0 {
			continue
		}
		if q.v < 256 || q.v > 1024 || q.v&(q.v-1) != 0 {
			return nil, errf("%s %d: QEMU accepts a power of two from 256 to 1024", q.name, q.v)
		}
		dev = append(dev, fmt.Sprintf("%s=%d", q.name, q.v))
	}
	if n.HostMTU != 0 {
		if n.HostMTU < 68 || n.HostMTU > 65535 {
			return nil, errf("host_mtu %d: want 68 (the IPv4 minimum) to 65535, or 0 for no MTU feature", n.HostMTU)
		}
		dev = append(dev, fmt.Sprintf("host_mtu=%d", n.HostMTU))
	}

	args := []string{"-netdev", netdev, "-device", strings.Join(dev, ",")}
	if n.Pcap != "" {
		args = append(args, "-object", fmt.Sprintf("filter-dump,id=dump%d,netdev=%s,file=%s", index, id, n.Pcap))
	}
	return args, nil
}

func validPort(p int) bool { return p > 0 && p <= 65535 }

// TCGCPU is the CPU a TCG guest gets: QEMU's default plus RDRAND (the
// kernel seeds its CRNG at once instead of ~3 s into boot, and the Go
// runtime and gVisor, which block in getrandom until then, start that
// much sooner) and SSE4.1/4.2 and POPCNT, which the code wazero compiles
// for WebAssembly NKEs uses (without them the first call dies of
// SIGILL).
const TCGCPU = "qemu64,+rdrand,+ssse3,+sse4.1,+sse4.2,+popcnt"

// DefaultOptions is the VM that `make run` boots: KVM when CheckKVM
// passes, else TCG, one slirp NIC forwarding the HTTP status service and
// the TCP and UDP echo service to 127.0.0.1, and the control channel with
// its socket in the runtime directory of VM DefaultVMName().
func DefaultOptions(qemu, kernel, initramfs string, httpPort, echoPort int) Options {
	accel, _ := PickAccel()
	return Options{
		QEMU:      qemu,
		Accel:     accel,
		Kernel:    kernel,
		Initramfs: initramfs,
		NICs: []NIC{{
			Forwards: []Forward{
				{TCP, httpPort, GuestHTTPPort},
				{TCP, echoPort, GuestEchoPort},
				{UDP, echoPort, GuestEchoPort},
			},
		}},
		Control: &ControlChannel{VM: DefaultVMName()},
	}
}
