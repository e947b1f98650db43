package virtionet

import "sync/atomic"

// counters are written by the data-path goroutine once per burst and read
// by anyone.
type counters struct {
	rxPackets, rxBytes, txPackets, txBytes           atomic.Uint64
	rxDropRunt, rxDropHeader, rxRingDry              atomic.Uint64
	txDropSize, txDropNoBuf, txDropReset, txRingFull atomic.Uint64
	txDropChain                                      atomic.Uint64
	rxKicks, txKicks, ctrlKicks                      atomic.Uint64
	resets, deviceErrors                             atomic.Uint64
	rxDropOversize, ctrlRejects, identityChanges     atomic.Uint64
}

// Stats is a snapshot of a device's counters.
type Stats struct {
	RxPackets uint64 `json:"rx_packets"`
	RxBytes   uint64 `json:"rx_bytes"`
	TxPackets uint64 `json:"tx_packets"`
	TxBytes   uint64 `json:"tx_bytes"`
	// Receive drops by reason: frames shorter than an Ethernet header,
	// and headers (or merged-buffer packets) the driver refused.
	RxDropRunt   uint64 `json:"rx_drop_runt"`
	RxDropHeader uint64 `json:"rx_drop_header"`
	// RxRingDry counts refills that found the rx ring empty and the pool
	// unable to fill it: the device holds (QEMU) or drops (hardware)
	// packets meanwhile. The stack is holding too many buffers.
	RxRingDry uint64 `json:"rx_ring_dry"`
	// Transmit drops by reason: frames too short or too long, chains that
	// could not be linearised, and packets in the ring at a reset.
	TxDropSize  uint64 `json:"tx_drop_size"`
	TxDropNoBuf uint64 `json:"tx_drop_nobuf"`
	TxDropReset uint64 `json:"tx_drop_reset"`
	// TxDropChain counts packets that take more descriptors than the
	// ring holds even when copied into as few buffers as possible.
	TxDropChain uint64 `json:"tx_drop_chain"`
	// RxDropOversize counts merged packets (MRG_RXBUF) larger than a
	// frame of the MTU.
	RxDropOversize uint64 `json:"rx_drop_oversize"`
	// TxRingFull counts bursts cut short by a full tx ring.
	TxRingFull   uint64 `json:"tx_ring_full"`
	RxKicks      uint64 `json:"rx_kicks"`
	TxKicks      uint64 `json:"tx_kicks"`
	CtrlKicks    uint64 `json:"ctrl_kicks"`
	Resets       uint64 `json:"resets"`
	DeviceErrors uint64 `json:"device_errors"`
	// CtrlRejects counts control commands the device refused.
	CtrlRejects uint64 `json:"ctrl_rejects"`
	// IdentityChanges counts resets after which the device reported a
	// different MAC or MTU (the driver takes the new values).
	IdentityChanges uint64 `json:"identity_changes"`
}

// RxDrops sums the receive drops.
func (s Stats) RxDrops() uint64 { return s.RxDropRunt + s.RxDropHeader + s.RxDropOversize }

// TxDrops sums the transmit drops.
func (s Stats) TxDrops() uint64 { return s.TxDropSize + s.TxDropNoBuf + s.TxDropReset + s.TxDropChain }

// Stats returns a snapshot of the counters. Safe from any goroutine.
func (d *Device) Stats() Stats {
	c := &d.stats
	return Stats{
		RxPackets: c.rxPackets.Load(), RxBytes: c.rxBytes.Load(),
		TxPackets: c.txPackets.Load(), TxBytes: c.txBytes.Load(),
		RxDropRunt: c.rxDropRunt.Load(), RxDropHeader: c.rxDropHeader.Load(), RxRingDry: c.rxRingDry.Load(),
		TxDropSize: c.txDropSize.Load(), TxDropNoBuf: c.txDropNoBuf.Load(), TxDropReset: c.txDropReset.Load(),
		TxRingFull: c.txRingFull.Load(),
		RxKicks:    c.rxKicks.Load(), TxKicks: c.txKicks.Load(), CtrlKicks: c.ctrlKicks.Load(),
		Resets: c.resets.Load(), DeviceErrors: c.deviceErrors.Load(),
		TxDropChain: c.txDropChain.Load(), RxDropOversize: c.rxDropOversize.Load(),
		CtrlRejects: c.ctrlRejects.Load(), IdentityChanges: c.identityChanges.Load(),
	}
}
