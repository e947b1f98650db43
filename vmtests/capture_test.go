package vmtests

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// Capture directions on the namespace's tap.
const (
	toGuest   = 0 // sent by the namespace (PACKET_OUTGOING): peer → guest
	fromGuest = 1 // written by QEMU into the tap: guest → peer
)

var dirName = [2]string{"peer→guest", "guest→peer"}

// wireStats counts one direction of a capture.
type wireStats struct {
	Frames    int
	MaxLen    int         // Ethernet frame length (no FCS)
	Full      map[int]int // IP protocol → frames of exactly the full size (MTU + 14)
	Over      int         // frames longer than MTU + 14
	Fragments int         // IPv4 packets with MF set or a fragment offset
	sizes     map[int]int // frame length → count, for the log
}

// frameCapture counts the frames crossing the namespace's tap, by
// direction, through an AF_PACKET socket opened inside the namespace: a
// witness on the wire that trusts neither the guest nor the clients.
type frameCapture struct {
	full int // MTU + 14
	f    *os.File
	done chan struct{}

	mu   sync.Mutex
	dirs [2]wireStats
}

// capture starts counting frames on the tap; it stops at t.Cleanup.
func (n *tapNet) capture() *frameCapture {
	n.t.Helper()
	fd, err := inNetns(n.Name, func() (int, error) {
		ifi, err := net.InterfaceByName(n.Tap)
		if err != nil {
			return -1, err
		}
		proto := int(htons(unix.ETH_P_ALL))
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, proto)
		if err != nil {
			return -1, fmt.Errorf("AF_PACKET socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("binding to %s: %w", n.Tap, err)
		}
		return fd, nil
	})
	if err != nil {
		n.t.Fatalf("capture on %s in namespace %s: %v", n.Tap, n.Name, err)
	}
	c := &frameCapture{full: n.MTU + 14, f: os.NewFile(uintptr(fd), "packet:"+n.Tap), done: make(chan struct{})}
	for i := range c.dirs {
		c.dirs[i] = wireStats{Full: map[int]int{}, sizes: map[int]int{}}
	}
	go c.loop()
	n.t.Cleanup(c.stop)
	return c
}

func (c *frameCapture) loop() {
	defer close(c.done)
	rc, err := c.f.SyscallConn()
	if err != nil {
		return
	}
	buf := make([]byte, 128) // headers; MSG_TRUNC still returns the whole length
	for {
		var n int
		var from unix.Sockaddr
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_TRUNC)
			return rerr != unix.EAGAIN
		})
		if err != nil {
			return // closed
		}
		if rerr != nil {
			continue
		}
		dir := fromGuest
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			dir = toGuest
		}
		c.count(dir, n, buf[:min(n, len(buf))])
	}
}

func (c *frameCapture) count(dir, length int, hdr []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := &c.dirs[dir]
	s.Frames++
	s.MaxLen = max(s.MaxLen, length)
	s.sizes[length]++
	if length > c.full {
		s.Over++
	}
	if len(hdr) < 14+20 || binary.BigEndian.Uint16(hdr[12:]) != 0x0800 {
		return
	}
	ip := hdr[14:]
	if frag := binary.BigEndian.Uint16(ip[6:]); frag&0x2000 != 0 || frag&0x1fff != 0 {
		s.Fragments++
	}
	if length == c.full {
		s.Full[int(ip[9])]++
	}
}

// stats returns a copy of the counts so far.
func (c *frameCapture) stats() [2]wireStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out [2]wireStats
	for i, s := range c.dirs {
		out[i] = s
		out[i].Full = map[int]int{}
		for k, v := range s.Full {
			out[i].Full[k] = v
		}
		out[i].sizes = map[int]int{}
		for k, v := range s.sizes {
			out[i].sizes[k] = v
		}
	}
	return out
}

func (c *frameCapture) stop() {
	c.f.Close()
	<-c.done
}

func (s wireStats) String() string {
	type kv struct{ len, n int }
	var top []kv
	for l, n := range s.sizes {
		top = append(top, kv{l, n})
	}
	sort.Slice(top, func(i, j int) bool { return top[i].n > top[j].n || top[i].n == top[j].n && top[i].len > top[j].len })
	var sizes []string
	for i, e := range top {
		if i == 6 {
			break
		}
		sizes = append(sizes, fmt.Sprintf("%d B x%d", e.len, e.n))
	}
	return fmt.Sprintf("%d frames, longest %d B, full-size TCP %d ICMP %d, longer than full %d, IPv4 fragments %d; commonest: %s",
		s.Frames, s.MaxLen, s.Full[6], s.Full[1], s.Over, s.Fragments, strings.Join(sizes, ", "))
}

// inNetns runs fn on an OS thread that has joined the named network
// namespace; sockets fn creates stay in that namespace. The thread is
// never unlocked, so the runtime ends it instead of reusing it elsewhere.
func inNetns[T any](name string, fn func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		var r result
		ns, err := os.Open(filepath.Join(netnsDir, name))
		if err != nil {
			r.err = err
			ch <- r
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			r.err = fmt.Errorf("setns into %s: %w", name, err)
			ch <- r
			return
		}
		r.v, r.err = fn()
		ch <- r
	}()
	r := <-ch
	return r.v, r.err
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// checkWire asserts what a capture must show after jumbo (or control)
// traffic: frames of exactly the full size in both directions for TCP and
// for ICMP, nothing longer, and no IPv4 fragments.
func checkWire(t testing.TB, c *frameCapture) {
	t.Helper()
	st := c.stats()
	for dir, s := range st {
		t.Logf("wire %s: %v", dirName[dir], s)
		if s.Full[6] == 0 {
			t.Errorf("wire %s: no TCP frame of the full %d bytes", dirName[dir], c.full)
		}
		if s.Full[1] == 0 {
			t.Errorf("wire %s: no ICMP frame of the full %d bytes (ping -M do -s %d)", dirName[dir], c.full, c.full-14-28)
		}
		if s.Over > 0 {
			t.Errorf("wire %s: %d frames longer than %d bytes (longest %d): offloads on the wire?", dirName[dir], s.Over, c.full, s.MaxLen)
		}
		if s.Fragments > 0 {
			t.Errorf("wire %s: %d IPv4 fragments; want whole packets", dirName[dir], s.Fragments)
		}
	}
}
