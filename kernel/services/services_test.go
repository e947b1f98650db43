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
	"strings"
	"testing"
	"time"

	"github.com/nke-harness/nke/kernel/kerneltest"
	"github.com/nke-harness/nke/kernel/services"
	"github.com/nke-harness/nke/virtio/virtionet"
)

// newGuestAndPeer is the guest (driver, interface, stack, services) on the
// kerneltest rig with a second gVisor stack on the far side of the device
// model: the whole guest path is exercised in one process, under -race.
func newGuestAndPeer(t *testing.T) (*kerneltest.PeerStack, *virtionet.Device) {
	t.Helper()
	r := kerneltest.New(t, kerneltest.WithStack())
	drv := r.Drv
	p := r.NewPeer()
	sv, err := services.Start(r.Stack, services.Config{Status: func() any {
		return map[string]any{"driver": drv.Stats(), "features": virtionet.FeatureList(drv.Features())}
	}, Text: func(w io.Writer, st any) { fmt.Fprintf(w, "NKE harness status\n%v\n", st) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sv.Close() })
	return p, drv
}

func TestStatusPageAndEcho(t *testing.T) {
	p, drv := newGuestAndPeer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return p.Dial(ctx, 80)
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
	c, err := p.Dial(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 2<<20)
	rand.Read(payload)
	go func() {
		c.Write(payload)
		c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	c.Close()
	if err != nil || n != int64(len(payload)) || !bytes.Equal(h.Sum(nil), sha256sum(payload)) {
		t.Fatalf("echo: %d bytes, %v", n, err)
	}

	// UDP echo.
	uc, err := p.DialUDP(7)
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

// The same services on the guest's link-local IPv6 address.
func TestIPv6(t *testing.T) {
	r := kerneltest.New(t, kerneltest.WithStack())
	p := r.NewPeer()
	sv, err := services.Start(r.Stack, services.Config{Status: func() any { return map[string]int{"answer": 42} }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sv.Close() })
	r.WaitIPv6(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return p.Dial6(ctx, 80)
	}}}
	resp, err := client.Get("http://[" + p.GuestIP6().String() + "]/stats")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"answer": 42`) {
		t.Fatalf("status over IPv6: %q", body)
	}
	client.CloseIdleConnections()

	c, err := p.Dial6(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 256<<10)
	rand.Read(payload)
	go func() {
		c.Write(payload)
		c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("echo over IPv6: %d of %d bytes, %v", len(got), len(payload), err)
	}

	uc, err := p.DialUDP6(7)
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	uc.SetDeadline(time.Now().Add(10 * time.Second))
	uc.Write([]byte("ping over udp6"))
	buf := make([]byte, 100)
	if k, err := uc.Read(buf); err != nil || string(buf[:k]) != "ping over udp6" {
		t.Fatalf("udp echo over IPv6: %q %v", buf[:k], err)
	}
}

func sha256sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }
