//go:build armbe || arm64be || m68k || mips || mips64 || mips64p32 || ppc || ppc64 || s390 || s390x || shbe || sparc || sparc64

package virtiopci

// Virtio 1.x PCI registers are little-endian (spec 4.1.3) and are read
// here in the CPU's byte order: big-endian builds are refused.
const _ = virtiopciNeedsALittleEndianCPU
