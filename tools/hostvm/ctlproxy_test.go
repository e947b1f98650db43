package hostvm

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nke-harness/nke/kernel/ctlchan"
	"github.com/nke-harness/nke/kernel/ctlchan/ctlchantest"
)

// A fake QEMU: it listens where QEMU's chardev would (created late, as
// QEMU does), and a guest serves the fake backend over the connection.
func TestServeControl(t *testing.T) {
	dir := t.TempDir()
	qemuSock, listen := filepath.Join(dir, "console.sock"), filepath.Join(dir, ctlchan.SocketName)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	guestDone := make(chan error, 1)
	go func() {
		time.Sleep(100 * time.Millisecond) // QEMU is still starting
		ln, err := net.Listen("unix", qemuSock)
		if err != nil {
			guestDone <- err
			return
		}
		defer ln.Close()
		c, err := ln.Accept()
		if err != nil {
			guestDone <- err
			return
		}
		gctx, gcancel := context.WithTimeout(ctx, 20*time.Second)
		defer gcancel()
		go func() { <-gctx.Done(); c.Close() }()
		guestDone <- ctlchan.Serve(gctx, c, ctlchantest.New())
	}()
	ready := make(chan struct{})
	served := make(chan error, 1)
	go func() { served <- ServeControl(ctx, qemuSock, listen, t.Logf, func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-served:
		t.Fatalf("ServeControl: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("not ready")
	}
	fi, err := os.Stat(listen)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("listening socket: %v, %v; want mode 0600", fi, err)
	}
	// Two clients at once, each with its own session.
	for i := 0; i < 2; i++ {
		c, hello, err := ctlchan.Dial(ctx, listen)
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		if hello.Version == 0 {
			t.Errorf("client %d: hello %+v", i, hello)
		}
		if b, err := c.Ping(ctx, []byte("x")); err != nil || string(b) != "x" {
			t.Errorf("client %d: ping %q, %v", i, b, err)
		}
		defer c.Close()
	}
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("ServeControl after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ServeControl did not end with its context")
	}
	<-guestDone
}

func TestServeControlNoQEMU(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := ServeControl(ctx, filepath.Join(t.TempDir(), "none.sock"), filepath.Join(t.TempDir(), "x.sock"), nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("no QEMU socket: %v, want the deadline", err)
	}
}
