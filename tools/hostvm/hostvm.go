// Package hostvm prepares and boots the NKE guest from the host: it
// finds or installs QEMU, fetches and caches the Debian cloud kernel,
// detects KVM, builds QEMU command lines from typed options (shared by
// `make run` and the VM tests) and runs QEMU interactively.
package hostvm

// Environment variables read by this package and by nkevm.
const (
	EnvQEMU     = "NKE_QEMU"      // QEMU binary, instead of qemu-system-x86_64 on PATH
	EnvKernel   = "NKE_KERNEL"    // bzImage, instead of the cached Debian cloud kernel
	EnvCache    = "NKE_CACHE"     // download cache, instead of $XDG_CACHE_HOME/nke-harness
	EnvHTTPPort = "NKE_HTTP_PORT" // host port for the guest's HTTP status service
	EnvEchoPort = "NKE_ECHO_PORT" // host port for the guest's echo service
	EnvAppend   = "NKE_APPEND"    // extra kernel parameters, space-separated
)

// kvmDevice is the KVM control device probed by CheckKVM.
const kvmDevice = "/dev/kvm"

// PickAccel returns AccelKVM when CheckKVM passes, else AccelTCG and the
// reason KVM is out.
func PickAccel() (Accel, error) {
	if err := CheckKVM(); err != nil {
		return AccelTCG, err
	}
	return AccelKVM, nil
}
