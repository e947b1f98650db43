// Command abuse is a test module that calls the host functions with the
// raw arguments its settings give ("FUNC A B C ..."), on the first burst:
// the host must fault it cleanly for any pointer or length outside its
// memory, and answer in-range calls.
package main

import (
	"strconv"
	"strings"

	"github.com/nke-harness/nke/nke/wasm/sdk"
)

var (
	fn   string
	args [5]int32
)

func init() {
	sdk.Register(sdk.NKE{
		Init: func(s string) (int, error) {
			f := strings.Fields(s)
			if len(f) == 0 {
				return 0, nil
			}
			fn = f[0]
			for i, a := range f[1:] {
				v, err := strconv.ParseInt(a, 0, 64)
				if err != nil {
					return 0, err
				}
				args[i] = int32(v)
			}
			return 0, nil
		},
		Filter: func(_ sdk.Hook, _ []sdk.Packet, verdicts []sdk.Verdict) {
			a := args
			var r int32
			switch fn {
			case "log":
				rawLog(a[0], a[1], a[2])
			case "counter_add":
				rawCounterAdd(a[0], int64(a[1]))
			case "tag_id":
				r = rawTagID(a[0], a[1])
			case "tag_put":
				r = rawTagPut(a[0], a[1], a[2], a[3], a[4])
			case "tag_get":
				r = rawTagGet(a[0], a[1], a[2], a[3], a[4])
			case "inject":
				r = rawInject(a[0], a[1], a[2])
			case "ctl_send":
				r = rawCtlSend(a[0], a[1], a[2])
			case "verdict":
				verdicts[0] = sdk.Verdict(a[0])
			}
			// Report the result as the counter 0 (plus 1000, so 0 is
			// "not called").
			sdk.CounterAdd(0, uint64(int64(r)+1000))
		},
	})
}

func main() {}
