package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/nke-harness/nke/kernel/ctlchan"
)

// ctlFlags are ctl's flags.
type ctlFlags struct {
	unit  uint
	hex   bool
	count int
	wait  time.Duration
	size  int
}

func ctlCmd() *command {
	var f ctlFlags
	return &command{
		name: "ctl", args: "[flags] NAME [send DATA...|- | recv | setopt OPT VALUE|- | getopt OPT]", summary: "talk to an NKE's kernel-control endpoint", min: 1, max: -1,
		help: `
Connects to the kernel-control endpoint NAME (kern_ctl's connect; --unit
picks the unit, 0 lets the NKE choose) and:

  send DATA...   sends each DATA as one message (- : all of stdin as one),
                 then prints what the NKE sends back until it has been
                 quiet for --wait (or --count messages came)
  recv           prints the next --count messages the NKE sends (default
                 1; 0: until it closes the connection or Ctrl-C)
  setopt OPT V   sets option OPT (a number) to the bytes V (--hex: V is
                 hex; - : stdin)
  getopt OPT     prints option OPT, at most --size bytes
  (nothing)      interactive: each line of stdin is sent as a message,
                 what the NKE sends is printed as it comes, until EOF
                 (then --wait for the last replies) or Ctrl-C

Messages are printed as they are, one a line; --hex prints them in hex,
--json as {"data": base64, "text": ...} lines. Each nkectl run is a
connection of its own: what an NKE answers to a send comes to that send's
run.`,
		example: `
$ nkectl ctl com.nke-harness.ipfw send 'add drop tcp dport 23'
rule 1: drop tcp dport 23
$ nkectl ctl com.nke-harness.ipfw setopt 1 --hex 0a0b
$ nkectl ctl com.nke-harness.ipfw getopt --hex 1
0a0b
$ printf 'add allow udp\nlist\n' | nkectl ctl com.nke-harness.ipfw
rule 2: allow udp
rule 1: drop tcp dport 23
rule 2: allow udp
2 rules`,
		flags: func(fs *flag.FlagSet) {
			f = ctlFlags{}
			fs.UintVar(&f.unit, "unit", 0, "connect to unit `N` (0: the endpoint picks one)")
			fs.BoolVar(&f.hex, "hex", false, "print data (and read setopt's VALUE) in hex")
			fs.IntVar(&f.count, "count", -1, "recv: print `N` messages (default 1; 0: until closed); send: stop after N replies")
			fs.DurationVar(&f.wait, "wait", 250*time.Millisecond, "send and interactive: stop reading replies once the NKE was quiet for `D`")
			fs.IntVar(&f.size, "size", 4096, "getopt: read at most `N` bytes")
		},
		run: func(c *cli, args []string) error { return c.ctl(args[0], args[1:], f) },
	}
}

