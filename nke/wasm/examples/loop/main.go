// Command loop is a wasm NKE that runs away: it passes the number of
// packets its settings say (0 by default), then loops forever on the
// next. The host's watchdog stops it (Config.Budget).
package main

import (
	"strconv"
	"strings"

	"github.com/nke-harness/nke/nke/wasm/sdk"
)

var (
	left int
	sink uint64
)

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
			if left -= len(pkts); left >= 0 {
				return
			}
			for i := uint64(0); ; i++ {
				sink += i // a loop the compiler keeps
			}
		},
	})
}

func main() {}
