package capture

import (
	"bytes"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/nke-harness/nke/kernel/hook"
	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/mbuf/mbuftest"
)

func TestRingAndPcapng(t *testing.T) {
	pool := mbuftest.NewPool(t, "capture", 4, 2048, 128)
	mbuftest.CheckPools(t, pool)
	r := NewRing(2, 20)
	m := pool.Get()
	b, _ := m.Append(30)
	for i := range b {
		b[i] = byte(i)
	}
	frame := bytes.Repeat([]byte{0xee}, 14)
	in := hook.Point{Hook: "vt0 filters", Filter: "com.example.fw", Dir: hook.In}
	r.Capture(in, frame, m) // overwritten below
	r.Capture(in, frame, m)
	in.After, in.Verdict = true, nke.Drop
	r.Capture(in, frame, m)
	r.Capture(hook.Point{Hook: "inet", Filter: "fw", Dir: hook.Out, L3: true}, nil, m)
	m.Free()
	recs, lost := r.Records()
	if lost != 2 || len(recs) != 2 {
		t.Fatalf("%d records, %d lost; want 2, 2", len(recs), lost)
	}
	want0 := append(append([]byte(nil), frame...), 0, 1, 2, 3, 4, 5)
	if !cmp.Equal(recs[0].Data, want0) || recs[0].Len != 44 || Comment(recs[0].Point) != "vt0 filters in com.example.fw after: drop" {
		t.Errorf("record 0: % x len %d %q", recs[0].Data, recs[0].Len, Comment(recs[0].Point))
	}
	if !cmp.Equal(recs[1].Data, b[:20]) || recs[1].Len != 30 {
		t.Errorf("record 1: % x len %d", recs[1].Data, recs[1].Len)
	}

	var out bytes.Buffer
	if err := r.WritePcapng(&out); err != nil {
		t.Fatal(err)
	}
	rd, err := pcapgo.NewNgReader(&out, pcapgo.NgReaderOptions{WantMixedLinkType: true})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		data, ci, opts, err := rd.ReadPacketDataWithOptions()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		intf, _ := rd.Interface(ci.InterfaceIndex)
		got = append(got, intf.Name+"|"+intf.LinkType.String()+"|"+opts.Comments[0]+"|"+string(rune('0'+len(data)/10)))
	}
	want := []string{
		"vt0 filters|" + layers.LinkTypeEthernet.String() + "|vt0 filters in com.example.fw after: drop|2",
		"inet (IP)|" + layers.LinkTypeRaw.String() + "|inet out fw before|2",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("pcapng (-want +got):\n%s", diff)
	}
}

func TestCaptureDoesNotAllocate(t *testing.T) {
	pool := mbuftest.NewPool(t, "capture", 4, 2048, 128)
	r := NewRing(16, 128)
	m := pool.Get()
	m.Append(100)
	defer m.Free()
	p := hook.Point{Hook: "h", Filter: "f"}
	if a := testing.AllocsPerRun(100, func() { r.Capture(p, nil, m) }); a != 0 {
		t.Fatalf("%v allocations per captured packet", a)
	}
}
