package guest

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/kernel/ifnet"
	"github.com/nke-harness/nke/kernel/initproc"
	"github.com/nke-harness/nke/kernel/kctl"
	"github.com/nke-harness/nke/kernel/netstack"
	"github.com/nke-harness/nke/kernel/sockfilter"
	"github.com/nke-harness/nke/virtio/virtionet"
)

// Status is what the status page and /stats show.
type Status struct {
	Version     string             `json:"version"`
	Uptime      float64            `json:"uptime_seconds"`
	BootSeconds float64            `json:"boot_seconds"`
	NIC         NICStatus          `json:"nic"`
	Counters    Counters           `json:"counters"`
	Driver      virtionet.Stats    `json:"driver"`
	Interface   ifnet.Stats        `json:"interface"`
	StackLink   netstack.LinkStats `json:"stack_link"`
	TCP         netstack.TCPStats  `json:"tcp"`
	Pool        PoolStatus         `json:"pool"`
	CPU         CPUStatus          `json:"cpu"`
	NKE         NKEStatus          `json:"nke"`
}

// NKEStatus is every hook of the data path with what is attached to it
// and its counters, and the NKEs the loader holds.
type NKEStatus struct {
	Started   []StartedNKE              `json:"started"`
	RawHooks  []ifnet.FilterStatus      `json:"raw_hooks"`
	Filters   []ifnet.FilterStatus      `json:"interface_filters"`
	Protocols []ifnet.ProtoStatus       `json:"protocols"`
	Unclaimed []ifnet.Unclaimed         `json:"unclaimed"`
	IPFilters []netstack.IPFilterStatus `json:"ip_filters"`
	IP        netstack.IPStats          `json:"ip"`
	// SocketFilters are the registered socket filters with their
	// counters summed over their sockets.
	SocketFilters []sockfilter.FilterStatus `json:"socket_filters"`
	// Gone are filters detached lately (at most hook.MaxGone per hook),
	// with their last counters and the fault that detached them.
	Gone []hook.Gone `json:"detached"`
	// Controls are the kernel-control endpoints with their clients'
	// units; Events is how many kernel events were published.
	Controls []kctl.EndpointInfo `json:"controls"`
	Events   uint64              `json:"events"`
}

// StartedNKE is an NKE the guest started.
type StartedNKE struct {
	Name    string `json:"name"` // the bundle's folder
	ID      string `json:"id"`
	Version string `json:"version"`
	Args    string `json:"args,omitempty"`
}

// CPUStatus is where the guest's CPU time went since boot: the harness
// process (user and system) and the whole guest (busy vs. idle, from
// /proc/stat). A poll-mode driver trades CPU for latency; this shows the
// price.
type CPUStatus struct {
	ProcessUser   float64 `json:"process_user_seconds"`
	ProcessSystem float64 `json:"process_system_seconds"`
	GuestBusy     float64 `json:"guest_busy_seconds"`
	GuestIdle     float64 `json:"guest_idle_seconds"`
}

// NICStatus describes the device and how it was set up.
type NICStatus struct {
	PCI      string   `json:"pci"`
	MAC      string   `json:"mac"`
	MTU      int      `json:"mtu"`
	Link     string   `json:"link"`
	Address  string   `json:"address"`
	Gateway  string   `json:"gateway"`
	Features []string `json:"features"`
	Offered  []string `json:"offered_features"`
	// Declined are offered features the driver supports but did not
	// accept, each "NAME: why".
	Declined    []string `json:"declined"`
	Ring        string   `json:"ring"` // "split" or "packed"
	RxQueueSize uint16   `json:"rx_queue_size"`
	TxQueueSize uint16   `json:"tx_queue_size"`
}

// Counters are the headline numbers, from the driver.
type Counters struct {
	RxPackets uint64 `json:"rx_packets"`
	RxBytes   uint64 `json:"rx_bytes"`
	RxDrops   uint64 `json:"rx_drops"`
	TxPackets uint64 `json:"tx_packets"`
	TxBytes   uint64 `json:"tx_bytes"`
	TxDrops   uint64 `json:"tx_drops"`
}

