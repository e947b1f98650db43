// Command nkeinit is the guest's PID 1: the NKE harness over the
// user-space virtio-net driver. See kernel/guest.
package main

import "github.com/nke-harness/nke/kernel/guest"

func main() {
	// guest.Config is the integration point. Its zero value serves
	// nkectl on the out-of-band control channel (nke.ctl=auto; echo
	// echoes, off leaves the console alone).
	guest.MainWith(guest.Config{})
}
