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
	requireVM(t)
	// A short private runtime directory: unix socket paths are short.
	rt, err := os.MkdirTemp("", "nkert")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(rt) })
	os.Chmod(rt, 0o700)
	t.Setenv(ctlchan.EnvRuntimeDir, rt)
	cc := hostvm.ControlChannel{VM: name}
	ctlArgs, err := cc.Args()
	if err != nil {
		t.Fatal(err)
	}
	sock, _ := cc.Socket()
	nicArgs, ports := userNIC(t, hostvm.NIC{})
	g := startGuest(t, name, append(nicArgs, ctlArgs...), append([]string{"nke.ctl=echo"}, appendArgs...)...)
	if !strings.Contains(g.Log, "control channel:") {
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

func dialControl(t *testing.T, sock string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return c
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
		t.Logf("2 MiB echoed: host→guest written in %v, round trip %v (%.2f MB/s each way, both directions at once)",
			w.Round(time.Millisecond), total.Round(time.Millisecond), mbps(size, total))
		// Reconnect: the guest's port stays open, the next client is served.
		for i := 0; i < 3; i++ {
			c.Close()
			c = dialControl(t, sock)
			msg := []byte(fmt.Sprintf("reconnect %d ", i) + strings.Repeat("x", 64<<10))
			if _, total := echoControl(t, c, msg, 30*time.Second); total > 10*time.Second {
				t.Errorf("reconnect %d: %v for 64 KiB", i, total)
			}
		}
		// A second 2 MiB after the reconnects.
		_, total = echoControl(t, c, data, 2*time.Minute)
		t.Logf("2 MiB after 3 reconnects: round trip %v (%.2f MB/s)", total.Round(time.Millisecond), mbps(size, total))
		// The network is up all along.
		echoTCP(t, ports.Echo, randomBytes(64<<10))
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
