package bundle

import (
	"fmt"

	"github.com/nke-harness/nke/nke"
	"howett.net/plist"
)

// MarshalManifest writes m as an XML Info.plist that ParseManifest reads
// back as m (File aside). Keys at their zero value are left out.
func MarshalManifest(m *Manifest) ([]byte, error) {
	h := m.Harness
	hd := map[string]any{"Layer": h.Layer, "Capabilities": h.Capabilities}
	if h.Priority != 0 {
		hd["Priority"] = h.Priority
	}
	if h.Before != nil {
		hd["Before"] = h.Before
	}
	if h.After != nil {
		hd["After"] = h.After
	}
	if h.Settings != "" {
		hd["Settings"] = h.Settings
	}
	if h.WebAssembly != "" {
		hd["WebAssembly"] = h.WebAssembly
	} else {
		hd["Builtin"] = h.Builtin
	}
	a := h.Attach
	ad := map[string]any{}
	if a.Interface != "" {
		ad["Interface"] = a.Interface
	}
	if a.EtherType != 0 {
		ad["EtherType"] = int(a.EtherType)
	}
	for _, d := range a.Demux {
		s := d.String()
		ad["Demux"] = append(asStrings(ad["Demux"]), s)
	}
	for _, f := range a.Families {
		ad["Families"] = append(asStrings(ad["Families"]), f.String())
	}
	switch a.SocketType {
	case 0:
	case nke.SockStream, nke.SockDgram:
		ad["SocketType"] = a.SocketType.String()
	default:
		return nil, fmt.Errorf("bundle: %s: socket type %v", m.ID, a.SocketType)
	}
	if a.SocketProtocol != 0 {
		ad["SocketProtocol"] = int(a.SocketProtocol)
	}
	if a.Programmatic {
		ad["Programmatic"] = true
	}
	if len(ad) > 0 {
		hd["Attach"] = ad
	}
	d := map[string]any{"CFBundleIdentifier": m.ID, "CFBundleVersion": m.Version, "NKEHarness": hd}
	if m.Compatible != "" {
		d["OSBundleCompatibleVersion"] = m.Compatible
	}
	if m.Libraries != nil {
		d["OSBundleLibraries"] = m.Libraries
	}
	return plist.MarshalIndent(d, plist.XMLFormat, "\t")
}

func asStrings(v any) []string {
	s, _ := v.([]string)
	return s
}
