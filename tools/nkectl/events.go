package main

import (
	"errors"
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/nke-harness/nke/kernel/ctlchan"
)

// errEnough ends a stream once --count items came.
var errEnough = errors.New("enough")

func eventsCmd() *command {
	var count int
	var kinds multiFlag
	return &command{
		name: "events", args: "[--count N] [--kind K]...", summary: "follow the kernel-event stream", max: 0,
		help: `
Prints the guest's kernel events as they happen, one a line: the time
(UTC), the kind, the NKE, the message and the event's fields; --json
prints one JSON object a line. --kind keeps only events of that kind
(repeatable); --count ends after N events (of those kinds). Ctrl-C ends
it cleanly (exit 0).`,
		example: `
$ nkectl events --count 2
2026-12-02T09:00:00.000Z  nke-loaded    com.example.fw  loaded com.example.fw 2.1
2026-12-02T09:00:01.250Z  fault         com.example.fw  panic in filter  hook="vtnet0 filters"`,
		flags: func(fs *flag.FlagSet) {
			kinds = nil
			fs.IntVar(&count, "count", 0, "end after `N` events (0: until Ctrl-C)")
			fs.Var(&kinds, "kind", "only events of kind `K` (repeatable)")
		},
		run: func(c *cli, args []string) error { return c.events(count, kinds) },
	}
}

func (c *cli) events(count int, kinds []string) error {
	if count < 0 {
		return usagef("events: --count wants 0 or more")
	}
	cl, err := c.connect()
	if err != nil {
		return err
	}
	ctx, cancel := c.streamCtx()
	defer cancel()
	err = c.stream(ctx, func() error { return cl.Events(ctx, c.eventPrinter(count, kinds)) })
	if errors.Is(err, errEnough) {
		return nil
	}
	return c.streamEnd("events", ctx, err)
}

// eventPrinter prints the events of kinds, and ends the stream after
// count of them.
func (c *cli) eventPrinter(count int, kinds []string) func(ctlchan.Event) error {
	n := 0
	return func(e ctlchan.Event) error {
		if len(kinds) > 0 && !slices.Contains(kinds, e.Kind) {
			return nil
		}
		var err error
		if c.json {
			err = c.printJSONLine(e)
		} else {
			_, err = fmt.Fprintln(c.stdout, formatEvent(e))
		}
		if err != nil {
			return err
		}
		if n++; count > 0 && n >= count {
			return errEnough
		}
		return nil
	}
}

// formatEvent is an event's line: time, kind, NKE, message, fields.
func formatEvent(e ctlchan.Event) string {
	var b strings.Builder
	b.WriteString(e.Time.UTC().Format("2006-01-02T15:04:05.000Z07:00"))
	fmt.Fprintf(&b, "  %-12s  %s  %s", e.Kind, dash(e.NKE), e.Message)
	if len(e.Fields) > 0 {
		b.WriteString(" ")
		for _, k := range sortedKeys(e.Fields) {
			b.WriteString(" " + k + "=" + quoteField(e.Fields[k]))
		}
	}
	return b.String()
}

// quoteField quotes a field's value when it would not read back as one
// word.
func quoteField(v string) string {
	if v == "" || strings.ContainsAny(v, " \t\n\"=") || !strconv.CanBackquote(v) {
		return strconv.Quote(v)
	}
	return v
}
