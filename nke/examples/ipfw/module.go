package ipfw

import (
	"errors"
	"strings"

	"github.com/nke-harness/nke/nke"
)

// Name is the firewall's filter name.
const Name = "com.example.ipfw"

// Module attaches the firewall to IPv4 and IPv6 with the rules in its
// args (the nke.ipfw setting: rules separated by ';'), takes rule
// commands on the kernel-control endpoint ControlName (see Command), and
// logs each rule with its hit count when stopped. Its stop fails, leaving
// it loaded, while control clients are connected.
var Module = nke.Module{
	Name: "ipfw",
	ID:   Name,
	Doc:  "an IP firewall: rules on direction, protocol, address and port",
	Start: func(k nke.Kernel, args string) (func() error, error) {
		rules, err := Parse(args)
		if err != nil {
			return nil, err
		}
		ip := k.IP()
		if ip == nil {
			return nil, errors.New("ipfw: the guest has no IP layer to filter")
		}
		fw := New(rules)
		var ctl nke.Control
		if hook := k.Control(); hook != nil {
			if ctl, err = fw.ServeControl(hook, ControlName); err != nil {
				return nil, err
			}
		} else {
			k.Logf("no kernel control in this guest: rules only from the args")
		}
		var d nke.Detacher
		// The burst form: a rule change takes effect between bursts.
		for _, s := range fw.BurstSpecs(Name) {
			a, err := ip.AttachIPFilter(s)
			if err != nil {
				d.DetachAll()
				if ctl != nil {
					ctl.Deregister()
				}
				return nil, err
			}
			d.Add(a)
		}
		k.Logf("rules: %s", strings.ReplaceAll(strings.TrimSpace(rules.String()), "\n", "; "))
		return func() error {
			if ctl != nil {
				if err := ctl.Deregister(); err != nil {
					return err
				}
			}
			d.DetachAll()
			for _, s := range fw.Stats() {
				k.Logf("%d hits: %s", s.Hits, s.Rule)
			}
			return nil
		}, nil
	},
}
