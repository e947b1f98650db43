// Command nkeinit is the guest's PID 1: the NKE harness over the
// user-space virtio-net driver. See kernel/guest.
package main

import "github.com/nke-harness/nke/kernel/guest"

func main() { guest.Main() }
