package vmtests

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nke-harness/nke/kernel/ctlchan"
	"github.com/nke-harness/nke/tools/hostvm"
)

// controlGuest boots the guest with the control channel in echo mode and
// returns the socket QEMU listens on.
func controlGuest(t *testing.T, name string, appendArgs ...string) (*vmGuest, string, userPorts) {
	t.Helper()
	return controlGuestWith(t, name, hostvm.ControlChannel{}, appendArgs...)
}

// controlGuestWith is controlGuest with the device's options in cc.
func controlGuestWith(t *testing.T, name string, cc hostvm.ControlChannel, appendArgs ...string) (*vmGuest, string, userPorts) {
	t.Helper()
	requireVM(t)
	// A short private runtime directory: unix socket paths are short.
	rt, err := os.MkdirTemp("", "nkert")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(rt) })
	os.Chmod(rt, 0o700)
	t.Setenv(ctlchan.EnvRuntimeDir, rt)
	cc.VM = name
	ctlArgs, err := cc.Args()
	if err != nil {
		t.Fatal(err)
	}
	sock, _ := cc.Socket()
	nicArgs, ports := userNIC(t, hostvm.NIC{})
	mode := "nke.ctl=echo"
	for _, a := range appendArgs {
		if strings.HasPrefix(a, "nke.ctl=") {
			mode = a
		}
	}
	if mode == "nke.ctl=echo" {
		appendArgs = append([]string{mode}, appendArgs...)
	}
	g := startGuest(t, name, append(nicArgs, ctlArgs...), appendArgs...)
	if mode != "nke.ctl=off" && !strings.Contains(g.Log, "control channel: 0000:") {
		t.Fatalf("the guest did not open the control channel:\n%s", g.Log)
	}
	if err := hostvm.SecureSocket(sock, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %s: %v %v, want 0600", sock, fi.Mode(), err)
	}
	if fi, err := os.Stat(filepath.Dir(sock)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("runtime directory %s: %v %v, want 0700", filepath.Dir(sock), fi.Mode(), err)
	}
	return g, sock, ports
}

// dialControl connects to QEMU's socket. Right after a client left, QEMU
// may refuse a moment (its listener takes one connection at a time):
// retry for a while, and say so.
func dialControl(t *testing.T, sock string) net.Conn {
	t.Helper()
	start := time.Now()
	for tries := 1; ; tries++ {
		c, err := net.DialTimeout("unix", sock, 5*time.Second)
		if err == nil {
			if tries > 1 {
				t.Logf("control socket: connected at try %d, after %v", tries, time.Since(start).Round(time.Millisecond))
			}
			return c
		}
		if time.Since(start) > 20*time.Second {
			qemuDiag(t, sock)
			t.Fatalf("control socket: %v (after %d tries in %v)", err, tries, time.Since(start).Round(time.Millisecond))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// echoControl sends data through the echo guest and reads it back,
// checking every byte; it reports how long writing took (host → guest,
// paced by the guest taking it) and the whole round trip.
func echoControl(t *testing.T, c net.Conn, data []byte, timeout time.Duration) (write, total time.Duration) {
	t.Helper()
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	start := time.Now()
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		write = time.Since(start)
		werr <- err
	}()
	got := make([]byte, len(data))
	n, rerr := io.ReadFull(c, got)
	total = time.Since(start)
	if err := <-werr; err != nil {
		t.Fatalf("writing %d bytes: %v", len(data), err)
	}
	if rerr != nil {
		t.Fatalf("read back %d of %d bytes in %v: %v", n, len(data), total, rerr)
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		i := 0
		for i < len(got) && got[i] == data[i] {
			i++
		}
		t.Fatalf("%d bytes came back different (SHA-256 mismatch; first difference at byte %d)", len(data), i)
	}
	return write, total
}

func mbps(n int, d time.Duration) float64 { return float64(n) / d.Seconds() / 1e6 }

// TestControlChannel: the control channel carries 2 MiB to the guest and
// back without losing a byte (the guest echoes, nke.ctl=echo), survives
// the host disconnecting and reconnecting, and works while a firewall NKE
// drops all IP traffic.
func TestControlChannel(t *testing.T) {
	const size = 2 << 20
	t.Run("echo", func(t *testing.T) {
		_, sock, ports := controlGuest(t, "ctl-echo")
		c := dialControl(t, sock)
		defer c.Close()
		data := randomBytes(size)
		w, total := echoControl(t, c, data, 2*time.Minute)
		t.Logf("2 MiB echoed, both directions at once: host→guest all taken in %v (%.1f MB/s), guest→host all back in %v (%.1f MB/s)",
			w.Round(time.Millisecond), mbps(size, w), total.Round(time.Millisecond), mbps(size, total))
		// Reconnect: the guest's port stays open, the next client is served.
		for i := 0; i < 3; i++ {
			c.Close()
			c = dialControl(t, sock)
			msg := []byte(fmt.Sprintf("reconnect %d ", i) + strings.Repeat("x", 64<<10))
			if _, total := echoControl(t, c, msg, 30*time.Second); total > 10*time.Second {
				t.Errorf("reconnect %d: %v for 64 KiB", i, total)
			}
		}
		// A host that does not read for a while: the guest's echo
		// fills the socket, QEMU throttles the port and the guest's
		// Write waits on a full transmitq; nothing is dropped.
		func() {
			c.SetDeadline(time.Now().Add(2 * time.Minute))
			defer c.SetDeadline(time.Time{})
			start := time.Now()
			werr := make(chan error, 1)
			go func() {
				_, err := c.Write(data)
				werr <- err
			}()
			time.Sleep(2 * time.Second)
			paused := time.Now()
			got := make([]byte, len(data))
			if _, err := io.ReadFull(c, got); err != nil {
				t.Fatalf("slow host: %v", err)
			}
			if err := <-werr; err != nil {
				t.Fatal(err)
			}
			if sha256.Sum256(got) != sha256.Sum256(data) {
				t.Fatalf("slow host: 2 MiB came back different")
			}
			t.Logf("slow host (no reads for 2s): all back %v after reading resumed, %v in all", time.Since(paused).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		}()
		// A host that leaves mid-transfer, with the guest's echo
		// blocked on a full socket (the port throttled): the next
		// connection is served. Bytes of the old session still in
		// flight may reach it first; a marker after them must come.
		func() {
			c.Close()
			old := dialControl(t, sock)
			// Not read back: the echo fills the socket and the write
			// may never finish; closing ends it.
			go old.Write(data[:1<<20])
			time.Sleep(500 * time.Millisecond)
			old.Close()
			c = dialControl(t, sock)
			marker := []byte("<<marker after an abrupt disconnect>>")
			c.SetDeadline(time.Now().Add(time.Minute))
			defer c.SetDeadline(time.Time{})
			start := time.Now()
			if _, err := c.Write(marker); err != nil {
				t.Fatal(err)
			}
			var got []byte
			buf := make([]byte, 64<<10)
			for !bytes.Contains(got, marker) {
				n, err := c.Read(buf)
				got = append(got, buf[:n]...)
				if err != nil {
					t.Fatalf("after an abrupt disconnect: %v (%d bytes read)", err, len(got))
				}
			}
			t.Logf("abrupt disconnect: the next connection got %d stale bytes before its own, in %v", bytes.Index(got, marker), time.Since(start).Round(time.Millisecond))
		}()
		// A second 2 MiB after the reconnects.
		_, total = echoControl(t, c, data, 2*time.Minute)
		t.Logf("2 MiB after 3 reconnects: round trip %v (%.2f MB/s)", total.Round(time.Millisecond), mbps(size, total))
		// The network is up all along.
		echoTCP(t, ports.Echo, randomBytes(64<<10))
	})
	t.Run("packed", func(t *testing.T) {
		g, sock, _ := controlGuestWith(t, "ctl-packed", hostvm.ControlChannel{Packed: hostvm.On})
		if !strings.Contains(g.Log, "RING_PACKED") {
			t.Errorf("packed rings not negotiated:\n%s", g.Log)
		}
		c := dialControl(t, sock)
		defer c.Close()
		_, total := echoControl(t, c, randomBytes(size), 2*time.Minute)
		t.Logf("2 MiB echoed over packed rings: round trip %v (%.1f MB/s)", total.Round(time.Millisecond), mbps(size, total))
	})
	t.Run("network blocked", func(t *testing.T) {
		_, sock, ports := controlGuest(t, "ctl-block", "nke.load=ipfw", `nke.ipfw="block"`)
		c := dialControl(t, sock)
		defer c.Close()
		data := randomBytes(size)
		_, total := echoControl(t, c, data, 2*time.Minute)
		t.Logf("2 MiB echoed with all IP traffic blocked: round trip %v (%.2f MB/s)", total.Round(time.Millisecond), mbps(size, total))
		// And the network really is blocked.
		tc, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(ports.Echo), 5*time.Second)
		if err == nil {
			defer tc.Close()
			tc.SetDeadline(time.Now().Add(5 * time.Second))
			tc.Write([]byte("ping"))
			b := make([]byte, 4)
			if n, err := io.ReadFull(tc, b); err == nil || bytes.Equal(b[:n], []byte("ping")) {
				t.Errorf("TCP echo answered through a firewall blocking everything (%q, %v)", b[:n], err)
			} else if !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Logf("TCP echo through the firewall: %v", err)
			}
		}
		// The channel still works afterwards.
		echoControl(t, c, []byte("still there"), 30*time.Second)
	})
}

// qemuDiag logs what QEMU's threads are doing: spinning or blocked, and in
// which system call.
func qemuDiag(t *testing.T, marker string) {
	a := qemuCPU(t, marker)
	time.Sleep(time.Second)
	t.Logf("QEMU used %v of CPU in the last second", qemuCPU(t, marker)-a)
	ds, _ := os.ReadDir("/proc")
	for _, d := range ds {
		cmd, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmd, []byte(marker)) || !bytes.Contains(cmd, []byte("qemu")) {
			continue
		}
		tasks, _ := os.ReadDir(filepath.Join("/proc", d.Name(), "task"))
		for _, tk := range tasks {
			dir := filepath.Join("/proc", d.Name(), "task", tk.Name())
			comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
			st, _ := os.ReadFile(filepath.Join(dir, "stat"))
			wchan, _ := os.ReadFile(filepath.Join(dir, "wchan"))
			sc, _ := os.ReadFile(filepath.Join(dir, "syscall"))
			state := ""
			if i := bytes.LastIndexByte(st, ')'); i > 0 && i+2 < len(st) {
				state = string(st[i+2 : i+3])
			}
			t.Logf("QEMU thread %s %q state %s wchan %s syscall %s", tk.Name(), bytes.TrimSpace(comm), state, wchan, bytes.TrimSpace(sc))
		}
	}
}

