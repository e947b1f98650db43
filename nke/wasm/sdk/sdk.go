// Package sdk is how a WebAssembly NKE is written in Go: register an NKE
// value in an init function, build with the standard toolchain,
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o fw.wasm ./fw
//
// and load the module with nke/wasm. The package implements the module's
// side of ABI 1 (docs/wasm-abi.md): its exports (//go:wasmexport, in the
// wasip1-only file) and the host functions it imports. Elsewhere the
// package builds too, with host functions that fail (ErrNoHost), so code
// using it can be vetted and unit-tested natively.
//
// The data path allocates nothing: a burst's packets are views of the
// buffer the host copied them into, handed to NKE.Filter with a verdict
// slice to fill.
package sdk

import (
	"errors"
	"fmt"

	"github.com/nke-harness/nke/nke/wasm/abi"
)

// Hook is the hook a burst comes from.
type Hook uint8

// Hooks (abi.Hook*).
const (
	Raw    Hook = abi.HookRaw
	IfIn   Hook = abi.HookIfIn
	IfOut  Hook = abi.HookIfOut
	IP4In  Hook = abi.HookIP4In
	IP4Out Hook = abi.HookIP4Out
	IP6In  Hook = abi.HookIP6In
	IP6Out Hook = abi.HookIP6Out
)

// In reports whether the hook sees received packets.
func (h Hook) In() bool { return h == Raw || h == IfIn || h == IP4In || h == IP6In }

// IP reports whether it is an IP filter hook, and V6 whether IPv6.
func (h Hook) IP() bool { return h >= IP4In && h <= IP6Out }
func (h Hook) V6() bool { return h == IP6In || h == IP6Out }

// Verdict is what the module decides about a packet.
type Verdict uint8

// Verdicts. At the raw hook Swallow transmits the frame back out.
const (
	Continue Verdict = abi.VerdictContinue
	Drop     Verdict = abi.VerdictDrop
	Swallow  Verdict = abi.VerdictSwallow
)

// Packet is one packet of a burst: a view of the host's copy, valid until
// Filter returns.
type Packet struct {
	// Data is the copy: the whole packet, or its first snap bytes.
	Data []byte
	// Len is the packet's whole length.
	Len int
	// Aux is the transport header's offset (IP input) or the EtherType
	// (interface and raw hooks).
	Aux uint16
	// Proto is the transport protocol (IP input).
	Proto uint8
	Flags uint8
	idx   uint32
	desc  []byte
}

// Injected reports whether the packet carries injection provenance, Mine
// whether this filter injected it, Truncated whether Data is shorter than
// the packet.
func (p *Packet) Injected() bool  { return p.Flags&abi.FlagInjected != 0 }
func (p *Packet) Mine() bool      { return p.Flags&abi.FlagMine != 0 }
func (p *Packet) Truncated() bool { return p.Flags&abi.FlagTruncated != 0 }

// Modified asks the host to copy Data back into the packet.
func (p *Packet) Modified() {
	if p.desc != nil {
		p.desc[abi.DescVFlags] |= abi.VFlagModified
	}
}

// TagID names a packet tag (mbuf.TagID).
type TagID int32

// Errors of host calls.
var (
	ErrNoHost   = errors.New("sdk: not running in an NKE host")
	ErrNoPacket = errors.New("sdk: no such packet in this burst")
	ErrNoTag    = errors.New("sdk: no such tag")
	ErrTagName  = errors.New("sdk: tag name refused")
	ErrTagValue = errors.New("sdk: tag value refused (1..32 bytes, or the packet's tags are full)")
	ErrNoRoom   = errors.New("sdk: no room (injection queue or pool full)")
	ErrNotHere  = errors.New("sdk: not possible at this hook")
	ErrTooBig   = errors.New("sdk: packet too big")
	ErrRefused  = errors.New("sdk: refused by the host")
)

func codeErr(rc int32) error {
	switch rc {
	case abi.OK:
		return nil
	case abi.ErrNoPacket:
		return ErrNoPacket
	case abi.ErrNoTag:
		return ErrNoTag
	case abi.ErrTagName:
		return ErrTagName
	case abi.ErrTagValue:
		return ErrTagValue
	case abi.ErrNoRoom:
		return ErrNoRoom
	case abi.ErrNotHere:
		return ErrNotHere
	case abi.ErrTooBig:
		return ErrTooBig
	case abi.ErrRefused:
		return ErrRefused
	}
	return fmt.Errorf("sdk: host error %d", rc)
}

// NKE is a module's code.
type NKE struct {
	// Init gets the settings (the bundle's, or the loader's args) and
	// returns the number of bytes of each packet it wants to see (0:
	// whole packets), or an error to refuse to start (logged).
	Init func(settings string) (snap int, err error)
	// Filter decides a burst: verdicts[i] for pkts[i] (Continue when
	// left alone).
	Filter func(h Hook, pkts []Packet, verdicts []Verdict)
	// Control, if set, gets kernel-control messages (abi.Ctl* kinds).
	Control func(conn uint32, kind int, data []byte) error
	// Stop, if set, runs when the NKE is unloaded.
	Stop func() error
}

