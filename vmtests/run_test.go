package vmtests

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nke-harness/nke/tools/hostvm"
)

// hostTools are the host commands the tests run, each built once per
// test binary from tools/NAME.
var hostTools struct {
	mu    sync.Mutex
	built map[string]string
}

// hostTool builds tools/name (once) and returns the binary's path.
func hostTool(t testing.TB, name string) string {
	t.Helper()
	hostTools.mu.Lock()
	defer hostTools.mu.Unlock()
	if p, ok := hostTools.built[name]; ok {
		return p
	}
	dir, err := os.MkdirTemp("", name)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if out, err := exec.Command("go", "build", "-buildvcs=false", "-o", p, "../tools/"+name).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", name, err, out)
	}
	if hostTools.built == nil {
		hostTools.built = map[string]string{}
	}
	hostTools.built[name] = p
	return p
}

// nkevm is the host CLI make run runs.
func nkevm(t *testing.T) string { return hostTool(t, "nkevm") }

// runEnv is the environment make run would see, with this test's ports.
func runEnv(http, echo int) []string {
	return append(os.Environ(),
		hostvm.EnvKernel+"="+os.Getenv("VMTEST_KERNEL"),
		fmt.Sprintf("%s=%d", hostvm.EnvHTTPPort, http),
		fmt.Sprintf("%s=%d", hostvm.EnvEchoPort, echo))
}

// TestRunCommand is make run as a user runs it: nkevm run boots the guest
// with its console on stdio and the default port forwards, the status page
// and echo answer, and an interrupt (Ctrl-C) powers the guest off cleanly.
func TestRunCommand(t *testing.T) {
	requireVM(t)
	bin := nkevm(t)
	ports := freePorts(t, 2)
	cmd := exec.Command(bin, "run")
	cmd.Dir = ".." // the repository: nkevm builds out/initramfs.cpio there
	cmd.Env = runEnv(ports[0], ports[1])
	stdin, _ := cmd.StdinPipe()
	defer stdin.Close()
	pr, pw := io.Pipe()
	var out bytes.Buffer
	var mu sync.Mutex
	cmd.Stdout = io.MultiWriter(pw, lockedBuf{&mu, &out})
	cmd.Stderr = io.MultiWriter(pw, lockedBuf{&mu, &out})
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "guest ready") {
				select {
				case ready <- sc.Text():
				default:
				}
			}
		}
	}()
	select {
	case line := <-ready:
		t.Logf("nkevm: %s", line)
	case <-time.After(readyTimeout):
		cmd.Process.Kill()
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("nkevm run never reported the guest ready:\n%s", out.String())
	}
	st := stats(t, ports[0])
	if st.NIC.PCI == "" || len(st.NIC.Features) == 0 {
		t.Errorf("status via make run's forwards: %+v", st.NIC)
	}
	echoTCP(t, ports[1], randomBytes(1<<20))
	echoUDP(t, ports[1], "make run")
	if st := stats(t, ports[0]); st.Counters.RxPackets == 0 || st.Counters.TxPackets == 0 {
		t.Errorf("counters %+v", st.Counters)
	}

	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		pw.Close()
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			t.Fatalf("nkevm run after Ctrl-C: %v\n%s", err, out.String())
		}
		for _, want := range []string{"stopped:", "poweroff (exit code 0)"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("output after Ctrl-C lacks %q:\n%s", want, out.String())
			}
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatal("nkevm run did not stop within 60s of Ctrl-C")
	}
}

type lockedBuf struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (l lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestRunCommandErrors: a busy port, a missing kernel and a missing QEMU
// each stop nkevm run at once with one sentence saying what to do.
func TestRunCommandErrors(t *testing.T) {
	requireVM(t)
	bin := nkevm(t)
	// The busy port, and free ones for the cases that must get past the
	// port check (not neighbours of a free port: those may be taken).
	ports := freePorts(t, 3)
	busy, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", ports[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cases := []struct {
		name  string
		env   []string
		wants []string
	}{
		{"busy port", runEnv(ports[0], ports[1]), []string{fmt.Sprint(ports[0]), hostvm.EnvHTTPPort}},
		{"missing kernel", append(runEnv(ports[1], ports[2]), hostvm.EnvKernel+"=/nonexistent/vmlinuz"), []string{"/nonexistent/vmlinuz", hostvm.EnvKernel}},
		{"missing qemu", append(runEnv(ports[1], ports[2]), hostvm.EnvQEMU+"=/nonexistent/qemu"), []string{"/nonexistent/qemu", hostvm.EnvQEMU}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, "run")
			cmd.Dir = ".."
			cmd.Env = c.env
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("nkevm run succeeded:\n%s", out)
			}
			last := strings.TrimSpace(string(out))
			if i := strings.LastIndex(last, "\n"); i >= 0 {
				last = last[i+1:]
			}
			for _, w := range c.wants {
				if !strings.Contains(last, w) {
					t.Errorf("error %q does not mention %q", last, w)
				}
			}
		})
	}
}
