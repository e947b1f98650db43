// Command nkeselftest is a guest init that checks the platform layer on
// the real virtio-net device: initproc's bring-up, hugepage DMA memory
// (kernel/dma) and the virtio PCI transport (virtio/virtiopci). It prints
// one "PASS name: detail" or "FAIL name: error" line per check, a
// "SUMMARY" line, and powers off with exit code 0 or 1 (logged).
//
// Build and boot it as /init (module-free, TCG is fine):
//
//	CGO_ENABLED=0 go build -o init ./tools/nkeselftest
//	echo init | cpio -o -H newc > selftest.cpio
//	qemu-system-x86_64 -m 512 -smp 2 -nographic -no-reboot \
//	    -kernel vmlinuz -initrd selftest.cpio -append "console=ttyS0 panic=-1 quiet" \
//	    -netdev user,id=n0 -device virtio-net-pci,netdev=n0,disable-legacy=on,romfile=
//
// With -netdev user it also sends an ARP request for the slirp gateway
// 10.0.2.2 and waits for the reply, which proves that the ring and buffer
// physical addresses from pagemap are the ones the device sees.
// Kernel command line settings: nke.hugepages=N (default 16; the checks
// need 8).
package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nke-harness/nke/kernel/dma"
	"github.com/nke-harness/nke/kernel/initproc"
	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/virtiopci"
)

// virtio-net feature bits (spec 5.1.3) the checks name.
const (
	netFMAC      virtio.Feature = 5
	netFMrgRxbuf virtio.Feature = 15
	netFStatus   virtio.Feature = 16
	netFCtrlVQ   virtio.Feature = 17
	netFCtrlRx   virtio.Feature = 18
)

var netNames = map[virtio.Feature]string{
	0: "CSUM", 1: "GUEST_CSUM", 2: "CTRL_GUEST_OFFLOADS", 3: "MTU", 5: "MAC", 6: "GSO",
	7: "GUEST_TSO4", 8: "GUEST_TSO6", 9: "GUEST_ECN", 10: "GUEST_UFO", 11: "HOST_TSO4",
	12: "HOST_TSO6", 13: "HOST_ECN", 14: "HOST_UFO", 15: "MRG_RXBUF", 16: "STATUS",
	17: "CTRL_VQ", 18: "CTRL_RX", 19: "CTRL_VLAN", 20: "CTRL_RX_EXTRA", 21: "GUEST_ANNOUNCE",
	22: "MQ", 23: "CTRL_MAC_ADDR", 24: "NOTIFY_ON_EMPTY", 27: "ANY_LAYOUT", 56: "HOST_USO",
	57: "HASH_REPORT", 60: "RSS", 61: "RSC_EXT", 62: "STANDBY", 63: "SPEED_DUPLEX",
}

// dmaSize is the DMA memory the checks take: 8 hugepages, so that the
// merging of physically adjacent pages shows.
const dmaSize = 16 << 20

type selftest struct {
	passed, failed int
}

// check runs one step and prints its verdict; it reports success.
func (s *selftest) check(name string, f func() (string, error)) bool {
	detail, err := f()
	if err != nil {
		s.failed++
		initproc.Logf("FAIL %s: %v", name, err)
		return false
	}
	s.passed++
	initproc.Logf("PASS %s: %s", name, detail)
	return true
}

func main() {
	s := &selftest{}
	s.run()
	initproc.Logf("SUMMARY: %d passed, %d failed", s.passed, s.failed)
	code := 0
	if s.failed > 0 {
		code = 1
	}
	initproc.Poweroff(code)
}

