// Command wasmfw is the WebAssembly twin of the native IP firewall
// (nke/examples/ipfw): the same rule syntax and semantics, the same
// parser and matcher (ipfw.Parse, Firewall.DecideInput/DecideOutput),
// run on the host's copy of each packet. Build it with
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o wasmfw.wasm ./nke/wasm/examples/wasmfw
//
// Settings are ipfw's rules (';' or newlines between them). It sees the
// first Snap bytes of each packet: an IPv6 extension-header chain longer
// than that is judged as a packet cut short there (the native twin reads
// on). Kernel control (kind abi.CtlSend): the native twin's commands
// (add RULE, del N, list, flush, default pass|block, help; nkectl ctl
// com.example.wasmfw add 'drop tcp dport 23'), and "rules TEXT", which
// replaces the rules, and "stats", each rule's hit count. Counters: 0
// packets passed, 1 packets dropped.
package main

import (
	"fmt"
	"strings"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/examples/ipfw"
	"github.com/nke-harness/nke/nke/wasm/abi"
	"github.com/nke-harness/nke/nke/wasm/sdk"
)

// Snap is how much of each packet the firewall asks for.
const Snap = 512

var fw *ipfw.Firewall

func init() {
	sdk.Register(sdk.NKE{Init: start, Filter: filter, Control: control})
}

func start(settings string) (int, error) {
	rules, err := ipfw.Parse(settings)
	if err != nil {
		return 0, err
	}
	fw = ipfw.New(rules)
	sdk.Logf("rules: %s", strings.ReplaceAll(strings.TrimSpace(rules.String()), "\n", "; "))
	return Snap, nil
}

func filter(h sdk.Hook, pkts []sdk.Packet, verdicts []sdk.Verdict) {
	var pass, drop uint64
	for i := range pkts {
		p := &pkts[i]
		var v nke.Verdict
		if h.In() {
			v = fw.DecideInput(p.Data, h.V6(), int(p.Aux), p.Proto)
		} else {
			v = fw.DecideOutput(p.Data, h.V6())
		}
		if v == nke.Drop {
			verdicts[i] = sdk.Drop
			drop++
		} else {
			pass++
		}
	}
	sdk.CounterAdd(0, pass)
	sdk.CounterAdd(1, drop)
}

func control(conn uint32, kind int, data []byte) error {
	if kind != abi.CtlSend {
		return nil
	}
	cmd, arg, _ := strings.Cut(string(data), " ")
	switch cmd {
	case "rules":
		rules, err := ipfw.Parse(arg)
		if err != nil {
			return sdk.CtlSend(conn, []byte("error: "+err.Error()))
		}
		fw.Replace(rules)
		return sdk.CtlSend(conn, []byte("ok"))
	case "stats":
		var b strings.Builder
		for _, s := range fw.Stats() {
			fmt.Fprintf(&b, "%d hits: %s\n", s.Hits, s.Rule)
		}
		return sdk.CtlSend(conn, []byte(b.String()))
	}
	// The native twin's commands (add, del, list, flush, default, help),
	// by the same code.
	reply, err := fw.Command(string(data))
	if err != nil {
		return sdk.CtlSend(conn, []byte("error: "+err.Error()))
	}
	return sdk.CtlSend(conn, []byte(reply))
}

func main() {}
