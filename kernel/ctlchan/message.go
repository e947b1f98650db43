package ctlchan

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Type is a frame's message type. A request and its reply have the same
// type (the reply has FlagReply); TypeError replaces any reply, TypeEnd
// ends a stream.
type Type uint8

const (
	TypeError        Type = 1 // reply: ErrorBody
	TypeHello        Type = 2 // Hello -> HelloReply: versions, first on a connection
	TypePing         Type = 3 // blob echoed back
	TypeCancel       Type = 4 // CancelBody: end a stream or a request of this session
	TypeEnd          Type = 5 // reply: EndBody, a stream's last frame
	TypeSessionClose Type = 6 // no reply: the session's client went away, cancel all it started

	TypeLoad    Type = 16 // LoadRequest + archive blob -> LoadReply
	TypeUnload  Type = 17 // UnloadRequest -> UnloadReply
	TypeReplace Type = 18 // ReplaceRequest + archive blob -> ReplaceReply
	TypeStat    Type = 19 // -> Stat

	TypeCtlConnect    Type = 32 // CtlConnectRequest -> CtlConnectReply, then a stream of TypeCtlData
	TypeCtlSend       Type = 33 // CtlOp + blob -> empty reply
	TypeCtlData       Type = 34 // stream item: blob the NKE enqueued
	TypeCtlSetopt     Type = 35 // CtlOp + blob -> empty reply
	TypeCtlGetopt     Type = 36 // CtlOp -> blob
	TypeCtlDisconnect Type = 37 // CtlOp -> empty reply; the connect stream ends

	TypeEvents      Type = 48 // -> stream of TypeEvent until cancelled
	TypeEvent       Type = 49 // stream item: Event
	TypeCapture     Type = 50 // CaptureRequest -> stream of TypeCaptureData
	TypeCaptureData Type = 51 // stream item: pcapng bytes
)

var typeNames = map[Type]string{
	TypeError: "error", TypeHello: "hello", TypePing: "ping", TypeCancel: "cancel", TypeEnd: "end",
	TypeSessionClose: "session-close", TypeLoad: "load", TypeUnload: "unload", TypeReplace: "replace",
	TypeStat: "stat", TypeCtlConnect: "ctl-connect", TypeCtlSend: "ctl-send", TypeCtlData: "ctl-data",
	TypeCtlSetopt: "ctl-setopt", TypeCtlGetopt: "ctl-getopt", TypeCtlDisconnect: "ctl-disconnect",
	TypeEvents: "events", TypeEvent: "event", TypeCapture: "capture", TypeCaptureData: "capture-data",
}

