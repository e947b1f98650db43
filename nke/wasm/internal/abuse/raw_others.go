//go:build !wasip1

package main

func rawLog(level, ptr, n int32)                 {}
func rawCounterAdd(idx int32, delta int64)       {}
func rawTagID(ptr, n int32) int32                { return 0 }
func rawTagPut(pkt, id, typ, ptr, n int32) int32 { return 0 }
func rawTagGet(pkt, id, typ, ptr, n int32) int32 { return 0 }
func rawInject(where, ptr, n int32) int32        { return 0 }
func rawCtlSend(conn, ptr, n int32) int32        { return 0 }
