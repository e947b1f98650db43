package vmtests

import (
	"strings"
	"testing"
	"time"

	"github.com/nke-harness/nke/kernel/guest"
	"github.com/nke-harness/nke/tools/hostvm"
)

// TestHostClients drives the guest as host programs do in make run: through
// QEMU user networking and its port forwards.
func TestHostClients(t *testing.T) {
	args, ports := userNIC(t, hostvm.NIC{})
	g := startGuest(t, "host-clients", args)
	for _, step := range []string{"starting", "NIC found at 0000:00:", "DMA memory", "features negotiated: ", "queues: split rings, rx 256, tx 256", "link up", "address 10.0.2.15/24, gateway 10.0.2.2", "services listening"} {
		if !strings.Contains(g.Log, step) {
			t.Errorf("console lacks %q:\n%s", step, g.Log)
		}
	}
	if guest.ReadyLine != hostvm.ReadyLine {
		t.Errorf("guest ready line %q, host waits for %q", guest.ReadyLine, hostvm.ReadyLine)
	}

	checkStatus(t, ports.HTTP, []string{"VERSION_1", "MAC", "STATUS", "MRG_RXBUF", "EVENT_IDX", "INDIRECT_DESC", "CTRL_VQ", "CTRL_RX"}, nil, 256, 256)

	const size = 16 << 20
	took := echoTCP(t, ports.Echo, randomBytes(size))
	t.Logf("16 MiB TCP echo round trip: %v (%.1f MB/s each way)", took.Round(time.Millisecond), float64(size)/took.Seconds()/1e6)
	concurrentEcho(t, ports, 8, 256<<10)
	echoUDP(t, ports.Echo, "one", strings.Repeat("x", 1400), "three")

	st := stats(t, ports.HTTP)
	c := st.Counters
	if c.RxPackets == 0 || c.TxPackets == 0 || c.RxBytes < size || c.TxBytes < size {
		t.Errorf("counters after 16 MiB each way: %+v", c)
	}
	if c.RxDrops != 0 || c.TxDrops != 0 || st.Driver.DeviceErrors != 0 || st.Driver.Resets != 0 {
		t.Errorf("drops or device errors: %+v %+v", c, st.Driver)
	}
	t.Logf("counters: %+v", c)

	// The console's stats command shows the same numbers.
	g.command("stats")
	g.expectLine("pools ", 30*time.Second)
}
