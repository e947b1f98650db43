package hostvm

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestControlChannel(t *testing.T) {
	rt := filepath.Join(t.TempDir(), "rt")
	t.Setenv("NKE_RUNTIME_DIR", rt)
	c := ControlChannel{VM: "test-vm"}
	args, err := c.Args()
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(rt, "test-vm", ControlSocketName)
	if got := ControlSocketIn(append([]string{"qemu", "-m", "512"}, args...)); got != sock {
		t.Errorf("ControlSocketIn = %q, want %q", got, sock)
	}
	for _, d := range []string{rt, filepath.Dir(sock)} {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v, %v; want a 0700 directory", d, fi.Mode(), err)
		}
	}
	if ControlSocketIn([]string{"qemu", "-chardev", "socket,id=other,path=/x"}) != "" {
		t.Errorf("ControlSocketIn took another chardev")
	}
	// QEMU creates the socket as its umask says; SecureSocket makes it 0600.
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	os.Chmod(sock, 0o777)
	if err := SecureSocket(sock, time.Second); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(sock); fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v after SecureSocket", fi.Mode())
	}
	if err := SecureSocket(filepath.Join(rt, "missing"), 20*time.Millisecond); err == nil {
		t.Errorf("SecureSocket of a missing socket succeeded")
	}

	if a, err := (ControlChannel{SocketPath: "/tmp/s", Packed: On}).Args(); err != nil || !strings.HasSuffix(a[3], ",packed=on") {
		t.Errorf("Packed: %q, %v", a, err)
	}
	for _, bad := range []ControlChannel{
		{},
		{SocketPath: "/tmp/s", Packed: 9},
		{SocketPath: "/tmp/a,b"},
		{SocketPath: "/" + strings.Repeat("x", 120)},
		{VM: "../escape"},
	} {
		if _, err := bad.Args(); err == nil {
			t.Errorf("%+v: Args succeeded", bad)
		}
	}
	// A runtime directory others can enter is refused.
	os.Chmod(rt, 0o755)
	if _, err := c.Args(); err == nil {
		t.Errorf("Args with a 0755 runtime directory succeeded")
	}
}
