// Package vmtests boots the real guest image in QEMU and checks it from the
// host: through QEMU user networking as an ordinary client would, and as a
// raw Ethernet peer on the guest's wire. `make vmtest` prepares QEMU, the
// kernel and the image and sets NKE_VMTEST_REQUIRED=1, which turns any skip
// into a failure.
package vmtests

import (
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	expect "github.com/Netflix/go-expect"
	"github.com/hugelgupf/vmtest/qemu"

	"github.com/nke-harness/nke/tools/hostvm"
)

const (
	readyTimeout = 120 * time.Second // TCG on a loaded 2-core CI machine
	vmTimeout    = 5 * time.Minute
)

func TestMain(m *testing.M) {
	var missing []string
	for _, v := range []string{"VMTEST_QEMU", "VMTEST_KERNEL", "VMTEST_INITRAMFS"} {
		if os.Getenv(v) == "" {
			missing = append(missing, v)
		}
	}
	if len(missing) > 0 && os.Getenv("NKE_VMTEST_REQUIRED") == "1" {
		fmt.Fprintf(os.Stderr, "vmtests: %s not set, so no VM test could run: run them with make vmtest\n", strings.Join(missing, ", "))
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// requireVM skips a VM test outside make vmtest (plain go test ./...). With
// NKE_VMTEST_REQUIRED=1 TestMain has already refused to run without a VM.
func requireVM(t testing.TB) {
	t.Helper()
	if os.Getenv("VMTEST_QEMU") == "" {
		t.Skip("VM tests need QEMU, a kernel and the image: run make vmtest")
	}
}

// vmGuest is one booted VM.
type vmGuest struct {
	t       testing.TB
	vm      *qemu.VM
	started time.Time
	// BootTime is QEMU start to the ready line, on the host clock.
	BootTime time.Duration
	// GuestBoot is what the guest reported (kernel start to ready).
	GuestBoot time.Duration
	// Log is the console output up to the ready line.
	Log string
}

var bootRE = regexp.MustCompile(`boot ([0-9.]+)s`)

// startGuest boots the image with extra QEMU arguments (the NIC) and kernel
// parameters, and waits for the ready line. A guest that reports a boot
// failure fails the test with its console output.
func startGuest(t testing.TB, name string, qemuArgs []string, appendArgs ...string) *vmGuest {
	t.Helper()
	g, failure := bootGuest(t, name, qemuArgs, appendArgs...)
	if failure != "" {
		t.Fatalf("%s: guest boot failed:\n%s", name, failure)
	}
	return g
}

// bootGuest boots like startGuest but returns the console output of a
// failed boot instead of failing the test.
func bootGuest(t testing.TB, name string, qemuArgs []string, appendArgs ...string) (*vmGuest, string) {
	t.Helper()
	return bootGuestWith(t, name, qemuArgs, nil, nil, appendArgs...)
}

// bootGuestWith is bootGuest with extra vmtest options (say, QEMU run in
// a network namespace) and a hook that sees the VM once QEMU started.
func bootGuestWith(t testing.TB, name string, qemuArgs []string, extra []qemu.Fn, started func(*qemu.VM), appendArgs ...string) (*vmGuest, string) {
	t.Helper()
	requireVM(t)
	g := &vmGuest{t: t, started: time.Now()}
	fns := append([]qemu.Fn{
		qemu.ArbitraryArgs(qemuArgs...),
		qemu.WithVMTimeout(vmTimeout),
		qemu.HaltOnKernelPanic(),
	}, extra...)
	if len(appendArgs) > 0 {
		fns = append(fns, qemu.WithAppendKernel(appendArgs...))
	}
	g.vm = qemu.StartT(t, name, qemu.ArchUseEnvv, fns...)
	t.Cleanup(g.stop)
	if started != nil {
		started(g.vm)
	}
	out, err := g.vm.Console.Expect(expect.String(hostvm.ReadyLine, "boot failed"), expect.WithTimeout(readyTimeout))
	g.Log = out
	if err != nil {
		t.Fatalf("%s: no %q within %v: %v", name, hostvm.ReadyLine, readyTimeout, err)
	}
	rest, _ := g.vm.Console.Expect(expect.String("\n"), expect.WithTimeout(5*time.Second))
	g.Log += rest
	if strings.Contains(out, "boot failed") {
		// The guest powers itself off; collect the rest of the console.
		more, _ := g.vm.Console.Expect(expect.String("poweroff (exit code 1)"), expect.WithTimeout(30*time.Second))
		g.Log += more
		if err := g.vm.Wait(); err != nil {
			t.Errorf("QEMU after a failed boot: %v", err)
		}
		return g, g.Log
	}
	g.BootTime = time.Since(g.started)
	if m := bootRE.FindStringSubmatch(rest); m != nil {
		s, _ := strconv.ParseFloat(m[1], 64)
		g.GuestBoot = time.Duration(s * float64(time.Second))
	}
	t.Logf("%s: ready in %v (guest: kernel start to ready %v)", name, g.BootTime.Round(time.Millisecond), g.GuestBoot)
	return g, ""
}

// expectLine waits for console output containing s.
func (g *vmGuest) expectLine(s string, timeout time.Duration) string {
	g.t.Helper()
	out, err := g.vm.Console.Expect(expect.String(s), expect.WithTimeout(timeout))
	if err != nil {
		g.t.Fatalf("console: no %q within %v: %v\n%s", s, timeout, err, out)
	}
	return out
}

// command types a console command.
func (g *vmGuest) command(line string) {
	g.t.Helper()
	if _, err := g.vm.Console.SendLine(line); err != nil {
		g.t.Fatalf("console: %v", err)
	}
}

// stop powers the guest off from its console and checks it went down
// cleanly: services closed, NIC reset, console drained.
func (g *vmGuest) stop() {
	if g.vm.Waited() {
		return
	}
	g.vm.Console.Send(hostvm.PoweroffLine)
	out, err := g.vm.Console.Expect(expect.String("poweroff (exit code 0)"), expect.WithTimeout(60*time.Second))
	if err != nil {
		g.t.Errorf("guest did not power off cleanly: %v\n%s", err, out)
	} else if !strings.Contains(out, "stopped:") {
		g.t.Errorf("guest powered off without stopping its services and NIC:\n%s", out)
	}
	if err := g.vm.Wait(); err != nil {
		g.t.Errorf("QEMU: %v", err)
	}
}

// freePorts returns n distinct free TCP ports on 127.0.0.1 that are also
// free for UDP.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		p := l.Addr().(*net.TCPAddr).Port
		if u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
			u.Close()
			ports = append(ports, p)
		}
	}
	return ports
}

// userNIC is a NIC on QEMU user networking with the guest's HTTP, TCP echo
// and UDP echo ports forwarded to free host ports.
type userPorts struct{ HTTP, Echo int }

func userNIC(t testing.TB, nic hostvm.NIC) ([]string, userPorts) {
	t.Helper()
	p := freePorts(t, 2)
	ports := userPorts{HTTP: p[0], Echo: p[1]}
	nic.Backend = hostvm.NetUser
	nic.Forwards = []hostvm.Forward{
		{Proto: hostvm.TCP, HostPort: ports.HTTP, GuestPort: hostvm.GuestHTTPPort},
		{Proto: hostvm.TCP, HostPort: ports.Echo, GuestPort: hostvm.GuestEchoPort},
		{Proto: hostvm.UDP, HostPort: ports.Echo, GuestPort: hostvm.GuestEchoPort},
	}
	args, err := nic.Args(0)
	if err != nil {
		t.Fatal(err)
	}
	return args, ports
}
