// Package initproc does the chores of a Go program running as PID 1 in a
// tiny Linux guest: mount the pseudo filesystems, reserve hugepages, set
// the hostname, reap orphaned children, read settings from the kernel
// command line, log to the console with an uptime stamp, read commands
// from the console, and power off cleanly.
//
// The guest boots module-free: everything here works with the kernel's
// built-in drivers, and nothing loads a module (LoadedModules lets a
// caller check that). A typical init:
//
//	if err := initproc.Setup(initproc.Config{Hostname: "nke", Hugepages: 64}); err != nil {
//		initproc.Logf("setup: %v", err)
//		initproc.Poweroff(1)
//	}
//	go initproc.ServeConsole(os.Stdin, handle)
package initproc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrNotSupported reports a chore that needs Linux.
var ErrNotSupported = errors.New("initproc: needs Linux")

// Config says what Setup does beyond mounting.
type Config struct {
	Hostname  string // set if non-empty
	Hugepages int    // 2 MiB pages to reserve; 0 leaves the pool alone
}

var (
	logMu  sync.Mutex
	logOut io.Writer = os.Stdout // the console, for PID 1; guarded by logMu (checklocks does not check globals)
)

// Logf writes a console line prefixed with "nke: " and the time since
// boot, like "nke: [  1.234] NIC found at 0000:00:03.0". Each line of a
// multi-line message gets the prefix, so host-side parsers can match on it.
func Logf(format string, args ...any) {
	logLine(sinceBoot(), fmt.Sprintf(format, args...))
}

func logLine(up time.Duration, msg string) {
	ms := up.Milliseconds()
	prefix := fmt.Sprintf("nke: [%3d.%03d] ", ms/1000, ms%1000)
	var b bytes.Buffer
	for _, l := range strings.Split(strings.TrimRight(msg, "\n"), "\n") {
		b.WriteString(prefix)
		b.WriteString(l)
		b.WriteByte('\n')
	}
	logMu.Lock()
	defer logMu.Unlock()
	logOut.Write(b.Bytes()) // nowhere to report a console write error
}

// parseUptime decodes /proc/uptime: "seconds-up seconds-idle".
func parseUptime(s string) (time.Duration, error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return 0, fmt.Errorf("initproc: /proc/uptime %q: want two fields", s)
	}
	sec, err := strconv.ParseFloat(f[0], 64)
	if err != nil || !(sec >= 0 && sec <= 1e10) { // also rejects NaN
		return 0, fmt.Errorf("initproc: /proc/uptime %q: bad uptime", s)
	}
	return time.Duration(sec * float64(time.Second)), nil
}

// ParseCmdline splits a kernel command line into parameters the way the
// kernel does (quotes may wrap a value or a whole parameter): "key=value"
// maps key to value, a bare word maps to "". Words after "--" are init's
// arguments, not parameters, and are left out. Later duplicates win.
func ParseCmdline(s string) map[string]string {
	params := map[string]string{}
	for _, w := range splitQuoted(s) {
		if w == "--" {
			break
		}
		k, v, _ := strings.Cut(w, "=")
		params[k] = v
	}
	return params
}

// splitQuoted splits on spaces outside double quotes and drops the quotes.
func splitQuoted(s string) []string {
	var words []string
	var cur strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			quoted = !quoted
			inWord = true
		case !quoted && (c == ' ' || c == '\t' || c == '\n'):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// Setting looks key up in the environment (where the kernel puts plain
// key=value parameters it does not know) and then on the kernel command
// line (which also keeps dotted ones such as "nke.hugepages=64").
func Setting(key string) (string, bool) {
	if v, ok := os.LookupEnv(key); ok {
		return v, true
	}
	params, err := Cmdline()
	if err != nil {
		return "", false
	}
	v, ok := params[key]
	return v, ok
}

var (
	hookMu sync.Mutex
	// +checklocks:hookMu
	hooks []func()
)

// AtShutdown registers f to run before Poweroff or Reboot stops the
// machine, newest first (like defer): services close their sockets and
// drivers reset their devices while the console still works.
func AtShutdown(f func()) {
	hookMu.Lock()
	defer hookMu.Unlock()
	hooks = append(hooks, f)
}

// runShutdownHooks runs and forgets the registered hooks, once.
func runShutdownHooks() {
	hookMu.Lock()
	hs := hooks
	hooks = nil
	hookMu.Unlock()
	for i := len(hs) - 1; i >= 0; i-- {
		hs[i]()
	}
}

// maxLine bounds a console command; longer input is cut.
const maxLine = 4096

// eofPause is how long ServeConsole waits after an end-of-file on a
// terminal (^D, or a hang-up that keeps returning EOF) before reading
// again, so that it never spins.
const eofPause = 100 * time.Millisecond

// Built-in command actions; tests replace them.
var (
	poweroffFunc = Poweroff
	rebootFunc   = Reboot
)

// ServeConsole reads command lines from r (the console) and calls handle
// with each non-empty one, trimmed. "poweroff" and "halt" power the VM off
// (a halted VM would just sit there) and "reboot" reboots; handle never
// sees them. Lines end at CR or LF, so raw serial input works too. A ^C
// byte (0x03) discards the line typed so far, and backspace/DEL erase one
// byte; other control bytes are dropped.
//
// At end of input ServeConsole returns nil, unless r is a terminal: there
// EOF only means ^D or a hang-up, so it pauses and reads on. It returns a
// read error as is. It runs until then; start it on its own goroutine.
func ServeConsole(r io.Reader, handle func(line string)) error {
	br := bufio.NewReader(r)
	tty := isTerminal(r)
	line := make([]byte, 0, 128)
	for {
		c, err := br.ReadByte()
		if err == io.EOF && tty {
			line = line[:0]
			time.Sleep(eofPause)
			continue
		}
		if err == io.EOF {
			dispatch(string(line), handle)
			return nil
		}
		if err != nil {
			return fmt.Errorf("initproc: read console: %w", err)
		}
		switch {
		case c == '\n' || c == '\r':
			dispatch(string(line), handle)
			line = line[:0]
		case c == 0x03: // ^C
			line = line[:0]
		case c == 0x7f || c == 0x08: // DEL, backspace
			if len(line) > 0 {
				line = line[:len(line)-1]
			}
		case c < 0x20:
		default:
			if len(line) < maxLine {
				line = append(line, c)
			}
		}
	}
}

func dispatch(line string, handle func(string)) {
	line = strings.TrimSpace(line)
	switch line {
	case "":
	case "poweroff", "halt":
		poweroffFunc(0)
	case "reboot":
		rebootFunc()
	default:
		if handle != nil {
			handle(line)
		} else {
			Logf("unknown command %q (built in: poweroff, halt, reboot)", line)
		}
	}
}
