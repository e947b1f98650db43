package virtionet_test

import (
	"errors"
	"testing"

	"github.com/nke-harness/nke/virtio"
	"github.com/nke-harness/nke/virtio/devmodel"
	"github.com/nke-harness/nke/virtio/virtionet"
)

// FuzzRxHeader: any 12 bytes the device writes are accepted or refused with
// an error; an accepted buffer count is within range, and re-encoding the
// decoded fields gives the same bytes.
func FuzzRxHeader(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0}, uint64(1<<virtionet.FMrgRxbuf))
	f.Add([]byte{1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 1, 0}, uint64(1<<virtionet.FGuestCsum))
	f.Add([]byte{0, 1, 54, 0, 0xa8, 5, 0, 0, 0, 0, 2, 0}, uint64(0))
	f.Add([]byte{0, 0, 0}, uint64(0))
	f.Fuzz(func(t *testing.T, b []byte, fs uint64) {
		n, err := virtionet.CheckRxHeader(b, virtio.Features(fs), 256)
		if err != nil {
			if n != 0 {
				t.Fatalf("error %v with count %d", err, n)
			}
			return
		}
		if n < 1 || n > 256 {
			t.Fatalf("accepted count %d", n)
		}
		h := virtionet.Header(b[:virtionet.HeaderLen])
		out := make(virtionet.Header, virtionet.HeaderLen)
		out.Encode(h.Fields())
		if string(out) != string(b[:virtionet.HeaderLen]) {
			t.Fatalf("round trip % x -> % x", b[:12], []byte(out))
		}
	})
}

// FuzzParseConfig: configuration bytes are accepted or refused, never
// panic, and what is accepted is within the spec's ranges.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte{0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0, 1, 0, 0xdc, 5}, uint64(devmodel.QEMUFeatures|1<<virtionet.FMTU))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, uint64(devmodel.QEMUFeatures))
	f.Add([]byte{2, 0, 0, 0, 0, 1}, uint64(1<<virtionet.FMAC|1<<virtionet.FMQ))
	f.Fuzz(func(t *testing.T, b []byte, fs uint64) {
		c, err := virtionet.ParseConfig(b, virtio.Features(fs))
		if err != nil {
			if !errors.Is(err, virtionet.ErrConfig) {
				t.Fatalf("error %v does not wrap ErrConfig", err)
			}
			return
		}
		if c.Status&^3 != 0 || c.MaxPairs < 1 {
			t.Fatalf("accepted %+v", c)
		}
		if c.MAC != nil && (c.MAC[0]&1 != 0 || len(c.MAC) != 6) {
			t.Fatalf("accepted MAC %v", c.MAC)
		}
	})
}
