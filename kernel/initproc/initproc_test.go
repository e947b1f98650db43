package initproc

import (
	"bytes"
	"errors"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func captureLog(t *testing.T) *bytes.Buffer {
	t.Helper()
	var b bytes.Buffer
	logMu.Lock()
	old := logOut
	logOut = &b
	logMu.Unlock()
	t.Cleanup(func() {
		logMu.Lock()
		logOut = old
		logMu.Unlock()
	})
	return &b
}

func TestLogLine(t *testing.T) {
	b := captureLog(t)
	logLine(1234*time.Millisecond, "NIC found at 0000:00:03.0")
	logLine(61*time.Second+5*time.Millisecond, "two\nlines\n")
	logLine(1234567*time.Millisecond, "late")
	want := "nke: [  1.234] NIC found at 0000:00:03.0\n" +
		"nke: [ 61.005] two\n" +
		"nke: [ 61.005] lines\n" +
		"nke: [1234.567] late\n"
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("log (-want +got):\n%s", diff)
	}
	b.Reset()
	Logf("x=%d", 7)
	if !regexp.MustCompile(`^nke: \[ *\d+\.\d{3}\] x=7\n$`).MatchString(b.String()) {
		t.Errorf("Logf wrote %q", b.String())
	}
}

func TestParseCmdline(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want map[string]string
	}{
		{"console=ttyS0 panic=-1 quiet\n", map[string]string{"console": "ttyS0", "panic": "-1", "quiet": ""}},
		{`nke.hugepages=64 msg="hello world" "a=b c" x=1 x=2`, map[string]string{"nke.hugepages": "64", "msg": "hello world", "a": "b c", "x": "2"}},
		{"quiet -- nke.hugepages=64 arg", map[string]string{"quiet": ""}},
		{"  \t ", map[string]string{}},
		{`k=`, map[string]string{"k": ""}},
		{`k="unterminated value`, map[string]string{"k": "unterminated value"}},
	} {
		if diff := cmp.Diff(tc.want, ParseCmdline(tc.in)); diff != "" {
			t.Errorf("ParseCmdline(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
}

func TestParseUptime(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"3.52 6.10\n", 3520 * time.Millisecond, true},
		{"0.00 0.00", 0, true},
		{"12345.67 1.00", 12345670 * time.Millisecond, true},
		{"3.52", 0, false},
		{"-1.0 2.0", 0, false},
		{"abc 2.0", 0, false},
		{"NaN 2.0", 0, false},
		{"", 0, false},
	} {
		got, err := parseUptime(tc.in)
		if (err == nil) != tc.ok || got.Round(time.Millisecond) != tc.want {
			t.Errorf("parseUptime(%q) = %v, %v; want %v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

// builtins replaces the power actions with recorders.
func builtins(t *testing.T) *[]string {
	var calls []string
	op, or := poweroffFunc, rebootFunc
	poweroffFunc = func(code int) { calls = append(calls, "poweroff") }
	rebootFunc = func() { calls = append(calls, "reboot") }
	t.Cleanup(func() { poweroffFunc, rebootFunc = op, or })
	return &calls
}

func TestServeConsole(t *testing.T) {
	calls := builtins(t)
	long := strings.Repeat("x", maxLine+100)
	in := "status\n" +
		"  show caps  \r\n" + // CRLF, padded
		"abc\x03def\r" + // ^C drops "abc"
		"ab\x7fc\x08\x08xy\n" + // DEL and backspace
		"\x1b[Aup\n" + // an arrow key's ESC is dropped
		"\n\r\n" + // empty lines
		"halt\npoweroff\n reboot \n" +
		long + "\n" +
		"last line without newline"
	var got []string
	done := make(chan error, 1)
	go func() { done <- ServeConsole(strings.NewReader(in), func(l string) { got = append(got, l) }) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeConsole did not return at EOF")
	}
	want := []string{"status", "show caps", "def", "xy", "[Aup", long[:maxLine], "last line without newline"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"poweroff", "poweroff", "reboot"}, *calls); diff != "" {
		t.Errorf("built-ins (-want +got):\n%s", diff)
	}
}

func TestServeConsoleNilHandler(t *testing.T) {
	builtins(t)
	b := captureLog(t)
	if err := ServeConsole(strings.NewReader("frobnicate\n"), nil); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), `unknown command "frobnicate"`) {
		t.Errorf("log %q", b.String())
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, io.ErrClosedPipe }

func TestServeConsoleReadError(t *testing.T) {
	if err := ServeConsole(errReader{}, nil); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("err = %v", err)
	}
}

func TestShutdownHooksRunNewestFirstOnce(t *testing.T) {
	var got []int
	AtShutdown(func() { got = append(got, 1) })
	AtShutdown(func() { got = append(got, 2) })
	runShutdownHooks()
	runShutdownHooks()
	if len(got) != 2 || got[0] != 2 || got[1] != 1 {
		t.Fatalf("hooks ran as %v, want [2 1]", got)
	}
}
