//go:build wasip1

package main

//go:wasmimport nke_v1 log
func rawLog(level, ptr, n int32)

//go:wasmimport nke_v1 counter_add
func rawCounterAdd(idx int32, delta int64)

//go:wasmimport nke_v1 tag_id
func rawTagID(ptr, n int32) int32

//go:wasmimport nke_v1 tag_put
func rawTagPut(pkt, id, typ, ptr, n int32) int32

//go:wasmimport nke_v1 tag_get
func rawTagGet(pkt, id, typ, ptr, n int32) int32

//go:wasmimport nke_v1 inject
func rawInject(where, ptr, n int32) int32

//go:wasmimport nke_v1 ctl_send
func rawCtlSend(conn, ptr, n int32) int32
