package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/nke-harness/nke/kernel/ctlchan"
)

func captureCmd() *command {
	var before, after, file string
	var count int
	return &command{
		name: "capture", args: "[--before ID|--after ID] [--count N] [-w FILE.pcapng|-] HOOK", summary: "capture packets at a hook (pcapng)", min: 1, max: 1,
		help: `
Captures the packets at HOOK (a chain's name, as nkectl stat lists them):
at every point of the chain, or only before or after the NKE ID. With -w
FILE the guest's pcapng stream goes to FILE (- for stdout), for
Wireshark or tcpdump -r; without it each packet is printed as it comes:
time, hook, direction, the NKE and the point (before it, or after it
with its verdict), length and a summary. --count ends after N packets;
Ctrl-C ends it cleanly (exit 0), the file complete.`,
		example: `
$ nkectl capture --after com.example.fw --count 2 "vtnet0 filters"
09:00:00.000000  vtnet0 filters  in  com.example.fw  after: continue  43 bytes  10.0.2.2:12345 > 10.0.2.15:7 UDP
09:00:00.001000  vtnet0 filters  in  com.example.fw  after: continue  43 bytes  10.0.2.2:12345 > 10.0.2.15:7 UDP
$ nkectl capture --count 100 -w in.pcapng "vtnet0 filters"
nkectl: 100 packets (9372 bytes of pcapng) written to in.pcapng`,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&before, "before", "", "only the point before the NKE `ID`")
			fs.StringVar(&after, "after", "", "only the point after the NKE `ID`")
			fs.IntVar(&count, "count", 0, "end after `N` packets (0: until Ctrl-C)")
			fs.StringVar(&file, "write", "", "write the pcapng stream to `FILE` (-: stdout)")
			fs.StringVar(&file, "w", "", "write the pcapng stream to `FILE` (-: stdout)")
		},
		run: func(c *cli, args []string) error {
			return c.capture(ctlchan.CaptureRequest{Hook: args[0], Before: before, After: after, Count: count}, file)
		},
	}
}

// packet is one captured packet, as capture prints it.
type packet struct {
	Time     time.Time `json:"time"`
	Hook     string    `json:"hook"`
	Dir      string    `json:"dir,omitempty"`
	NKE      string    `json:"nke,omitempty"`
	Point    string    `json:"point,omitempty"` // before or after
	Verdict  string    `json:"verdict,omitempty"`
	Length   int       `json:"length"`
	Captured int       `json:"captured"`
	Summary  string    `json:"summary"`
	Comment  string    `json:"comment,omitempty"`
}

type captureSummary struct {
	File    string `json:"file"`
	Packets int    `json:"packets"`
	Bytes   int64  `json:"bytes"`
}

func (c *cli) capture(req ctlchan.CaptureRequest, file string) error {
	if req.Before != "" && req.After != "" {
		return usagef("capture: --before or --after, not both")
	}
	if req.Count < 0 {
		return usagef("capture: --count wants 0 or more")
	}
	cl, err := c.connect()
	if err != nil {
		return err
	}
	var out io.Writer
	var f *os.File
	switch file {
	case "":
	case "-":
		out = c.stdout
	default:
		if f, err = os.Create(file); err != nil {
			return usagef("capture: %v", err)
		}
		defer f.Close()
		out = f
	}

	// The stream is decoded as it comes: to print it, or to count what
	// went to the file.
	pr, pw := io.Pipe()
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := c.decodeCapture(pr, out == nil)
		if err != nil {
			io.Copy(io.Discard, pr)
		}
		done <- result{n, err}
	}()
	cw := &countingWriter{w: pw}
	w := io.Writer(cw)
	if out != nil {
		w = io.MultiWriter(out, cw)
	}
	ctx, cancel := c.streamCtx()
	defer cancel()
	err = c.stream(ctx, func() error { return cl.Capture(ctx, req, w) })
	pw.Close()
	res := <-done
	if f != nil {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("capture: %s: %w", file, cerr)
		}
	}
	if err = c.streamEnd("capture "+req.Hook, ctx, err); err != nil {
		if f != nil && cw.n == 0 {
			os.Remove(file) // nothing came: leave no empty file behind
		}
		return err
	}
	if res.err != nil && cw.n > 0 && !(c.ctx.Err() != nil && errors.Is(res.err, io.ErrUnexpectedEOF)) {
		return fmt.Errorf("capture: the guest's pcapng does not decode: %v", res.err)
	}
	if out != nil && file != "-" {
		if c.json {
			return c.printJSON(captureSummary{File: file, Packets: res.n, Bytes: cw.n})
		}
		fmt.Fprintf(c.stderr, "nkectl: %d packets (%d bytes of pcapng) written to %s\n", res.n, cw.n, file)
	}
	return nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.n += int64(n)
	return n, err
}

