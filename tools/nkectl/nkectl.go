package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/nke-harness/nke/kernel/ctlchan"
)

// Exit codes, the part of nkectl's behaviour scripts rely on.
const (
	exitOK          = 0 // done
	exitFailed      = 1 // the guest refused, or the operation failed
	exitUsage       = 2 // bad flags or arguments, an unreadable bundle or dependency
	exitUnreachable = 3 // no socket, connect or hello failed, connection lost, timeout
	exitBusy        = 4 // EBUSY: dependants or control clients
)

// DefaultTimeout bounds connecting and each request.
const DefaultTimeout = 10 * time.Second

// LoadTimeout bounds a load or replace unless --timeout is given: the
// guest compiles a WebAssembly module before it answers, which under
// QEMU's TCG takes tens of seconds for a Go module of a few MB.
const LoadTimeout = 3 * time.Minute

// exitError carries the exit code of an error that is not the guest's.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(err error) error { return &exitError{exitUsage, err} }
func usagef(format string, args ...any) error {
	return usageErr(fmt.Errorf(format, args...))
}
func unreachable(err error) error { return &exitError{exitUnreachable, err} }

// exitCode is the process status for err.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	var e *exitError
	if errors.As(err, &e) {
		return e.code
	}
	if errors.Is(err, ctlchan.ErrLost) || errors.Is(err, ctlchan.ErrUpstreamLost) || errors.Is(err, context.DeadlineExceeded) {
		return exitUnreachable
	}
	if ctlchan.CodeOf(err) == ctlchan.CodeBusy {
		return exitBusy
	}
	return exitFailed
}

// exit reports err on stderr and returns its exit code. After --json
// the report is a JSON object: {"error": MESSAGE, "code": GUEST CODE,
// "exit": N}.
func exit(err error, stderr io.Writer) int {
	code := exitCode(err)
	var je *jsonError
	switch {
	case err == nil:
	case errors.As(err, &je):
		e := struct {
			Error string       `json:"error"`
			Code  ctlchan.Code `json:"code,omitempty"`
			Exit  int          `json:"exit"`
		}{Error: err.Error(), Exit: code}
		var re *ctlchan.RemoteError
		if errors.As(err, &re) {
			e.Code = re.Code
		}
		json.NewEncoder(stderr).Encode(e)
	default:
		fmt.Fprintf(stderr, "nkectl: %v\n", err)
	}
	return code
}

// jsonError is an error of a run with --json.
type jsonError struct{ err error }

func (e *jsonError) Error() string { return e.err.Error() }
func (e *jsonError) Unwrap() error { return e.err }

// run is nkectl: args without the program name. Ctrl-C (or SIGTERM) ends
// a stream cleanly and cancels a request.
func run(args []string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A second Ctrl-C kills nkectl, should the guest not end a stream.
	context.AfterFunc(ctx, stop)
	return runWith(ctx, args, os.Stdin, stdout, stderr)
}

// runWith is run with its context (ending it is Ctrl-C) and stdin.
func runWith(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	c := &cli{ctx: ctx, stdin: stdin, stdout: stdout, stderr: stderr, timeout: DefaultTimeout}
	err := c.main(args)
	if err != nil && c.json {
		return &jsonError{err}
	}
	return err
}

// cli is one invocation.
type cli struct {
	ctx            context.Context // ends on Ctrl-C
	stdin          io.Reader
	stdout, stderr io.Writer

	// Global flags.
	socket     string
	json       bool
	timeout    time.Duration
	timeoutSet bool // given on the command line: it then bounds streams too

	client *ctlchan.Client
	hello  ctlchan.HelloReply
}

// command is one of nkectl's commands.
type command struct {
	name    string
	args    string // the usage line after the name
	summary string
	help    string // what it does, in more words
	example string // an example session
	// flags defines the command's own flags; nil: none.
	flags func(fs *flag.FlagSet)
	// nargs is the positional arguments' bounds (max -1: any).
	min, max int
	run      func(c *cli, args []string) error
}

var commands []*command // in help order; filled in by init below

