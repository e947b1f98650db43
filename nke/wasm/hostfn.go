package wasm

import (
	"context"
	"errors"
	"fmt"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"

	"github.com/nke-harness/nke/nke/mbuf"
	"github.com/nke-harness/nke/nke/wasm/abi"
)

// The host functions, module abi.HostModule. Each checks every pointer
// and length against the caller's memory before touching it: a bad one
// records an ErrHostArg (the instance faults when the call returns) and
// aborts the call; it never reaches a slice expression unchecked.

// maxLogLen bounds one log line; maxTagIDs the tag_id calls of an
// instance.
const (
	maxLogLen = 4096
	maxTagIDs = 16
)

// span checks the region [ptr, ptr+n) of a memory of size bytes; end is
// its end. The arithmetic is 64-bit, so ptr+n cannot wrap.
func span(size uint32, ptr, n uint32) (end uint32, ok bool) {
	e := uint64(ptr) + uint64(n)
	if e > uint64(size) {
		return 0, false
	}
	return uint32(e), true
}

// region returns mem[ptr:ptr+n] or an ErrHostArg naming the function.
func region(mem []byte, fn string, ptr, n uint32) ([]byte, error) {
	end, ok := span(uint32(min(uint64(len(mem)), 1<<32-1)), ptr, n)
	if !ok {
		return nil, fmt.Errorf("%w: %s: %d bytes at %#x outside the module's %d-byte memory", ErrHostArg, fn, n, ptr, len(mem))
	}
	return mem[ptr:end:end], nil
}

// hostArgAbort is what a host function panics with after recording the
// error: wazero turns it into the call's error.
var hostArgAbort = errors.New("wasm: host function argument check failed")

// fail records err as the call's host-argument fault.
//
// +checklocks:i.mu
func (i *Instance) fail(err error) {
	if i.argErr == nil {
		i.argErr = err
	}
}

// +checklocks:i.mu
func (i *Instance) hLog(mem []byte, level, ptr, n uint32) error {
	if n > maxLogLen {
		return fmt.Errorf("%w: log: %d bytes, at most %d", ErrHostArg, n, maxLogLen)
	}
	b, err := region(mem, abi.FuncLog, ptr, n)
	if err != nil {
		return err
	}
	if i.host.Logf != nil {
		tag := ""
		if level == abi.LogError {
			tag = "error: "
		}
		i.host.Logf("%s: %s%s", i.name, tag, b)
	}
	return nil
}

// +checklocks:i.mu
func (i *Instance) hCounterAdd(idx uint32, delta uint64) error {
	if idx >= abi.MaxCounters {
		return fmt.Errorf("%w: counter_add: counter %d, want 0..%d", ErrHostArg, idx, abi.MaxCounters-1)
	}
	i.counters[idx].Add(delta)
	return nil
}

// +checklocks:i.mu
func (i *Instance) hTagID(mem []byte, ptr, n uint32) (int32, error) {
	if n > mbuf.MaxTagNameLen {
		return abi.ErrTagName, nil
	}
	b, err := region(mem, abi.FuncTagID, ptr, n)
	if err != nil {
		return 0, err
	}
	// Tag ids are global and never freed: an instance may name at most
	// maxTagIDs, so one module cannot use up the table for the others.
	if i.tagIDs >= maxTagIDs {
		return abi.ErrTagName, nil
	}
	id, err := mbuf.TagID(string(b))
	if err != nil || int32(id) <= 0 {
		return abi.ErrTagName, nil
	}
	i.tagIDs++
	return int32(id), nil
}

// packet returns packet pkt of the current call, if there is one.
//
// +checklocks:i.mu
func (i *Instance) packet(pkt uint32) *mbuf.Mbuf {
	if !i.cur.hasPkts || pkt >= uint32(i.cur.n) {
		return nil
	}
	return i.cur.pk[pkt]
}

