package vmtests

import (
	"fmt"
	"strings"
	"testing"

	"github.com/nke-harness/nke/tools/hostvm"
)

// TestTapMTU puts the guest on a tap in a private network namespace, the
// namespace being the host 10.0.2.2 on the guest's wire, and checks from
// there what a user would: ping with DF set and a full-MTU payload, the
// status page with curl, the TCP and UDP echo with nc. A capture on the tap
// proves the frame sizes: full-MTU frames in both directions, none longer,
// no IPv4 fragments.
//
// The 1500-byte tap without host_mtu is the control: it exercises the same
// infrastructure against a driver that has always handled it. The jumbo
// cases offer VIRTIO_NET_F_MTU 9000 (host_mtu=9000) on a 9000-byte tap,
// with and without MRG_RXBUF (without it the driver must post buffers for
// a whole 9014-byte frame).
func TestTapMTU(t *testing.T) {
	requireVM(t)
	for _, tc := range []struct {
		name      string
		mtu       int // the tap's, and the MTU the guest must report
		nic       hostvm.NIC
		want, not []string
	}{
		{name: "mtu1500", mtu: 1500, want: []string{"MRG_RXBUF"}, not: []string{"MTU"}},
		{name: "host_mtu=9000,mrg_rxbuf=on", mtu: 9000, nic: hostvm.NIC{HostMTU: 9000, MrgRxbuf: hostvm.On},
			want: []string{"MTU", "MRG_RXBUF"}},
		{name: "host_mtu=9000,mrg_rxbuf=off", mtu: 9000, nic: hostvm.NIC{HostMTU: 9000, MrgRxbuf: hostvm.Off},
			want: []string{"MTU"}, not: []string{"MRG_RXBUF"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newTapNet(t, tc.mtu)
			// With SACK, gVisor keeps room for SACK blocks in every
			// segment, so the guest's data frames would stay 28 bytes
			// short of the MTU whatever the driver does. Without it
			// (only in this namespace) they fill the MTU.
			n.sysctl("net.ipv4.tcp_sack", "0")
			wire := n.capture()
			n.startGuest("tap-"+tc.name, tc.nic)

			st, _ := checkStatusVia(t, n.http(), append([]string{"VERSION_1", "MAC", "STATUS"}, tc.want...), tc.not, 256, 256)
			if st.NIC.MTU != tc.mtu {
				t.Errorf("/stats nic.mtu = %d, want %d (the tap's MTU and host_mtu)", st.NIC.MTU, tc.mtu)
			}
			if page, _ := n.http()(t, "/"); !strings.Contains(page, fmt.Sprintf("MTU %d,", tc.mtu)) {
				t.Errorf("status page does not report MTU %d:\n%s", tc.mtu, page)
			}
			// IPv4 and ICMP headers take 28 bytes of the MTU.
			n.ping(t, tc.mtu-28, 3)
			n.echoTCP(t, randomBytes(4<<20))
			n.echoUDP(t, "tap", strings.Repeat("u", 1400))
			checkWire(t, wire)
			if st, _ := statsVia(t, n.http()); st.Counters.RxDrops != 0 || st.Counters.TxDrops != 0 || st.Driver.DeviceErrors != 0 {
				t.Errorf("drops or device errors: %+v %+v", st.Counters, st.Driver)
			}
		})
	}
}
