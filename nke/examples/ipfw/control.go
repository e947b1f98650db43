package ipfw

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/nke-harness/nke/nke"
)

// ControlName is the firewall's kernel-control endpoint: what
// `nkectl ctl com.nke-harness.ipfw add 'drop tcp dport 23'` talks to.
const ControlName = "com.nke-harness.ipfw"

// ErrCommand is what every command error wraps.
var ErrCommand = errors.New("ipfw: bad command")

// commandHelp lists the commands, the reply to "help".
const commandHelp = `commands:
  add RULE        append a rule (the rule grammar, or short forms: drop/allow for block/pass, a bare tcp/udp/icmp/icmp6, dport P, sport P)
  del N           delete rule N (as list numbers them)
  list            the rules with their hits, numbered, then the default
  flush           delete every rule (the default stays)
  default pass|block
  help`

// Command runs one control command on the firewall and returns the
// reply: "ok ..." or the rules for list. An error wraps ErrCommand (or
// is a *ParseError for a rule that does not parse) and says what to type.
func (fw *Firewall) Command(line string) (string, error) {
	verb, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
	rest = strings.TrimSpace(rest)
	switch verb {
	case "add":
		if rest == "" {
			return "", fmt.Errorf("%w: add needs a rule, like: add block in proto tcp to port 23", ErrCommand)
		}
		text, err := expandShort(rest)
		if err != nil {
			return "", err
		}
		parsed, err := Parse(text)
		if err != nil {
			return "", err
		}
		if len(parsed.List) != 1 || parsed.Default != Pass {
			return "", fmt.Errorf("%w: add takes one rule (use default to set the default)", ErrCommand)
		}
		var n int
		err = fw.Edit(func(r Rules) (Rules, error) {
			r.List = append(r.List, parsed.List[0])
			n = len(r.List)
			return r, nil
		})
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("ok %d: %s", n, parsed.List[0]), nil
	case "del", "delete":
		n, err := strconv.Atoi(rest)
		if err != nil || n < 1 {
			return "", fmt.Errorf("%w: del takes a rule number from list, like: del 2", ErrCommand)
		}
		var gone Rule
		err = fw.Edit(func(r Rules) (Rules, error) {
			if n > len(r.List) {
				return r, fmt.Errorf("%w: no rule %d (there are %d)", ErrCommand, n, len(r.List))
			}
			gone = r.List[n-1]
			r.List = append(r.List[:n-1], r.List[n:]...)
			return r, nil
		})
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("ok deleted %d: %s", n, gone), nil
	case "flush":
		if rest != "" {
			return "", fmt.Errorf("%w: flush takes no argument", ErrCommand)
		}
		var n int
		fw.Edit(func(r Rules) (Rules, error) { n, r.List = len(r.List), nil; return r, nil })
		return fmt.Sprintf("ok flushed %d rules", n), nil
	case "default":
		var a Action
		switch rest {
		case "pass", "allow":
			a = Pass
		case "block", "drop":
			a = Block
		default:
			return "", fmt.Errorf("%w: default pass or default block", ErrCommand)
		}
		fw.Edit(func(r Rules) (Rules, error) { r.Default = a; return r, nil })
		return "ok default " + a.String(), nil
	case "list":
		if rest != "" {
			return "", fmt.Errorf("%w: list takes no argument", ErrCommand)
		}
		var b strings.Builder
		st := fw.Stats()
		for i, s := range st[:len(st)-1] {
			fmt.Fprintf(&b, "%d %d %s\n", i+1, s.Hits, s.Rule)
		}
		d := st[len(st)-1]
		fmt.Fprintf(&b, "- %d %s", d.Hits, d.Rule)
		return b.String(), nil
	case "help":
		return commandHelp, nil
	case "":
		return "", fmt.Errorf("%w: empty command; try help", ErrCommand)
	}
	return "", fmt.Errorf("%w: unknown command %q; try help", ErrCommand, verb)
}

// expandShort turns the short forms into the rule grammar: drop/allow
// first, a protocol name without "proto", and sport P / dport P, which
// become "from port P" / "to port P" at the end of the rule (so they
// cannot be mixed with from and to).
func expandShort(rule string) (string, error) {
	toks := strings.Fields(rule)
	var out []string
	var from, to string
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		switch {
		case i == 0 && t == "drop":
			t = "block"
		case i == 0 && t == "allow":
			t = "pass"
		case t == "tcp" || t == "udp" || t == "icmp" || t == "icmp6":
			if i == 0 || toks[i-1] != "proto" {
				out = append(out, "proto")
			}
		case t == "dport" || t == "sport":
			if i+1 == len(toks) {
				return "", fmt.Errorf("%w: %s needs a port or range, like %s 23", ErrCommand, t, t)
			}
			if t == "sport" {
				from = toks[i+1]
			} else {
				to = toks[i+1]
			}
			i++
			continue
		}
		out = append(out, t)
	}
	for _, kw := range []struct{ name, port string }{{"from", from}, {"to", to}} {
		if kw.port == "" {
			continue
		}
		for _, t := range out {
			if t == kw.name {
				return "", fmt.Errorf("%w: a short port form with %s: write %s ADDR port P", ErrCommand, kw.name, kw.name)
			}
		}
		out = append(out, kw.name, "port", kw.port)
	}
	return strings.Join(out, " "), nil
}

// ServeControl registers the firewall's control endpoint on hook: each
// message is a command (see Command), each gets one reply message, "ok
// ..." or the listing on success, "error: ..." otherwise. A reply that
// does not fit the client's queue fails the Send with nke.ErrNoBufs
// (the command was carried out: read the queue, then list).
func (fw *Firewall) ServeControl(hook nke.ControlHook, name string) (nke.Control, error) {
	// Set once registered; a client can connect (and send) before
	// RegisterControl has returned.
	var ctl atomic.Pointer[nke.Control]
	spec := nke.ControlSpec{
		Name:    name,
		Connect: func(uint32) (any, error) { return nil, nil },
		Send: func(unit uint32, _ any, data []byte) error {
			reply, err := fw.Command(string(data))
			if err != nil {
				reply = "error: " + err.Error()
			}
			c := ctl.Load()
			if c == nil {
				return errors.New("ipfw: control endpoint starting, try again")
			}
			if err := (*c).Enqueue(unit, []byte(reply)); err != nil {
				return fmt.Errorf("ipfw: reply not queued: %w", err)
			}
			return nil
		},
	}
	c, err := hook.RegisterControl(spec)
	if err != nil {
		return nil, err
	}
	ctl.Store(&c)
	return c, nil
}
