package vmtests

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nke-harness/nke/kernel/guest"
)

var httpClient = &http.Client{Timeout: 30 * time.Second}

func httpGet(t testing.TB, port int, path string) (string, http.Header) {
	t.Helper()
	resp, err := httpClient.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: status %d, %v", path, resp.StatusCode, err)
	}
	return string(b), resp.Header
}

// guestGet fetches a path from the guest's HTTP service and returns the
// body and Content-Type, failing the test unless the status is 200.
type guestGet func(t testing.TB, path string) (body, contentType string)

// viaPort fetches through a host port forwarded to the guest.
func viaPort(port int) guestGet {
	return func(t testing.TB, path string) (string, string) {
		t.Helper()
		body, h := httpGet(t, port, path)
		return body, h.Get("Content-Type")
	}
}

func stats(t testing.TB, port int) guest.Status {
	t.Helper()
	st, _ := statsVia(t, viaPort(port))
	return st
}

// nicExtra is what /stats carries beyond guest.Status as this tree knows
// it (fields the driver adds, read without depending on its types).
type nicExtra struct {
	NIC struct {
		Declined []string `json:"declined"`
	} `json:"nic"`
}

// statsVia reads /stats; extra holds the fields guest.Status lacks.
func statsVia(t testing.TB, get guestGet) (guest.Status, nicExtra) {
	t.Helper()
	body, ct := get(t, "/stats")
	if ct != "application/json" {
		t.Fatalf("/stats Content-Type %q", ct)
	}
	var st guest.Status
	var extra nicExtra
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/stats is not a Status: %v\n%s", err, body)
	}
	if err := json.Unmarshal([]byte(body), &extra); err != nil {
		t.Fatalf("/stats: %v\n%s", err, body)
	}
	return st, extra
}

// echoTCP sends payload to the TCP echo service and checks the bytes that
// come back by SHA-256. It writes and reads concurrently, as the echo
// service only sends what it has received.
func echoTCP(t testing.TB, port int, payload []byte) time.Duration {
	t.Helper()
	start := time.Now()
	c := dialEcho(t, port)
	defer c.Close()
	echoConn(t, c, payload)
	return time.Since(start)
}

func dialEcho(t testing.TB, port int) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 10*time.Second)
	if err != nil {
		t.Fatalf("dial echo: %v", err)
	}
	return c
}

// echoConn runs payload through an open echo connection.
func echoConn(t testing.TB, c net.Conn, payload []byte) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		t.Fatalf("echo read after %d bytes: %v", n, err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("echo write: %v", err)
	}
	want := sha256.Sum256(payload)
	if n != int64(len(payload)) || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("echo returned %d bytes with sha256 %x, sent %d with %x", n, h.Sum(nil), len(payload), want)
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// echoUDP sends datagrams to the UDP echo service and checks each comes
// back. UDP may lose a datagram, so each is retried a few times.
func echoUDP(t testing.TB, port int, msgs ...string) {
	t.Helper()
	c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 2048)
	for _, m := range msgs {
		ok := false
		for try := 0; try < 5 && !ok; try++ {
			c.Write([]byte(m))
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			n, err := c.Read(buf)
			ok = err == nil && string(buf[:n]) == m
		}
		if !ok {
			t.Fatalf("UDP echo of %q never came back", m)
		}
	}
}

// concurrentEcho runs n TCP echo connections at once. The connections are
// opened one after another, each proven end to end with a small exchange:
// QEMU's user networking (libslirp) listens on a forwarded port with a
// backlog of 1, so a burst of simultaneous connects overflows the host's
// accept queue and some are reset before they reach the guest. On failure
// it logs the guest's TCP counters.
func concurrentEcho(t testing.TB, ports userPorts, n, size int) {
	t.Helper()
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = dialEcho(t, ports.Echo)
		defer conns[i].Close()
		hello := []byte(fmt.Sprintf("conn %d", i))
		conns[i].SetDeadline(time.Now().Add(30 * time.Second))
		got := make([]byte, len(hello))
		if _, err := conns[i].Write(hello); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if _, err := io.ReadFull(conns[i], got); err != nil || !bytes.Equal(got, hello) {
			t.Fatalf("connection %d: echo of %q: %q, %v", i, hello, got, err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sub := &collect{TB: t}
			func() {
				defer func() { recover() }()
				echoConn(sub, c, randomBytes(size))
			}()
			if sub.msg != "" {
				errs <- sub.msg
			}
		}()
	}
	wg.Wait()
	close(errs)
	failed := false
	for e := range errs {
		t.Error(e)
		failed = true
	}
	if failed {
		t.Logf("guest TCP counters: %+v", stats(t, ports.HTTP).TCP)
	}
}

// collect turns Fatalf from another goroutine into a recorded message.
type collect struct {
	testing.TB
	msg string
}

func (c *collect) Helper() {}
func (c *collect) Fatalf(f string, a ...any) {
	c.msg = fmt.Sprintf(f, a...)
	panic(c.msg)
}
func (c *collect) Fatal(a ...any) { c.Fatalf("%s", fmt.Sprint(a...)) }

// checkStatus checks the status page and /stats against what the guest
// should report for its device.
func checkStatus(t testing.TB, port int, wantFeatures, notFeatures []string, rxq, txq uint16) guest.Status {
	t.Helper()
	st, _ := checkStatusVia(t, viaPort(port), wantFeatures, notFeatures, rxq, txq)
	return st
}

// checkStatusVia is checkStatus through any way to the guest's HTTP.
func checkStatusVia(t testing.TB, get guestGet, wantFeatures, notFeatures []string, rxq, txq uint16) (guest.Status, nicExtra) {
	t.Helper()
	page, ct := get(t, "/")
	if !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("/ Content-Type %q", ct)
	}
	for _, want := range []string{"nke-harness", "PCI 0000:00:", "features", "VERSION_1", "rx ", "tx ", "drops", fmt.Sprintf("rx %d, tx %d", rxq, txq)} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %q:\n%s", want, page)
		}
	}
	st, extra := statsVia(t, get)
	have := strings.Join(st.NIC.Features, ",")
	for _, f := range wantFeatures {
		if !strings.Contains(","+have+",", ","+f+",") {
			t.Errorf("feature %s not negotiated: %s", f, have)
		}
	}
	for _, f := range notFeatures {
		if strings.Contains(","+have+",", ","+f+",") {
			t.Errorf("feature %s negotiated, want it absent: %s", f, have)
		}
	}
	if st.NIC.RxQueueSize != rxq || st.NIC.TxQueueSize != txq {
		t.Errorf("queue sizes rx %d tx %d, want %d/%d", st.NIC.RxQueueSize, st.NIC.TxQueueSize, rxq, txq)
	}
	if st.NIC.Link != "up" || st.NIC.Address != "10.0.2.15/24" || st.NIC.MAC == "" {
		t.Errorf("NIC status %+v", st.NIC)
	}
	return st, extra
}