func init() {
	commands = []*command{
		loadCmd(), unloadCmd(), replaceCmd(), statCmd(), ctlCmd(),
		eventsCmd(), captureCmd(), pingCmd(), versionCmd(), helpCmd(),
	}
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

const globalUsage = `usage: nkectl [global flags] COMMAND [flags] [args]

Loads, unloads and inspects NKEs in the running guest over its control
channel. The socket is -s PATH, else $NKECTL_SOCKET, else the one running
VM's under the runtime directory (%s).

commands:
%s
global flags (also accepted after the command):
  -s, --socket PATH    the VM's control socket
      --json           machine-readable output (JSON; streams: one object a line)
      --timeout D      bound on connecting and on each request (default %v, load
                       and replace 3m: a wasm module compiles first; 0: none);
                       given explicitly, it bounds streams and loads too

exit codes: 0 ok, 1 the guest refused or the operation failed, 2 usage,
3 the guest cannot be reached (no socket, connect or hello failed,
connection lost, timeout), 4 busy (EBUSY: unload its dependants, close its
control clients, or pass --force).

nkectl COMMAND -h shows a command's flags and an example.
`

func (c *cli) usage(w io.Writer) {
	var b strings.Builder
	for _, cmd := range commands {
		fmt.Fprintf(&b, "  %-9s %s\n", cmd.name, cmd.summary)
	}
	fmt.Fprintf(w, globalUsage, ctlchan.RuntimeDir(), b.String(), DefaultTimeout)
}

// globals defines the global flags on fs, with their current values as
// defaults (so that flags given before the command stay).
func (c *cli) globals(fs *flag.FlagSet) {
	fs.StringVar(&c.socket, "socket", c.socket, "`PATH` of the VM's control socket")
	fs.StringVar(&c.socket, "s", c.socket, "`PATH` of the VM's control socket")
	fs.BoolVar(&c.json, "json", c.json, "machine-readable output (JSON; streams: one object a line)")
	fs.DurationVar(&c.timeout, "timeout", c.timeout, "wait at most `D` (e.g. 5s) to connect and for each request; 0: no bound; given, it bounds streams too")
}

func (c *cli) main(args []string) error {
	fs := flag.NewFlagSet("nkectl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.globals(fs)
	help := fs.Bool("help", false, "")
	fs.BoolVar(help, "h", false, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.usage(c.stdout)
			return nil
		}
		return usagef("%v (nkectl -h shows the usage)", err)
	}
	c.noteTimeout(fs)
	if *help {
		c.usage(c.stdout)
		return nil
	}
	if fs.NArg() == 0 {
		c.usage(c.stderr)
		return usagef("no command given")
	}
	name := fs.Arg(0)
	cmd := lookup(name)
	if cmd == nil {
		return usagef("unknown command %q (nkectl -h lists the commands)", name)
	}
	defer func() {
		if c.client != nil {
			c.client.Close()
		}
	}()
	return cmd.exec(c, fs.Args()[1:])
}

func (c *cli) noteTimeout(fs *flag.FlagSet) {
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "timeout" {
			c.timeoutSet = true
		}
	})
}

// flagSet is cmd's flag set, its own flags and the global ones.
func (cmd *command) flagSet(c *cli) *flag.FlagSet {
	fs := flag.NewFlagSet("nkectl "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	c.globals(fs)
	return fs
}

func (cmd *command) exec(c *cli, args []string) error {
	fs := cmd.flagSet(c)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			cmd.usage(c.stdout, fs)
			return nil
		}
		return usagef("%s: %v (nkectl %s -h shows the usage)", cmd.name, err, cmd.name)
	}
	c.noteTimeout(fs)
	switch {
	case len(pos) < cmd.min:
		return usagef("%s: missing arguments: usage: %s (nkectl %s -h)", cmd.name, cmd.usageLine(), cmd.name)
	case cmd.max >= 0 && len(pos) > cmd.max:
		return usagef("%s: unexpected argument %q: usage: %s (nkectl %s -h)", cmd.name, pos[cmd.max], cmd.usageLine(), cmd.name)
	}
	return cmd.run(c, pos)
}

// parseInterleaved parses flags anywhere among the arguments (nkectl load
// x.nke -L dir) and returns the positional ones; after "--" everything is
// positional.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// short names the one-letter aliases of long flags, for the usage.
var short = map[string]string{"socket": "s", "write": "w", "dry-run": "n"}

