package vmtests

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hugelgupf/vmtest/qemu"

	"github.com/nke-harness/nke/tools/hostvm"
)

// tapNet is a private network namespace holding one tap interface: the
// guest's wire, with the namespace as the host 10.0.2.2/24 on it (the
// guest's static gateway). QEMU runs inside the namespace and attaches to
// the tap; clients run there too, as a user on that wire would:
//
//	ip netns exec NAME ping -M do -s 8972 -c 3 10.0.2.15
//
// newTapNet builds it and registers its removal with t.Cleanup; if the
// test failed, that cleanup first logs every command needed to reproduce
// it by hand (namespace setup, QEMU, the clients that ran, teardown).
type tapNet struct {
	t    testing.TB
	Name string // network namespace, unique per test (nkevm-PID-N)
	Tap  string // the tap interface inside it
	MTU  int

	mu    sync.Mutex
	setup []string // shell lines that built the namespace
	ran   []string // client commands run in it
	vm    *qemu.VM
}

const (
	tapName     = "nketap0" // private to each namespace, so always the same
	peerCIDR    = hostvm.GatewayIP + "/24"
	netnsDir    = "/run/netns" // where ip netns keeps named namespaces
	netnsPrefix = "nkevm-"
)

var (
	netnsSeq      atomic.Int64
	staleNetnsOne sync.Once
)

// need skips a test that cannot run on this host, or fails it under make
// vmtest (NKE_VMTEST_REQUIRED=1), where nothing may skip silently.
func need(t testing.TB, format string, a ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, a...)
	if os.Getenv("NKE_VMTEST_REQUIRED") == "1" {
		t.Fatalf("%s (make vmtest requires every VM test to run)", msg)
	}
	t.Skip(msg)
}

// requireTools checks that the VM tests' host tools (hostvm.VMTestTools)
// are present; make vmtest installs them as root.
func requireTools(t testing.TB) {
	t.Helper()
	if m := hostvm.MissingTools(hostvm.VMTestTools); len(m) > 0 {
		var names, pkgs []string
		for _, tool := range m {
			names = append(names, tool.String())
			pkgs = append(pkgs, tool.Package)
		}
		need(t, "%s not found: install %s (make vmtest does, as root)", strings.Join(names, ", "), strings.Join(pkgs, " "))
	}
}

// requireTapNet checks what newTapNet needs: a VM, root (namespaces and
// taps need CAP_SYS_ADMIN and CAP_NET_ADMIN), /dev/net/tun and the tools.
func requireTapNet(t testing.TB) {
	t.Helper()
	requireVM(t)
	if os.Geteuid() != 0 {
		need(t, "tap tests need root to create network namespaces and taps; run make vmtest as root")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		need(t, "tap tests need /dev/net/tun (%v); load the tun module or, in a container, pass the device in", err)
	}
	requireTools(t)
}

// newTapNet creates the namespace and in it a tap with the given MTU,
// address 10.0.2.2/24 and link up (QEMU brings the carrier).
func newTapNet(t testing.TB, mtu int) *tapNet {
	t.Helper()
	requireTapNet(t)
	staleNetnsOne.Do(removeStaleNetns)
	n := &tapNet{t: t, Name: fmt.Sprintf("%s%d-%d", netnsPrefix, os.Getpid(), netnsSeq.Add(1)), Tap: tapName, MTU: mtu}
	if err := n.ip("netns", "add", n.Name); err != nil {
		t.Fatalf("creating network namespace: %v", err)
	}
	t.Cleanup(n.cleanup)
	for _, args := range [][]string{
		{"-n", n.Name, "link", "set", "lo", "up"},
		{"-n", n.Name, "tuntap", "add", "dev", n.Tap, "mode", "tap"},
		{"-n", n.Name, "link", "set", n.Tap, "mtu", strconv.Itoa(mtu)},
		{"-n", n.Name, "addr", "add", peerCIDR, "dev", n.Tap},
		{"-n", n.Name, "link", "set", n.Tap, "up"},
	} {
		if err := n.ip(args...); err != nil {
			hint := ""
			if strings.Contains(err.Error(), "make-rslave") {
				// ip -n and ip netns exec remount / in their own mount
				// namespace; a chroot's root that is no mount point fails.
				hint = " (in a chroot? / must be a mount point: mount --bind DIR DIR before chrooting)"
			}
			t.Fatalf("setting up %s in namespace %s: %v%s", n.Tap, n.Name, err, hint)
		}
	}
	return n
}

