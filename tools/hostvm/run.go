package hostvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// ReadyLine is what the guest init prints once its services listen
	// ("nke: [  3.141] services listening: ..."; see kernel/guest).
	ReadyLine = "services listening"
	// PoweroffLine, written to the guest console, makes the init power
	// the guest off cleanly.
	PoweroffLine = "poweroff\n"
	// DefaultShutdownTimeout bounds the wait for a clean power-off.
	DefaultShutdownTimeout = 15 * time.Second
)

// kernelPanic marks a dead guest: with panic=-1 and -no-reboot QEMU then
// exits with status 0, so the console is the only witness.
const kernelPanic = "Kernel panic - not syncing"

// RunConfig is an interactive VM run.
type RunConfig struct {
	Args   []string  // QEMU command line, from Options.Args
	Stdin  io.Reader // copied to the guest console; nil sends nothing
	Stdout io.Writer // guest console; nil means os.Stdout
	Stderr io.Writer // QEMU's own messages; nil means os.Stderr
	Log    io.Writer // our status lines (boot time, shutdown); nil means Stderr

	ReadyLine       string        // "" means ReadyLine
	ShutdownTimeout time.Duration // 0 means DefaultShutdownTimeout
}

// Result describes a finished run.
type Result struct {
	Ready    bool          // the guest printed the ready line
	BootTime time.Duration // QEMU start to the ready line
}

// Run starts QEMU in its own process group, relays the console, reports
// the boot time (QEMU start to the first console line containing the
// ready line) and returns when QEMU exits.
//
// A SIGINT or SIGTERM to this process, or ctx ending, asks the guest to
// power off by writing PoweroffLine to its console; QEMU is killed if it
// has not exited ShutdownTimeout later, or at a second signal. Being in
// its own process group, QEMU never sees the terminal's Ctrl-C itself.
//
// When Stdin is a terminal or pipe that never reaches EOF, a goroutine
// stays blocked reading it after Run returns; Run is meant for a CLI.
func Run(ctx context.Context, cfg RunConfig) (Result, error) {
	if len(cfg.Args) == 0 {
		return Result{}, errors.New("run: empty QEMU command line")
	}
	if cfg.Stdout == nil {
		cfg.Stdout = os.Stdout
	}
	if cfg.Stderr == nil {
		cfg.Stderr = os.Stderr
	}
	if cfg.Log == nil {
		cfg.Log = cfg.Stderr
	}
	if cfg.ReadyLine == "" {
		cfg.ReadyLine = ReadyLine
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}

	cmd := exec.Command(cfg.Args[0], cfg.Args[1:]...)
	cmd.SysProcAttr = sysProcAttr()
	cmd.Stderr = cfg.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return Result{}, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return Result{}, err
	}
	// Signals first: a Ctrl-C during start-up must not orphan QEMU.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)

	start := time.Now()
	if err := cmd.Start(); err != nil {
		return Result{}, fmt.Errorf("starting QEMU %s: %w", cfg.Args[0], err)
	}
	if sock := ControlSocketIn(cfg.Args); sock != "" {
		go func() {
			if err := SecureSocket(sock, 30*time.Second); err != nil {
				fmt.Fprintf(cfg.Log, "nke: %v\n", err)
			}
		}()
	}
	console := &lockedWriter{w: stdin}
	watch := newConsoleWatcher(cfg.ReadyLine, start, cfg.Log)

	copied := make(chan struct{})
	go func() {
		// Errors here mean QEMU closed its end; Wait reports why.
		_, _ = io.Copy(io.MultiWriter(cfg.Stdout, watch), stdout)
		close(copied)
	}()
	if cfg.Stdin != nil {
		// At EOF the pipe stays open: PoweroffLine still needs it.
		go func() { _, _ = io.Copy(console, cfg.Stdin) }()
	}
	exited := make(chan error, 1)
	go func() {
		<-copied // Wait closes stdout; read it to the end first
		exited <- cmd.Wait()
	}()

	var (
		done     = ctx.Done()
		deadline <-chan time.Time
		ready    <-chan struct{} // set while a power-off waits for the ready line
		stopping bool
		killed   string
		waitErr  error
	)
	poweroff := func() {
		if _, err := io.WriteString(console, PoweroffLine); err != nil {
			fmt.Fprintf(cfg.Log, "nke: cannot write to the guest console (%v); killing QEMU\n", err)
			killed = "console closed"
			killGroup(cmd)
		}
	}
	stop := func(why string) {
		if stopping {
			killed = fmt.Sprintf("%s while waiting for the guest to power off", why)
			fmt.Fprintf(cfg.Log, "nke: %s; killing QEMU\n", killed)
			killGroup(cmd)
			return
		}
		stopping = true
		deadline = time.After(cfg.ShutdownTimeout)
		if !watch.result().Ready {
			// Bytes sent while the guest boots get lost (its UART has no
			// driver yet), so the request waits for the ready line.
			fmt.Fprintf(cfg.Log, "\nnke: %s; the guest powers off once it is up (QEMU is killed in %v, or at a second signal)\n", why, cfg.ShutdownTimeout)
			ready = watch.readyC
			return
		}
		fmt.Fprintf(cfg.Log, "\nnke: %s; asking the guest to power off (QEMU is killed if it is still running in %v)\n", why, cfg.ShutdownTimeout)
		poweroff()
	}
