package vmtests

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/nke-harness/nke/tools/hostvm"
)

// TestDeviceMatrix boots the guest on every combination of ring layout
// (split, packed), the device's mrg_rxbuf, event_idx and indirect_desc
// options and rx queue sizes 256 and 1024, and runs the same traffic checks
// on each: the driver negotiates exactly what is offered, RING_PACKED
// included, and carries traffic either way.
func TestDeviceMatrix(t *testing.T) {
	requireVM(t)
	type feat struct {
		name string
		set  func(*hostvm.NIC, hostvm.Switch)
	}
	feats := []feat{
		{"MRG_RXBUF", func(n *hostvm.NIC, s hostvm.Switch) { n.MrgRxbuf = s }},
		{"EVENT_IDX", func(n *hostvm.NIC, s hostvm.Switch) { n.EventIdx = s }},
		{"INDIRECT_DESC", func(n *hostvm.NIC, s hostvm.Switch) { n.IndirectDesc = s }},
	}
	for _, layout := range []string{"split", "packed"} {
		for _, size := range []int{256, 1024} {
			for bits := 0; bits < 1<<len(feats); bits++ {
				nic := hostvm.NIC{RxQueueSize: size, TxQueueSize: size, Packed: hostvm.Off}
				on := []string{"VERSION_1", "MAC", "STATUS", "CTRL_VQ", "CTRL_RX"}
				off := []string{"RING_PACKED"}
				if layout == "packed" {
					nic.Packed = hostvm.On
					on, off = append(on, "RING_PACKED"), nil
				}
				var name []string
				for i, f := range feats {
					if bits&(1<<i) != 0 {
						f.set(&nic, hostvm.On)
						on = append(on, f.name)
						name = append(name, strings.ToLower(f.name)+"=on")
					} else {
						f.set(&nic, hostvm.Off)
						off = append(off, f.name)
						name = append(name, strings.ToLower(f.name)+"=off")
					}
				}
				t.Run(fmt.Sprintf("%s/q%d/%s", layout, size, strings.Join(name, ",")), func(t *testing.T) {
					t.Parallel()
					args, ports := userNIC(t, nic)
					startGuest(t, "matrix-"+layout, args)
					// QEMU clamps tx_queue_size to 256 for every backend but
					// vhost-user, whatever was asked.
					checkStatus(t, ports.HTTP, on, off, uint16(size), 256)
					echoTCP(t, ports.Echo, randomBytes(2<<20))
					concurrentEcho(t, ports, 4, 128<<10)
					echoUDP(t, ports.Echo, "matrix", strings.Repeat("m", 1400))
					st := stats(t, ports.HTTP)
					if st.Counters.RxDrops != 0 || st.Counters.TxDrops != 0 || st.Driver.DeviceErrors != 0 {
						t.Errorf("drops or device errors: %+v %+v", st.Counters, st.Driver)
					}
				})
			}
		}
	}
}

