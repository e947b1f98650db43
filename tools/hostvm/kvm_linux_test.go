package hostvm

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// TestCheckKVMAgreesWithCPU: without vmx/svm in /proc/cpuinfo (this
// project's CI machine has /dev/kvm but neither), CheckKVM must not
// claim KVM.
func TestCheckKVMAgreesWithCPU(t *testing.T) {
	cpuinfo, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Fatalf("read /proc/cpuinfo: %v", err)
	}
	virt := regexp.MustCompile(`(?m)^flags\s*:.*\b(vmx|svm)\b`).Match(cpuinfo)
	err = CheckKVM()
	t.Logf("vmx/svm advertised: %v; CheckKVM: %v", virt, err)
	if !virt && err == nil {
		t.Fatal("CheckKVM() = nil, but the CPU advertises neither vmx nor svm")
	}
	if _, statErr := os.Stat(kvmDevice); statErr != nil && err == nil {
		t.Fatalf("CheckKVM() = nil, but %s: %v", kvmDevice, statErr)
	}
}

func TestCPUHasVirtualization(t *testing.T) {
	for _, tc := range []struct {
		name, cpuinfo string
		ok            bool
	}{
		{"intel", "processor\t: 0\nflags\t\t: fpu vme vmx sse2\n", true},
		{"amd", "flags\t\t: fpu svm lm\n", true},
		{"none", "flags\t\t: fpu hypervisor lm\n", false},
		{"prefix only", "flags\t\t: vmxnope svmx\n", false},
		{"no flags line", "processor\t: 0\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "cpuinfo")
			if err := os.WriteFile(p, []byte(tc.cpuinfo), 0o644); err != nil {
				t.Fatal(err)
			}
			err := cpuHasVirtualization(p)
			if (err == nil) != tc.ok {
				t.Fatalf("cpuHasVirtualization(%q) = %v, want ok=%v", tc.cpuinfo, err, tc.ok)
			}
		})
	}
}