func (t Type) String() string {
	if s, ok := typeNames[t]; ok {
		return s
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// ErrMalformed is a payload whose message does not decode.
var ErrMalformed = errors.New("ctlchan: malformed message")

// A payload is uvarint(len(body)), body (JSON, may be empty), then blob
// (raw bytes: archives, control data, pcapng).
func appendPayload(dst []byte, body any, blob []byte) ([]byte, error) {
	var js []byte
	if body != nil {
		var err error
		if js, err = json.Marshal(body); err != nil {
			return dst, err
		}
	}
	dst = binary.AppendUvarint(dst, uint64(len(js)))
	dst = append(dst, js...)
	dst = append(dst, blob...)
	if len(dst) > MaxPayload {
		return dst, fmt.Errorf("%w: message of %d bytes, the limit is %d", ErrTooLarge, len(dst), MaxPayload)
	}
	return dst, nil
}

// splitPayload returns a payload's body and blob.
func splitPayload(p []byte) (body, blob []byte, err error) {
	n, k := binary.Uvarint(p)
	if k <= 0 || n > uint64(len(p)-k) {
		return nil, nil, fmt.Errorf("%w: body length prefix out of range", ErrMalformed)
	}
	return p[k : k+int(n)], p[k+int(n):], nil
}

// decodeBody decodes a payload's JSON body into v (an empty body leaves v
// as it is) and returns the blob.
func decodeBody(p []byte, v any) ([]byte, error) {
	body, blob, err := splitPayload(p)
	if err != nil {
		return nil, err
	}
	if len(body) > 0 && v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
	}
	return blob, nil
}

// Hello opens a connection: the versions each side speaks.
type Hello struct {
	Versions []int  `json:"versions"`
	Client   string `json:"client,omitempty"` // "nkectl 1" etc., for logs
}

// HelloReply is the guest's answer to Hello.
type HelloReply struct {
	Version int    `json:"version"` // the one chosen
	Server  string `json:"server"`  // the guest program and its build
}

// ErrorBody is a TypeError reply.
type ErrorBody struct {
	Op      string `json:"op"`      // the request's type
	Code    Code   `json:"code"`    // errno-like, for scripts
	Message string `json:"message"` // for people
}

// CancelBody names the request to cancel.
type CancelBody struct {
	Request uint32 `json:"request"`
}

// EndBody ends a stream: Code is empty for a normal end (cancelled,
// count reached, the NKE closed its side).
type EndBody struct {
	Reason  string `json:"reason,omitempty"`
	Code    Code   `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
}

// LoadRequest loads one bundle; the archive travels as the blob.
type LoadRequest struct {
	Name string `json:"name"` // the bundle's file name, for messages
	// Dependency: shipped ahead of the bundle that needs it; a loaded
	// bundle with its identifier and a compatible version is success
	// (LoadReply.Already), not EEXIST.
	Dependency bool   `json:"dependency,omitempty"`
	Archive    []byte `json:"-"`
}

// LoadReply is a loaded bundle.
type LoadReply struct {
	ID      string `json:"id"`
	Version string `json:"version"`
	Index   int    `json:"index"`
	Already bool   `json:"already,omitempty"`
}

// UnloadRequest unloads a bundle by identifier.
type UnloadRequest struct {
	ID    string `json:"id"`
	Force bool   `json:"force,omitempty"`
}

// UnloadReply reports an unload.
type UnloadReply struct {
	ID     string        `json:"id"`
	Drain  time.Duration `json:"drain_ns"` // waiting for in-flight packets and calls
	Forced bool          `json:"forced,omitempty"`
	// Detached lists what a forced unload tore down (dependants, control
	// clients).
	Detached []string `json:"detached,omitempty"`
}

// ReplaceRequest swaps a loaded bundle for a new version of it.
type ReplaceRequest struct {
	Name     string `json:"name"`
	Handover bool   `json:"handover,omitempty"` // hand the old instance's state to the new one
	Archive  []byte `json:"-"`
}

// ReplaceReply reports a replace.
type ReplaceReply struct {
	ID         string        `json:"id"`
	OldVersion string        `json:"old_version"`
	NewVersion string        `json:"new_version"`
	HandedOver bool          `json:"handed_over,omitempty"`
	Swap       time.Duration `json:"swap_ns"`
}

// Counters are an attachment's counters (kernel/hook's, summed over lanes).
type Counters struct {
	Packets     uint64  `json:"packets"`
	Bytes       uint64  `json:"bytes"`
	Continue    uint64  `json:"continue"`
	Swallow     uint64  `json:"swallow"`
	Drop        uint64  `json:"drop"`
	Faults      uint64  `json:"faults"`
	Refused     uint64  `json:"refused,omitempty"` // verdicts beyond the NKE's capabilities
	NsPerPacket float64 `json:"ns_per_packet"`
}

// NKEStat is one row of the kextstat-like table.
type NKEStat struct {
	Index      int      `json:"index"`
	Refs       int      `json:"refs"` // loaded bundles depending on it, plus control clients
	ID         string   `json:"id"`
	Version    string   `json:"version"`
	Kind       string   `json:"kind"`       // "builtin" or "wasm"
	Layer      string   `json:"layer"`      // interface, raw, protocol, ip, socket
	Attachment string   `json:"attachment"` // "vtnet0 ethertype 0x0800", "ipv4", ...
	Order      string   `json:"order"`      // the resolved order: "2 of 3 (priority 10, after com.x)"
	Depends    []string `json:"depends,omitempty"`
	Counters   Counters `json:"counters"`
}

// Chain is one hook's chain of attachments, in the order packets meet them.
type Chain struct {
	Hook    string   `json:"hook"`
	Filters []string `json:"filters"`
}

// Stat is the stat reply.
type Stat struct {
	NKEs   []NKEStat `json:"nkes"`
	Chains []Chain   `json:"chains"`
}

// Event is one kernel event.
type Event struct {
	Time    time.Time         `json:"time"`
	Kind    string            `json:"kind"` // load, unload, attach, detach, fault, link, hop-limit, ...
	NKE     string            `json:"nke,omitempty"`
	Message string            `json:"message"`
	Fields  map[string]string `json:"fields,omitempty"`
}

// CaptureRequest starts a capture.
type CaptureRequest struct {
	Hook   string `json:"hook"`             // a chain's name, as in Stat.Chains
	Before string `json:"before,omitempty"` // only the point before this NKE
	After  string `json:"after,omitempty"`  // only the point after this NKE
	Count  int    `json:"count,omitempty"`  // packets, then the stream ends; 0: until cancelled
}

// CtlConnectRequest connects to an NKE's kernel-control endpoint.
type CtlConnectRequest struct {
	Name string `json:"name"`
	Unit uint32 `json:"unit,omitempty"` // 0: the endpoint picks one
}

// CtlConnectReply is the connection.
type CtlConnectReply struct {
	Name string `json:"name"`
	Unit uint32 `json:"unit"`
}

// CtlOp addresses a kernel-control connection (the request id of its
// connect) with an option number for setopt and getopt.
type CtlOp struct {
	Conn uint32 `json:"conn"`
	Opt  uint32 `json:"opt,omitempty"`
	Size int    `json:"size,omitempty"` // getopt: the buffer the NKE may fill
}

// Backend is what the guest serves: the loader, kernel control, the
// event bus and the capture ring. Every method may be called from many
// goroutines at once; ctx ends when the request is cancelled or its
// client goes away. Errors should say what to do; their Code (see
// CodeOf) is what scripts see.
type Backend interface {
	Load(ctx context.Context, req LoadRequest) (LoadReply, error)
	Unload(ctx context.Context, req UnloadRequest) (UnloadReply, error)
	Replace(ctx context.Context, req ReplaceRequest) (ReplaceReply, error)
	Stat(ctx context.Context) (Stat, error)
	// CtlConnect connects to a control endpoint; the connection lasts
	// until Close, even after ctx ends.
	CtlConnect(ctx context.Context, req CtlConnectRequest) (CtlConn, CtlConnectReply, error)
	// Events calls send with each event until ctx ends (then it returns
	// nil) or send fails (then it returns that error).
	Events(ctx context.Context, send func(Event) error) error
	// Capture writes pcapng to w (a section header, then packets as
	// they come) until ctx ends or Count packets were written; an error
	// from w ends it too.
	// Each Write goes out as it is, in frames of at most 64 KiB.
	Capture(ctx context.Context, req CaptureRequest, w io.Writer) error
}

// CtlConn is a kernel-control connection, kern_ctl's client socket.
type CtlConn interface {
	// Send hands data to the NKE's send callback; it may block for flow
	// control until ctx ends.
	Send(ctx context.Context, data []byte) error
	// Recv returns the next data the NKE enqueued, io.EOF once the NKE
	// closed the connection.
	Recv(ctx context.Context) ([]byte, error)
	SetOpt(ctx context.Context, opt uint32, val []byte) error
	// GetOpt returns at most size bytes of the option.
	GetOpt(ctx context.Context, opt uint32, size int) ([]byte, error)
	Close() error
}

// AppendMessage appends a payload of a JSON body (nil: none) and a blob.
func AppendMessage(dst []byte, body any, blob []byte) ([]byte, error) {
	return appendPayload(dst, body, blob)
}

// DecodeMessage decodes a payload's body into v and returns its blob.
func DecodeMessage(p []byte, v any) ([]byte, error) { return decodeBody(p, v) }

// DecodeError decodes a TypeError payload.
func DecodeError(p []byte) (ErrorBody, error) {
	var e ErrorBody
	_, err := decodeBody(p, &e)
	return e, err
}
