package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nke-harness/nke/kernel/ctlchan"
	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/virtioconsole"
	"github.com/nke-harness/nke/virtio/virtiopci"
)

// Config is what the guest's main plugs into the harness.
type Config struct {
	// Control serves the out-of-band control channel: with nke.ctl=auto
	// (the default) and a virtio console present, it is called on a
	// goroutine of its own with the open port (a byte stream to the
	// host; see virtioconsole.Port), and ctx ends at shutdown, after
	// which the port is closed. The port survives the host
	// disconnecting and reconnecting: Reads block meanwhile, Writes
	// wait for the host. nil serves nkectl: kernel/ctlchan with the
	// guest's Backend.
	Control func(ctx context.Context, port io.ReadWriteCloser)
}

// CtlMode is nke.ctl: what the guest does with the control channel.
type CtlMode uint8

const (
	// CtlAuto opens the virtio console if there is one and a
	// Config.Control to hand it to; without a console it logs and
	// goes on.
	CtlAuto CtlMode = iota
	// CtlOff leaves the console alone.
	CtlOff
	// CtlEcho echoes every byte back to the host, whatever
	// Config.Control is: for testing the channel.
	CtlEcho
)

func (m CtlMode) String() string {
	switch m {
	case CtlAuto:
		return "auto"
	case CtlOff:
		return "off"
	case CtlEcho:
		return "echo"
	}
	return fmt.Sprintf("CtlMode(%d)", uint8(m))
}

// ParseCtlMode reads "auto", "off" or "echo".
func ParseCtlMode(s string) (CtlMode, error) {
	switch s {
	case "", "auto":
		return CtlAuto, nil
	case "off":
		return CtlOff, nil
	case "echo":
		return CtlEcho, nil
	}
	return 0, fmt.Errorf("%q: want auto, off or echo", s)
}

// ControlPortName is the virtio-serial port the control channel uses
// (QEMU: virtserialport name=nke.ctl; see tools/hostvm).
const ControlPortName = "nke.ctl"

// controlChan is the open control channel.
type controlChan struct {
	dev    *virtioconsole.Device
	port   *virtioconsole.Port
	cancel context.CancelFunc
	done   chan struct{}
}

// startControl opens the control channel and starts serve on it, or
// reports why not. A missing console is (nil, nil).
func (g *Guest) startControl(cfg Config, logf func(string, ...any)) (*controlChan, error) {
	serve := cfg.Control
	switch g.Settings.Ctl {
	case CtlOff:
		return nil, nil
	case CtlEcho:
		serve = echo(logf)
	}
	fns, err := virtiopci.FindVirtioConsole(virtiopci.DefaultRoot)
	if errors.Is(err, virtiopci.ErrNotFound) {
		logf("control channel: no virtio console (QEMU: virtio-serial-pci with a virtserialport named %s): going on without", ControlPortName)
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if serve == nil {
		serve = g.serveControl(logf)
	}
	fn := fns[0]
	t, err := virtiopci.Open(fn)
	if err != nil {
		return nil, err
	}
	dev, err := virtioconsole.Open(t, g.mem, virtioconsole.Config{Logf: logf, DeepSleep: g.Settings.CtlDeepSleep})
	if err != nil {
		t.Close()
		return nil, err
	}
	port, err := dev.PortByName(ControlPortName, 2*time.Second)
	if err != nil {
		dev.Close()
		return nil, err
	}
	logf("control channel: %s port %d %q, features %s, mode %s", fn.BDF, port.ID(), port.Name(),
		strings.Join(virtioconsole.FeatureList(dev.Features()), ","), g.Settings.Ctl)
	ctx, cancel := context.WithCancel(context.Background())
	c := &controlChan{dev: dev, port: port, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		serve(ctx, port)
	}()
	return c, nil
}

// stop ends the server, closes the port and resets the device, so that it
// no longer touches the DMA memory.
func (c *controlChan) stop() {
	c.cancel()
	c.port.Close() // unblocks a server in Read or Write
	select {
	case <-c.done:
	case <-time.After(2 * time.Second):
	}
	c.dev.Close()
}

// serveControl answers nkectl on the port with the guest's backend (the
// loader, kernel control, events, captures) until ctx ends. The port
// outlives host reconnections; a server that ends on an error is started
// again (the decoder resynchronises on whatever comes next).
func (g *Guest) serveControl(logf func(string, ...any)) func(context.Context, io.ReadWriteCloser) {
	cfg := ctlchan.Config{Name: "nke-harness guest " + Version(), Logf: logf}
	return func(ctx context.Context, port io.ReadWriteCloser) {
		for ctx.Err() == nil {
			err := cfg.Serve(ctx, port, g.Backend())
			switch {
			case ctx.Err() != nil, errors.Is(err, virtioconsole.ErrClosed):
				return
			case errors.Is(err, virtio.ErrDeviceBroken):
				logf("control channel: %v: stopped", err)
				return
			case err != nil:
				logf("control channel: %v (serving again)", err)
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
}

// echo writes back every byte it reads, until the port is closed.
func echo(logf func(string, ...any)) func(context.Context, io.ReadWriteCloser) {
	return func(ctx context.Context, port io.ReadWriteCloser) {
		buf := make([]byte, 64<<10)
		for ctx.Err() == nil {
			n, err := port.Read(buf)
			if n > 0 {
				if _, werr := port.Write(buf[:n]); werr != nil {
					err = werr
				}
			}
			if errors.Is(err, virtioconsole.ErrClosed) || ctx.Err() != nil {
				return
			}
			if errors.Is(err, virtio.ErrDeviceBroken) {
				// Out of service until a reset the driver does not do.
				logf("control channel echo: %v: stopped", err)
				return
			}
			if err != nil {
				logf("control channel echo: %v", err)
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
}
