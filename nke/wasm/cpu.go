package wasm

import (
	"errors"
	"runtime"

	"golang.org/x/sys/cpu"
)

// ErrCPU is a CPU whose instructions wazero's compiler needs are missing:
// on amd64 it emits SSE4.1 and POPCNT unconditionally, so compiling for
// such a CPU would crash the guest at the module's first call (SIGILL).
var ErrCPU = errors.New("wasm: the CPU lacks SSE4.1 or POPCNT, which compiled WebAssembly needs (under QEMU TCG give -cpu qemu64,+sse4.1,+sse4.2,+popcnt, as nkevm does; or use Config.Interpreter)")

// compilerCPU reports whether the compiler's code runs on this CPU.
func compilerCPU() error {
	if runtime.GOARCH == "amd64" && !(cpu.X86.HasSSE41 && cpu.X86.HasPOPCNT) {
		return ErrCPU
	}
	return nil
}
