package virtiopci

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestFindVirtioConsole(t *testing.T) {
	nic := qemuNIC(t)
	con := qemuNIC(t)
	con.bdf, con.device = "0000:00:04.0", DeviceConsoleModern
	trans := qemuNIC(t)
	trans.bdf, trans.device, trans.rev = "0000:00:05.0", DeviceConsoleTransitional, 0
	trans.config = loadConfig(t, "qemu-7.2-virtio-net-transitional")
	legacy := trans
	legacy.bdf = "0000:00:06.0"
	legacy.config = append([]byte(nil), trans.config...)
	legacy.config[pciStatus] &^= pciStatusCapList

	got, err := FindVirtioConsole(fakeSysfs(t, nic, con, trans, legacy))
	if err != nil {
		t.Fatal(err)
	}
	var bdfs []string
	for _, f := range got {
		bdfs = append(bdfs, f.BDF)
	}
	if diff := cmp.Diff([]string{"0000:00:04.0", "0000:00:05.0"}, bdfs); diff != "" {
		t.Errorf("found (-want +got):\n%s", diff)
	}
	// The NIC finder does not take a console, nor the console finder a NIC.
	if fns, err := FindVirtioNet(fakeSysfs(t, con)); err == nil {
		t.Errorf("FindVirtioNet found a console: %v", fns)
	}
	_, err = FindVirtioConsole(fakeSysfs(t, nic, legacy))
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	for _, s := range []string{"no virtio console function", "0000:00:06.0 (transitional)"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
}
