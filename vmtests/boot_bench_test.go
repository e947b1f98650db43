package vmtests

import (
	"testing"
	"time"

	"github.com/nke-harness/nke/tools/hostvm"
)

// BenchmarkBoot measures QEMU start to the guest's ready line ("services
// listening") on the host clock, and the guest's own kernel-start-to-ready
// time, under whatever accelerator make vmtest picked (TCG here).
func BenchmarkBoot(b *testing.B) {
	requireVM(b)
	var host, guest time.Duration
	for i := 0; i < b.N; i++ {
		args, _ := userNIC(b, hostvm.NIC{})
		g := startGuest(b, "boot", args)
		host += g.BootTime
		guest += g.GuestBoot
		b.StopTimer()
		g.stop()
		b.StartTimer()
	}
	b.ReportMetric(float64(host.Milliseconds())/float64(b.N), "ms-to-ready")
	b.ReportMetric(float64(guest.Milliseconds())/float64(b.N), "guest-ms-to-ready")
}