func (cmd *command) usage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: %s\n\n%s\n", cmd.usageLine(), strings.TrimSpace(cmd.help))
	var own, global strings.Builder
	aliases := map[string]bool{}
	for _, s := range short {
		aliases[s] = true
	}
	gfs := flag.NewFlagSet("", flag.ContinueOnError)
	(&cli{}).globals(gfs)
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	sort.Strings(names)
	for _, n := range names {
		f := fs.Lookup(n)
		if aliases[n] && fs.Lookup(longOf(n)) != nil {
			continue
		}
		b := &own
		if gfs.Lookup(n) != nil {
			b = &global
		}
		vname, u := flag.UnquoteUsage(f)
		lead := "    "
		if s, ok := short[n]; ok && fs.Lookup(s) != nil {
			lead = "-" + s + ", "
		}
		dash := "--"
		if len(n) == 1 {
			dash = "-"
		}
		left := "  " + lead + dash + n
		if vname != "" {
			left += " " + vname
		}
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "-1" && f.DefValue != "0s" && f.DefValue != "[]" && gfs.Lookup(n) == nil {
			u += " (default " + f.DefValue + ")"
		}
		fmt.Fprintf(b, "%-26s %s\n", left, u)
	}
	if own.Len() > 0 {
		fmt.Fprintf(w, "\nflags:\n%s", own.String())
	}
	fmt.Fprintf(w, "\nglobal flags:\n%s", global.String())
	if cmd.example != "" {
		fmt.Fprintf(w, "\nexample:\n%s\n", indent(strings.Trim(cmd.example, "\n"), "  "))
	}
}

func (cmd *command) usageLine() string {
	return strings.TrimSpace("nkectl " + cmd.name + " " + cmd.args)
}

func longOf(s string) string {
	for l, x := range short {
		if x == s {
			return l
		}
	}
	return ""
}

func indent(s, by string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = by + l
		}
	}
	return strings.Join(lines, "\n")
}

// connect dials the guest once; later calls return the same client.
func (c *cli) connect() (*ctlchan.Client, error) {
	if c.client != nil {
		return c.client, nil
	}
	sock, from := c.socket, "-s"
	if sock == "" {
		from = ""
		if os.Getenv(ctlchan.EnvSocket) != "" {
			from = "$" + ctlchan.EnvSocket
		}
		var err error
		if sock, err = ctlchan.FindSocket(); err != nil {
			if errors.Is(err, ctlchan.ErrNoVM) {
				return nil, unreachable(fmt.Errorf("no running VM found in %s; start one with make run, or pass -s PATH", ctlchan.RuntimeDir()))
			}
			return nil, usageErr(fmt.Errorf("%v", strings.Replace(err.Error(), "--socket PATH", "-s PATH", 1)))
		}
	}
	ctx, cancel := c.requestCtx()
	defer cancel()
	cl, h, err := ctlchan.Dial(ctx, sock)
	if err != nil {
		where := sock
		if from != "" {
			where += " (" + from + ")"
		}
		var re *ctlchan.RemoteError
		switch {
		case errors.As(err, &re):
			return nil, unreachable(fmt.Errorf("%s: the guest refused hello: %s", where, re.Message))
		case errors.Is(err, context.DeadlineExceeded):
			return nil, unreachable(fmt.Errorf("%s: no hello from the guest within %v: is it still booting? (raise --timeout)", where, c.timeout))
		case c.ctx.Err() != nil:
			return nil, unreachable(fmt.Errorf("%s: interrupted while connecting", where))
		}
		return nil, unreachable(fmt.Errorf("cannot connect to %s: %v; is the VM running? start one with make run, or pass -s PATH", where, err))
	}
	c.client, c.hello = cl, h
	return cl, nil
}

// loadCtx bounds a load or replace: by --timeout if given, else
// LoadTimeout.
func (c *cli) loadCtx() (context.Context, context.CancelFunc) {
	if c.timeoutSet {
		return c.requestCtx()
	}
	return context.WithTimeout(c.ctx, LoadTimeout)
}

// requestCtx bounds one request by --timeout.
func (c *cli) requestCtx() (context.Context, context.CancelFunc) {
	if c.timeout <= 0 {
		return context.WithCancel(c.ctx)
	}
	return context.WithTimeout(c.ctx, c.timeout)
}

