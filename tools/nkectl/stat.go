package main

import (
	"bytes"
	"crypto/rand"
	"flag"
	"fmt"
	"runtime/debug"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nke-harness/nke/kernel/ctlchan"
)

func statCmd() *command {
	return &command{
		name: "stat", args: "[ID...]", summary: "the loaded NKEs, their counters, every hook's chain", max: -1,
		help: `
Prints the kextstat-like table of loaded NKEs: index, references (loaded
bundles that depend on it plus control clients), identifier, version,
kind (builtin or wasm), layer, attachment, its resolved place in its
chain, the verdict counters (continue, swallow, drop, faults, refused:
verdicts beyond its capabilities) and the mean time per packet; then
the order of every hook's chain, as packets meet the filters. With IDs,
only those NKEs and the chains they are in; one not loaded is exit 1
(kextstat -b; nkectl stat ID >/dev/null tells whether it is loaded).
--json prints the guest's reply (with IDs, only their part of it).`,
		example: `
$ nkectl stat
INDEX  REFS  ID                      VERSION  KIND     LAYER      ATTACHMENT  ORDER   CONTINUE  SWALLOW  DROP  FAULTS  REFUSED  NS/PKT
1      1     com.example.base        1.0      builtin  interface  vtnet0 all  1 of 2  90        0        10    0       0        12.5
2      0     com.example.fw          2.1      builtin  interface  vtnet0 all  2 of 2  180       0        20    0       0        25.0

HOOK            CHAIN
vtnet0 filters  com.example.base -> com.example.fw`,
		run: func(c *cli, args []string) error { return c.stat(args) },
	}
}