// sysctl sets a sysctl of the namespace's own (net.*) through
// /proc/sys, as sysctl(8) would; procps is not needed for that.
func (n *tapNet) sysctl(key, value string) {
	n.t.Helper()
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	argv := []string{"netns", "exec", n.Name, "sh", "-c", fmt.Sprintf("echo %s > %s", value, path)}
	n.mu.Lock()
	n.setup = append(n.setup, shellLine(append([]string{"ip"}, argv...)))
	n.mu.Unlock()
	if err := ipCmd(argv...); err != nil {
		n.t.Fatalf("sysctl %s=%s in namespace %s: %v", key, value, n.Name, err)
	}
}

// ip runs ip(8) on the host and records it for the reproduce log.
func (n *tapNet) ip(args ...string) error {
	n.mu.Lock()
	n.setup = append(n.setup, shellLine(append([]string{"ip"}, args...)))
	n.mu.Unlock()
	return ipCmd(args...)
}

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// cleanup logs how to reproduce a failed test, then removes the tap and
// the namespace. It runs after the guest's own cleanup (registered
// later), so QEMU has released the tap.
func (n *tapNet) cleanup() {
	if n.t.Failed() {
		n.t.Logf("reproduce (as root):\n%s", n.reproduce())
	}
	// The tap would go with the namespace, but a QEMU still running in
	// it (a hung guest) keeps the namespace alive past ip netns del:
	// delete the tap explicitly.
	if err := ipCmd("-n", n.Name, "link", "del", n.Tap); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
		n.t.Errorf("removing %s: %v", n.Tap, err)
	}
	if err := ipCmd("netns", "del", n.Name); err != nil {
		n.t.Errorf("removing network namespace %s: %v", n.Name, err)
	}
	if _, err := os.Stat(filepath.Join(netnsDir, n.Name)); err == nil {
		n.t.Errorf("network namespace %s still exists after ip netns del", n.Name)
	}
}

// reproduce is the namespace setup, QEMU and the clients as shell lines.
func (n *tapNet) reproduce() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var b strings.Builder
	for _, l := range n.setup {
		fmt.Fprintf(&b, "  %s\n", l)
	}
	if n.vm != nil {
		fmt.Fprintf(&b, "  %s\n", n.vm.CmdlineQuoted())
	}
	for _, l := range n.ran {
		fmt.Fprintf(&b, "  %s   # in another terminal\n", l)
	}
	fmt.Fprintf(&b, "  ip -n %s link del %s; ip netns del %s", n.Name, n.Tap, n.Name)
	return b.String()
}

// qemuInNetns runs QEMU inside the namespace: ip netns exec execs it, so
// the process vmtest starts and signals is QEMU itself.
func (n *tapNet) qemuInNetns() qemu.Fn {
	return func(_ *qemu.IDAllocator, o *qemu.Options) error {
		if o.QEMUCommand == "" {
			return fmt.Errorf("no QEMU command (VMTEST_QEMU) to run in namespace %s", n.Name)
		}
		o.QEMUCommand = "ip netns exec " + n.Name + " " + o.QEMUCommand
		return nil
	}
}

// NIC returns nic attached to this namespace's tap.
func (n *tapNet) NIC(nic hostvm.NIC) hostvm.NIC {
	nic.Backend, nic.Ifname = hostvm.NetTap, n.Tap
	return nic
}

// startGuest boots the guest with nic on the tap, QEMU in the namespace.
func (n *tapNet) startGuest(name string, nic hostvm.NIC, appendArgs ...string) *vmGuest {
	n.t.Helper()
	args, err := n.NIC(nic).Args(0)
	if err != nil {
		n.t.Fatal(err)
	}
	g, failure := bootGuestWith(n.t, name, args, []qemu.Fn{n.qemuInNetns()}, func(vm *qemu.VM) {
		n.mu.Lock()
		n.vm = vm
		n.mu.Unlock()
	}, appendArgs...)
	if failure != "" {
		n.t.Fatalf("%s: guest boot failed:\n%s", name, failure)
	}
	return g
}

// command is a client command line run in the namespace, fed stdin
// bytes (for the reproduce log).
func (n *tapNet) command(ctx context.Context, stdin int, name string, args ...string) *exec.Cmd {
	argv := append([]string{"netns", "exec", n.Name, name}, args...)
	line := shellLine(append([]string{"ip"}, argv...))
	if stdin > 0 {
		line += fmt.Sprintf(" < some-%d-bytes", stdin)
	}
	n.mu.Lock()
	n.ran = append(n.ran, line)
	n.mu.Unlock()
	c := exec.CommandContext(ctx, "ip", argv...)
	// Clients' messages are for people; the tests read only exit
	// status and data, but keep them untranslated for the log.
	c.Env = append(os.Environ(), "LC_ALL=C")
	return c
}

// run runs a client in the namespace with stdin and returns its stdout;
// on failure the error carries stderr.
func (n *tapNet) run(timeout time.Duration, stdin []byte, name string, args ...string) ([]byte, error) {
	var stderr bytes.Buffer
	return n.runErr(timeout, stdin, &stderr, name, args...)
}