// decodeCapture reads a pcapng stream, printing a line per packet if
// print, and returns how many packets it held.
func (c *cli) decodeCapture(r io.Reader, print bool) (int, error) {
	ng, err := pcapgo.NewNgReader(r, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return 0, nil // nothing captured
		}
		return 0, err
	}
	n := 0
	for {
		data, ci, opts, err := ng.ReadPacketDataWithOptions()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n++
		if !print {
			continue
		}
		intf, _ := ng.Interface(ci.InterfaceIndex)
		p := describePacket(data, ci, intf, strings.Join(opts.Comments, "; "))
		if c.json {
			err = c.printJSONLine(p)
		} else {
			_, err = fmt.Fprintln(c.stdout, formatPacket(p))
		}
		if err != nil {
			return n, err
		}
	}
}

func formatPacket(p packet) string {
	where := p.Comment
	if p.Point != "" {
		where = fmt.Sprintf("%s  %s  %s  %s", p.Hook, p.Dir, dash(p.NKE), p.Point)
		if p.Verdict != "" {
			where += ": " + p.Verdict
		}
	}
	return fmt.Sprintf("%s  %s  %d bytes  %s", p.Time.UTC().Format("15:04:05.000000"), where, p.Length, p.Summary)
}

// describePacket reads a packet's place from its comment ("HOOK DIR NKE
// before" or "HOOK DIR NKE after: VERDICT", kernel/capture.Comment; the
// interface is named after the hook) and summarises its headers.
func describePacket(data []byte, ci gopacket.CaptureInfo, intf pcapgo.NgInterface, comment string) packet {
	hook := strings.TrimSuffix(intf.Name, " (IP)")
	p := packet{Time: ci.Timestamp, Hook: hook, Length: ci.Length, Captured: ci.CaptureLength, Comment: comment,
		Summary: summarize(data, intf.LinkType)}
	if rest, ok := strings.CutPrefix(comment, hook+" "); ok && hook != "" {
		if f := strings.SplitN(rest, " ", 3); len(f) == 3 {
			switch {
			case f[2] == "before":
				p.Dir, p.NKE, p.Point = f[0], f[1], "before"
			case strings.HasPrefix(f[2], "after: "):
				p.Dir, p.NKE, p.Point, p.Verdict = f[0], f[1], "after", strings.TrimPrefix(f[2], "after: ")
			}
		}
	}
	return p
}

// summarize is "SRC > DST PROTO" for IP packets, else the layers.
func summarize(data []byte, lt layers.LinkType) string {
	pk := gopacket.NewPacket(data, lt, gopacket.NoCopy)
	nl, tl := pk.NetworkLayer(), pk.TransportLayer()
	switch {
	case nl != nil && tl != nil:
		nf, tf := nl.NetworkFlow(), tl.TransportFlow()
		return fmt.Sprintf("%s > %s %s", net.JoinHostPort(nf.Src().String(), tf.Src().String()),
			net.JoinHostPort(nf.Dst().String(), tf.Dst().String()), tl.LayerType())
	case nl != nil:
		nf := nl.NetworkFlow()
		last := nl.LayerType().String()
		if ls := pk.Layers(); len(ls) > 0 {
			last = ls[len(ls)-1].LayerType().String()
		}
		return fmt.Sprintf("%s > %s %s", nf.Src(), nf.Dst(), last)
	}
	var names []string
	for _, l := range pk.Layers() {
		names = append(names, l.LayerType().String())
	}
	if len(names) == 0 {
		return "undecoded"
	}
	return strings.Join(names, "/")
}
