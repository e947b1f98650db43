//go:build wasip1

package sdk

import "github.com/nke-harness/nke/nke/wasm/abi"

//go:wasmexport nke_abi
func exportABI() int32 { return abi.Version }

//go:wasmexport nke_buffer
func exportBuffer(size int32) int32 {
	if !setBuffer(size) {
		return 0
	}
	return bytesPtr(buffer)
}

//go:wasmexport nke_init
func exportInit(n int32) int32 { return doInit(n) }

//go:wasmexport nke_filter
func exportFilter(hook, n int32) int32 { return doFilter(hook, n) }

//go:wasmexport nke_ctl
func exportCtl(conn, kind, n int32) int32 { return doCtl(conn, kind, n) }

//go:wasmexport nke_stop
func exportStop() int32 { return doStop() }

//go:wasmimport nke_v1 log
func wLog(level, ptr, n int32)

//go:wasmimport nke_v1 counter_add
func wCounterAdd(idx int32, delta int64)

//go:wasmimport nke_v1 tag_id
func wTagID(ptr, n int32) int32

//go:wasmimport nke_v1 tag_put
func wTagPut(pkt, id, typ, ptr, n int32) int32

//go:wasmimport nke_v1 tag_get
func wTagGet(pkt, id, typ, ptr, n int32) int32

//go:wasmimport nke_v1 inject
func wInject(where, ptr, n int32) int32

//go:wasmimport nke_v1 ctl_send
func wCtlSend(conn, ptr, n int32) int32

func hostLog(level int32, s string) { wLog(level, strPtr(s), int32(len(s))) }

func hostCounterAdd(idx int32, delta uint64) { wCounterAdd(idx, int64(delta)) }

func hostTagID(name string) int32 { return wTagID(strPtr(name), int32(len(name))) }

func hostTagPut(pkt uint32, id TagID, typ uint16, v []byte) int32 {
	return wTagPut(int32(pkt), int32(id), int32(typ), bytesPtr(v), int32(len(v)))
}

func hostTagGet(pkt uint32, id TagID, typ uint16, buf []byte) int32 {
	return wTagGet(int32(pkt), int32(id), int32(typ), bytesPtr(buf), int32(len(buf)))
}

func hostInject(where int32, b []byte) int32 { return wInject(where, bytesPtr(b), int32(len(b))) }

func hostCtlSend(conn uint32, b []byte) int32 {
	return wCtlSend(int32(conn), bytesPtr(b), int32(len(b)))
}