func (c *cli) ctl(name string, args []string, f ctlFlags) error {
	sub := ""
	if len(args) > 0 {
		sub, args = args[0], args[1:]
	}
	// Check the arguments before connecting.
	var msgs [][]byte
	var opt uint64
	var val []byte
	var err error
	switch sub {
	case "":
	case "send":
		if len(args) == 0 {
			return usagef("ctl %s send: what? usage: nkectl ctl NAME send DATA... (or - for stdin)", name)
		}
		for _, a := range args {
			if a == "-" {
				b, err := io.ReadAll(c.stdin)
				if err != nil {
					return usagef("ctl %s send: stdin: %v", name, err)
				}
				msgs = append(msgs, b)
			} else {
				msgs = append(msgs, []byte(a))
			}
		}
	case "recv":
		if len(args) > 0 {
			return usagef("ctl %s recv: unexpected argument %q (recv takes --count N)", name, args[0])
		}
	case "setopt", "getopt":
		want := 1
		if sub == "setopt" {
			want = 2
		}
		if len(args) != want {
			return usagef("ctl %s %s: usage: nkectl ctl NAME setopt OPT VALUE | getopt OPT", name, sub)
		}
		if opt, err = strconv.ParseUint(args[0], 0, 32); err != nil {
			return usagef("ctl %s %s: option %q: want a number", name, sub, args[0])
		}
		if sub == "setopt" {
			switch {
			case args[1] == "-":
				if val, err = io.ReadAll(c.stdin); err != nil {
					return usagef("ctl %s setopt: stdin: %v", name, err)
				}
			case f.hex:
				if val, err = hex.DecodeString(args[1]); err != nil {
					return usagef("ctl %s setopt: --hex value %q: %v", name, args[1], err)
				}
			default:
				val = []byte(args[1])
			}
		}
		if f.size < 0 || f.size > ctlchan.MaxPayload-64 {
			return usagef("ctl %s getopt: --size wants 0 to %d", name, ctlchan.MaxPayload-64)
		}
	default:
		// A command for the NKE, as one message of its words
		// (nkectl ctl com.nke-harness.ipfw add 'drop tcp dport 23').
		msgs = [][]byte{[]byte(strings.Join(append([]string{sub}, args...), " "))}
		sub = "send"
	}
	if f.unit > 1<<32-1 {
		return usagef("ctl: --unit %d out of range", f.unit)
	}

	cl, err := c.connect()
	if err != nil {
		return err
	}
	ctx, cancel := c.requestCtx()
	sess, err := cl.CtlConnect(ctx, ctlchan.CtlConnectRequest{Name: name, Unit: uint32(f.unit)})
	cancel()
	if err != nil {
		return c.requestErr("ctl "+name, err)
	}
	defer sess.Close()
	op := "ctl " + name + " " + sub
	switch sub {
	case "send":
		for _, m := range msgs {
			ctx, cancel := c.requestCtx()
			err := sess.Send(ctx, m)
			cancel()
			if err != nil {
				return c.requestErr(op, err)
			}
		}
		if f.count == 0 || f.wait <= 0 {
			return nil
		}
		if _, err := c.ctlReplies(c.ctx, sess, f); err != io.EOF {
			return c.requestErr(op, err)
		}
		return nil
	case "recv":
		count := f.count
		if count < 0 {
			count = 1
		}
		sctx, cancel := c.streamCtx()
		defer cancel()
		n := 0
		for count == 0 || n < count {
			b, err := sess.Recv(sctx)
			if errors.Is(err, io.EOF) {
				if count == 0 {
					return nil
				}
				return fmt.Errorf("%s: the NKE closed the connection after %d of %d messages", op, n, count)
			}
			if err != nil {
				return c.streamEnd(op, sctx, err)
			}
			if err := c.printCtl(b, f.hex); err != nil {
				return err
			}
			n++
		}
		return nil
	case "setopt":
		ctx, cancel := c.requestCtx()
		defer cancel()
		if err := sess.SetOpt(ctx, uint32(opt), val); err != nil {
			return c.requestErr(op, err)
		}
		if c.json {
			return c.printJSON(struct {
				Opt   uint64 `json:"opt"`
				Bytes int    `json:"bytes"`
			}{opt, len(val)})
		}
		return nil
	case "getopt":
		ctx, cancel := c.requestCtx()
		defer cancel()
		b, err := sess.GetOpt(ctx, uint32(opt), f.size)
		if err != nil {
			return c.requestErr(op, err)
		}
		if c.json {
			return c.printJSON(struct {
				Opt uint64 `json:"opt"`
				ctlData
			}{opt, dataOf(b)})
		}
		return c.printCtl(b, f.hex)
	}
	return c.ctlInteractive(sess, name, f)
}

// ctlReplies prints what the NKE sends until it is quiet for f.wait or
// f.count messages came.
// It returns io.EOF if the NKE closed the connection.
func (c *cli) ctlReplies(ctx context.Context, sess *ctlchan.CtlSession, f ctlFlags) (int, error) {
	n := 0
	for f.count < 0 || n < f.count {
		qctx, cancel := context.WithTimeout(ctx, f.wait)
		b, err := sess.Recv(qctx)
		cancel()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return n, io.EOF
			}
			if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				return n, nil
			}
			if ctx.Err() != nil {
				return n, nil // Ctrl-C
			}
			return n, err
		}
		if err := c.printCtl(b, f.hex); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

