// Package conformance is one test suite for every filter backend: the
// same rules, checked on every hook layer, whatever runs the filter (Go
// code, and later WebAssembly NKEs run by wazero), as cilium/ebpf runs one
// suite against every implementation.
//
// A backend plugs in by implementing Impl: given a declarative Behaviour
// (a verdict per marker byte found in the packet, a marker to panic on,
// whether to put a tag, to pass its own or any injected packet, where to
// record calls and where to hand swallowed packets), it returns a filter
// value for the layer: an interface filter, an IP filter or a raw ring
// hook, per-packet or burst form. The suite attaches the values itself and
// drives them through kerneltest (the device model, the real driver, an
// ifnet.Interface and, for the IP layers, the netstack.Stack) with frames
// from nke/frametest. Native is the Go backend; TestNative runs the suite
// with it. The wasm backend will implement Impl by compiling a tiny guest
// program per Behaviour (the verdict table, the panic marker, the tag) and
// doing the host side (Record, OnCall, Keep, Self) in its host functions;
// its test is then one line: conformance.Run(t, wasm.Impl{...}).
//
// Run(t, impl) runs each rule on each layer it applies to: the raw hook,
// interface filters in and out, IP filters in and out for IPv4 and IPv6,
// each in per-packet and burst form, each on a rig of its own whose
// teardown fails the test on a leaked packet buffer. Subtests are named
// layer/form/rule and failure messages say "backend layer form: rule".
// The rules:
//
//	verdict/continue          delivered unchanged, every call in the layer's direction, counted as continue
//	verdict/drop              not delivered, never seen by a later filter, counted against the filter and by the layer
//	verdict/swallow-reinject  not delivered, owned by the filter (Keep), counted; re-injected with the filter's reference: delivered in order, a later filter sees it once
//	verdict/swallow-free      swallowed and freed by the filter: not delivered, not leaked
//	verdict/transmit          raw layer (Swallow = RawTransmit): sent back out unchanged, counted
//	order/default             interface filters and raw hooks in attach order (FIFO), the same order in and out; IP filters newest first
//	order/priority            lower Priority runs first
//	order/before              Before wins over Priority: runs before the filter named
//	order/after               After wins over Priority: moves down next to the filter named
//	order/refused             a cycle and an unmet After are refused with an error naming the filters; nothing changes, no Detached
//	detach/later-burst        no call after Detach in a later burst; Detached once and last; a second Detach does nothing; the others go on
//	detach/inside-callback    Detach from inside the filter's callback works: the burst goes on, later bursts do not reach it
//	detach/while-running      on a started interface (the poll loop), detach during traffic: no packet lost, in order, Detached once and last
//	panic                     a panicking filter is detached and reported once; its packet (its burst, for the burst form) dropped and counted; traffic goes on
//	inject/provenance         interface layer: re-injection re-runs every filter, the injector too, which recognises its packet (nke.InjectedByMe); provenance delivered
//	inject/reference          IP layer: with a reference the filters up to and including it are skipped, without one all run; a detached reference is refused, the packet the caller's (input) or freed (output)
//	inject/hop-limit          a filter re-injecting its packet forever is stopped at nke.MaxInjections with nke.ErrInjectLoop, nothing delivered, nothing leaked
//	tags                      a tag an interface filter puts on a packet is there when the IP input filters of the same packet run (IPv4, IPv6)
//
// It is test support (kerneltest's): no production package may import it
// (layering_test.go).
package conformance
