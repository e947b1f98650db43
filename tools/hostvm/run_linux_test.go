package hostvm

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as a fake QEMU: with fakeQEMUEnv set it plays
// a guest console on stdio instead of running tests.
const fakeQEMUEnv = "HOSTVM_FAKE_QEMU"

func TestMain(m *testing.M) {
	if mode := os.Getenv(fakeQEMUEnv); mode != "" {
		fakeQEMU(mode)
		return
	}
	os.Exit(m.Run())
}

func fakeQEMU(mode string) {
	fmt.Printf("[    0.000000] Linux version 6.1.0 (fake)\r\n")
	fmt.Printf("pgid=%d\r\n", syscall.Getpgrp())
	switch mode {
	case "panic":
		fmt.Printf("[    1.000000] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\r\n")
		os.Exit(0)
	case "fail":
		fmt.Fprintln(os.Stderr, "qemu-system-x86_64: -netdev user: could not set up host forwarding rule")
		os.Exit(1)
	}
	if mode == "slow" {
		time.Sleep(300 * time.Millisecond)
	}
	fmt.Printf("%s on :80 and :7\r\n", ReadyLine)
	if mode == "stubborn" {
		blockForever()
	}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() == strings.TrimSpace(PoweroffLine) {
			fmt.Printf("[    9.000000] reboot: Power down\r\n")
			os.Exit(0)
		}
		fmt.Printf("guest got %q\r\n", sc.Text())
	}
	blockForever() // like QEMU, ignore EOF on stdin
}

// blockForever parks the fake until it is killed. Not select {}: in a
// binary without cgo (CGO_ENABLED=0, the default where no C compiler is
// installed) the runtime sees no goroutine that could ever run again and
// exits with "all goroutines are asleep - deadlock!" (status 2). A
// pending timer keeps that check from firing.
func blockForever() {
	for {
		time.Sleep(time.Hour)
	}
}

// syncBuffer is a bytes.Buffer safe to read while Run writes to it.
type syncBuffer struct {
	mu sync.Mutex
	// +checklocks:mu
	b bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitFor(t *testing.T, b *syncBuffer, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(b.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %q; output so far:\n%s", s, b.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fakeRun is Run of a fake QEMU in the background.
type fakeRun struct {
	out, log *syncBuffer
	done     chan struct{}
	res      Result
	err      error
}

func startFake(t *testing.T, ctx context.Context, mode string, stdin *strings.Reader, timeout time.Duration) *fakeRun {
	t.Helper()
	t.Setenv(fakeQEMUEnv, mode)
	r := &fakeRun{out: &syncBuffer{}, log: &syncBuffer{}, done: make(chan struct{})}
	cfg := RunConfig{
		Args:            []string{os.Args[0]},
		Stdout:          r.out,
		Stderr:          r.log,
		ShutdownTimeout: timeout,
	}
	if stdin != nil {
		cfg.Stdin = stdin
	}
	go func() {
		r.res, r.err = Run(ctx, cfg)
		close(r.done)
	}()
	return r
}

func TestRunStopsCleanlyOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r := startFake(t, ctx, "ok", strings.NewReader("hello\n"), 5*time.Second)
	waitFor(t, r.out, `guest got "hello"`)
	cancel()
	<-r.done
	if r.err != nil {
		t.Fatalf("Run() = %v; log:\n%s", r.err, r.log)
	}
	if !r.res.Ready || r.res.BootTime <= 0 {
		t.Errorf("Run() result = %+v, want Ready with a boot time", r.res)
	}
	if !strings.Contains(r.out.String(), "reboot: Power down") {
		t.Errorf("guest never got the poweroff line; console:\n%s", r.out)
	}
	if !strings.Contains(r.log.String(), "guest ready") {
		t.Errorf("no boot time reported; log:\n%s", r.log)
	}
	// QEMU must not share our process group, or the terminal's Ctrl-C
	// would kill it before the guest can power off.
	var pgid int
	_, line, _ := strings.Cut(r.out.String(), "pgid=")
	if _, err := fmt.Sscanf(line, "%d", &pgid); err != nil {
		t.Fatalf("fake QEMU did not report its process group (%v); console:\n%s", err, r.out)
	}
	if pgid == syscall.Getpgrp() {
		t.Errorf("QEMU ran in our process group %d", pgid)
	}
}

// A stop during boot waits for the ready line: bytes written to a
// guest that is still booting get lost.
func TestRunStopBeforeReadyWaitsForGuest(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r := startFake(t, ctx, "slow", nil, 5*time.Second)
	waitFor(t, r.out, "pgid=")
	cancel()
	<-r.done
	if r.err != nil {
		t.Fatalf("Run() = %v; log:\n%s", r.err, r.log)
	}
	if !strings.Contains(r.log.String(), "powers off once it is up") {
		t.Errorf("log does not explain the wait:\n%s", r.log)
	}
	if !strings.Contains(r.out.String(), "reboot: Power down") {
		t.Errorf("the guest never got the poweroff line; console:\n%s", r.out)
	}
}

func TestRunStopsOnSIGINT(t *testing.T) {
	r := startFake(t, context.Background(), "ok", nil, 5*time.Second)
	waitFor(t, r.out, ReadyLine)
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	<-r.done
	if r.err != nil {
		t.Fatalf("Run() after SIGINT = %v; log:\n%s", r.err, r.log)
	}
	if !strings.Contains(r.log.String(), "got interrupt") {
		t.Errorf("log does not mention the signal:\n%s", r.log)
	}
}

func TestRunKillsAfterTimeout(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r := startFake(t, ctx, "stubborn", nil, 200*time.Millisecond)
	waitFor(t, r.out, ReadyLine)
	cancel()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run() did not kill a guest that ignored poweroff")
	}
	if r.err == nil || !strings.Contains(r.err.Error(), "did not power off within 200ms") {
		t.Fatalf("Run() = %v, want a did-not-power-off error", r.err)
	}
}

func TestRunReportsGuestFailures(t *testing.T) {
	for _, tc := range []struct{ mode, wantErr string }{
		{"panic", "guest kernel panicked"},
		{"fail", "QEMU failed: exit status 1"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			r := startFake(t, context.Background(), tc.mode, nil, time.Second)
			<-r.done
			if r.err == nil || !strings.Contains(r.err.Error(), tc.wantErr) {
				t.Fatalf("Run() = %v, want an error containing %q; log:\n%s", r.err, tc.wantErr, r.log)
			}
			if r.res.Ready {
				t.Errorf("Run() result = %+v, want not ready", r.res)
			}
		})
	}
}

func TestConsoleWatcherSplitLines(t *testing.T) {
	log := &syncBuffer{}
	w := newConsoleWatcher(ReadyLine, time.Now(), log)
	for _, chunk := range []string{"boot\r\nnke: serv", "ices listen", "ing on :80\r", "\nKernel panic - not ", "syncing: x\r\n"} {
		w.Write([]byte(chunk))
	}
	if !w.result().Ready {
		t.Error("ready line split across writes was missed")
	}
	if got := w.panicLine(); got != "Kernel panic - not syncing: x" {
		t.Errorf("panicLine() = %q", got)
	}
}
