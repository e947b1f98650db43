package virtionet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"

	"github.com/nke-harness/nke/virtio"
)

// Link status bits in Config.Status, spec 5.1.4.
const (
	StatusLinkUp   uint16 = 1
	StatusAnnounce uint16 = 2
)

// Config is the device-specific configuration, spec 5.1.4 "struct
// virtio_net_config": mac[6] @0, status le16 @6, max_virtqueue_pairs le16 @8,
// mtu le16 @10, speed le32 @12, duplex u8 @16.
type Config struct {
	MAC      net.HardwareAddr
	Status   uint16
	MaxPairs uint16
	MTU      uint16
}

// ConfigSize is how much of the configuration the driver reads.
const ConfigSize = 12

// ErrConfig reports device configuration the driver refuses.
var ErrConfig = errors.New("virtio-net config invalid")

// ParseConfig decodes and validates configuration bytes for the negotiated
// features fs. Fields whose feature is absent are left zero.
func ParseConfig(b []byte, fs virtio.Features) (Config, error) {
	var c Config
	need := 0
	switch {
	case fs.Has(FMTU):
		need = 12
	case fs.Has(FMQ):
		need = 10
	case fs.Has(FStatus):
		need = 8
	case fs.Has(FMAC):
		need = 6
	}
	if len(b) < need {
		return Config{}, fmt.Errorf("%w: %d bytes, the negotiated features need %d", ErrConfig, len(b), need)
	}
	if fs.Has(FMAC) {
		mac := net.HardwareAddr(append([]byte(nil), b[:6]...))
		if mac[0]&1 != 0 || [6]byte(mac) == [6]byte{} {
			return Config{}, fmt.Errorf("%w: MAC %v is not a unicast address", ErrConfig, mac)
		}
		c.MAC = mac
	}
	if fs.Has(FStatus) {
		// Bits a later spec may define mean nothing to this driver:
		// ignored, as Linux does, rather than refusing the device.
		c.Status = binary.LittleEndian.Uint16(b[6:]) & (StatusLinkUp | StatusAnnounce)
	} else {
		c.Status = StatusLinkUp // spec: without STATUS the link is assumed up
	}
	c.MaxPairs = 1
	if fs.Has(FMQ) {
		c.MaxPairs = binary.LittleEndian.Uint16(b[8:])
		if c.MaxPairs < 1 || c.MaxPairs > 0x8000 {
			return Config{}, fmt.Errorf("%w: max_virtqueue_pairs %d outside 1..32768", ErrConfig, c.MaxPairs)
		}
	}
	if fs.Has(FMTU) {
		// Below 68 (which spec 5.1.4.1 forbids) the driver declines
		// the feature rather than the device.
		c.MTU = binary.LittleEndian.Uint16(b[10:])
	}
	return c, nil
}

// configFields are the offsets and widths the driver reads, one access per
// field: a transport maps the slice length to the access width, and spec
// 4.1.3.1 asks for 16-bit accesses to 16-bit fields.
var configFields = [...]struct{ off, n int }{{0, 1}, {1, 1}, {2, 1}, {3, 1}, {4, 1}, {5, 1}, {6, 2}, {8, 2}, {10, 2}}

// readConfig reads the first len(buf) bytes of the configuration
// consistently: config_generation before and after must match (spec 2.5.1),
// retried a bounded number of times. It returns the bytes read: fewer than
// len(buf) when the device's window is shorter, which ParseConfig then
// judges.
func readConfig(t virtio.Transport, buf []byte) ([]byte, error) {
	if n := t.ConfigLen(); n < len(buf) {
		buf = buf[:max(n, 0)]
	}
	for try := 0; try < 16; try++ {
		g := t.ConfigGeneration()
		for _, f := range configFields {
			if f.off+f.n > len(buf) {
				break
			}
			if err := t.ReadConfig(f.off, buf[f.off:f.off+f.n]); err != nil {
				return nil, err
			}
		}
		if t.ConfigGeneration() == g {
			return buf, nil
		}
	}
	return nil, fmt.Errorf("%w: config_generation kept changing while reading", ErrConfig)
}