// +checklocks:i.mu
func (i *Instance) hTagPut(mem []byte, pkt, id, typ, vptr, vn uint32) (int32, error) {
	v, err := region(mem, abi.FuncTagPut, vptr, vn)
	if err != nil {
		return 0, err
	}
	m := i.packet(pkt)
	if m == nil {
		return abi.ErrNoPacket, nil
	}
	if typ > 0xffff || id == 0 || id > 1<<31 {
		return abi.ErrTagName, nil
	}
	if vn < 1 || vn > mbuf.TagSize {
		return abi.ErrTagValue, nil
	}
	tid, t := mbuf.TagIDType(id), uint16(typ)
	// Values of 1, 2, 4 and 8 bytes are stored as the unsigned integer
	// of that size (little-endian, wasm's order), so native filters read
	// them with mbuf.TagGet[uint8] and the like.
	switch vn {
	case 1:
		err = mbuf.TagPut(m, tid, t, v[0])
	case 2:
		err = mbuf.TagPut(m, tid, t, le.Uint16(v))
	case 4:
		err = mbuf.TagPut(m, tid, t, le.Uint32(v))
	case 8:
		err = mbuf.TagPut(m, tid, t, le.Uint64(v))
	default:
		m.TagDelete(tid, t)
		var b []byte
		if b, err = m.TagAllocate(tid, t, int(vn)); err == nil {
			copy(b, v)
		}
	}
	switch {
	case err == nil:
		return abi.OK, nil
	case errors.Is(err, mbuf.ErrTagID):
		return abi.ErrTagName, nil
	}
	return abi.ErrTagValue, nil
}

// +checklocks:i.mu
func (i *Instance) hTagGet(mem []byte, pkt, id, typ, bptr, bn uint32) (int32, error) {
	dst, err := region(mem, abi.FuncTagGet, bptr, bn)
	if err != nil {
		return 0, err
	}
	m := i.packet(pkt)
	if m == nil {
		return abi.ErrNoPacket, nil
	}
	if typ > 0xffff || id == 0 || id > 1<<31 {
		return abi.ErrNoTag, nil
	}
	v, ok := m.TagFind(mbuf.TagIDType(id), uint16(typ))
	if !ok {
		return abi.ErrNoTag, nil
	}
	copy(dst, v)
	return int32(len(v)), nil
}

// hInject copies a packet the module built into a pool buffer and queues
// it; the binding injects it once the call has returned (an injection
// runs filters, possibly this one, which must not be re-entered).
//
// +checklocks:i.mu
func (i *Instance) hInject(mem []byte, where, ptr, n uint32) (int32, error) {
	b, err := region(mem, abi.FuncInject, ptr, n)
	if err != nil {
		return 0, err
	}
	if where != abi.InjectInput && where != abi.InjectOutput {
		return abi.ErrNotHere, nil
	}
	if i.cur.b == nil || !i.cur.b.canInject() {
		return abi.ErrNotHere, nil
	}
	if n == 0 {
		return abi.ErrTooBig, nil
	}
	if i.cur.ninj == maxPending {
		return abi.ErrNoRoom, nil
	}
	pool := i.host.Pool
	if pool == nil {
		pool = i.cur.b.pool()
	}
	if pool == nil {
		return abi.ErrNotHere, nil
	}
	if int(n) > 65535+18 {
		return abi.ErrTooBig, nil
	}
	m := pool.AllocPacket(int(n))
	if m == nil {
		return abi.ErrNoRoom, nil
	}
	m.CopyBack(0, b)
	i.cur.inj[i.cur.ninj], i.cur.injW[i.cur.ninj] = m, uint8(where)
	i.cur.ninj++
	return abi.OK, nil
}

// +checklocks:i.mu
func (i *Instance) hCtlSend(mem []byte, conn, ptr, n uint32) (int32, error) {
	b, err := region(mem, abi.FuncCtlSend, ptr, n)
	if err != nil {
		return 0, err
	}
	if i.host.Control == nil {
		return abi.ErrNotHere, nil
	}
	if err := i.host.Control(conn, b); err != nil {
		return abi.ErrRefused, nil
	}
	return abi.OK, nil
}

