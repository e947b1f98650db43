//go:build armbe || arm64be || m68k || mips || mips64 || mips64p32 || ppc || ppc64 || s390 || s390x || shbe || sparc || sparc64

package virtqueue

// Virtio 1.x rings are little-endian (spec 2.4), and this package lays Go
// structs over them in the CPU's byte order: on a big-endian CPU every
// field would be read backwards. Such builds are refused here.
const _ = virtqueueNeedsALittleEndianCPU
