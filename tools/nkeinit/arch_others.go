//go:build linux && !amd64

package main

// The guest driver's memory ordering (virtqueue atomics, virtiopci
// doorbells) is verified on amd64 only: building the guest's init for
// another CPU is refused rather than run with barriers that may be wrong.
const _ = nkeinitRunsOnAmd64Only
