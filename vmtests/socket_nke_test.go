package vmtests

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nke-harness/nke/tools/hostvm"
)

var tcplogLine = regexp.MustCompile(`tcplog: tcp ([0-9.]+):(\d+) <-> ([0-9.]+):(\d+): (\d+) bytes in, (\d+) out`)

// TestSocketNKEs boots the guest with the TCP logger and the content
// filter loaded and checks from the namespace, with ordinary clients: the
// logger reports the right byte counts for a 1 MiB echo and for an HTTP
// request; the content filter holds and then passes a 16 MiB echo intact
// and blocks a message with its marker; unloading the logger (console:
// nke stop) during 200 concurrent short connections loses none of them
// and calls nothing after its unregistered callback.
func TestSocketNKEs(t *testing.T) {
	requireTapNet(t)
	n := newTapNet(t, 1500)
	g := n.startGuest("socket-nkes", hostvm.NIC{MAC: guestMAC.String()}, "nke.load=tcplog,contentfilter", "nke.contentfilter=FORBIDDEN")

	// 1 MiB echo: one connection, 1 MiB each way.
	n.echoTCP(t, randomBytes(1<<20))
	line := g.expectLine("1048576 bytes in, 1048576 out", 60*time.Second)
	if m := tcplogLine.FindStringSubmatch(line[strings.LastIndex(line, "tcplog: "):]); m == nil || m[2] != strconv.Itoa(hostvm.GuestEchoPort) {
		t.Errorf("tcplog's record of the echo: %q", line[strings.LastIndex(line, "tcplog: "):])
	}

	// An HTTP request: in is the request, out the response.
	page, _ := n.http()(t, "/")
	out := g.expectLine(" out, ", 60*time.Second)
	var rec []string
	for _, m := range tcplogLine.FindAllStringSubmatch(out, -1) {
		if m[2] == "80" {
			rec = m
		}
	}
	if rec == nil {
		t.Fatalf("no tcplog record for the HTTP connection:\n%s", out)
	}
	in, _ := strconv.Atoi(rec[5])
	sent, _ := strconv.Atoi(rec[6])
	if in < len("GET / HTTP/1.1\r\n\r\n") || sent < len(page) || sent > len(page)+1024 {
		t.Errorf("HTTP connection: %d bytes in, %d out; the page is %d bytes", in, sent, len(page))
	}

	// The content filter holds every chunk and passes it after its
	// verdict: a 16 MiB echo comes back intact.
	n.echoTCP(t, randomBytes(16<<20))
	// A message with the marker is blocked on its way back.
	got, _ := n.run(30*time.Second, []byte("hello FORBIDDEN world"), "nc.openbsd", "-N", "-w", "5", hostvm.GuestIP, strconv.Itoa(hostvm.GuestEchoPort))
	if strings.Contains(string(got), "FORBIDDEN") {
		t.Errorf("the content filter let the marked message through: %q", got)
	}

	// The content filter depends on the logger (its bundle says so):
	// it goes first, or the loader refuses to unload the logger.
	g.command("nke unload contentfilter")
	g.expectLine("unload com.example.contentfilter: version", 60*time.Second)

	// Unload the logger during 200 concurrent short connections (each
	// open for two seconds, so the unload falls inside all of them).
	script := fmt.Sprintf(`for i in $(seq 200); do ( (printf "conn$i"; sleep 2) | nc.openbsd -N -w 20 %s %d > /tmp/nke-conn.$$.$i) & done; wait
ok=0; for i in $(seq 200); do [ "$(cat /tmp/nke-conn.$$.$i)" = "conn$i" ] && ok=$((ok+1)); rm -f /tmp/nke-conn.$$.$i; done; echo $ok`, hostvm.GuestIP, hostvm.GuestEchoPort)
	done := make(chan string, 1)
	go func() {
		res, err := n.run(5*time.Minute, nil, "sh", "-c", script)
		if err != nil {
			done <- "error: " + err.Error()
			return
		}
		done <- strings.TrimSpace(string(res))
	}()
	time.Sleep(1500 * time.Millisecond)
	g.command("nke stop tcplog")
	g.expectLine("tcplog: unregistered; 0 calls after unregistered", 120*time.Second)
	if res := <-done; res != "200" {
		t.Errorf("concurrent connections while the logger unloaded: %s of 200 echoed", res)
	}
	g.command("nke list")
	l := g.expectLine("in the image: ", 30*time.Second)
	l = l[strings.LastIndex(l, "loaded:"):]
	if i := strings.Index(l, "; in the image"); i >= 0 && strings.Contains(l[:i], "tcplog") {
		t.Errorf("tcplog still loaded after nke stop: %s", l)
	}
}
