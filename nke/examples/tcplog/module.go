package tcplog

import (
	"fmt"
	"sync/atomic"

	"github.com/nke-harness/nke/nke"
)

// Handle is the module's socket filter handle.
const Handle = 0x7c9

// Module registers the logger for every TCP socket, existing ones too.
// Each connection is written to the guest's log as it closes. Stopping it
// unregisters the filter and waits for its Unregistered callback; a call
// into the filter after that would be a kernel bug, which it counts and
// reports.
var Module = nke.Module{
	Name: "tcplog",
	ID:   Name,
	Doc:  "logs every TCP connection (addresses, duration, bytes each way) as it closes",
	Start: func(k nke.Kernel, _ string) (func() error, error) {
		hook := k.Sockets()
		if hook == nil {
			return nil, fmt.Errorf("tcplog: the guest has no socket layer")
		}
		var gone atomic.Bool
		var late atomic.Uint64
		l := New(256, func(r Record) {
			if gone.Load() {
				late.Add(1)
			}
			k.Logf("%s", r)
		})
		spec := l.Spec(Handle)
		spec.Unregistered = func() { gone.Store(true) }
		a, err := hook.RegisterSocketFilter(spec)
		if err != nil {
			return nil, err
		}
		return func() error {
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
