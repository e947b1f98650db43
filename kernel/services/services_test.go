package services_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/nke-harness/nke/kernel/ifnet"
	"github.com/nke-harness/nke/kernel/netstack"
	"github.com/nke-harness/nke/kernel/services"
	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/virtio/devmodel"
	"github.com/nke-harness/nke/virtio/virtionet"
)

// peer is a second gVisor stack on the far side of the device model: the
// whole guest path (driver, interface, stack, services) is exercised in one
// process, under -race.
type peer struct {
	s  *stack.Stack
	ch *channel.Endpoint
}

var (
	guestIP = netip.MustParseAddr("10.0.2.15")
	peerIP  = tcpip.AddrFrom4([4]byte{10, 0, 2, 2})
)

func newGuestAndPeer(t *testing.T) (*peer, *virtionet.Device) {
	t.Helper()
	heap := dma.NewHeap(32 << 20)
	toPeer := make(chan []byte, 1024)
	dev := devmodel.New(heap, devmodel.Options{Tx: func(f []byte) { toPeer <- append([]byte(nil), f...) }})
	drv, err := virtionet.Open(dev, heap, virtionet.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ifp, err := ifnet.New(drv, ifnet.Config{Index: 1})
	if err != nil {
		t.Fatal(err)
	}
	gs, err := netstack.New(ifp, netstack.Config{Addr: netip.MustParsePrefix("10.0.2.15/24"), Gateway: netip.MustParseAddr("10.0.2.2")})
	if err != nil {
		t.Fatal(err)
	}
	ifp.Start()
	sv, err := services.Start(gs, services.Config{Status: func() any {
		return map[string]any{"driver": drv.Stats(), "features": virtionet.FeatureList(drv.Features())}
	}, Text: func(w io.Writer, st any) { fmt.Fprintf(w, "NKE harness status\n%v\n", st) }})
	if err != nil {
		t.Fatal(err)
	}

	p := &peer{ch: channel.New(1024, 1500, tcpip.LinkAddress("\x02\x00\x00\x00\x00\x02"))}
	p.s = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	if err := p.s.CreateNIC(1, ethernet.New(p.ch)); err != nil {
		t.Fatal(err)
	}
	p.s.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: peerIP, PrefixLen: 24}}, stack.AddressProperties{})
	p.s.SetRouteTable([]tcpip.Route{{Destination: tcpip.AddressWithPrefix{Address: peerIP, PrefixLen: 24}.Subnet(), NIC: 1}})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { // peer -> guest
		defer func() { done <- struct{}{} }()
		for {
			pkt := p.ch.ReadContext(ctx)
			if pkt == nil {
				return
			}
			var b bytes.Buffer
			for _, s := range pkt.AsSlices() {
				b.Write(s)
			}
			pkt.DecRef()
			for dev.Deliver(b.Bytes()) == devmodel.ErrBacklog {
				time.Sleep(100 * time.Microsecond)
			}
		}
	}()
	go func() { // guest -> peer
		defer func() { done <- struct{}{} }()
		for {
			select {
			case f := <-toPeer:
				pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(f)})
				p.ch.InjectInbound(0, pkt)
				pkt.DecRef()
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() {
		sv.Close()
		ifp.Stop()
		cancel()
		<-done
		<-done
		p.s.Close()
		gs.Close()
		if err := dev.Err(); err != nil {
			t.Errorf("device saw a driver error: %v", err)
		}
	})
	return p, drv
}

func (p *peer) dial(ctx context.Context, port uint16) (net.Conn, error) {
	return gonet.DialContextTCP(ctx, p.s, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(guestIP.As4()), Port: port}, ipv4.ProtocolNumber)
}

func TestStatusPageAndEcho(t *testing.T) {
	p, drv := newGuestAndPeer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return p.dial(ctx, 80)
	}}}

	resp, err := client.Get("http://10.0.2.15/stats")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Driver   virtionet.Stats `json:"driver"`
		Features []string        `json:"features"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if st.Driver.RxPackets == 0 || st.Driver.TxPackets == 0 || !strings.Contains(strings.Join(st.Features, " "), "VERSION_1") {
		t.Fatalf("stats %+v", st)
	}
	resp, err = client.Get("http://10.0.2.15/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(string(body), "NKE harness status") || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Fatalf("status page: %q", body)
	}
	if resp, err := client.Get("http://10.0.2.15/nope"); err != nil || resp.StatusCode != 404 {
		t.Fatalf("unknown path: %v %v", resp, err)
	}

	// TCP echo: 2 MiB of random data comes back byte for byte.
	c, err := p.dial(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 2<<20)
	rand.Read(payload)
	go func() {
		c.Write(payload)
		c.(*gonet.TCPConn).CloseWrite()
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	c.Close()
	if err != nil || n != int64(len(payload)) || !bytes.Equal(h.Sum(nil), sha256sum(payload)) {
		t.Fatalf("echo: %d bytes, %v", n, err)
	}

	// UDP echo.
	uc, err := gonet.DialUDP(p.s, nil, &tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(guestIP.As4()), Port: 7}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	uc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := uc.Write([]byte("ping over udp")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	k, err := uc.Read(buf)
	if err != nil || string(buf[:k]) != "ping over udp" {
		t.Fatalf("udp echo: %q %v", buf[:k], err)
	}
	if s := drv.Stats(); s.RxDrops()+s.TxDrops() != 0 || s.DeviceErrors != 0 {
		t.Errorf("drops or errors: %+v", s)
	}
}

func sha256sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }
