package hostvm

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/nke-harness/nke/kernel/ctlchan"
)

// ServeControl is the host end of the control channel while a VM runs:
// it connects to QEMU's socket for the guest's control port (qemuSock,
// retrying while QEMU starts) and serves nkectl clients on listenPath
// (mode 0600) through one multiplexer, until ctx ends or QEMU closes its
// end (ctlchan.ErrUpstreamLost). ready, if not nil, is called once
// clients can connect.
func ServeControl(ctx context.Context, qemuSock, listenPath string, logf func(string, ...any), ready func()) error {
	up, err := dialRetry(ctx, qemuSock, 30*time.Second)
	if err != nil {
		return err
	}
	defer up.Close()
	ln, err := ctlchan.ListenUnix(listenPath)
	if err != nil {
		return err
	}
	m := ctlchan.NewMux(up)
	m.Logf = logf
	if ready != nil {
		ready()
	}
	stop := context.AfterFunc(ctx, func() { up.Close() })
	defer stop()
	err = m.Serve(ctx, ln)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// dialRetry connects to a unix socket QEMU is about to create.
func dialRetry(ctx context.Context, path string, within time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(within)
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("control channel: QEMU's socket %s: %w (did QEMU start with the control port?)", path, err)
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
