// Command trap is a wasm NKE that traps: it passes the number of packets
// its settings say (0 by default), then panics on the next, which on
// wasip1 ends the module (a trap for the host). It shows, and tests, that
// the host detaches a faulting module while traffic goes on.
package main

import (
	"strconv"
	"strings"

	"github.com/nke-harness/nke/nke/wasm/sdk"
)

var left int

func init() {
	sdk.Register(sdk.NKE{
		Init: func(s string) (int, error) {
			s = strings.TrimSpace(s)
			if s == "" {
				return 64, nil
			}
			n, err := strconv.Atoi(s)
			left = n
			return 64, err
		},
		Filter: func(_ sdk.Hook, pkts []sdk.Packet, _ []sdk.Verdict) {
			if left -= len(pkts); left < 0 {
				panic("trap: told to trap")
			}
		},
	})
}

func main() {}
