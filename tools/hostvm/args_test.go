package hostvm

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestOptionsArgs(t *testing.T) {
	rt := t.TempDir() + "/rt" // MakeVMDir creates it 0700
	t.Setenv("NKE_RUNTIME_DIR", rt)
	const userNetdev = "user,id=n0,net=10.0.2.0/24,host=10.0.2.2,dhcpstart=10.0.2.15,ipv6=off"
	const nic0 = "virtio-net-pci,netdev=n0,id=nic0,disable-legacy=on,romfile="
	for _, tc := range []struct {
		name string
		opts Options
		want []string
	}{
		{
			name: "make run defaults under TCG",
			opts: func() Options {
				o := DefaultOptions("/usr/bin/qemu-system-x86_64", "/k/vmlinuz", "/o/initramfs.cpio", 8080, 7007)
				o.Accel = AccelTCG
				return o
			}(),
			want: []string{
				"/usr/bin/qemu-system-x86_64",
				"-accel", "tcg", "-cpu", TCGCPU, "-m", "512", "-smp", "2",
				"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
				"-serial", "stdio",
				"-kernel", "/k/vmlinuz", "-initrd", "/o/initramfs.cpio",
				"-append", "console=ttyS0 panic=-1 quiet tsc=reliable no_timer_check mitigations=off",
				"-netdev", userNetdev +
					",hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=tcp:127.0.0.1:7007-:7,hostfwd=udp:127.0.0.1:7007-:7",
				"-device", nic0,
				"-chardev", "socket,id=nkectl0,path=" + rt + "/" + DefaultVMName() + "/console.sock,server=on,wait=off",
				"-device", "virtio-serial-pci,id=nkevser0,max_ports=2,disable-legacy=on",
				"-device", "virtserialport,bus=nkevser0.0,nr=1,chardev=nkectl0,name=nke.ctl",
			},
		},
		{
			name: "KVM, sizes, init argv and env, extra args",
			opts: Options{
				QEMU: "qemu", Accel: AccelKVM, MemoryMB: 1024, CPUs: 1,
				Kernel: "k", Initramfs: "i",
				Append:    []string{"loglevel=7"},
				InitEnv:   []string{"NKE_MODE=bench", "EMPTY="},
				InitArgs:  []string{"-v", "x=1"},
				NICs:      []NIC{{}},
				ExtraArgs: []string{"-device", "virtio-rng-pci"},
			},
			want: []string{
				"qemu",
				"-accel", "kvm", "-cpu", "host", "-m", "1024", "-smp", "1",
				"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
				"-serial", "stdio",
				"-kernel", "k", "-initrd", "i",
				"-append", "console=ttyS0 panic=-1 quiet loglevel=7 NKE_MODE=bench EMPTY= -- -v x=1",
				"-netdev", userNetdev, "-device", nic0,
				"-device", "virtio-rng-pci",
			},
		},
		{
			name: "no NIC",
			opts: Options{QEMU: "q", Kernel: "k", Initramfs: "i"},
			want: []string{
				"q", "-accel", "tcg", "-cpu", TCGCPU, "-m", "512", "-smp", "2",
				"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
				"-serial", "stdio", "-kernel", "k", "-initrd", "i",
				"-append", "console=ttyS0 panic=-1 quiet " + TCGAppend,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.opts.Args()
			if err != nil {
				t.Fatalf("Args() error: %v", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Args() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestOptionsArgsErrors(t *testing.T) {
	base := Options{QEMU: "q", Kernel: "k", Initramfs: "i"}
	for _, tc := range []struct {
		name    string
		edit    func(*Options)
		wantErr string
	}{
		{"no qemu", func(o *Options) { o.QEMU = "" }, "no QEMU binary"},
		{"no kernel", func(o *Options) { o.Kernel = "" }, "no kernel"},
		{"no initramfs", func(o *Options) { o.Initramfs = "" }, "no initramfs"},
		{"bad accel", func(o *Options) { o.Accel = "hvf" }, `unknown accelerator "hvf"`},
		{"tiny memory", func(o *Options) { o.MemoryMB = 16 }, "16 MiB"},
		{"cpus", func(o *Options) { o.CPUs = -1 }, "CPUs is out of range"},
		{"dotted env key", func(o *Options) { o.InitEnv = []string{"virtio.x=1"} }, "no '.' in KEY"},
		{"env without =", func(o *Options) { o.InitEnv = []string{"FOO"} }, "want KEY=VALUE"},
		{"space in env", func(o *Options) { o.InitEnv = []string{"A=b c"} }, "without spaces"},
		{"dash-dash in append", func(o *Options) { o.Append = []string{"--"} }, "use InitArgs"},
		{"empty init arg", func(o *Options) { o.InitArgs = []string{""} }, "must be non-empty"},
		{"bad NIC", func(o *Options) { o.NICs = []NIC{{}, {Backend: "vhost-user"}} }, `NIC 1: unknown backend "vhost-user"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			tc.edit(&o)
			_, err := o.Args()
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Args() error = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestNICArgs(t *testing.T) {
	for _, tc := range []struct {
		name string
		nic  NIC
		want []string
	}{
		{
			name: "stream with every device option",
			nic: NIC{
				Backend: NetStream, SocketPath: "/tmp/n.sock",
				MAC: "52:54:00:AB:CD:EF", MrgRxbuf: Off, EventIdx: On, IndirectDesc: Off, Packed: On, CtrlVQ: Off,
				RxQueueSize: 1024, TxQueueSize: 256, HostMTU: 9000,
			},
			want: []string{
				"-netdev", "stream,id=n3,server=on,addr.type=unix,addr.path=/tmp/n.sock",
				"-device", "virtio-net-pci,netdev=n3,id=nic3,disable-legacy=on,romfile=,mac=52:54:00:ab:cd:ef," +
					"mrg_rxbuf=off,event_idx=on,indirect_desc=off,packed=on,ctrl_vq=off,rx_queue_size=1024,tx_queue_size=256,host_mtu=9000",
			},
		},
		{
			name: "tap with host MTU",
			nic:  NIC{Backend: NetTap, Ifname: "nketap0", HostMTU: 9000, MrgRxbuf: On},
			want: []string{
				"-netdev", "tap,id=n3,ifname=nketap0,script=no,downscript=no",
				"-device", "virtio-net-pci,netdev=n3,id=nic3,disable-legacy=on,romfile=,mrg_rxbuf=on,host_mtu=9000",
			},
		},
		{
			name: "control queue on, smallest MTU",
			nic:  NIC{CtrlVQ: On, HostMTU: 68},
			want: []string{
				"-netdev", "user,id=n3,net=10.0.2.0/24,host=10.0.2.2,dhcpstart=10.0.2.15,ipv6=off",
				"-device", "virtio-net-pci,netdev=n3,id=nic3,disable-legacy=on,romfile=,ctrl_vq=on,host_mtu=68",
			},
		},
		{
			name: "dgram with capture",
			nic:  NIC{Backend: NetDgram, SocketPath: "/t/qemu.sock", PeerPath: "/t/peer.sock", Pcap: "/t/n.pcap"},
			want: []string{
				"-netdev", "dgram,id=n3,local.type=unix,local.path=/t/qemu.sock,remote.type=unix,remote.path=/t/peer.sock",
				"-device", "virtio-net-pci,netdev=n3,id=nic3,disable-legacy=on,romfile=",
				"-object", "filter-dump,id=dump3,netdev=n3,file=/t/n.pcap",
			},
		},
		{
			name: "user with a UDP forward",
			nic:  NIC{Forwards: []Forward{{UDP, 5353, 53}}},
			want: []string{
				"-netdev", "user,id=n3,net=10.0.2.0/24,host=10.0.2.2,dhcpstart=10.0.2.15,ipv6=off,hostfwd=udp:127.0.0.1:5353-:53",
				"-device", "virtio-net-pci,netdev=n3,id=nic3,disable-legacy=on,romfile=",
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.nic.Args(3)
			if err != nil {
				t.Fatalf("Args(3) error: %v", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Args(3) mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNICArgsErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		nic     NIC
		wantErr string
	}{
		{"rx queue not power of two", NIC{RxQueueSize: 300}, "rx_queue_size 300"},
		{"tx queue too small", NIC{TxQueueSize: 128}, "tx_queue_size 128"},
		{"rx queue too big", NIC{RxQueueSize: 2048}, "rx_queue_size 2048"},
		{"bad MAC", NIC{MAC: "52:54:00"}, `MAC "52:54:00"`},
		{"multicast MAC", NIC{MAC: "01:00:5e:00:00:01"}, "multicast"},
		{"stream without path", NIC{Backend: NetStream}, "needs SocketPath"},
		{"stream with forwards", NIC{Backend: NetStream, SocketPath: "s", Forwards: []Forward{{TCP, 1, 2}}}, "needs SocketPath"},
		{"dgram without peer", NIC{Backend: NetDgram, SocketPath: "s"}, "PeerPath"},
		{"user with socket", NIC{SocketPath: "s"}, "socket paths are for"},
		{"comma in path", NIC{Backend: NetStream, SocketPath: "/a,b"}, "contains ','"},
		{"bad port", NIC{Forwards: []Forward{{TCP, 0, 80}}}, "ports must be in 1..65535"},
		{"bad proto", NIC{Forwards: []Forward{{"sctp", 1, 1}}}, `protocol "sctp"`},
		{"duplicate forward", NIC{Forwards: []Forward{{TCP, 8080, 80}, {"", 8080, 81}}}, "forwarded twice"},
		{"bad switch", NIC{Packed: Switch(9)}, "packed: invalid switch value 9"},
		{"bad ctrl_vq switch", NIC{CtrlVQ: Switch(3)}, "ctrl_vq: invalid switch value 3"},
		{"host MTU too small", NIC{HostMTU: 67}, "host_mtu 67: want 68"},
		{"host MTU too big", NIC{HostMTU: 65536}, "host_mtu 65536"},
		{"negative host MTU", NIC{HostMTU: -1}, "host_mtu -1"},
		{"tap without ifname", NIC{Backend: NetTap}, `tap interface name ""`},
		{"tap ifname too long", NIC{Backend: NetTap, Ifname: "a-very-long-tap0"}, `tap interface name "a-very-long-tap0": want 1 to 15`},
		{"tap ifname with comma", NIC{Backend: NetTap, Ifname: "tap,0"}, "without ','"},
		{"tap with forwards", NIC{Backend: NetTap, Ifname: "t", Forwards: []Forward{{TCP, 1, 2}}}, "needs Ifname"},
		{"tap with socket", NIC{Backend: NetTap, Ifname: "t", SocketPath: "s"}, "needs Ifname"},
		{"user with ifname", NIC{Ifname: "tap0"}, `Ifname is for "tap" backends`},
		{"dgram with ifname", NIC{Backend: NetDgram, SocketPath: "s", PeerPath: "p", Ifname: "t"}, "needs SocketPath"},
		{"unknown backend", NIC{Backend: "vde"}, `unknown backend "vde"; use "user", "stream", "dgram" or "tap"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.nic.Args(0)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Args(0) error = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestVMTestQEMU(t *testing.T) {
	got, err := Options{QEMU: "/usr/bin/qemu-system-x86_64", CPUs: 1}.VMTestQEMU()
	if err != nil {
		t.Fatal(err)
	}
	want := "/usr/bin/qemu-system-x86_64 -accel tcg -cpu qemu64,+rdrand,+ssse3,+sse4.1,+sse4.2,+popcnt -m 512 -smp 1 -nodefaults -no-user-config -display none -no-reboot -serial stdio"
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("VMTestQEMU() mismatch (-want +got):\n%s", diff)
	}
	if _, err := (Options{QEMU: "/opt/my qemu/qemu"}).VMTestQEMU(); err == nil {
		t.Error("VMTestQEMU() accepted a QEMU path with a space, which vmtest would split")
	}
}

func TestSplitCmdline(t *testing.T) {
	got, err := SplitCmdline(` nke.load=ipfw  nke.ipfw="block in proto icmp; block in proto udp"	loglevel=7 `)
	want := []string{"nke.load=ipfw", `nke.ipfw="block in proto icmp; block in proto udp"`, "loglevel=7"}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("SplitCmdline = %q, %v; want %q", got, err, want)
	}
	if _, err := SplitCmdline(`a="b c`); err == nil || !strings.Contains(err.Error(), "not closed") {
		t.Fatalf("unclosed quote: %v", err)
	}
	// A quoted value is one kernel parameter; a stray quote is refused.
	o := Options{Append: want}
	if line, err := o.KernelCmdline(); err != nil || !strings.Contains(line, `nke.ipfw="block in proto icmp; block in proto udp"`) {
		t.Fatalf("KernelCmdline = %q, %v", line, err)
	}
	for _, bad := range []string{`a"b`, `"x"=y`, `k="a"b"`} {
		if _, err := (Options{Append: []string{bad}}).KernelCmdline(); err == nil {
			t.Errorf("kernel parameter %q accepted", bad)
		}
	}
}