func (c *cli) stat(ids []string) error {
	cl, err := c.connect()
	if err != nil {
		return err
	}
	ctx, cancel := c.requestCtx()
	defer cancel()
	st, err := cl.Stat(ctx)
	if err != nil {
		return c.requestErr("stat", err)
	}
	if len(ids) > 0 {
		var err error
		if st, err = onlyIDs(st, ids); err != nil {
			return err
		}
	}
	if c.json {
		if st.NKEs == nil {
			st.NKEs = []ctlchan.NKEStat{}
		}
		if st.Chains == nil {
			st.Chains = []ctlchan.Chain{}
		}
		return c.printJSON(st)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 8, 2, ' ', 0)
	if len(st.NKEs) == 0 {
		fmt.Fprintln(tw, "no NKEs loaded (nkectl load PATH.nke loads one)")
	} else {
		fmt.Fprintln(tw, "INDEX\tREFS\tID\tVERSION\tKIND\tLAYER\tATTACHMENT\tORDER\tCONTINUE\tSWALLOW\tDROP\tFAULTS\tREFUSED\tNS/PKT")
		for _, n := range st.NKEs {
			k := n.Counters
			fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%.1f\n",
				n.Index, n.Refs, n.ID, n.Version, dash(n.Kind), dash(n.Layer), dash(n.Attachment), dash(n.Order),
				k.Continue, k.Swallow, k.Drop, k.Faults, k.Refused, k.NsPerPacket)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(st.Chains) == 0 {
		return nil
	}
	fmt.Fprintln(c.stdout)
	tw = tabwriter.NewWriter(c.stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "HOOK\tCHAIN")
	for _, ch := range st.Chains {
		chain := "(empty)"
		if len(ch.Filters) > 0 {
			chain = strings.Join(ch.Filters, " -> ")
		}
		fmt.Fprintf(tw, "%s\t%s\n", ch.Hook, chain)
	}
	return tw.Flush()
}

// onlyIDs keeps the NKEs ids and the chains holding one of them.
func onlyIDs(st ctlchan.Stat, ids []string) (ctlchan.Stat, error) {
	var out ctlchan.Stat
	for _, id := range ids {
		i := slices.IndexFunc(st.NKEs, func(n ctlchan.NKEStat) bool { return n.ID == id })
		if i < 0 {
			return out, fmt.Errorf("stat: %s is not loaded (nkectl stat lists what is)", id)
		}
		out.NKEs = append(out.NKEs, st.NKEs[i])
	}
	for _, ch := range st.Chains {
		if slices.ContainsFunc(ch.Filters, func(f string) bool { return slices.Contains(ids, f) }) {
			out.Chains = append(out.Chains, ch)
		}
	}
	return out, nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func pingCmd() *command {
	var count, size int
	var interval time.Duration
	return &command{
		name: "ping", args: "[--count N] [--size BYTES]", summary: "round trips to the guest", max: 0,
		help: `
Sends BYTES of random data to the guest and checks they come back, COUNT
times, printing each round trip's time: is the guest up, how far away is
it.`,
		example: `
$ nkectl ping --count 2
32 bytes from nke-harness guest (protocol 1): seq=1 time=0.21ms
32 bytes from nke-harness guest (protocol 1): seq=2 time=0.09ms`,
		flags: func(fs *flag.FlagSet) {
			fs.IntVar(&count, "count", 1, "`N` round trips")
			fs.IntVar(&size, "size", 32, "`BYTES` in each")
			fs.DurationVar(&interval, "interval", 0, "wait `D` between round trips")
		},
		run: func(c *cli, args []string) error { return c.ping(count, size, interval) },
	}
}

type pingResult struct {
	Server   string          `json:"server"`
	Protocol int             `json:"protocol"`
	Bytes    int             `json:"bytes"`
	RTT      []time.Duration `json:"rtt_ns"`
}

func (c *cli) ping(count, size int, interval time.Duration) error {
	if count < 1 || size < 0 || size > ctlchan.MaxPayload-16 {
		return usagef("ping: --count wants 1 or more, --size 0 to %d", ctlchan.MaxPayload-16)
	}
	cl, err := c.connect()
	if err != nil {
		return err
	}
	res := pingResult{Server: c.hello.Server, Protocol: c.hello.Version, Bytes: size, RTT: []time.Duration{}}
	for i := 1; i <= count; i++ {
		data := make([]byte, size)
		rand.Read(data)
		ctx, cancel := c.requestCtx()
		t0 := time.Now()
		back, err := cl.Ping(ctx, data)
		rtt := time.Since(t0)
		cancel()
		if err != nil {
			return c.requestErr("ping", err)
		}
		if !bytes.Equal(back, data) {
			return fmt.Errorf("ping: %d bytes sent, %d came back different: the channel corrupts data", size, len(back))
		}
		res.RTT = append(res.RTT, rtt)
		if !c.json {
			fmt.Fprintf(c.stdout, "%d bytes from %s (protocol %d): seq=%d time=%.2fms\n", size, c.hello.Server, c.hello.Version, i, float64(rtt)/1e6)
		}
		if i < count && interval > 0 {
			select {
			case <-time.After(interval):
			case <-c.ctx.Done():
				i = count
			}
		}
	}
	if c.json {
		return c.printJSON(res)
	}
	return nil
}

// version is nkectl's build: the module version, else the VCS revision.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "+dirty"
			}
		}
	}
	if (v == "" || v == "(devel)") && rev != "" {
		v = rev[:min(12, len(rev))] + modified
	}
	if v == "" {
		v = "(devel)"
	}
	return v
}

type versionInfo struct {
	Client struct {
		Version  string `json:"version"`
		Protocol int    `json:"protocol"`
	} `json:"client"`
	Guest *struct {
		Server   string `json:"server"`
		Protocol int    `json:"protocol"`
	} `json:"guest,omitempty"`
}

func versionCmd() *command {
	var clientOnly bool
	return &command{
		name: "version", args: "[--client]", summary: "nkectl's version and the guest's", max: 0,
		help: `
Prints nkectl's version and the control-channel protocol it speaks, then
the guest's (its hello reply). --client skips the guest: it needs no VM.`,
		example: `
$ nkectl version
nkectl (devel), protocol 1
guest: nke-harness guest, protocol 1`,
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&clientOnly, "client", false, "only nkectl's own version")
		},
		run: func(c *cli, args []string) error {
			var v versionInfo
			v.Client.Version, v.Client.Protocol = version(), ctlchan.Version
			var err error
			if !clientOnly {
				if _, err = c.connect(); err == nil {
					v.Guest = &struct {
						Server   string `json:"server"`
						Protocol int    `json:"protocol"`
					}{c.hello.Server, c.hello.Version}
				}
			}
			if c.json {
				if e := c.printJSON(v); e != nil {
					return e
				}
				return err
			}
			fmt.Fprintf(c.stdout, "nkectl %s, protocol %d\n", v.Client.Version, v.Client.Protocol)
			if v.Guest != nil {
				fmt.Fprintf(c.stdout, "guest: %s, protocol %d\n", v.Guest.Server, v.Guest.Protocol)
			}
			return err
		},
	}
}