// streamCtx bounds a stream: by --timeout only if it was given.
func (c *cli) streamCtx() (context.Context, context.CancelFunc) {
	if c.timeoutSet && c.timeout > 0 {
		return context.WithTimeout(c.ctx, c.timeout)
	}
	return context.WithCancel(c.ctx)
}

// requestErr explains a request's failure: a timeout or Ctrl-C rather
// than "context deadline exceeded".
func (c *cli) requestErr(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case c.ctx.Err() != nil && errors.Is(err, context.Canceled):
		return fmt.Errorf("%s: interrupted; the guest may have done it anyway (nkectl stat shows)", op)
	case errors.Is(err, context.DeadlineExceeded):
		return unreachable(fmt.Errorf("%s: no answer from the guest within %v (raise --timeout)", op, c.timeout))
	case errors.Is(err, ctlchan.ErrLost):
		return unreachable(fmt.Errorf("%s: %w: did the VM stop? (the host multiplexer also drops a client that reads too slowly)", op, err))
	}
	var re *ctlchan.RemoteError
	if errors.As(err, &re) && (re.Code == ctlchan.CodeUnreachable || re.Code == ctlchan.CodeFailed && strings.HasPrefix(re.Message, muxUpstreamFailed)) {
		// Not the guest's answer: the multiplexer could not reach it.
		return unreachable(fmt.Errorf("%s: %s: did the VM stop?", op, re.Message))
	}
	if errors.As(err, &re) {
		// The guest's words under nkectl's name for the operation; the
		// code stays for exitCode.
		return &explained{fmt.Sprintf("%s: %s [%s]", op, re.Message, re.Code), err}
	}
	return fmt.Errorf("%s: %w", op, err)
}

// muxUpstreamFailed starts the message of the error the host multiplexer
// (ctlchan.Mux) answers with when it cannot pass a request on to the
// guest: with ctlchan.CodeUnreachable now, EFAIL from older ones.
const muxUpstreamFailed = "the connection to the guest failed"

// explained is an error with a message of its own.
type explained struct {
	msg string
	err error
}

func (e *explained) Error() string { return e.msg }
func (e *explained) Unwrap() error { return e.err }

// streamEnd is a stream's result: nil after Ctrl-C, a timeout error
// after --timeout ran out.
func (c *cli) streamEnd(op string, ctx context.Context, err error) error {
	if (err == nil || errors.Is(err, context.DeadlineExceeded)) && c.ctx.Err() == nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return unreachable(fmt.Errorf("%s: --timeout %v ran out", op, c.timeout))
	}
	if err != nil && c.ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return nil
	}
	return c.requestErr(op, err)
}

// endGrace is how long a cancelled stream waits for the guest to
// confirm its end before nkectl hangs up.
var endGrace = 2 * time.Second

// stream runs a streaming request (events, capture), which ends when
// ctx does once the guest confirms; a guest that does not within
// endGrace is hung up on.
func (c *cli) stream(ctx context.Context, run func() error) error {
	done := make(chan error, 1)
	go func() { done <- run() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	select {
	case err := <-done:
		return err
	case <-time.After(endGrace):
		c.client.Close()
		<-done
		return unreachable(fmt.Errorf("the stream was cancelled but the guest did not confirm its end within %v: is it hung?", endGrace))
	}
}

// printJSON writes v as indented JSON.
func (c *cli) printJSON(v any) error {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printJSONLine writes v as one line of JSON (streams).
func (c *cli) printJSONLine(v any) error {
	return json.NewEncoder(c.stdout).Encode(v)
}

func helpCmd() *command {
	return &command{
		name: "help", args: "[COMMAND]", summary: "show the usage, or a command's", max: 1,
		help:    "Shows nkectl's usage, or COMMAND's (the same as nkectl COMMAND -h).",
		example: "$ nkectl help unload",
		run: func(c *cli, args []string) error {
			if len(args) == 0 {
				c.usage(c.stdout)
				return nil
			}
			cmd := lookup(args[0])
			if cmd == nil {
				return usagef("help: unknown command %q (nkectl -h lists them)", args[0])
			}
			cmd.usage(c.stdout, cmd.flagSet(c))
			return nil
		},
	}
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