func (s *selftest) run() {
	pid1 := os.Getpid() == 1
	pages := 16
	if !s.check("bring-up", func() (string, error) {
		if !pid1 {
			return "not PID 1: using the running system's mounts", nil
		}
		if err := initproc.MountAll(initproc.DefaultMounts()); err != nil {
			return "", err
		}
		if err := initproc.SetHostname("nke-selftest"); err != nil {
			return "", err
		}
		initproc.StartReaper()
		up, err := initproc.Uptime()
		if err != nil {
			return "", err
		}
		host, _ := os.Hostname()
		return fmt.Sprintf("mounted /proc /sys /dev /tmp /dev/hugepages, hostname %s, uptime %.2fs", host, up.Seconds()), nil
	}) {
		return
	}
	s.check("settings", func() (string, error) {
		v, ok := initproc.Setting("nke.hugepages")
		if !ok {
			return "nke.hugepages not set, reserving 16", nil
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 4096 {
			return "", fmt.Errorf("nke.hugepages=%q: want 1..4096", v)
		}
		pages = n
		return fmt.Sprintf("nke.hugepages=%d", n), nil
	})
	if pid1 && !s.check("hugepage pool", func() (string, error) {
		got, err := initproc.ReserveHugepages(pages)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%d of %d pages of 2 MiB granted", got, pages), nil
	}) {
		return
	}
	s.check("module-free boot", func() (string, error) {
		mods, err := initproc.LoadedModules()
		if err != nil {
			return "", err
		}
		if len(mods) > 0 {
			return "", fmt.Errorf("modules loaded: %s", strings.Join(mods, " "))
		}
		return "/proc/modules is empty", nil
	})

	var hp *dma.Hugepages
	if !s.check("hugepages", func() (string, error) {
		var err error
		hp, err = dma.OpenHugepages(dma.DefaultHugepageDir, dmaSize)
		if err != nil {
			return "", err
		}
		var parts []string
		for _, sg := range hp.Segments() {
			if sg.Addr == 0 {
				return "", fmt.Errorf("segment with physical address 0")
			}
			parts = append(parts, fmt.Sprintf("%#x+%dMiB", sg.Addr, len(sg.Mem)>>20))
		}
		return fmt.Sprintf("%d MiB in %d segment(s): %s", (hp.Free())>>20, len(parts), strings.Join(parts, ", ")), nil
	}) {
		return
	}
	defer hp.Close()
	s.checkErrors()
	s.device(hp)
}

// checkErrors shows the errors people get for common mistakes.
func (s *selftest) checkErrors() {
	s.check("error: no hugetlbfs", func() (string, error) {
		_, err := dma.OpenHugepages("/tmp", 1<<20)
		if !errors.Is(err, dma.ErrNoHugetlbfs) {
			return "", fmt.Errorf("got %v, want ErrNoHugetlbfs", err)
		}
		return err.Error(), nil
	})
	s.check("error: pool too small", func() (string, error) {
		_, err := dma.OpenHugepages(dma.DefaultHugepageDir, 1<<30)
		if !errors.Is(err, dma.ErrNoHugepages) {
			return "", fmt.Errorf("got %v, want ErrNoHugepages", err)
		}
		return err.Error(), nil
	})
}

func (s *selftest) device(hp *dma.Hugepages) {
	var fn virtiopci.Function
	if !s.check("find NIC", func() (string, error) {
		fns, err := virtiopci.FindVirtioNet(virtiopci.DefaultRoot)
		if err != nil {
			return "", err
		}
		fn = fns[0]
		if fn.Driver != "" {
			return "", fmt.Errorf("%v: a kernel driver is bound on a module-free boot", fn)
		}
		return "NIC found at " + fn.String(), nil
	}) {
		return
	}
	s.check("caps", func() (string, error) {
		cfg, err := fn.Config()
		if err != nil {
			return "", err
		}
		cs, err := virtiopci.ParseCaps(cfg)
		if err != nil {
			return "", err
		}
		var parts []string
		for _, c := range cs.All {
			parts = append(parts, c.String())
		}
		return strings.Join(parts, "; "), nil
	})
	var t *virtiopci.Transport
	if !s.check("open", func() (string, error) {
		var err error
		if t, err = virtiopci.Open(fn); err != nil {
			return "", err
		}
		cfg, err := fn.Config()
		if err != nil {
			return "", err
		}
		cmd := binary.LittleEndian.Uint16(cfg[4:])
		if cmd&0x406 != 0x406 {
			return "", fmt.Errorf("command register %#04x lacks memory/bus master/INTx disable", cmd)
		}
		return fmt.Sprintf("BAR4 mapped, command register %#04x, %d queues, device config %d bytes", cmd, t.NumQueues(), t.ConfigLen()), nil
	}) {
		return
	}
	defer func() {
		s.check("close", func() (string, error) {
			if err := t.Close(); err != nil {
				return "", err
			}
			return "device reset, BARs unmapped", nil
		})
	}()
	if !s.check("reset", func() (string, error) {
		start := time.Now()
		if err := t.Reset(); err != nil {
			return "", err
		}
		return fmt.Sprintf("device_status %#x after %v", t.Status(), time.Since(start).Round(time.Microsecond)), nil
	}) {
		return
	}
	t.SetStatus(virtio.StatusAcknowledge)
	t.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver)

	var offered virtio.Features
	s.check("features", func() (string, error) {
		offered = t.DeviceFeatures()
		var missing []string
		for _, f := range []virtio.Feature{virtio.FVersion1, netFMAC, netFStatus, netFMrgRxbuf, netFCtrlVQ, netFCtrlRx, virtio.FIndirectDesc, virtio.FEventIdx} {
			if !offered.Has(f) {
				missing = append(missing, virtio.Features(1 << f).Names(netNames)[0])
			}
		}
		if missing != nil {
			return "", fmt.Errorf("device offers %#x, missing %s", uint64(offered), strings.Join(missing, ","))
		}
		return fmt.Sprintf("%#x = %s", uint64(offered), strings.Join(offered.Names(netNames), ",")), nil
	})
	want := virtio.Features(0).With(virtio.FVersion1).With(netFMAC).With(netFStatus)
	if offered.Has(virtio.FAccessPlatform) {
		want = want.With(virtio.FAccessPlatform)
	}
	if !s.check("negotiate", func() (string, error) {
		if offered&want != want {
			return "", fmt.Errorf("device lacks %s", (want &^ offered).Names(netNames))
		}
		t.SetDriverFeatures(want)
		t.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK)
		if st := t.Status(); st&virtio.StatusFeaturesOK == 0 {
			t.SetStatus(st | virtio.StatusFailed)
			return "", fmt.Errorf("device refused %s (status %#x)", want.Names(netNames), st)
		}
		return fmt.Sprintf("accepted %s, FEATURES_OK stuck (status %#x)", strings.Join(want.Names(netNames), ","), t.Status()), nil
	}) {
		return
	}

	var rx, tx *splitRing
	if !s.check("queues", func() (string, error) {
		var parts []string
		for q, rp := range []**splitRing{&rx, &tx} {
			size := t.QueueMaxSize(q)
			r, err := newRing(hp, size, 16, 2048)
			if err != nil {
				return "", err
			}
			if r.notify, err = t.SetupQueue(q, size, r.addrs()); err != nil {
				return "", err
			}
			*rp = r
			parts = append(parts, fmt.Sprintf("queue %d size %d desc %#x avail %#x used %#x", q, size, r.desc.Addr, r.avail.Addr, r.used.Addr))
		}
		return strings.Join(parts, "; "), nil
	}) {
		return
	}
	var mac [6]byte
	s.check("MAC", func() (string, error) {
		for range 10 {
			g := t.ConfigGeneration()
			if err := t.ReadConfig(0, mac[:]); err != nil {
				return "", err
			}
			if t.ConfigGeneration() == g {
				if mac == [6]byte{} || mac[0]&1 != 0 {
					return "", fmt.Errorf("device MAC %x is zero or multicast", mac)
				}
				return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x (config generation %d)", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], g), nil
			}
		}
		return "", errors.New("config generation kept changing")
	})
	s.check("link", func() (string, error) {
		var st [2]byte
		if err := t.ReadConfig(6, st[:]); err != nil {
			return "", err
		}
		if v := binary.LittleEndian.Uint16(st[:]); v&1 == 0 {
			return "", fmt.Errorf("status %#x: link down", v)
		}
		return "VIRTIO_NET_S_LINK_UP", nil
	})
	t.SetStatus(t.Status() | virtio.StatusDriverOK)
	s.check("driver ok", func() (string, error) {
		st := t.Status()
		if st&virtio.StatusNeedsReset != 0 || st&virtio.StatusDriverOK == 0 {
			return "", fmt.Errorf("status %#x", st)
		}
		return fmt.Sprintf("status %#x", st), nil
	})
	s.check("doorbell+DMA", func() (string, error) { return arpRoundTrip(t, rx, tx, mac) })
}