var nke NKE

// Register makes n the module's NKE; call it from an init function.
func Register(n NKE) {
	if n.Filter == nil {
		panic("sdk: Register: an NKE needs a Filter")
	}
	nke = n
}

// Logf writes to the guest's log.
func Logf(format string, args ...any) { Log(fmt.Sprintf(format, args...)) }

// Log writes s to the guest's log.
func Log(s string) { hostLog(abi.LogInfo, s) }

// LogError writes s to the guest's log as an error.
func LogError(s string) { hostLog(abi.LogError, s) }

// CounterAdd adds delta to the module's counter idx (0..abi.MaxCounters-1),
// which the host reads (Instance.Counter). Another index faults the
// module.
func CounterAdd(idx int, delta uint64) { hostCounterAdd(int32(idx), delta) }

// NewTagID returns the id of a tag name; call it once (at Init).
func NewTagID(name string) (TagID, error) {
	r := hostTagID(name)
	if r <= 0 {
		if r == 0 {
			return 0, ErrTagName
		}
		return 0, codeErr(r)
	}
	return TagID(r), nil
}

// TagPut puts a tag of 1..32 bytes on the packet.
func (p *Packet) TagPut(id TagID, typ uint16, v []byte) error {
	return codeErr(hostTagPut(p.idx, id, typ, v))
}

// TagGet copies the packet's tag into buf and returns its length.
func (p *Packet) TagGet(id TagID, typ uint16, buf []byte) (int, error) {
	r := hostTagGet(p.idx, id, typ, buf)
	if r < 0 {
		return 0, codeErr(r)
	}
	return int(r), nil
}

// Inject queues a packet the host injects after Filter returns: at an IP
// hook b starts at the IP header and goes to the stack (abi.InjectInput)
// or out (abi.InjectOutput) past this filter; at an interface or raw hook
// b is a whole Ethernet frame for the interface's input or output.
func Inject(where int, b []byte) error { return codeErr(hostInject(int32(where), b)) }

// CtlSend sends data to the kernel-control client conn.
func CtlSend(conn uint32, data []byte) error { return codeErr(hostCtlSend(conn, data)) }

// The module's side of the exports, shared by the wasip1 glue and tests.

var (
	buffer   []byte
	packets  [abi.MaxBurst]Packet
	verdicts [abi.MaxBurst]Verdict
)

// setBuffer allocates the shared buffer of size bytes; it returns false
// for a size it refuses.
func setBuffer(size int32) bool {
	if size < abi.DataOffset || size > 64<<20 {
		return false
	}
	buffer = make([]byte, size)
	return true
}

// doInit runs Init with the settings at the start of the data area.
func doInit(n int32) int32 {
	if buffer == nil || n < 0 || int(n) > len(buffer)-abi.DataOffset {
		return -1
	}
	if nke.Init == nil {
		return 0
	}
	snap, err := nke.Init(string(buffer[abi.DataOffset : abi.DataOffset+int(n)]))
	if err != nil {
		LogError("init: " + err.Error())
		return -1
	}
	return int32(max(snap, 0))
}

// doFilter decodes n descriptors, runs Filter, writes the verdicts. A
// descriptor the host got wrong is refused (nonzero: a fault), never read
// past the buffer.
func doFilter(hook, n int32) int32 {
	if buffer == nil || n < 0 || n > abi.MaxBurst {
		return 1
	}
	for i := int32(0); i < n; i++ {
		d := buffer[i*abi.DescSize : (i+1)*abi.DescSize]
		off := le32(d[abi.DescOff:])
		cl := le32(d[abi.DescCapLen:])
		if uint64(off)+uint64(cl) > uint64(len(buffer)) {
			return 2
		}
		// Field by field: a struct assignment compiles to memory.copy,
		// a call out of the module under wazero.
		p := &packets[i]
		p.Data = buffer[off : off+cl : off+cl]
		p.Len = int(le32(d[abi.DescPktLen:]))
		p.Aux = uint16(d[abi.DescAux]) | uint16(d[abi.DescAux+1])<<8
		p.Proto, p.Flags, p.idx, p.desc = d[abi.DescProto], d[abi.DescFlags], uint32(i), d
		verdicts[i] = Continue
	}
	nke.Filter(Hook(hook), packets[:n], verdicts[:n])
	for i := int32(0); i < n; i++ {
		buffer[i*abi.DescSize+abi.DescVerdict] = byte(verdicts[i])
	}
	return 0
}

func doCtl(conn, kind, n int32) int32 {
	if nke.Control == nil {
		return -1
	}
	if buffer == nil || n < 0 || int(n) > len(buffer)-abi.DataOffset {
		return -1
	}
	if err := nke.Control(uint32(conn), int(kind), buffer[abi.DataOffset:abi.DataOffset+int(n)]); err != nil {
		LogError("control: " + err.Error())
		return -1
	}
	return 0
}

func doStop() int32 {
	if nke.Stop == nil {
		return 0
	}
	if err := nke.Stop(); err != nil {
		LogError("stop: " + err.Error())
		return -1
	}
	return 0
}

func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}
