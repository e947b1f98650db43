package initproc

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestIsMountPoint(t *testing.T) {
	if ok, err := isMountPoint("/proc"); !ok || err != nil {
		t.Errorf("/proc: %v, %v", ok, err)
	}
	if ok, err := isMountPoint(t.TempDir()); ok || err != nil {
		t.Errorf("temp dir: %v, %v", ok, err)
	}
	if _, err := isMountPoint(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Errorf("missing dir: no error")
	}
}

func TestMountAllSkipsMounted(t *testing.T) {
	// /proc is mounted already: nothing is mounted again, so this needs no
	// privileges and changes nothing.
	if err := MountAll([]Mount{{"proc", "/proc", "proc", 0, ""}}); err != nil {
		t.Fatal(err)
	}
}

func TestReserveHugepagesFile(t *testing.T) {
	old := nrHugepages
	nrHugepages = filepath.Join(t.TempDir(), "nr_hugepages")
	t.Cleanup(func() { nrHugepages = old })
	if err := os.WriteFile(nrHugepages, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := ReserveHugepages(32); got != 32 || err != nil {
		t.Errorf("ReserveHugepages(32) = %d, %v", got, err)
	}
	if _, err := ReserveHugepages(-1); err == nil {
		t.Errorf("negative count accepted")
	}
}

// A kernel that grants fewer pages at first (memory still being freed
// early in boot) is asked again after compaction; one that never grants
// them is an error naming the numbers.
func TestReserveHugepagesRetries(t *testing.T) {
	old, oldCompact := setHugepages, compactMemory
	t.Cleanup(func() { setHugepages, compactMemory = old, oldCompact })
	compactMemory = filepath.Join(t.TempDir(), "compact_memory")
	calls := 0
	setHugepages = func(n int) (int, error) {
		calls++
		if calls < 3 {
			return 1, nil
		}
		return n, nil
	}
	if got, err := ReserveHugepages(16); got != 16 || err != nil || calls != 3 {
		t.Fatalf("ReserveHugepages(16) = %d, %v after %d calls; want 16 on the third", got, err, calls)
	}
	if b, err := os.ReadFile(compactMemory); err != nil || string(b) != "1" {
		t.Errorf("compaction not asked for: %q, %v", b, err)
	}
	setHugepages = func(n int) (int, error) { return 1, nil }
	if got, err := ReserveHugepages(16); got != 1 || err == nil || !strings.Contains(err.Error(), "granted 1") {
		t.Fatalf("a kernel that never grants: %d, %v", got, err)
	}
}

func TestSetHostnameValidates(t *testing.T) {
	for _, bad := range []string{"", "has space", "semi;colon", strings.Repeat("a", 65), "nul\x00"} {
		if err := SetHostname(bad); err == nil || !strings.Contains(err.Error(), "want 1-64") {
			t.Errorf("SetHostname(%q): %v", bad, err)
		}
	}
}

func TestUptimeAndClock(t *testing.T) {
	up, err := Uptime()
	if err != nil {
		t.Fatal(err)
	}
	if d := sinceBoot() - up; d < 0 || d > 5*time.Second {
		t.Errorf("CLOCK_BOOTTIME %v vs /proc/uptime %v", sinceBoot(), up)
	}
}

func TestReaper(t *testing.T) {
	p, err := os.StartProcess("/bin/true", []string{"true"}, &os.ProcAttr{})
	if err != nil {
		t.Skip(err)
	}
	stop := StartReaper()
	defer stop()
	deadline := time.Now().Add(5 * time.Second)
	for {
		// Once reaped, the pid is gone from /proc (a zombie stays).
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", p.Pid)); os.IsNotExist(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("child %d not reaped", p.Pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPoweroffOutsidePID1 runs Poweroff in a child test process: not being
// PID 1, it must exit with the code instead of touching the machine.
func TestPoweroffOutsidePID1(t *testing.T) {
	if os.Getenv("INITPROC_POWEROFF_CHILD") == "1" {
		Poweroff(7)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestPoweroffOutsidePID1$")
	cmd.Env = append(os.Environ(), "INITPROC_POWEROFF_CHILD=1")
	out, err := cmd.Output()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 7 {
		t.Fatalf("child: %v, output %q", err, out)
	}
	for _, s := range []string{"poweroff (exit code 7)", "not PID 1: exiting instead of poweroff"} {
		if !strings.Contains(string(out), s) {
			t.Errorf("output %q lacks %q", out, s)
		}
	}
}

// openPTY returns both ends of a new pseudo-terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no ptys: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		t.Skipf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		t.Skipf("ptsname: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Skipf("open pts: %v", err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// TestServeConsoleTTY checks that on a terminal ^D (EOF) and ^C neither end
// the reader nor make it spin.
func TestServeConsoleTTY(t *testing.T) {
	builtins(t)
	m, s := openPTY(t)
	lines := make(chan string, 4)
	go ServeConsole(s, func(l string) { lines <- l })
	// Canonical mode: ^D alone is EOF; ISIG eats ^C (no foreground group
	// to signal) and flushes the typed line.
	for _, in := range []string{"\x04", "abc\x03", "hello\n"} {
		if _, err := m.Write([]byte(in)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * eofPause)
	}
	var before, after unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &before)
	select {
	case l := <-lines:
		if l != "hello" {
			t.Errorf("line %q, want hello", l)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no line after ^D")
	}
	// Idle on a terminal: no busy loop.
	m.Write([]byte("\x04"))
	time.Sleep(500 * time.Millisecond)
	unix.Getrusage(unix.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano()+after.Stime.Nano()-before.Utime.Nano()-before.Stime.Nano()) * time.Nanosecond
	if cpu > 250*time.Millisecond {
		t.Errorf("used %v CPU in 500ms idle after EOF", cpu)
	}
}
