//go:build !wasip1

package sdk

// Outside wasip1 there is no host: the calls fail or do nothing, so
// that code written against the SDK builds, vets and unit-tests natively.

func hostLog(int32, string)                          {}
func hostCounterAdd(int32, uint64)                   {}
func hostTagID(string) int32                         { return 0 }
func hostTagPut(uint32, TagID, uint16, []byte) int32 { return -6 }
func hostTagGet(uint32, TagID, uint16, []byte) int32 { return -6 }
func hostInject(int32, []byte) int32                 { return -6 }
func hostCtlSend(uint32, []byte) int32               { return -6 }
