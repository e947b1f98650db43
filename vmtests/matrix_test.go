package vmtests

import (
	"fmt"
	"strings"
	"testing"

	"github.com/nke-harness/nke/tools/hostvm"
)

// TestDeviceMatrix boots the guest on every combination of the device's
// mrg_rxbuf, event_idx and indirect_desc options and rx queue sizes 256 and
// 1024, and runs the same traffic checks on each: the driver negotiates
// exactly what is offered and carries traffic either way.
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
	for _, size := range []int{256, 1024} {
		for bits := 0; bits < 1<<len(feats); bits++ {
			nic := hostvm.NIC{RxQueueSize: size, TxQueueSize: size}
			var on, off, name []string
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
			t.Run(fmt.Sprintf("q%d/%s", size, strings.Join(name, ",")), func(t *testing.T) {
				t.Parallel()
				args, ports := userNIC(t, nic)
				startGuest(t, "matrix", args)
				// QEMU clamps tx_queue_size to 256 for every backend but
				// vhost-user, whatever was asked.
				checkStatus(t, ports.HTTP, append([]string{"VERSION_1", "MAC", "STATUS", "CTRL_VQ", "CTRL_RX"}, on...), off, uint16(size), 256)
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

// TestDeviceVariants covers the devices the driver must either drive or
// refuse by name: packed rings offered (it stays on split rings), a
// transitional device (modern and legacy interfaces: it uses the modern
// one), doorbells a page apart, and a legacy-only device (refused, naming
// VERSION_1).
func TestDeviceVariants(t *testing.T) {
	requireVM(t)
	t.Run("packed offered", func(t *testing.T) {
		t.Parallel()
		args, ports := userNIC(t, hostvm.NIC{Packed: hostvm.On})
		startGuest(t, "packed", args)
		st := checkStatus(t, ports.HTTP, []string{"VERSION_1", "EVENT_IDX"}, []string{"RING_PACKED"}, 256, 256)
		if !strings.Contains(strings.Join(st.NIC.Offered, ","), "RING_PACKED") {
			t.Errorf("device did not offer RING_PACKED: %v", st.NIC.Offered)
		}
		echoTCP(t, ports.Echo, randomBytes(1<<20))
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
