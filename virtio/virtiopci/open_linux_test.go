//go:build amd64

package virtiopci

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nke-harness/nke/virtio"
)

// TestOpenFakeSysfs runs Open against regular files laid out like sysfs:
// BAR4 is a 16 KiB file, so the mapping, the window offsets and the
// accessors are the real ones, only the device behind them is memory.
func TestOpenFakeSysfs(t *testing.T) {
	nic := qemuNIC(t)
	root := fakeSysfs(t, nic)
	dir := filepath.Join(root, nic.bdf)
	bar4 := make([]byte, 0x4000)
	binary.LittleEndian.PutUint16(bar4[regNumQueues:], 3)
	binary.LittleEndian.PutUint16(bar4[regQueueSize:], 256)
	copy(bar4[0x2000:], []byte{0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0})
	if err := os.WriteFile(filepath.Join(dir, "resource4"), bar4, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Lookup(root, nic.bdf)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := Open(f)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := os.ReadFile(filepath.Join(dir, "config"))
	if cmd := binary.LittleEndian.Uint16(cfg[pciCommand:]); cmd != 0x0103|0x0406 {
		t.Errorf("command register %#04x, want %#04x", cmd, 0x0103|0x0406)
	}
	if diff := cmp.Diff([]Cap{qemuCaps[4], qemuCaps[1], qemuCaps[3], qemuCaps[2]}, tr.Caps()); diff != "" {
		t.Errorf("caps in use (-want +got):\n%s", diff)
	}
	if tr.Name() != nic.bdf || tr.ConfigLen() != 0x1000 || tr.NumQueues() != 3 {
		t.Errorf("name %q config len %#x queues %d", tr.Name(), tr.ConfigLen(), tr.NumQueues())
	}
	mac := make([]byte, 6)
	if err := tr.ReadConfig(0, mac); err != nil || string(mac) != "\x52\x54\x00\x12\x34\x56" {
		t.Errorf("MAC % x, %v", mac, err)
	}
	tr.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK)
	n, err := tr.SetupQueue(1, 256, virtio.QueueAddrs{Desc: 0x1_0000_0000, Driver: 0x2000, Device: 0x3000})
	if err != nil {
		t.Fatal(err)
	}
	n.Notify()
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "resource4"))
	if d := binary.LittleEndian.Uint32(got[regQueueDesc+4:]); d != 1 {
		t.Errorf("queue_desc high half = %#x, want 1", d)
	}
	if q := binary.LittleEndian.Uint16(got[0x3000:]); q != 1 {
		t.Errorf("doorbell holds %d, want queue 1", q)
	}
	defer func() {
		if r := recover(); r == nil || !strings.Contains(r.(string), "after Close") {
			t.Errorf("Notify after Close: panic %v", r)
		}
	}()
	n.Notify()
}

func TestOpenErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mod    func(*fakeFn)
		errIs  error
		errHas string
	}{
		{name: "unprivileged config read", mod: func(f *fakeFn) { f.config = f.config[:64] }, errHas: "read 64 of 256 bytes"},
		{name: "vendor mismatch", mod: func(f *fakeFn) { f.device = 0x1042 }, errHas: "config space says 1af4:1041, sysfs said 1af4:1042"},
		{name: "legacy", mod: func(f *fakeFn) { f.config[pciStatus] = 0 }, errIs: ErrLegacy},
		{name: "BAR file missing", mod: func(f *fakeFn) { delete(f.bars, 4) }, errHas: "map BAR4"},
		{
			name: "structures in an I/O BAR",
			mod: func(f *fakeFn) {
				f.resource = strings.Replace(qemuResource, "0x000000000014220c", "0x0000000000040101", 1)
			},
			errIs:  ErrBadCaps,
			errHas: "the common structure is in BAR4, which is I/O",
		},
		{
			name: "BAR too small",
			mod: func(f *fakeFn) {
				f.resource = strings.Replace(qemuResource, "0x00000000fe003fff", "0x00000000fe001fff", 1)
			},
			errIs:  ErrBadCaps,
			errHas: "past the end of BAR4 (0x2000 bytes)",
		},
		{name: "bad resource file", mod: func(f *fakeFn) { f.resource = "junk\n" }, errHas: "read BARs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nic := qemuNIC(t)
			nic.config = append([]byte(nil), nic.config...)
			tc.mod(&nic)
			root := fakeSysfs(t, nic)
			f, err := Lookup(root, nic.bdf)
			if err != nil {
				t.Fatal(err)
			}
			tr, err := Open(f)
			if err == nil {
				tr.Close()
				t.Fatal("Open succeeded")
			}
			var oe *OpError
			if !errors.As(err, &oe) || oe.BDF != nic.bdf {
				t.Errorf("err %v is not an *OpError for %s", err, nic.bdf)
			}
			if tc.errIs != nil && !errors.Is(err, tc.errIs) {
				t.Errorf("err = %v, want %v", err, tc.errIs)
			}
			if !strings.Contains(err.Error(), tc.errHas) {
				t.Errorf("err = %v, want %q", err, tc.errHas)
			}
		})
	}
}
