package contentfilter

import (
	"bytes"
	"errors"
	"time"

	"github.com/nke-harness/nke/nke"
)

// Handle is the module's socket filter handle.
const Handle = 0xcf

// Delay is how long the module's decider thinks about each chunk, so that
// holding the data is visible.
const Delay = 2 * time.Millisecond

// Module holds every chunk TCP sockets send, decides after Delay, and
// blocks a chunk containing its args (the nke.contentfilter setting), if
// set.
var Module = nke.Module{
	Name: "contentfilter",
	ID:   Name,
	Doc:  "holds outgoing TCP data until a verdict, then re-injects or drops it",
	Start: func(k nke.Kernel, args string) (func() error, error) {
		hook := k.Sockets()
		if hook == nil {
			return nil, errors.New("contentfilter: the guest has no socket layer")
		}
		marker := []byte(args)
		f := New(hook, func(_ nke.Socket, chunk []byte) bool {
			time.Sleep(Delay)
			return len(marker) == 0 || !bytes.Contains(chunk, marker)
		})
		a, err := hook.RegisterSocketFilter(f.Spec(Handle))
		if err != nil {
			return nil, err
		}
		f.SetAttachment(a)
		return func() error {
			a.Detach()
			<-a.Done()
			st := f.Stats()
			k.Logf("%d chunks held: %d allowed, %d blocked, %d dropped at close", st.Held, st.Allowed, st.Blocked, st.Dropped)
			return nil
		}, nil
	},
}
