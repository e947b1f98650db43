package tcplog

import (
	"fmt"
	"sync/atomic"

	"github.com/nke-harness/nke/nke"
)

// Handle is the module's socket filter handle.
const Handle = 0x7c9

// Module registers the logger for every TCP socket, existing ones too.
// Each connection is written to the guest's log as it closes, and sent
// to the clients of its control endpoint ControlName (see Stream).
// Stopping it is refused while control clients are connected (the
// kern_ctl rule); otherwise it unregisters the filter and waits for its
// Unregistered callback; a call into the filter after that would be a
// kernel bug, which it counts and reports.
var Module = nke.Module{
	Name: "tcplog",
	ID:   Name,
	Doc:  "logs every TCP connection (addresses, duration, bytes each way) as it closes",
	Start: func(k nke.Kernel, _ string) (func() error, error) {
		hook := k.Sockets()
		if hook == nil {
			return nil, fmt.Errorf("tcplog: the guest has no socket layer")
		}
		var stream *Stream
		if ch := k.Control(); ch != nil {
			var err error
			if stream, err = NewStream(ch, ControlName); err != nil {
				return nil, err
			}
		}
		var gone atomic.Bool
		var late atomic.Uint64
		l := New(256, func(r Record) {
			if gone.Load() {
				late.Add(1)
			}
			k.Logf("%s", r)
			if stream != nil {
				stream.Publish(r)
			}
		})
		spec := l.Spec(Handle)
		spec.Unregistered = func() { gone.Store(true) }
		a, err := hook.RegisterSocketFilter(spec)
		if err != nil {
			if stream != nil {
				stream.Close()
			}
			return nil, err
		}
		return func() error {
			if stream != nil {
				if err := stream.Close(); err != nil {
					return err
				}
				if n := stream.Lost(); n != 0 {
					k.Logf("%d records could not be queued for control clients", n)
				}
			}
			a.Detach()
			<-a.Done()
			k.Logf("unregistered; %d calls after unregistered", late.Load())
			if n := late.Load(); n != 0 {
				return fmt.Errorf("tcplog: %d calls after unregistered", n)
			}
			return nil
		}, nil
	},
}
