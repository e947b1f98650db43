// Command nkeinit is the guest's PID 1: the NKE harness over the
// user-space virtio-net driver. See kernel/guest.
package main

import "github.com/nke-harness/nke/kernel/guest"

func main() {
	// guest.Config is the integration point: Control serves the
	// out-of-band control channel (nke.ctl=auto); nke.ctl=echo echoes
	// without it.
	guest.MainWith(guest.Config{})
}
