// Command wasmconf is the conformance suite's WebAssembly filter: it
// carries out a conformance.Behaviour given as settings, so the wasm
// backend (wasm_test.go) runs the suite's rules through nke/wasm. The
// host side does what needs Go values (Record, OnCall, Keep, Self): each
// call on a marked packet is reported with ctl_send before the verdict.
//
// Settings: space-separated "v=MARKER:VERDICT,..." (abi verdict codes),
// "panic=MARKER", "tag", "mine", "injected".
package main

import (
	"bytes"
	"strconv"
	"strings"

	"github.com/nke-harness/nke/nke/wasm/sdk"
)

// Report bits, the third byte of a report.
const (
	repMine     = 1 << 0
	repInjected = 1 << 1
	repTagged   = 1 << 2
)

// TagName and TagType are conformance.TagName and TagType.
const (
	tagName        = "com.nke-harness.conformance"
	tagType uint16 = 1
)

var (
	magic    = []byte("nkeconf:")
	verdicts [256]sdk.Verdict
	panicOn  byte
	putTag   bool
	passMine bool
	passInj  bool
	tag      sdk.TagID
)

func init() {
	sdk.Register(sdk.NKE{Init: start, Filter: filter})
}

func start(s string) (int, error) {
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "v":
			for _, pair := range strings.Split(v, ",") {
				m, vd, _ := strings.Cut(pair, ":")
				mi, err := strconv.Atoi(m)
				if err != nil {
					return 0, err
				}
				vi, err := strconv.Atoi(vd)
				if err != nil {
					return 0, err
				}
				verdicts[byte(mi)] = sdk.Verdict(vi)
			}
		case "panic":
			n, err := strconv.Atoi(v)
			if err != nil {
				return 0, err
			}
			panicOn = byte(n)
		case "tag":
			putTag = true
		case "mine":
			passMine = true
		case "injected":
			passInj = true
		}
	}
	var err error
	tag, err = sdk.NewTagID(tagName)
	return 0, err
}

func filter(h sdk.Hook, pkts []sdk.Packet, vs []sdk.Verdict) {
	var rep [4]byte
	var val [1]byte
	for i := range pkts {
		p := &pkts[i]
		k := bytes.Index(p.Data, magic)
		if k < 0 || k+len(magic) >= len(p.Data) || p.Data[k+len(magic)] == 0 {
			continue
		}
		marker := p.Data[k+len(magic)]
		var bits byte
		if p.Mine() {
			bits |= repMine
		}
		if p.Injected() {
			bits |= repInjected
		}
		if h != sdk.Raw {
			if n, err := p.TagGet(tag, tagType, val[:]); err == nil && n == 1 && val[0] == marker {
				bits |= repTagged
			}
		}
		rep = [4]byte{byte(h), marker, bits, byte(i)}
		sdk.CtlSend(0, rep[:])
		if panicOn != 0 && marker == panicOn {
			panic("wasmconf: told to panic")
		}
		if h != sdk.Raw {
			if putTag {
				val[0] = marker
				if err := p.TagPut(tag, tagType, val[:]); err != nil {
					panic(err)
				}
			}
			if p.Mine() && passMine || p.Injected() && passInj {
				continue
			}
		}
		vs[i] = verdicts[marker]
	}
}

func main() {}
