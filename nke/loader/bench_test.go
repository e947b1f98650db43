package loader

import (
	"testing"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/bundle"
	"github.com/nke-harness/nke/nke/mbuf"
)

// BenchmarkIPInput compares a call through the loader's wrapper with a
// direct call of the same filter: the cost per packet of capabilities,
// drain accounting and the replace slot.
func BenchmarkIPInput(b *testing.B) {
	for _, wrapped := range []bool{false, true} {
		name := "direct"
		if wrapped {
			name = "wrapped"
		}
		b.Run(name, func(b *testing.B) {
			c := &counter{}
			var f nke.IPInputFilter = c
			if wrapped {
				r := newRig(b, 0)
				r.register(ipModule("a", "com.a", c, nil))
				if err := r.l.Load(ctx, mk("com.a", "1.0", "1.0", "a", nil), Options{}); err != nil {
					b.Fatal(err)
				}
				f = r.ip.Attached()[0].Filter.(nke.IPInputFilter)
			}
			m := &mbuf.Mbuf{}
			b.ReportAllocs()
			for b.Loop() {
				f.FilterIPInput(&m, 20, 6)
			}
		})
	}
}

// BenchmarkLoadUnload is one load (libraries checked, start, attach
// through the wrappers) and one unload (pause, drain, stop, detach) of an
// IP filter NKE on the fakes: the loader's own latency, without the
// guest's hooks or the control channel.
func BenchmarkLoadUnload(b *testing.B) {
	r := newRig(b, 0)
	r.l.cfg.Logf = func(string, ...any) {}
	r.l.cfg.Events = nil
	r.register(ipModule("a", "com.a", &counter{}, nil))
	bu := mk("com.a", "1.0", "1.0", "a", nil)
	b.ReportAllocs()
	for b.Loop() {
		if err := r.l.Load(ctx, bu, Options{}); err != nil {
			b.Fatal(err)
		}
		if _, err := r.l.Unload(ctx, "com.a", false); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReplace swaps a loaded IP filter NKE for another version and
// back: start of the new one, the swap, drain and stop of the old one.
func BenchmarkReplace(b *testing.B) {
	r := newRig(b, 0)
	r.l.cfg.Logf = func(string, ...any) {}
	r.l.cfg.Events = nil
	r.register(ipModule("a", "com.a", &counter{}, nil))
	v := [2]*bundle.Bundle{mk("com.a", "1.0", "1.0", "a", nil), mk("com.a", "1.1", "1.0", "a", nil)}
	if err := r.l.Load(ctx, v[0], Options{}); err != nil {
		b.Fatal(err)
	}
	i := 1
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.l.Replace(ctx, v[i], false); err != nil {
			b.Fatal(err)
		}
		i ^= 1
	}
}