// TestDeviceVariants covers the devices the driver must either drive or
// refuse by name: packed rings offered but split forced with nke.ring=split,
// no control queue while the features that need one are still offered
// (ctrl_vq=off: the driver declines them and says so), a transitional
// device (modern and legacy interfaces: it uses the modern one), doorbells
// a page apart, and a legacy-only device (refused, naming VERSION_1).
func TestDeviceVariants(t *testing.T) {
	requireVM(t)
	t.Run("packed offered, nke.ring=split", func(t *testing.T) {
		t.Parallel()
		args, ports := userNIC(t, hostvm.NIC{Packed: hostvm.On})
		startGuest(t, "packed-split", args, "nke.ring=split")
		st := checkStatus(t, ports.HTTP, []string{"VERSION_1", "EVENT_IDX"}, []string{"RING_PACKED"}, 256, 256)
		if !slices.Contains(st.NIC.Offered, "RING_PACKED") {
			t.Errorf("device did not offer RING_PACKED: %v", st.NIC.Offered)
		}
		echoTCP(t, ports.Echo, randomBytes(1<<20))
		echoUDP(t, ports.Echo, "split forced")
	})
	t.Run("bad setting", func(t *testing.T) {
		// Settings come from the kernel command line: one the guest
		// cannot use stops the boot, naming it (and proves they are read).
		t.Parallel()
		args, _ := userNIC(t, hostvm.NIC{})
		_, failure := bootGuest(t, "bad-setting", args, "nke.ring=round")
		if !strings.Contains(failure, "boot failed") || !strings.Contains(failure, "nke.ring") {
			t.Errorf("nke.ring=round: want a boot failure naming nke.ring:\n%s", failure)
		}
	})
	t.Run("ctrl_vq off", func(t *testing.T) {
		// QEMU keeps offering CTRL_RX (and CTRL_VLAN, GUEST_ANNOUNCE, ...)
		// without CTRL_VQ, against the spec; accepting any of them
		// without the queue fails FEATURES_OK or the first command.
		t.Parallel()
		args, ports := userNIC(t, hostvm.NIC{CtrlVQ: hostvm.Off})
		g := startGuest(t, "ctrl-vq-off", args)
		const line = "feature CTRL_RX declined: needs CTRL_VQ"
		if !strings.Contains(g.Log, line) {
			t.Errorf("console does not say %q:\n%s", line, g.Log)
		}
		st, extra := checkStatusVia(t, viaPort(ports.HTTP), []string{"VERSION_1", "MAC", "STATUS"}, []string{"CTRL_VQ", "CTRL_RX"}, 256, 256)
		if !slices.Contains(st.NIC.Offered, "CTRL_RX") || slices.Contains(st.NIC.Offered, "CTRL_VQ") {
			t.Errorf("offered %v: want CTRL_RX without CTRL_VQ, or this test proves nothing", st.NIC.Offered)
		}
		// Every feature the driver supports that needs the control queue.
		for _, f := range []string{"CTRL_RX", "CTRL_MAC_ADDR"} {
			want := f + ": needs CTRL_VQ"
			if !slices.ContainsFunc(extra.NIC.Declined, func(d string) bool { return strings.HasPrefix(d, want) }) {
				t.Errorf("/stats nic.declined = %q, want an entry starting %q", extra.NIC.Declined, want)
			}
		}
		echoTCP(t, ports.Echo, randomBytes(1<<20))
		concurrentEcho(t, ports, 4, 128<<10)
		echoUDP(t, ports.Echo, "no control queue", strings.Repeat("c", 1400))
	})
	t.Run("transitional", func(t *testing.T) {
		t.Parallel()
		args, ports := userNIC(t, hostvm.NIC{})
		args[len(args)-1] = strings.Replace(args[len(args)-1], "disable-legacy=on", "disable-legacy=off", 1)
		g := startGuest(t, "transitional", args)
		if !strings.Contains(g.Log, "[1af4:1000]") {
			t.Errorf("not a transitional device (1af4:1000):\n%s", g.Log)
		}
		checkStatus(t, ports.HTTP, []string{"VERSION_1"}, nil, 256, 256)
		echoTCP(t, ports.Echo, randomBytes(1<<20))
	})
	t.Run("page per vq", func(t *testing.T) {
		// Each queue's doorbell on its own page: notify_off_multiplier
		// 4096 instead of 4.
		t.Parallel()
		args, ports := userNIC(t, hostvm.NIC{})
		args[len(args)-1] += ",page-per-vq=on"
		startGuest(t, "page-per-vq", args)
		checkStatus(t, ports.HTTP, []string{"VERSION_1"}, nil, 256, 256)
		echoTCP(t, ports.Echo, randomBytes(1<<20))
	})
	t.Run("legacy only", func(t *testing.T) {
		t.Parallel()
		args, _ := userNIC(t, hostvm.NIC{})
		args[len(args)-1] = strings.Replace(args[len(args)-1], "disable-legacy=on", "disable-legacy=off,disable-modern=on", 1)
		_, failure := bootGuest(t, "legacy", args)
		if failure == "" {
			t.Fatal("a legacy-only device booted; want a refusal")
		}
		if !strings.Contains(failure, "legacy") || !strings.Contains(failure, "VERSION_1") {
			t.Errorf("refusal does not name legacy virtio and VERSION_1:\n%s", failure)
		}
	})
}
