package vmtests

import (
	"bytes"
	"path/filepath"
	"testing"
	"time"

	"github.com/mdlayher/ethernet"

	"github.com/nke-harness/nke/nke/frametest"
	"github.com/nke-harness/nke/tools/hostvm"
)

// TestProtocolNKE boots the guest with the 0x88B5 echo protocol and the
// Ethernet logger loaded from the command line, and talks to it with raw
// frames from the frame peer: requests of every size are answered to the
// sender with the same body, replies and other types are not, a frame of an
// EtherType nobody claims is dropped and counted by its type, and the
// logger saw it all.
func TestProtocolNKE(t *testing.T) {
	requireVM(t)
	dir := shortTempDir(t)
	p, _ := newFramePeer(t, dir)
	nic := hostvm.NIC{Backend: hostvm.NetDgram, SocketPath: filepath.Join(dir, "qemu.sock"), PeerPath: filepath.Join(dir, "peer.sock"), MAC: guestMAC.String()}
	args, err := nic.Args(0)
	if err != nil {
		t.Fatal(err)
	}
	g := startGuest(t, "protocol-nke", args, "nke.load=etherecho,ethlog")
	const echoType ethernet.EtherType = 0x88b5
	isEcho := func(f frametest.Frame) bool { return f.EtherType == echoType }

	for i, size := range []int{1, 45, 500, 1499} {
		body := randomBytes(size)
		body[0] = 0x01 // request
		p.send(frametest.NewEthernet(guestMAC, p.mac, echoType, body).Bytes())
		f, _ := p.expect("echo reply", 30*time.Second, isEcho)
		if !bytes.Equal(f.Dst, p.mac) || !bytes.Equal(f.Src, guestMAC) {
			t.Fatalf("reply %d addressed %v from %v, want to %v from %v", i, f.Dst, f.Src, p.mac, guestMAC)
		}
		got := f.Payload
		if len(got) < size {
			t.Fatalf("reply %d: %d bytes, want %d", i, len(got), size)
		}
		got = got[:size] // a short frame may have been padded on the way
		if got[0] != 0x02 || !bytes.Equal(got[1:], body[1:]) {
			t.Fatalf("reply %d (%d bytes): type %#x, body differs from the request's", i, size, got[0])
		}
	}
	// A reply and an unknown message type are not answered; nor is a
	// frame for an EtherType nobody claims, which is counted.
	p.send(frametest.NewEthernet(guestMAC, p.mac, echoType, append([]byte{0x02}, make([]byte, 50)...)).Bytes())
	p.send(frametest.NewEthernet(guestMAC, p.mac, echoType, append([]byte{0x7f}, make([]byte, 50)...)).Bytes())
	p.send(frametest.NewEthernet(guestMAC, p.mac, 0x88b6, make([]byte, 50)).Bytes())
	select {
	case b := <-p.frames:
		if f, err := frametest.Parse(b); err == nil && isEcho(f) {
			t.Fatalf("the guest answered a reply or an unknown type: % x", b[:20])
		}
	case <-time.After(2 * time.Second):
	}
	g.command("stats")
	out := g.expectLine("JSON: /stats", 30*time.Second)
	for _, want := range []string{"unclaimed  ethertype 0x88b6: 1 frames", "NKEs loaded: com.example.etherecho 1.0.0 (EtherEcho.nke), com.example.ethlog 1.0.0 (EthernetLogger.nke)",
		"protocol   com.example.etherecho (ethertype 0x88b5)", "interface  com.example.ethlog"} {
		if !bytes.Contains([]byte(out), []byte(want)) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
}