// qemuCPU is the CPU time QEMU (the process whose command line holds
// marker) has used.
func qemuCPU(t *testing.T, marker string) time.Duration {
	t.Helper()
	ds, _ := os.ReadDir("/proc")
	for _, d := range ds {
		if _, err := strconv.Atoi(d.Name()); err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmd, []byte(marker)) || !bytes.Contains(cmd, []byte("qemu")) {
			continue
		}
		st, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err != nil {
			continue
		}
		f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+2:]))
		ut, _ := strconv.Atoi(f[11])
		stime, _ := strconv.Atoi(f[12])
		return time.Duration(ut+stime) * 10 * time.Millisecond // USER_HZ 100
	}
	t.Fatalf("no QEMU process with %q in its command line", marker)
	return 0
}

// TestControlChannelIdleCPU compares the host CPU an idle guest costs
// with the control channel's port open and polled (nke.ctl=echo) and
// without it (nke.ctl=off). It reports and does not fail: the figures are
// for docs/performance.md.
func TestControlChannelIdleCPU(t *testing.T) {
	measure := func(name, mode string, args ...string) float64 {
		g, sock, _ := controlGuest(t, name, append([]string{"nke.ctl=" + mode}, args...)...)
		defer g.stop()
		time.Sleep(2 * time.Second)
		a := qemuCPU(t, sock)
		time.Sleep(10 * time.Second)
		b := qemuCPU(t, sock)
		return (b - a).Seconds() / 10
	}
	off := measure("idle-off", "off")
	t.Logf("idle QEMU CPU without the control channel: %.1f%%", 100*off)
	for _, us := range []int{1000, 0} {
		name, arg := "default", []string{}
		if us != 0 {
			name, arg = fmt.Sprintf("%dus", us), []string{"nke.ctl_deep_sleep_us=" + strconv.Itoa(us)}
		}
		on := measure("idle-"+name, "echo", arg...)
		t.Logf("idle QEMU CPU, deep sleep %s: %.1f%% with the control channel polled, %.1f%% without (%+.1f points)", name, 100*on, 100*off, 100*(on-off))
	}
}
