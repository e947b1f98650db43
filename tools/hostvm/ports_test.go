package hostvm

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCheckPortFreeBusy(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port

	err = CheckPortFree(TCP, port, EnvHTTPPort)
	var busy *PortBusyError
	if !errors.As(err, &busy) {
		t.Fatalf("CheckPortFree(tcp, %d) = %v, want a *PortBusyError", port, err)
	}
	if diff := cmp.Diff(PortBusyError{Proto: TCP, Port: port, Env: EnvHTTPPort}, *busy,
		cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".Err" }, cmp.Ignore())); diff != "" {
		t.Errorf("PortBusyError mismatch (-want +got):\n%s", diff)
	}
	for _, want := range []string{"tcp port " + strconv.Itoa(port), "already in use", "set NKE_HTTP_PORT"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestCheckPortFreeUDPBusy(t *testing.T) {
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	port := c.LocalAddr().(*net.UDPAddr).Port
	var busy *PortBusyError
	if err := CheckPortFree(UDP, port, EnvEchoPort); !errors.As(err, &busy) || busy.Env != EnvEchoPort {
		t.Fatalf("CheckPortFree(udp, %d) = %v, want a *PortBusyError naming %s", port, err, EnvEchoPort)
	}
}

func TestCheckPortFreeFree(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	if err := CheckPortFree(TCP, port, EnvHTTPPort); err != nil {
		t.Fatalf("CheckPortFree(tcp, %d) on a just-released port = %v", port, err)
	}
	if err := CheckPortFree(TCP, 70000, EnvHTTPPort); err == nil || !strings.Contains(err.Error(), "out of range") {
		t.Fatalf("CheckPortFree(tcp, 70000) = %v, want out of range", err)
	}
}

func TestPortFromEnv(t *testing.T) {
	for _, tc := range []struct {
		val     string
		want    int
		wantErr bool
	}{
		{"", 8080, false},
		{"9090", 9090, false},
		{"http", 0, true},
		{"0", 0, true},
		{"65536", 0, true},
	} {
		t.Run(tc.val, func(t *testing.T) {
			t.Setenv(EnvHTTPPort, tc.val)
			got, err := PortFromEnv(EnvHTTPPort, 8080)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("PortFromEnv(%s=%q) = %d, %v; want %d, error %v", EnvHTTPPort, tc.val, got, err, tc.want, tc.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), EnvHTTPPort) {
				t.Errorf("error %q does not name %s", err, EnvHTTPPort)
			}
		})
	}
}
