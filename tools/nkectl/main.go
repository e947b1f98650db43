// Command nkectl loads, unloads and inspects NKEs in a running guest,
// over the control channel (kernel/ctlchan): kextload, kextunload and
// kextstat, plus kernel control, kernel events, capture and hot replace.
//
//	nkectl load PATH.nke [-L DIR]...   the bundle, dependencies first
//	nkectl unload ID [--force]
//	nkectl replace PATH.nke [--handover]
//	nkectl stat                        the NKE table and every hook's chain
//	nkectl ctl NAME [send|recv|setopt|getopt ...]
//	nkectl events [--count N] [--kind K]...
//	nkectl capture HOOK [--before ID|--after ID] [--count N] [-w FILE]
//	nkectl ping | version | help [COMMAND]
//
// Exit codes: 0 ok, 1 the guest refused or the operation failed, 2 usage
// (bad flags or arguments, an unreadable bundle or dependency), 3 the
// guest cannot be reached (no socket, connect or hello failed, connection
// lost, timeout), 4 busy (EBUSY). docs/nkectl.md has the details.
package main

import "os"

func main() {
	os.Exit(exit(run(os.Args[1:], os.Stdout, os.Stderr), os.Stderr))
}
