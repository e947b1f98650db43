// Package builtin lists the NKEs built into the guest image, which the
// guest starts when the kernel command line names them (nke.load=...),
// until the loader can load bundles at run time.
package builtin

import (
	"fmt"
	"sort"
	"strings"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/examples/contentfilter"
	"github.com/nke-harness/nke/nke/examples/etherecho"
	"github.com/nke-harness/nke/nke/examples/ethlog"
	"github.com/nke-harness/nke/nke/examples/ipfw"
	"github.com/nke-harness/nke/nke/examples/tcplog"
)

// Modules are the built-in NKEs.
var Modules = []nke.Module{ethlog.Module, etherecho.Module, ipfw.Module, tcplog.Module, contentfilter.Module}

// Lookup finds a module by its short name or bundle id.
func Lookup(name string) (nke.Module, error) {
	for _, m := range Modules {
		if m.Name == name || m.ID == name {
			return m, nil
		}
	}
	var names []string
	for _, m := range Modules {
		names = append(names, m.Name)
	}
	sort.Strings(names)
	return nke.Module{}, fmt.Errorf("no built-in NKE %q (there are: %s)", name, strings.Join(names, ", "))
}

// ParseList parses nke.load's value: names separated by commas, in the
// order they start. A name given twice is an error.
func ParseList(v string) ([]nke.Module, error) {
	var out []nke.Module
	seen := map[string]bool{}
	for _, name := range strings.Split(v, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		m, err := Lookup(name)
		if err != nil {
			return nil, err
		}
		if seen[m.ID] {
			return nil, fmt.Errorf("%s named twice", m.Name)
		}
		seen[m.ID] = true
		out = append(out, m)
	}
	return out, nil
}
