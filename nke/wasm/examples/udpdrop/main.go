// Command udpdrop is the smallest useful WebAssembly NKE, the one
// docs/walkthrough.md builds: it drops UDP datagrams to the port its
// settings name and counts what it drops (counter 0). Build it with
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o udpdrop.wasm ./nke/wasm/examples/udpdrop
package main

import (
	"encoding/binary"
	"strconv"
	"strings"

	"github.com/nke-harness/nke/nke/wasm/sdk"
)

var port uint16

func init() {
	sdk.Register(sdk.NKE{
		Init: func(settings string) (int, error) {
			n, err := strconv.ParseUint(strings.TrimSpace(settings), 10, 16)
			port = uint16(n)
			sdk.Logf("dropping UDP to port %d", port)
			return 64, err // the first 64 bytes of each packet are enough
		},
		Filter: func(h sdk.Hook, pkts []sdk.Packet, verdicts []sdk.Verdict) {
			if !h.IP() || !h.In() {
				return // bound to IP output too: nothing to do there
			}
			for i, p := range pkts {
				// IP input: Data starts at the IP header, Aux is where
				// the transport header starts.
				if p.Proto != 17 || len(p.Data) < int(p.Aux)+4 {
					continue
				}
				if binary.BigEndian.Uint16(p.Data[p.Aux+2:]) == port {
					verdicts[i] = sdk.Drop
					sdk.CounterAdd(0, 1)
				}
			}
		},
	})
}

func main() {}
