package virtqueue

import (
	"fmt"

	"github.com/nke-harness/nke/nke/dma"
)

// AllocLayout allocates zeroed rings of layout l: AllocRings or
// AllocPackedRings.
func AllocLayout(a dma.Allocator, l Layout, size uint16) (Rings, error) {
	switch l {
	case Split:
		return AllocRings(a, size)
	case Packed:
		return AllocPackedRings(a, size)
	}
	return Rings{}, fmt.Errorf("virtqueue: unknown %v", l)
}

// NewRing returns the driver side for r's layout: New or NewPacked.
func NewRing(name string, r Rings, eventIdx bool) (Ring, error) {
	switch r.Layout {
	case Split:
		q, err := New(name, r, eventIdx)
		if err != nil {
			return nil, err
		}
		return q, nil
	case Packed:
		q, err := NewPacked(name, r, eventIdx)
		if err != nil {
			return nil, err
		}
		return q, nil
	}
	return nil, fmt.Errorf("virtqueue: unknown %v", r.Layout)
}

// NewDeviceRing returns the device side for r's layout: NewDevice or
// NewPackedDevice.
func NewDeviceRing(r Rings, mem Translator, eventIdx, indirect bool) (DeviceRing, error) {
	switch r.Layout {
	case Split:
		d, err := NewDevice(r, mem, eventIdx, indirect)
		if err != nil {
			return nil, err
		}
		return d, nil
	case Packed:
		d, err := NewPackedDevice(r, mem, eventIdx, indirect)
		if err != nil {
			return nil, err
		}
		return d, nil
	}
	return nil, fmt.Errorf("virtqueue: unknown %v", r.Layout)
}
