package kctl

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nke-harness/nke/nke/examples/ipfw"
	"github.com/nke-harness/nke/nke/examples/tcplog"
)

// The example NKEs' endpoints through the real registry, as nkectl ctl
// will reach them.
func TestExampleEndpoints(t *testing.T) {
	r := New(Config{})
	fw := ipfw.New(ipfw.Rules{})
	if _, err := fw.ServeControl(r.Hook("com.example.ipfw"), ipfw.ControlName); err != nil {
		t.Fatal(err)
	}
	c, err := r.Connect(ipfw.ControlName)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, tc := range []struct{ cmd, reply string }{
		{"add drop tcp dport 23", "ok 1: block proto tcp to port 23"},
		{"list", "1 0 block proto tcp to port 23\n- 0 default pass"},
		{"del 7", "error: ipfw: bad command: no rule 7 (there are 1)"},
	} {
		if err := c.Send([]byte(tc.cmd)); err != nil {
			t.Fatal(err)
		}
		m, err := c.RecvMsg(ctx)
		if err != nil || string(m) != tc.reply {
			t.Errorf("%q: %q, %v; want %q", tc.cmd, m, err, tc.reply)
		}
	}

	s, err := tcplog.NewStream(r.Hook("com.example.tcplog"), tcplog.ControlName)
	if err != nil {
		t.Fatal(err)
	}
	lc, err := r.Connect(tcplog.ControlName)
	if err != nil {
		t.Fatal(err)
	}
	s.Publish(tcplog.Record{Socket: 9})
	m, err := lc.RecvMsg(ctx)
	if err != nil || !strings.HasPrefix(string(m), `{"socket":9,`) {
		t.Errorf("tcplog stream: %q, %v", m, err)
	}
	if d := r.Clients("com.example.tcplog"); len(d) != 1 || d[0].Endpoint != tcplog.ControlName {
		t.Errorf("tcplog's clients: %v", d)
	}
}