// arpRoundTrip fills rx, sends an ARP request for the slirp gateway on tx
// and waits for the device to use the tx buffer and deliver the reply.
func arpRoundTrip(t *virtiopci.Transport, rx, tx *splitRing, mac [6]byte) (string, error) {
	const hdrLen = 12 // struct virtio_net_hdr_v1, spec 5.1.6
	for i := range rx.bufs {
		rx.post(i, len(rx.bufs[i].Buf), descFWrite)
	}
	rx.publish()
	rx.notify.Notify()

	frame := tx.bufs[0].Buf[hdrLen:]
	clear(tx.bufs[0].Buf[:hdrLen])
	n := copy(frame, arpRequest(mac, [4]byte{10, 0, 2, 15}, [4]byte{10, 0, 2, 2}))
	tx.post(0, hdrLen+n, 0)
	tx.publish()
	tx.notify.Notify()

	deadline := time.Now().Add(5 * time.Second)
	var txDone bool
	for time.Now().Before(deadline) {
		if st := t.Status(); st&virtio.StatusNeedsReset != 0 {
			return "", fmt.Errorf("device needs reset (status %#x)", st)
		}
		used, err := tx.reap()
		if err != nil {
			return "", fmt.Errorf("tx: %w", err)
		}
		if len(used) > 0 {
			txDone = true
		}
		got, err := rx.reap()
		if err != nil {
			return "", fmt.Errorf("rx: %w", err)
		}
		for _, u := range got {
			if u[1] < hdrLen {
				return "", fmt.Errorf("rx buffer %d: %d bytes, shorter than the header", u[0], u[1])
			}
			f := rx.bufs[u[0]].Buf[hdrLen:u[1]]
			if from, ok := arpReplyFrom(f, [4]byte{10, 0, 2, 2}); ok && txDone {
				return fmt.Sprintf("tx used, ARP reply: 10.0.2.2 is at %s (%d-byte frame)", from, len(f)), nil
			}
		}
		time.Sleep(time.Millisecond)
	}
	return "", fmt.Errorf("no ARP reply within 5s (tx used: %v)", txDone)
}

func arpRequest(mac [6]byte, ip, target [4]byte) []byte {
	var b bytes.Buffer
	b.Write([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	b.Write(mac[:])
	b.Write([]byte{0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1}) // ARP, Ethernet/IPv4, request
	b.Write(mac[:])
	b.Write(ip[:])
	b.Write(make([]byte, 6))
	b.Write(target[:])
	b.Write(make([]byte, 60-b.Len())) // pad to the Ethernet minimum
	return b.Bytes()
}

// arpReplyFrom reports the sender MAC if f is an ARP reply from ip.
func arpReplyFrom(f []byte, ip [4]byte) (string, bool) {
	if len(f) < 42 || f[12] != 0x08 || f[13] != 0x06 || binary.BigEndian.Uint16(f[20:]) != 2 || !bytes.Equal(f[28:32], ip[:]) {
		return "", false
	}
	m := f[22:28]
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]), true
}
