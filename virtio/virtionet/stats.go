package virtionet

import "sync/atomic"

// counters are written by the data-path goroutine once per burst and read
// by anyone.
type counters struct {
	rxPackets, rxBytes, txPackets, txBytes           atomic.Uint64
	rxDropRunt, rxDropHeader, rxRingDry              atomic.Uint64
	txDropSize, txDropNoBuf, txDropReset, txRingFull atomic.Uint64
	rxKicks, txKicks, ctrlKicks                      atomic.Uint64
	resets, deviceErrors                             atomic.Uint64
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
	// TxRingFull counts bursts cut short by a full tx ring.
	TxRingFull   uint64 `json:"tx_ring_full"`
	RxKicks      uint64 `json:"rx_kicks"`
	TxKicks      uint64 `json:"tx_kicks"`
	CtrlKicks    uint64 `json:"ctrl_kicks"`
	Resets       uint64 `json:"resets"`
	DeviceErrors uint64 `json:"device_errors"`
}

// RxDrops sums the receive drops.
func (s Stats) RxDrops() uint64 { return s.RxDropRunt + s.RxDropHeader }

// TxDrops sums the transmit drops.
func (s Stats) TxDrops() uint64 { return s.TxDropSize + s.TxDropNoBuf + s.TxDropReset }

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
	}
}