// hostFuncs are the host functions by name, with their wasm types.
var hostFuncs = map[string]struct {
	params, results []api.ValueType
	fn              func(i *Instance, mem []byte, s []uint64) error
}{
	abi.FuncLog: {i32s(3), nil, func(i *Instance, mem []byte, s []uint64) error {
		return i.hLog(mem, u32(s[0]), u32(s[1]), u32(s[2]))
	}},
	abi.FuncCounterAdd: {[]api.ValueType{api.ValueTypeI32, api.ValueTypeI64}, nil, func(i *Instance, mem []byte, s []uint64) error {
		return i.hCounterAdd(u32(s[0]), s[1])
	}},
	abi.FuncTagID: {i32s(2), i32s(1), func(i *Instance, mem []byte, s []uint64) error {
		r, err := i.hTagID(mem, u32(s[0]), u32(s[1]))
		s[0] = uint64(uint32(r))
		return err
	}},
	abi.FuncTagPut: {i32s(5), i32s(1), func(i *Instance, mem []byte, s []uint64) error {
		r, err := i.hTagPut(mem, u32(s[0]), u32(s[1]), u32(s[2]), u32(s[3]), u32(s[4]))
		s[0] = uint64(uint32(r))
		return err
	}},
	abi.FuncTagGet: {i32s(5), i32s(1), func(i *Instance, mem []byte, s []uint64) error {
		r, err := i.hTagGet(mem, u32(s[0]), u32(s[1]), u32(s[2]), u32(s[3]), u32(s[4]))
		s[0] = uint64(uint32(r))
		return err
	}},
	abi.FuncInject: {i32s(3), i32s(1), func(i *Instance, mem []byte, s []uint64) error {
		r, err := i.hInject(mem, u32(s[0]), u32(s[1]), u32(s[2]))
		s[0] = uint64(uint32(r))
		return err
	}},
	abi.FuncCtlSend: {i32s(3), i32s(1), func(i *Instance, mem []byte, s []uint64) error {
		r, err := i.hCtlSend(mem, u32(s[0]), u32(s[1]), u32(s[2]))
		s[0] = uint64(uint32(r))
		return err
	}},
}

func u32(v uint64) uint32 { return uint32(v) }

func i32s(n int) []api.ValueType {
	t := make([]api.ValueType, n)
	for k := range t {
		t[k] = api.ValueTypeI32
	}
	return t
}

// instantiateHost defines module abi.HostModule in rt.
func instantiateHost(ctx context.Context, rt wazero.Runtime) error {
	b := rt.NewHostModuleBuilder(abi.HostModule)
	for name, h := range hostFuncs {
		fn := h.fn
		b.NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(func(ctx context.Context, mod api.Module, stack []uint64) {
			i, _ := ctx.Value(ctxKey{}).(*Instance)
			if i == nil {
				panic(fmt.Errorf("%w: host function called outside an NKE call", ErrHostArg))
			}
			hostCall(i, fn, mod, stack)
		}), h.params, h.results).Export(name)
	}
	if _, err := b.Instantiate(ctx); err != nil {
		return fmt.Errorf("wasm: host module: %w", err)
	}
	return nil
}

// hostCall runs a host function for i, whose mutex the call into the
// module holds (host functions are only reached from inside i.call).
//
// +checklocksignore: i.mu is held by the caller of the wasm call.
func hostCall(i *Instance, fn func(*Instance, []byte, []uint64) error, mod api.Module, stack []uint64) {
	m := mod.Memory()
	var mem []byte
	if m != nil {
		mem, _ = m.Read(0, m.Size())
	}
	if err := fn(i, mem, stack); err != nil {
		i.fail(err)
		panic(hostArgAbort)
	}
}
