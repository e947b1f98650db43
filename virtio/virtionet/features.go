// Package virtionet is a poll-mode virtio-net driver (virtio 1.2, section
// 5.1) over any virtio.Transport: feature negotiation, one rx/tx queue pair
// with burst APIs over caller-owned slices, the control queue, link status,
// and recovery from a device that needs (or earns) a reset.
//
// A Device's data path (RxBurst, TxBurst, Reclaim, Poll) belongs to one
// goroutine; Stats and the control calls may be used from others.
package virtionet

import "github.com/nke-harness/nke/virtio"

// Device-specific feature bits, spec 5.1.3.
const (
	FCsum              virtio.Feature = 0
	FGuestCsum         virtio.Feature = 1
	FCtrlGuestOffloads virtio.Feature = 2
	FMTU               virtio.Feature = 3
	FMAC               virtio.Feature = 5
	FGuestTSO4         virtio.Feature = 7
	FGuestTSO6         virtio.Feature = 8
	FGuestECN          virtio.Feature = 9
	FGuestUFO          virtio.Feature = 10
	FHostTSO4          virtio.Feature = 11
	FHostTSO6          virtio.Feature = 12
	FHostECN           virtio.Feature = 13
	FHostUFO           virtio.Feature = 14
	FMrgRxbuf          virtio.Feature = 15
	FStatus            virtio.Feature = 16
	FCtrlVQ            virtio.Feature = 17
	FCtrlRx            virtio.Feature = 18
	FCtrlVLAN          virtio.Feature = 19
	FCtrlRxExtra       virtio.Feature = 20
	FGuestAnnounce     virtio.Feature = 21
	FMQ                virtio.Feature = 22
	FCtrlMACAddr       virtio.Feature = 23
	FGuestUSO4         virtio.Feature = 54
	FGuestUSO6         virtio.Feature = 55
	FHostUSO           virtio.Feature = 56
	FHashReport        virtio.Feature = 57
	FVQNotfCoal        virtio.Feature = 52
	FNotfCoal          virtio.Feature = 53
	FRSS               virtio.Feature = 60
	FRSCExt            virtio.Feature = 61
	FStandby           virtio.Feature = 62
	FSpeedDuplex       virtio.Feature = 63
)

// FeatureNames names the device-specific bits for virtio.Features.Names.
var FeatureNames = map[virtio.Feature]string{
	FCsum: "CSUM", FGuestCsum: "GUEST_CSUM", FCtrlGuestOffloads: "CTRL_GUEST_OFFLOADS",
	FMTU: "MTU", FMAC: "MAC", FGuestTSO4: "GUEST_TSO4", FGuestTSO6: "GUEST_TSO6",
	FGuestECN: "GUEST_ECN", FGuestUFO: "GUEST_UFO", FHostTSO4: "HOST_TSO4",
	FHostTSO6: "HOST_TSO6", FHostECN: "HOST_ECN", FHostUFO: "HOST_UFO",
	FMrgRxbuf: "MRG_RXBUF", FStatus: "STATUS", FCtrlVQ: "CTRL_VQ", FCtrlRx: "CTRL_RX",
	FCtrlVLAN: "CTRL_VLAN", FCtrlRxExtra: "CTRL_RX_EXTRA", FGuestAnnounce: "GUEST_ANNOUNCE",
	FMQ: "MQ", FCtrlMACAddr: "CTRL_MAC_ADDR", FHashReport: "HASH_REPORT", FRSS: "RSS",
	FVQNotfCoal: "VQ_NOTF_COAL", FNotfCoal: "NOTF_COAL", FGuestUSO4: "GUEST_USO4",
	FGuestUSO6: "GUEST_USO6", FHostUSO: "HOST_USO",
	FRSCExt: "RSC_EXT", FStandby: "STANDBY", FSpeedDuplex: "SPEED_DUPLEX",
}

// Supported is every feature this driver can use. It accepts the subset the
// device offers, minus what Options.Refuse removes. Offloads are absent on
// purpose: QEMU's user, stream and dgram backends have no vnet header and
// never offer them, and the NKE chain must see whole, checksummed frames.
//
// RING_PACKED is preferred when offered (refuse it for split rings).
// ACCESS_PLATFORM is accepted only where no IOMMU translates the device's
// DMA (see negotiate); ORDER_PLATFORM because spec 6.1 says a driver
// should, and the driver's barriers (sync/atomic, full fences on amd64)
// are the platform's already. CTRL_MAC_ADDR lets a device without F_MAC
// learn the random address the driver picks.
const Supported = 1<<virtio.FVersion1 | 1<<virtio.FAccessPlatform | 1<<virtio.FOrderPlatform |
	1<<virtio.FIndirectDesc | 1<<virtio.FEventIdx | 1<<virtio.FRingPacked |
	1<<FMAC | 1<<FMTU | 1<<FStatus | 1<<FMrgRxbuf | 1<<FCtrlVQ | 1<<FCtrlRx | 1<<FCtrlMACAddr

// Required must be offered or the device is refused.
const Required = 1 << virtio.FVersion1

// Requirement is one feature dependency of spec 5.1.3.1 "Feature bit
// requirements": Feature may only be accepted with at least one of AnyOf.
type Requirement struct {
	Feature virtio.Feature
	AnyOf   virtio.Features
}

// Requirements lists every dependency between virtio-net feature bits: the
// spec's table, plus HASH_REPORT on CTRL_VQ (Linux's
// virtnet_validate_features insists, as the hash configuration travels over
// the control queue) and CTRL_RX_EXTRA on CTRL_RX (its commands are in the
// CTRL_RX class).
var Requirements = []Requirement{
	{FGuestTSO4, 1 << FGuestCsum},
	{FGuestTSO6, 1 << FGuestCsum},
	{FGuestECN, 1<<FGuestTSO4 | 1<<FGuestTSO6},
	{FGuestUFO, 1 << FGuestCsum},
	{FGuestUSO4, 1 << FGuestCsum},
	{FGuestUSO6, 1 << FGuestCsum},
	{FHostTSO4, 1 << FCsum},
	{FHostTSO6, 1 << FCsum},
	{FHostECN, 1<<FHostTSO4 | 1<<FHostTSO6},
	{FHostUFO, 1 << FCsum},
	{FHostUSO, 1 << FCsum},
	{FCtrlGuestOffloads, 1 << FCtrlVQ},
	{FCtrlRx, 1 << FCtrlVQ},
	{FCtrlRxExtra, 1 << FCtrlRx},
	{FCtrlVLAN, 1 << FCtrlVQ},
	{FGuestAnnounce, 1 << FCtrlVQ},
	{FMQ, 1 << FCtrlVQ},
	{FCtrlMACAddr, 1 << FCtrlVQ},
	{FNotfCoal, 1 << FCtrlVQ},
	{FVQNotfCoal, 1 << FCtrlVQ},
	{FRSCExt, 1<<FHostTSO4 | 1<<FHostTSO6},
	{FRSS, 1 << FCtrlVQ},
	{FHashReport, 1 << FCtrlVQ},
}

// Unmet returns the first requirement fs violates, or false if fs is
// consistent.
func Unmet(fs virtio.Features) (Requirement, bool) {
	for _, r := range Requirements {
		if fs.Has(r.Feature) && fs&r.AnyOf == 0 {
			return r, true
		}
	}
	return Requirement{}, false
}

// FeatureList names the set bits of fs, device-specific and reserved.
func FeatureList(fs virtio.Features) []string { return fs.Names(FeatureNames) }