func (c *cli) ctlInteractive(sess *ctlchan.CtlSession, name string, f ctlFlags) error {
	// The sender reports on stderr, until this returns.
	stderr := &gatedWriter{w: c.stderr}
	defer stderr.close()
	fmt.Fprintf(stderr, "nkectl: connected to %s unit %d: each line is sent, end with Ctrl-D\n", sess.Reply.Name, sess.Reply.Unit)
	ctx, cancel := c.streamCtx()
	defer cancel()
	sending, stopSending := context.WithCancel(ctx)
	defer stopSending()
	var failed, sent atomic.Int64
	senderDone := make(chan error, 1)
	go func() {
		defer stopSending()
		sc := bufio.NewScanner(c.stdin)
		sc.Buffer(make([]byte, 64<<10), ctlchan.MaxPayload)
		for sc.Scan() {
			if ctx.Err() != nil {
				break
			}
			line := sc.Bytes()
			if len(line) == 0 {
				continue
			}
			rctx, cancel := c.requestCtx()
			err := sess.Send(rctx, line)
			cancel()
			sent.Add(1)
			if err != nil {
				failed.Add(1)
				fmt.Fprintf(stderr, "nkectl: send %q: %v\n", line, c.requestErr("ctl "+name+" send", err))
				if exitCode(c.requestErr("", err)) == exitUnreachable {
					senderDone <- c.requestErr("ctl "+name+" send", err)
					return
				}
			}
		}
		senderDone <- sc.Err()
	}()
	for {
		b, err := sess.Recv(sending)
		if err == nil {
			if err := c.printCtl(b, f.hex); err != nil {
				return err
			}
			continue
		}
		if errors.Is(err, io.EOF) {
			fmt.Fprintf(stderr, "nkectl: %s closed the connection\n", name)
			return nil
		}
		if ctx.Err() != nil {
			return c.streamEnd("ctl "+name, ctx, nil) // Ctrl-C or --timeout
		}
		if sending.Err() == nil {
			return c.requestErr("ctl "+name, err)
		}
		break // stdin ended: the last replies
	}
	serr := <-senderDone
	if _, err := c.ctlReplies(ctx, sess, ctlFlags{hex: f.hex, count: -1, wait: f.wait}); err == io.EOF {
		fmt.Fprintf(stderr, "nkectl: %s closed the connection\n", name)
	} else if err != nil {
		return c.requestErr("ctl "+name, err)
	}
	if serr != nil {
		return fmt.Errorf("ctl %s: %w", name, serr)
	}
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("ctl %s: %d of %d messages were refused", name, n, sent.Load())
	}
	return nil
}

// ctlData is a message as --json prints it.
type ctlData struct {
	Data []byte `json:"data"`           // base64
	Text string `json:"text,omitempty"` // the same, when it is UTF-8
}

func dataOf(b []byte) ctlData {
	d := ctlData{Data: b}
	if d.Data == nil {
		d.Data = []byte{}
	}
	if utf8.Valid(b) {
		d.Text = string(b)
	}
	return d
}

// printCtl prints one message.
func (c *cli) printCtl(b []byte, hexOut bool) error {
	if c.json {
		return c.printJSONLine(dataOf(b))
	}
	if hexOut {
		_, err := fmt.Fprintln(c.stdout, hex.EncodeToString(b))
		return err
	}
	if len(b) == 0 || b[len(b)-1] != '\n' {
		b = append(b[:len(b):len(b)], '\n')
	}
	_, err := c.stdout.Write(b)
	return err
}

// gatedWriter passes writes on, one at a time, until closed.
type gatedWriter struct {
	mu sync.Mutex
	w  io.Writer
	// +checklocks:mu
	closed bool
}

func (g *gatedWriter) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return len(p), nil
	}
	return g.w.Write(p)
}

func (g *gatedWriter) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}
