package vmtests

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nke-harness/nke/kernel/netstack"
	"github.com/nke-harness/nke/tools/hostvm"
)

// guestLinkLocal is the guest's IPv6 link-local address (modified EUI-64
// of its MAC) as a client in the namespace writes it, zone included.
func guestLinkLocal() string {
	m := guestMAC
	return fmt.Sprintf("fe80::%02x%02x:%02xff:fe%02x:%02x%02x%%%s", m[0]^2, m[1], m[2], m[3], m[4], m[5], tapName)
}

// ipFilter finds an IP filter's status by name and family.
func ipFilter(fs []netstack.IPFilterStatus, name, family string) (netstack.IPFilterStatus, bool) {
	for _, f := range fs {
		if f.Name == name && f.Family == family {
			return f, true
		}
	}
	return netstack.IPFilterStatus{}, false
}

// TestFirewallNKE boots the guest with the IP firewall and rules on the
// command line and checks from the namespace, with ordinary clients, that
// it drops exactly what its rules name: ICMP echo, UDP to the echo port
// and TCP to port 9999 (silently: no reset), and UDP from IPv6 link-local
// addresses; while HTTP, the TCP echo and ICMPv6 (neighbour discovery and
// echo to the guest's link-local address) go on working.
func TestFirewallNKE(t *testing.T) {
	requireTapNet(t)
	n := newTapNet(t, 1500)
	rules := "block in proto icmp; block in proto udp to port 7; block in proto tcp to port 9999; block in proto udp from fe80::/10"
	n.startGuest("firewall-nke", hostvm.NIC{MAC: guestMAC.String()}, "nke.load=ipfw", `nke.ipfw="`+rules+`"`)

	// What the rules leave alone works.
	if page, _ := n.http()(t, "/"); !strings.Contains(page, "com.example.ipfw (inet)") {
		t.Errorf("the status page does not list the firewall:\n%s", page)
	}
	n.echoTCP(t, randomBytes(1<<20))
	out, err := n.run(60*time.Second, nil, "ping", "-6", "-n", "-c", "3", "-w", "30", guestLinkLocal())
	if err != nil {
		t.Errorf("ping -6 %s (ICMPv6 echo, not blocked): %v\n%s", guestLinkLocal(), err, out)
	}

	// What they name does not.
	if out, err := n.run(30*time.Second, nil, "ping", "-n", "-c", "3", "-w", "4", hostvm.GuestIP); err == nil {
		t.Errorf("ping %s got through a firewall blocking ICMP:\n%s", hostvm.GuestIP, out)
	}
	if out, _ := n.run(30*time.Second, []byte("blocked"), "nc.openbsd", "-u", "-w", "2", hostvm.GuestIP, strconv.Itoa(hostvm.GuestEchoPort)); len(out) != 0 {
		t.Errorf("UDP echo answered %q through a firewall blocking it", out)
	}
	start := time.Now()
	_, err = n.run(30*time.Second, nil, "nc.openbsd", "-z", "-w", "3", hostvm.GuestIP, "9999")
	if err == nil || time.Since(start) < 2*time.Second {
		t.Errorf("connect to blocked port 9999: %v after %v; want a timeout (the SYN dropped), not a reset", err, time.Since(start))
	}
	for i := 0; i < 3; i++ {
		n.run(30*time.Second, []byte("v6"), "nc.openbsd", "-6", "-u", "-w", "1", guestLinkLocal(), "5000")
	}

	st, _ := statsVia(t, n.http())
	v4, ok4 := ipFilter(st.NKE.IPFilters, "com.example.ipfw", "inet")
	v6, ok6 := ipFilter(st.NKE.IPFilters, "com.example.ipfw", "inet6")
	if !ok4 || !ok6 {
		t.Fatalf("firewall filters not in /stats: %+v", st.NKE.IPFilters)
	}
	// 3 pings, 1 UDP datagram, at least one SYN (retries may add more).
	if v4.Drop < 5 || v4.Continue == 0 {
		t.Errorf("IPv4 filter counters %+v: want at least 5 drops and traffic passed", v4.Counters)
	}
	if v6.Drop < 3 || v6.Continue == 0 {
		t.Errorf("IPv6 filter counters %+v: want at least 3 drops (UDP from link-local) and ICMPv6 passed", v6.Counters)
	}
	if st.Counters.RxDrops != 0 || st.Counters.TxDrops != 0 {
		t.Errorf("driver drops: %+v", st.Counters)
	}
}

// TestChurnNKE attaches and detaches pass-through filters at every hook
// every 2 ms (the churn NKE) while a 16 MiB TCP echo and HTTP requests
// run: the echo comes back intact, no buffer leaks, and no filter is
// called after its Detached callback.
func TestChurnNKE(t *testing.T) {
	requireTapNet(t)
	n := newTapNet(t, 1500)
	g := n.startGuest("churn-nke", hostvm.NIC{MAC: guestMAC.String()}, "nke.load=churn,ethlog", "nke.churn=2")
	before, _ := statsVia(t, n.http())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 20; i++ {
			n.http()(t, "/")
		}
	}()
	n.echoTCP(t, randomBytes(16<<20))
	<-done
	// Once idle, every transmit buffer is back and the rx ring holds as
	// many as before.
	var after = before
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		after, _ = statsVia(t, n.http())
		// The /stats reply itself may still be in the tx ring: allow
		// for it.
		if after.Pool.RxFree == before.Pool.RxFree && after.Pool.Buffers-after.Pool.Free <= 8 {
			break
		}
	}
	if after.Pool.RxFree != before.Pool.RxFree || after.Pool.Buffers-after.Pool.Free > 8 {
		t.Errorf("pools after the traffic: %+v, before %+v", after.Pool, before.Pool)
	}
	g.vm.Console.Send(hostvm.PoweroffLine)
	line := g.expectLine("attach failures", 60*time.Second)
	if !strings.Contains(line, " 0 calls after detached, 0 attach failures") {
		t.Errorf("churn: %s", line[strings.LastIndex(line, "churn:"):])
	}
	var cycles int
	fmt.Sscanf(line[strings.LastIndex(line, "churn: ")+len("churn: "):], "%d", &cycles)
	if cycles < 100 {
		t.Errorf("churn ran only %d attach/detach cycles", cycles)
	}
	t.Logf("churn: %d attach/detach cycles during the traffic", cycles)
}
