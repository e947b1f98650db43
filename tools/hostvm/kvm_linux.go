package hostvm

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// ioctl numbers from <linux/kvm.h>; x/sys/unix does not define them.
const (
	kvmGetAPIVersion = 0xAE00 // _IO(KVMIO, 0x00)
	kvmCreateVM      = 0xAE01 // _IO(KVMIO, 0x01)
	kvmCreateVCPU    = 0xAE41 // _IO(KVMIO, 0x41)
	kvmAPIVersion    = 12     // stable since Linux 2.6.22
)

// CheckKVM reports whether QEMU can use KVM on this host: nil when the
// CPU advertises VT-x or AMD-V and /dev/kvm opens read-write, speaks API
// version 12 and creates a VM with a vCPU. The ioctls alone are not
// enough: some nested sandboxes (Firecracker guests, for one) pass them
// without vmx/svm, and QEMU then aborts setting MSRs.
func CheckKVM() error {
	fd, err := unix.Open(kvmDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", kvmDevice, err)
	}
	defer unix.Close(fd)
	v, err := unix.IoctlRetInt(fd, kvmGetAPIVersion)
	if err != nil {
		return fmt.Errorf("%s: KVM_GET_API_VERSION: %w", kvmDevice, err)
	}
	if v != kvmAPIVersion {
		return fmt.Errorf("%s: KVM API version %d, QEMU needs %d", kvmDevice, v, kvmAPIVersion)
	}
	if err := cpuHasVirtualization("/proc/cpuinfo"); err != nil {
		return err
	}
	vm, err := unix.IoctlRetInt(fd, kvmCreateVM)
	if err != nil {
		return fmt.Errorf("%s: KVM_CREATE_VM: %w", kvmDevice, err)
	}
	defer unix.Close(vm)
	vcpu, err := unix.IoctlRetInt(vm, kvmCreateVCPU)
	if err != nil {
		return fmt.Errorf("%s: KVM_CREATE_VCPU: %w", kvmDevice, err)
	}
	unix.Close(vcpu)
	return nil
}

// cpuHasVirtualization checks the flags line of cpuinfo for vmx or svm.
func cpuHasVirtualization(cpuinfo string) error {
	f, err := os.Open(cpuinfo)
	if err != nil {
		return fmt.Errorf("reading CPU flags: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(key) != "flags" {
			continue
		}
		for _, flag := range strings.Fields(val) {
			if flag == "vmx" || flag == "svm" {
				return nil
			}
		}
		return fmt.Errorf("%s exists but the CPU advertises neither vmx nor svm (no hardware virtualisation here)", kvmDevice)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading CPU flags: %w", err)
	}
	return fmt.Errorf("no flags line in %s", cpuinfo)
}
