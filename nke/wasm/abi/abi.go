// Package abi holds the numbers of the WebAssembly NKE ABI, version 1
// (docs/wasm-abi.md): the exports a module provides, the host functions
// it imports from module "nke_v1", the layout of a packet descriptor, the
// hook and verdict codes and the result codes of host functions. The host
// (nke/wasm) and the SDK (nke/wasm/sdk) both use it, so they cannot
// disagree about a number.
package abi

// Version is the ABI version; nke_abi returns it.
const Version = 1

// HostModule is the import module of the host functions.
const HostModule = "nke_v1"

// Exports of a module.
const (
	ExportABI    = "nke_abi"    // () -> i32: Version
	ExportBuffer = "nke_buffer" // (size i32) -> i32: address of a buffer of size bytes the module keeps
	ExportInit   = "nke_init"   // (settings_len i32) -> i32: snap length >= 0, or < 0 to refuse
	ExportFilter = "nke_filter" // (hook i32, n i32) -> i32: 0, or nonzero (a fault)
	ExportCtl    = "nke_ctl"    // (conn i32, kind i32, len i32) -> i32 (optional)
	ExportStop   = "nke_stop"   // () -> i32 (optional)
)

// Host functions (module HostModule).
const (
	FuncLog        = "log"         // (level, ptr, len)
	FuncCounterAdd = "counter_add" // (idx i32, delta i64)
	FuncTagID      = "tag_id"      // (name_ptr, name_len) -> i32 id > 0 or error
	FuncTagPut     = "tag_put"     // (pkt, id, typ, val_ptr, val_len) -> i32
	FuncTagGet     = "tag_get"     // (pkt, id, typ, buf_ptr, buf_len) -> i32 length or error
	FuncInject     = "inject"      // (where, ptr, len) -> i32
	FuncCtlSend    = "ctl_send"    // (conn, ptr, len) -> i32
)

// Hooks: nke_filter's first argument.
const (
	HookRaw    = 1 // raw ring hook: whole frames, verdicts pass/drop/transmit
	HookIfIn   = 2 // interface filter input: data at the network header
	HookIfOut  = 3 // interface filter output: whole frames
	HookIP4In  = 4 // IPv4 filter input
	HookIP4Out = 5 // IPv4 filter output
	HookIP6In  = 6 // IPv6 filter input
	HookIP6Out = 7 // IPv6 filter output
	NumHooks   = 8
)

// Verdicts a module writes into a descriptor. At the raw hook Swallow
// means transmit (XDP_TX).
const (
	VerdictContinue = 0
	VerdictDrop     = 1
	VerdictSwallow  = 2
)

// Descriptor layout: the buffer starts with MaxBurst descriptors of
// DescSize bytes, little-endian; packet bytes follow at DataOffset.
const (
	MaxBurst   = 64
	DescSize   = 24
	DataOffset = MaxBurst * DescSize

	DescOff     = 0  // u32: offset of the packet's bytes in the buffer
	DescCapLen  = 4  // u32: bytes copied in
	DescPktLen  = 8  // u32: the packet's whole length
	DescAux     = 12 // u16: IP input: transport offset; interface: EtherType
	DescProto   = 14 // u8: IP input: transport protocol
	DescFlags   = 15 // u8: Flag* bits, from the host
	DescVerdict = 16 // u8: the module's verdict
	DescVFlags  = 17 // u8: VFlag* bits, from the module
)

// Descriptor flags (host to module).
const (
	FlagInjected  = 1 << 0 // the packet carries injection provenance
	FlagMine      = 1 << 1 // injected by this filter's attachment
	FlagTruncated = 1 << 2 // CapLen < PktLen
)

// Verdict flags (module to host).
const (
	// VFlagModified: copy the (captured) bytes back into the packet.
	VFlagModified = 1 << 0
)

// Injection targets: inject's first argument.
const (
	InjectInput  = 1
	InjectOutput = 2
)

// Control message kinds: nke_ctl's second argument.
const (
	CtlConnect    = 1
	CtlDisconnect = 2
	CtlSend       = 3
)

// Log levels.
const (
	LogInfo  = 0
	LogError = 1
)

// MaxCounters is the number of module counters (counter_add's index).
const MaxCounters = 64

// Result codes of host functions (negative i32).
const (
	OK          = 0
	ErrNoPacket = -1 // pkt is not a packet of the current burst (or no burst)
	ErrNoTag    = -2 // tag_get: no such tag
	ErrTagName  = -3 // tag_id: the name is refused
	ErrTagValue = -4 // tag_put: the value does not fit (TagSize)
	ErrNoRoom   = -5 // inject: the queue or the pool is full
	ErrNotHere  = -6 // inject: this hook cannot inject there; ctl_send: no control channel
	ErrTooBig   = -7 // inject: larger than a packet of the pool
	ErrRefused  = -8 // the host refused (ctl_send to a closed connection)
)