// PoolStatus is the packet pools' occupancy: the rx ring's and the one
// transmitted packets come from.
type PoolStatus struct {
	Buffers   int `json:"buffers"`
	Free      int `json:"free"`
	RxBuffers int `json:"rx_buffers"`
	RxFree    int `json:"rx_free"`
	RxBufSize int `json:"rx_buffer_size"`
}

// Status gathers the current status.
func (g *Guest) Status() Status {
	d := g.drv.Stats()
	rx, tx := g.drv.QueueSizes()
	link := "down"
	if g.ifp.LinkUp() {
		link = "up"
	}
	gw := "none"
	if g.Settings.Gateway.IsValid() {
		gw = g.Settings.Gateway.String()
	}
	up, _ := initproc.Uptime()
	return Status{
		Version:     g.Version,
		Uptime:      up.Seconds(),
		BootSeconds: g.Booted.Seconds(),
		NIC: NICStatus{
			PCI: g.PCI, MAC: netMAC(g.drv.MAC()), MTU: g.drv.MTU(), Link: link,
			Address: g.Settings.Addr.String(), Gateway: gw,
			Features: virtionet.FeatureList(g.drv.Features()), Offered: virtionet.FeatureList(g.drv.Offered()),
			Declined:    declined(g.drv.Declined()),
			Ring:        g.drv.Layout().String(),
			RxQueueSize: rx, TxQueueSize: tx,
		},
		Counters: Counters{
			RxPackets: d.RxPackets, RxBytes: d.RxBytes, RxDrops: d.RxDrops(),
			TxPackets: d.TxPackets, TxBytes: d.TxBytes, TxDrops: d.TxDrops(),
		},
		Driver:    d,
		Interface: g.ifp.Stats(),
		StackLink: g.st.LinkStats(),
		TCP:       g.st.TCPStats(),
		Pool: PoolStatus{Buffers: g.drv.Pool().Cap(), Free: g.drv.Pool().Avail(),
			RxBuffers: g.drv.RxPool().Cap(), RxFree: g.drv.RxPool().Avail(), RxBufSize: g.drv.RxPool().BufSize()},
		CPU: readCPU(),
		NKE: g.nkeStatus(),
	}
}

func (g *Guest) nkeStatus() NKEStatus {
	s := NKEStatus{RawHooks: g.ifp.RawHooks(), Filters: g.ifp.Filters(), Protocols: g.ifp.Protocols(), Unclaimed: g.ifp.Unclaimed(),
		IPFilters: g.st.IPFilters(), IP: g.st.IPStats(), Gone: append(g.ifp.Gone(), g.st.IPGone()...)}
	s.Started = g.started()
	if g.sockets != nil {
		s.SocketFilters = g.sockets.Filters()
	}
	if g.ctl != nil {
		s.Controls = g.ctl.Endpoints("")
	}
	s.Events = g.events.Published()
	return s
}

func declined(ds []virtionet.Decline) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.String()
	}
	return out
}