// runErr is run with stderr also written to the given buffer.
func (n *tapNet) runErr(timeout time.Duration, stdin []byte, stderr *bytes.Buffer, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c := n.command(ctx, len(stdin), name, args...)
	if stdin != nil {
		c.Stdin = bytes.NewReader(stdin)
	}
	var stdout bytes.Buffer
	c.Stdout, c.Stderr = &stdout, stderr
	err := c.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w after %v", ctx.Err(), timeout)
	}
	if err != nil {
		out := stdout.Bytes()
		if len(out) > 2000 {
			out = append([]byte("..."), out[len(out)-2000:]...)
		}
		return stdout.Bytes(), fmt.Errorf("%s: %v\n%s%s", shellLine(c.Args), err, out, stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

// removeStaleNetns deletes namespaces that earlier test binaries named
// for their own pid and left behind when they were killed (a go test
// timeout runs no cleanups).
func removeStaleNetns() {
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), netnsPrefix)
		if !ok {
			continue
		}
		pid, _, _ := strings.Cut(rest, "-")
		if p, err := strconv.Atoi(pid); err != nil || p == os.Getpid() {
			continue
		}
		if _, err := os.Stat("/proc/" + pid); err == nil {
			continue // its test binary still runs
		}
		ipCmd("netns", "del", e.Name())
	}
}

// shellLine quotes argv for sh.
func shellLine(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=+,./:@%") == "" {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}

// http fetches from the guest's HTTP service with curl in the namespace.
func (n *tapNet) http() guestGet {
	return func(t testing.TB, path string) (string, string) {
		t.Helper()
		// The body on stdout; status and type on stderr, where curl -sS
		// writes nothing else unless it fails.
		var meta bytes.Buffer
		out, err := n.runErr(60*time.Second, nil, &meta, "curl", "-sS", "--max-time", "30",
			"-w", "%{stderr}%{http_code} %{content_type}", "http://"+hostvm.GuestIP+path)
		if err != nil {
			t.Fatalf("GET %s from namespace %s: %v", path, n.Name, err)
		}
		code, ct, _ := strings.Cut(strings.TrimSpace(meta.String()), " ")
		if code != "200" {
			t.Fatalf("GET %s: status %q\n%s", code, path, out)
		}
		return string(out), ct
	}
}

// ping sends count echo requests of size payload bytes with the DF bit
// set (-M do: no fragmentation anywhere) and fails the test unless every
// reply comes back within the deadline.
func (n *tapNet) ping(t testing.TB, size, count int) {
	t.Helper()
	out, err := n.run(90*time.Second, nil, "ping", "-n", "-M", "do", "-s", strconv.Itoa(size),
		"-c", strconv.Itoa(count), "-w", "20", hostvm.GuestIP)
	if err != nil {
		t.Errorf("ping with %d-byte payload, DF set: %v", size, err)
		return
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	t.Logf("ping -M do -s %d: %s", size, strings.Join(lines[max(0, len(lines)-2):], "; "))
}

// echoTCP runs payload through the guest's TCP echo service with nc in
// the namespace (-N: shut down the sending side at EOF, then read the
// echo to the end) and compares what came back by SHA-256.
func (n *tapNet) echoTCP(t testing.TB, payload []byte) {
	t.Helper()
	start := time.Now()
	out, err := n.run(5*time.Minute, payload, "nc.openbsd", "-N", "-w", "60", hostvm.GuestIP, strconv.Itoa(hostvm.GuestEchoPort))
	if err != nil {
		t.Fatalf("TCP echo from namespace %s: %v", n.Name, err)
	}
	got, want := sha256.Sum256(out), sha256.Sum256(payload)
	if got != want {
		t.Fatalf("TCP echo returned %d bytes with sha256 %x, sent %d with %x", len(out), got, len(payload), want)
	}
	t.Logf("TCP echo of %d bytes through nc: %v", len(payload), time.Since(start).Round(time.Millisecond))
}

// echoUDP sends each message to the UDP echo service with nc -u and
// wants it back; UDP may lose a datagram, so each is tried a few times.
func (n *tapNet) echoUDP(t testing.TB, msgs ...string) {
	t.Helper()
	for _, m := range msgs {
		var last string
		ok := false
		for try := 0; try < 5 && !ok; try++ {
			out, err := n.run(30*time.Second, []byte(m), "nc.openbsd", "-u", "-w", "3", hostvm.GuestIP, strconv.Itoa(hostvm.GuestEchoPort))
			ok = err == nil && string(out) == m
			last = fmt.Sprintf("%q, %v", out, err)
		}
		if !ok {
			t.Fatalf("UDP echo of %d bytes from namespace %s never came back; last try: %s", len(m), n.Name, last)
		}
	}
}