wait:
	for {
		select {
		case waitErr = <-exited:
			break wait
		case s := <-sigs:
			stop("got " + s.String())
		case <-done:
			done = nil
			stop("stop requested (" + context.Cause(ctx).Error() + ")")
		case <-ready:
			ready = nil
			poweroff()
		case <-deadline:
			deadline = nil
			killed = fmt.Sprintf("the guest did not power off within %v", cfg.ShutdownTimeout)
			fmt.Fprintf(cfg.Log, "nke: %s; killing QEMU\n", killed)
			killGroup(cmd)
		}
	}

	res := watch.result()
	switch {
	case killed != "":
		return res, fmt.Errorf("QEMU killed: %s", killed)
	case watch.panicLine() != "":
		return res, fmt.Errorf("the guest kernel panicked (%q); see the console output above", watch.panicLine())
	case waitErr != nil:
		return res, fmt.Errorf("QEMU failed: %w; see its messages above", waitErr)
	case !res.Ready && !stopping:
		return res, fmt.Errorf("QEMU exited before the guest printed %q; see the console output above", cfg.ReadyLine)
	}
	fmt.Fprintf(cfg.Log, "nke: VM stopped after %v\n", time.Since(start).Round(10*time.Millisecond))
	return res, nil
}

// lockedWriter serialises the stdin relay and PoweroffLine.
type lockedWriter struct {
	mu sync.Mutex
	// +checklocks:mu
	w io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// consoleWatcher splits the console stream into lines, timing the ready
// line and remembering a kernel panic.
type consoleWatcher struct {
	ready string
	start time.Time
	log   io.Writer

	readyC chan struct{} // closed at the ready line

	mu     sync.Mutex
	line   []byte
	res    Result
	panick string
}

func newConsoleWatcher(ready string, start time.Time, log io.Writer) *consoleWatcher {
	return &consoleWatcher{ready: ready, start: start, log: log, readyC: make(chan struct{})}
}

func (c *consoleWatcher) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for rest := p; len(rest) > 0; {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			c.line = append(c.line, rest...)
			break
		}
		c.line = append(c.line, rest[:i]...)
		c.check()
		c.line = c.line[:0]
		rest = rest[i+1:]
	}
	return len(p), nil
}

func (c *consoleWatcher) check() {
	line := string(c.line)
	if !c.res.Ready && strings.Contains(line, c.ready) {
		c.res = Result{Ready: true, BootTime: time.Since(c.start)}
		close(c.readyC)
		fmt.Fprintf(c.log, "nke: guest ready %.2fs after QEMU start (console: %q)\n",
			c.res.BootTime.Seconds(), c.ready)
	}
	if c.panick == "" && strings.Contains(line, kernelPanic) {
		c.panick = strings.TrimSpace(line)
	}
}

func (c *consoleWatcher) result() Result {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.res
}

func (c *consoleWatcher) panicLine() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.panick
}
