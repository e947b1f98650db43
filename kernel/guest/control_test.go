package guest

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/nke-harness/nke/nke/dma"
	"github.com/nke-harness/nke/virtio/devmodel"
	"github.com/nke-harness/nke/virtio/virtioconsole"
)

func TestParseCtlMode(t *testing.T) {
	for in, want := range map[string]CtlMode{"": CtlAuto, "auto": CtlAuto, "off": CtlOff, "echo": CtlEcho} {
		if got, err := ParseCtlMode(in); err != nil || got != want {
			t.Errorf("ParseCtlMode(%q) = %v, %v", in, got, err)
		}
		if in != "" && want.String() != in {
			t.Errorf("%v.String() = %q", want, want.String())
		}
	}
	if _, err := ParseCtlMode("yes"); err == nil {
		t.Error("ParseCtlMode(yes) succeeded")
	}
}

// TestEcho runs the echo server on a port of the model console and stops
// it by closing the port.
func TestEcho(t *testing.T) {
	heap := dma.NewHeap(8 << 20)
	dev := devmodel.NewConsole(heap, devmodel.ConsoleOptions{})
	d, err := virtioconsole.Open(dev, heap, virtioconsole.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	p, err := d.PortByName(ControlPortName, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	dev.HostConnect(p.ID())
	done := make(chan struct{})
	go func() {
		defer close(done)
		echo(t.Logf)(context.Background(), p)
	}()
	msg := bytes.Repeat([]byte("echo "), 20000)
	dev.HostWrite(p.ID(), msg)
	var got []byte
	buf := make([]byte, 64<<10)
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < len(msg) && time.Now().Before(deadline) {
		n := dev.HostRead(p.ID(), buf)
		got = append(got, buf[:n]...)
		if n == 0 {
			time.Sleep(100 * time.Microsecond)
		}
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echoed %d of %d bytes, equal %v", len(got), len(msg), bytes.Equal(got, msg[:len(got)]))
	}
	var _ io.ReadWriteCloser = p
	p.Close()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("echo did not stop when the port closed")
	}
}