// writeText renders a Status for people (the / page, the stats command).
func writeText(w io.Writer, v any) {
	s, ok := v.(Status)
	if !ok {
		fmt.Fprintf(w, "%v\n", v)
		return
	}
	up := time.Duration(s.Uptime * float64(time.Second)).Round(time.Millisecond)
	fmt.Fprintf(w, "%s\nuptime %v, booted in %.3fs\n\n", s.Version, up, s.BootSeconds)
	n := s.NIC
	fmt.Fprintf(w, "NIC        virtio-net at PCI %s, MAC %s, MTU %d, link %s\n", n.PCI, n.MAC, n.MTU, n.Link)
	fmt.Fprintf(w, "address    %s, gateway %s\n", n.Address, n.Gateway)
	fmt.Fprintf(w, "queues     %s rings, rx %d, tx %d descriptors\n", n.Ring, n.RxQueueSize, n.TxQueueSize)
	fmt.Fprintf(w, "features   %s\n", strings.Join(n.Features, " "))
	fmt.Fprintf(w, "offered    %s\n", strings.Join(n.Offered, " "))
	for _, d := range n.Declined {
		fmt.Fprintf(w, "declined   %s\n", d)
	}
	fmt.Fprintln(w)
	c := s.Counters
	fmt.Fprintf(w, "%-4s %12s %14s %8s\n", "", "packets", "bytes", "drops")
	fmt.Fprintf(w, "%-4s %12d %14d %8d\n", "rx", c.RxPackets, c.RxBytes, c.RxDrops)
	fmt.Fprintf(w, "%-4s %12d %14d %8d\n\n", "tx", c.TxPackets, c.TxBytes, c.TxDrops)
	d := s.Driver
	fmt.Fprintf(w, "driver     kicks rx %d tx %d ctrl %d; resets %d; device errors %d; tx ring full %d\n",
		d.RxKicks, d.TxKicks, d.CtrlKicks, d.Resets, d.DeviceErrors, d.TxRingFull)
	fmt.Fprintf(w, "drops      rx runt %d, bad header %d; tx bad size %d, no buffer %d, at reset %d; rx ring ran dry %d times\n",
		d.RxDropRunt, d.RxDropHeader, d.TxDropSize, d.TxDropNoBuf, d.TxDropReset, d.RxRingDry)
	i := s.Interface
	fmt.Fprintf(w, "interface  unknown EtherType %d, output queue drops %d, recoveries %d, link changes %d\n",
		i.RxUnknown, i.TxQueueDrops, i.Recoveries, i.LinkChanges)
	t := s.TCP
	fmt.Fprintf(w, "tcp        %d passive / %d active opens, %d established; resets sent %d received %d; retransmits %d\n",
		t.PassiveOpens, t.ActiveOpens, t.CurrentEstablished, t.ResetsSent, t.ResetsReceived, t.Retransmits)
	fmt.Fprintf(w, "pools      tx %d of %d buffers free; rx %d of %d free (%d bytes each)\n",
		s.Pool.Free, s.Pool.Buffers, s.Pool.RxFree, s.Pool.RxBuffers, s.Pool.RxBufSize)
	fmt.Fprintf(w, "cpu        harness %.2fs user %.2fs system; guest %.2fs busy %.2fs idle\n",
		s.CPU.ProcessUser, s.CPU.ProcessSystem, s.CPU.GuestBusy, s.CPU.GuestIdle)
	writeNKEs(w, s.NKE)
	fmt.Fprintf(w, "\nJSON: /stats\n")
}

func writeNKEs(w io.Writer, s NKEStatus) {
	fmt.Fprintf(w, "\nNKEs loaded: ")
	if len(s.Started) == 0 {
		fmt.Fprintf(w, "none")
	}
	for i, n := range s.Started {
		if i > 0 {
			fmt.Fprintf(w, ", ")
		}
		fmt.Fprintf(w, "%s %s (%s)", n.ID, n.Version, n.Name)
	}
	fmt.Fprintf(w, "\n%-10s %-28s %10s %12s %9s %9s %9s %7s %8s\n", "hook", "name", "packets", "bytes", "continue", "swallow", "drop", "faults", "ns/pkt")
	row := func(hook, name string, c hook.Counters) {
		fmt.Fprintf(w, "%-10s %-28s %10d %12d %9d %9d %9d %7d %8.1f\n", hook, name, c.Packets, c.Bytes, c.Continue, c.Swallow, c.Drop, c.Faults, c.NsPerPacket)
	}
	for _, f := range s.RawHooks {
		row("raw", f.Name, f.Counters)
	}
	for _, f := range s.Filters {
		row("interface", f.Name, f.Counters)
	}
	for _, p := range s.Protocols {
		row("protocol", p.Name+" ("+strings.Join(p.Demux, ",")+")", p.Counters)
	}
	for _, f := range s.IPFilters {
		row("ip", f.Name+" ("+f.Family+")", f.Counters)
	}
	for _, f := range s.SocketFilters {
		row("socket", fmt.Sprintf("%s (%d sockets)", f.Name, f.Sockets), f.Counters)
	}
	for _, gn := range s.Gone {
		if gn.Fault != "" {
			row("faulted", gn.Name+" ("+gn.Hook+")", gn.Counters)
			fmt.Fprintf(w, "           panicked: %s\n", gn.Fault)
		}
	}
	for _, u := range s.Unclaimed {
		fmt.Fprintf(w, "unclaimed  %s %#x: %d frames\n", u.Kind, u.Value, u.Count)
	}
	for _, c := range s.Controls {
		fmt.Fprintf(w, "control    %s (%s): %d clients\n", c.Name, c.Owner, len(c.Units))
	}
}
