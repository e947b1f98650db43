// Package bundle reads, checks, packs and unpacks NKE bundles: a folder
// Name.nke/Contents/ holding an Info.plist manifest (Apple's kext bundle
// layout) and, for a WebAssembly NKE, its module under
// Contents/WebAssembly/. docs/loader.md describes every manifest key.
package bundle

import (
	"bytes"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/nke-harness/nke/nke"
	"howett.net/plist"
)

// KPIPrefix starts the OSBundleLibraries ids that name harness KPIs
// (Apple's com.apple.kpi.*); every other id is a bundle.
const KPIPrefix = "com.nke-harness.kpi."

// Layers a manifest's NKEHarness Layer names.
const (
	LayerInterface = "interface"
	LayerRaw       = "raw"
	LayerProtocol  = "protocol"
	LayerIP        = "ip"
	LayerSocket    = "socket"
)

// Layers are the layer names, in the order of the stack, bottom up.
var Layers = []string{LayerRaw, LayerInterface, LayerProtocol, LayerIP, LayerSocket}

// Capabilities a manifest may declare.
const (
	// CapObserve: the NKE sees packets and passes them on.
	CapObserve = "observe"
	// CapModify: it may replace a packet (change what goes on).
	CapModify = "modify"
	// CapDrop: it may stop packets (Drop, Swallow, RawDrop, RawTransmit).
	CapDrop = "drop"
	// CapInject: it may inject packets or data.
	CapInject = "inject"
)

// Capabilities are the capability names.
var Capabilities = []string{CapObserve, CapModify, CapDrop, CapInject}

// Manifest is a bundle's Info.plist.
type Manifest struct {
	ID         string            // CFBundleIdentifier (checked with nke.CheckName)
	Version    string            // CFBundleVersion, kext style 1.2.3 / 1.2.3d4
	Compatible string            // OSBundleCompatibleVersion (optional; oldest version this one is compatible with)
	Libraries  map[string]string // OSBundleLibraries: id -> minimum version; com.nke-harness.kpi.* are KPIs, the rest bundles
	Harness    Harness           // the NKEHarness dict
	File       string            // the manifest's file name, for errors
}

// Harness is the NKEHarness dict: how the harness runs the NKE.
type Harness struct {
	Layer        string   // Layer: interface, raw, protocol, ip, socket
	Attach       Attach   // Attach: where it attaches (a dict, optional)
	Priority     int      // Priority: lower runs first (nke.Order)
	Before       []string // Before: filter names it runs before
	After        []string // After: filter names it runs after
	Capabilities []string // Capabilities: observe, modify, drop, inject (sorted, no duplicates)
	Settings     string   // Settings: handed to start as its args
	Builtin      string   // Builtin: a built-in implementation's name (nke/builtin)
	WebAssembly  string   // WebAssembly: a module file in Contents/WebAssembly/
}

// Attach says where an NKE attaches. Which keys apply depends on the
// layer; a key of another layer is an error.
type Attach struct {
	// Interface names the link (interface, raw, protocol); "" = every link.
	Interface string
	// EtherType restricts an interface filter to one EtherType (0 = all).
	EtherType uint16
	// Demux are a protocol's demux descriptors: "ethertype 88b5",
	// "sap 424203", "snap 0000000800" (kind, then hex bytes).
	Demux []nke.DemuxDesc
	// Families are an IP filter's or socket filter's families: inet,
	// inet6 (empty: both).
	Families []nke.IPFamily
	// SocketType is a socket filter's type: stream or dgram.
	SocketType nke.SocketType
	// SocketProtocol is its IP protocol (0: any).
	SocketProtocol uint8
	// Programmatic: the socket filter attaches only on request
	// (SFLT_PROG); by default it is global (SFLT_GLOBAL).
	Programmatic bool
}

// Order is the manifest's ordering as an nke.Order.
func (h Harness) Order() nke.Order {
	return nke.Order{Priority: h.Priority, Before: slices.Clone(h.Before), After: slices.Clone(h.After)}
}

// Can reports whether the manifest declares capability c.
func (h Harness) Can(c string) bool { return slices.Contains(h.Capabilities, c) }

// Kind is "builtin" or "wasm".
func (h Harness) Kind() string {
	if h.WebAssembly != "" {
		return "wasm"
	}
	return "builtin"
}

// Depends are the bundle ids (not KPIs) among the libraries, sorted.
func (m *Manifest) Depends() []string {
	var out []string
	for id := range m.Libraries {
		if !strings.HasPrefix(id, KPIPrefix) {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// KPIs are the KPI ids among the libraries, sorted.
func (m *Manifest) KPIs() []string {
	var out []string
	for id := range m.Libraries {
		if strings.HasPrefix(id, KPIPrefix) {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// ManifestError is a problem with one key of a manifest.
type ManifestError struct {
	File, Key, Problem string
}

func (e *ManifestError) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("%s: %s", e.File, e.Problem)
	}
	return fmt.Sprintf("%s: key %s: %s", e.File, e.Key, e.Problem)
}

// MaxManifestSize bounds an Info.plist.
const MaxManifestSize = 64 << 10

// Bounds on lists in a manifest.
const (
	maxLibraries = 32
	maxOrder     = 16
	maxSettings  = 4096
	maxDemux     = 8
)

type parser struct {
	file string
	err  *ManifestError
}

func (p *parser) fail(key, format string, args ...any) {
	if p.err == nil {
		p.err = &ManifestError{File: p.file, Key: key, Problem: fmt.Sprintf(format, args...)}
	}
}

func typeName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case uint64, int64:
		return "an integer"
	case float64, float32:
		return "a real"
	case []any:
		return "an array"
	case map[string]any:
		return "a dict"
	case []byte:
		return "data"
	}
	return fmt.Sprintf("%T", v)
}

func (p *parser) str(d map[string]any, key, path string, required bool) string {
	v, ok := d[key]
	if !ok {
		if required {
			p.fail(path, "missing (add <key>%s</key><string>...</string>)", key)
		}
		return ""
	}
	s, ok := v.(string)
	if !ok {
		p.fail(path, "is %s, want a string", typeName(v))
	}
	return s
}

func (p *parser) integer(d map[string]any, key, path string, lo, hi int64) (int64, bool) {
	v, ok := d[key]
	if !ok {
		return 0, false
	}
	var n int64
	switch x := v.(type) {
	case int64:
		n = x
	case uint64:
		if x > math.MaxInt64 {
			p.fail(path, "%d is out of range %d to %d", x, lo, hi)
			return 0, false
		}
		n = int64(x)
	default:
		p.fail(path, "is %s, want an integer", typeName(v))
		return 0, false
	}
	if n < lo || n > hi {
		p.fail(path, "%d is out of range %d to %d", n, lo, hi)
		return 0, false
	}
	return n, true
}

func (p *parser) strings(d map[string]any, key, path string, limit int) []string {
	v, ok := d[key]
	if !ok {
		return nil
	}
	a, ok := v.([]any)
	if !ok {
		p.fail(path, "is %s, want an array of strings", typeName(v))
		return nil
	}
	if len(a) > limit {
		p.fail(path, "has %d entries, at most %d", len(a), limit)
		return nil
	}
	out := make([]string, 0, len(a))
	for i, e := range a {
		s, ok := e.(string)
		if !ok {
			p.fail(fmt.Sprintf("%s[%d]", path, i), "is %s, want a string", typeName(e))
			return nil
		}
		out = append(out, s)
	}
	return out
}

func (p *parser) unknown(d map[string]any, path string, known ...string) {
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !slices.Contains(known, k) {
			p.fail(path+"."+k, "unknown key (known: %s)", strings.Join(known, ", "))
			return
		}
	}
}

// ParseManifest parses an Info.plist (an XML property list). file names
// it in errors, which are *ManifestError.
func ParseManifest(file string, data []byte) (*Manifest, error) {
	p := &parser{file: file}
	if len(data) > MaxManifestSize {
		return nil, &ManifestError{File: file, Problem: fmt.Sprintf("%d bytes, at most %d", len(data), MaxManifestSize)}
	}
	trimmed := bytes.TrimLeft(data, " \t\r\n\ufeff")
	if !bytes.HasPrefix(trimmed, []byte("<?xml")) && !bytes.HasPrefix(trimmed, []byte("<plist")) && !bytes.HasPrefix(trimmed, []byte("<!DOCTYPE")) {
		return nil, &ManifestError{File: file, Problem: "not an XML property list (want <?xml ...><plist version=\"1.0\"><dict>...)"}
	}
	var root any
	if err := decode(data, &root); err != nil {
		return nil, &ManifestError{File: file, Problem: fmt.Sprintf("not a valid XML property list: %v", err)}
	}
	d, ok := root.(map[string]any)
	if !ok {
		return nil, &ManifestError{File: file, Problem: fmt.Sprintf("the top level is %s, want a dict", typeName(root))}
	}
	m := &Manifest{File: file}
	m.ID = p.str(d, "CFBundleIdentifier", "CFBundleIdentifier", true)
	if p.err == nil {
		if err := nke.CheckName(m.ID); err != nil {
			p.fail("CFBundleIdentifier", "%q: want a reverse-DNS id of 1 to %d printable ASCII bytes without spaces, like com.example.firewall", m.ID, nke.MaxNameLen)
		} else if strings.HasPrefix(m.ID, KPIPrefix) {
			p.fail("CFBundleIdentifier", "%q: ids under %s are the harness's KPIs", m.ID, KPIPrefix)
		}
	}
	m.Version = p.str(d, "CFBundleVersion", "CFBundleVersion", true)
	if p.err == nil {
		if err := CheckVersion(m.Version); err != nil {
			p.fail("CFBundleVersion", "%v", err)
		}
	}
	m.Compatible = p.str(d, "OSBundleCompatibleVersion", "OSBundleCompatibleVersion", false)
	if p.err == nil && m.Compatible != "" {
		if c, err := CompareVersions(m.Compatible, m.Version); err != nil {
			p.fail("OSBundleCompatibleVersion", "%v", err)
		} else if c > 0 {
			p.fail("OSBundleCompatibleVersion", "%s is newer than CFBundleVersion %s; want at most the bundle's version", m.Compatible, m.Version)
		}
	}
	if v, ok := d["OSBundleLibraries"]; ok && p.err == nil {
		libs, ok := v.(map[string]any)
		if !ok {
			p.fail("OSBundleLibraries", "is %s, want a dict of bundle id to minimum version", typeName(v))
		} else if len(libs) > maxLibraries {
			p.fail("OSBundleLibraries", "has %d entries, at most %d", len(libs), maxLibraries)
		} else {
			m.Libraries = map[string]string{}
			ids := make([]string, 0, len(libs))
			for id := range libs {
				ids = append(ids, id)
			}
			sort.Strings(ids)
			for _, id := range ids {
				key := "OSBundleLibraries." + id
				if err := nke.CheckName(id); err != nil {
					p.fail(key, "%q is not a bundle id", id)
					break
				}
				if id == m.ID {
					p.fail(key, "the bundle depends on itself")
					break
				}
				s, ok := libs[id].(string)
				if !ok {
					p.fail(key, "is %s, want a version string", typeName(libs[id]))
					break
				}
				if err := CheckVersion(s); err != nil {
					p.fail(key, "%v", err)
					break
				}
				m.Libraries[id] = s
			}
		}
	}
	if p.err != nil {
		return nil, p.err
	}
	hv, ok := d["NKEHarness"]
	if !ok {
		return nil, &ManifestError{File: file, Key: "NKEHarness", Problem: "missing (a dict with at least Layer, Capabilities and Builtin or WebAssembly)"}
	}
	h, ok := hv.(map[string]any)
	if !ok {
		return nil, &ManifestError{File: file, Key: "NKEHarness", Problem: fmt.Sprintf("is %s, want a dict", typeName(hv))}
	}
	m.Harness = p.harness(h)
	if p.err != nil {
		return nil, p.err
	}
	return m, nil
}

func (p *parser) harness(d map[string]any) Harness {
	const pre = "NKEHarness."
	var h Harness
	p.unknown(d, "NKEHarness", "Layer", "Attach", "Priority", "Before", "After", "Capabilities", "Settings", "Builtin", "WebAssembly")
	h.Layer = p.str(d, "Layer", pre+"Layer", true)
	if p.err == nil && !slices.Contains(Layers, h.Layer) {
		p.fail(pre+"Layer", "%q: want one of %s", h.Layer, strings.Join(Layers, ", "))
	}
	if n, ok := p.integer(d, "Priority", pre+"Priority", -1000000, 1000000); ok {
		h.Priority = int(n)
	}
	h.Before = p.strings(d, "Before", pre+"Before", maxOrder)
	h.After = p.strings(d, "After", pre+"After", maxOrder)
	for _, list := range []struct {
		key   string
		names []string
	}{{"Before", h.Before}, {"After", h.After}} {
		for i, n := range list.names {
			if err := nke.CheckName(n); err != nil {
				p.fail(fmt.Sprintf("%s%s[%d]", pre, list.key, i), "%q is not a filter name", n)
			}
		}
	}
	caps := p.strings(d, "Capabilities", pre+"Capabilities", len(Capabilities)*2)
	if _, ok := d["Capabilities"]; !ok {
		p.fail(pre+"Capabilities", "missing (an array of observe, modify, drop, inject; observe alone for an NKE that only watches)")
	}
	for i, c := range caps {
		if !slices.Contains(Capabilities, c) {
			p.fail(fmt.Sprintf("%sCapabilities[%d]", pre, i), "%q: want one of %s", c, strings.Join(Capabilities, ", "))
		} else if !slices.Contains(h.Capabilities, c) {
			h.Capabilities = append(h.Capabilities, c)
		}
	}
	if p.err == nil && len(h.Capabilities) == 0 {
		p.fail(pre+"Capabilities", "empty: name at least observe")
	}
	sort.Strings(h.Capabilities)
	h.Settings = p.str(d, "Settings", pre+"Settings", false)
	if len(h.Settings) > maxSettings {
		p.fail(pre+"Settings", "%d bytes, at most %d", len(h.Settings), maxSettings)
	}
	h.Builtin = p.str(d, "Builtin", pre+"Builtin", false)
	h.WebAssembly = p.str(d, "WebAssembly", pre+"WebAssembly", false)
	if p.err == nil {
		_, hasB := d["Builtin"]
		_, hasW := d["WebAssembly"]
		switch {
		case hasB && hasW:
			p.fail(pre+"Builtin", "both Builtin and WebAssembly are set; an NKE is one or the other")
		case !hasB && !hasW:
			p.fail(pre+"Builtin", "missing: set Builtin (a built-in NKE's name) or WebAssembly (a file in Contents/WebAssembly/)")
		case hasB && h.Builtin == "":
			p.fail(pre+"Builtin", "empty: name a built-in NKE")
		case hasW && !validFileName(h.WebAssembly):
			p.fail(pre+"WebAssembly", "%q: want a file name in Contents/WebAssembly/ like fw.wasm (no folders)", h.WebAssembly)
		}
	}
	if p.err == nil {
		if h.WebAssembly != "" && (h.Layer == LayerProtocol || h.Layer == LayerSocket) {
			p.fail(pre+"Layer", "%s: WebAssembly NKEs attach at raw, interface or ip (ABI 1)", h.Layer)
		}
	}
	if v, ok := d["Attach"]; ok && p.err == nil {
		a, ok := v.(map[string]any)
		if !ok {
			p.fail(pre+"Attach", "is %s, want a dict", typeName(v))
		} else {
			h.Attach = p.attach(h.Layer, a)
		}
	}
	return h
}

func validFileName(s string) bool {
	if s == "" || len(s) > 128 || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c > '~' || c == '/' || c == '\\' {
			return false
		}
	}
	return true
}

// attachKeys are the Attach keys each layer takes.
var attachKeys = map[string][]string{
	LayerRaw:       {"Interface"},
	LayerInterface: {"Interface", "EtherType"},
	LayerProtocol:  {"Interface", "Demux"},
	LayerIP:        {"Families"},
	LayerSocket:    {"Families", "SocketType", "SocketProtocol", "Programmatic"},
}

func (p *parser) attach(layer string, d map[string]any) Attach {
	const pre = "NKEHarness.Attach."
	var a Attach
	known := attachKeys[layer]
	keys := make([]string, 0, len(d))
	for k := range d {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !slices.Contains(known, k) {
			p.fail(pre+k, "not a key of a %s NKE's Attach (it takes: %s)", layer, strings.Join(known, ", "))
			return a
		}
	}
	a.Interface = p.str(d, "Interface", pre+"Interface", false)
	if a.Interface != "" && !validFileName(a.Interface) {
		p.fail(pre+"Interface", "%q is not an interface name", a.Interface)
	}
	if n, ok := p.integer(d, "EtherType", pre+"EtherType", 0, 0xffff); ok {
		if n != 0 && n < 0x0600 {
			p.fail(pre+"EtherType", "%#04x is not an EtherType (0 for all, or 0x0600 and up)", n)
		}
		a.EtherType = uint16(n)
	}
	for i, s := range p.strings(d, "Demux", pre+"Demux", maxDemux) {
		desc, err := parseDemux(s)
		if err != nil {
			p.fail(fmt.Sprintf("%sDemux[%d]", pre, i), "%q: %v", s, err)
			break
		}
		a.Demux = append(a.Demux, desc)
	}
	if layer == LayerProtocol && p.err == nil && len(a.Demux) == 0 {
		p.fail(pre+"Demux", "missing: a protocol needs at least one demux descriptor, like \"ethertype 88b5\"")
	}
	for i, s := range p.strings(d, "Families", pre+"Families", 2) {
		var f nke.IPFamily
		switch s {
		case "inet":
			f = nke.IPv4
		case "inet6":
			f = nke.IPv6
		default:
			p.fail(fmt.Sprintf("%sFamilies[%d]", pre, i), "%q: want inet or inet6", s)
		}
		if slices.Contains(a.Families, f) {
			p.fail(fmt.Sprintf("%sFamilies[%d]", pre, i), "%s named twice", s)
		}
		a.Families = append(a.Families, f)
	}
	switch t := p.str(d, "SocketType", pre+"SocketType", false); t {
	case "":
	case "stream":
		a.SocketType = nke.SockStream
	case "dgram":
		a.SocketType = nke.SockDgram
	default:
		p.fail(pre+"SocketType", "%q: want stream or dgram", t)
	}
	if n, ok := p.integer(d, "SocketProtocol", pre+"SocketProtocol", 0, 255); ok {
		a.SocketProtocol = uint8(n)
	}
	if v, ok := d["Programmatic"]; ok {
		b, ok := v.(bool)
		if !ok {
			p.fail(pre+"Programmatic", "is %s, want <true/> or <false/>", typeName(v))
		}
		a.Programmatic = b
	}
	return a
}

func parseDemux(s string) (nke.DemuxDesc, error) {
	kind, hex, ok := strings.Cut(s, " ")
	if !ok {
		return nke.DemuxDesc{}, fmt.Errorf("want a kind and hex bytes, like \"ethertype 88b5\"")
	}
	var d nke.DemuxDesc
	switch kind {
	case "ethertype":
		d.Kind = nke.DemuxEtherType
	case "sap":
		d.Kind = nke.DemuxSAP
	case "snap":
		d.Kind = nke.DemuxSNAP
	default:
		return d, fmt.Errorf("kind %q: want ethertype, sap or snap", kind)
	}
	hex = strings.TrimSpace(hex)
	if len(hex)%2 != 0 || len(hex) > 10 {
		return d, fmt.Errorf("want an even number of hex digits, at most 10")
	}
	for i := 0; i < len(hex); i += 2 {
		b, err := strconv.ParseUint(hex[i:i+2], 16, 8)
		if err != nil {
			return d, fmt.Errorf("%q is not hex", hex)
		}
		d.Data = append(d.Data, byte(b))
	}
	if err := d.Check(); err != nil {
		return d, err
	}
	return d, nil
}

// decode unmarshals a property list, turning a panic of the decoder on
// hostile input into an error.
func decode(data []byte, v any) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("decoder: %v", r)
		}
	}()
	format, err := plist.Unmarshal(data, v)
	if err == nil && format != plist.XMLFormat {
		err = fmt.Errorf("format %s, want XML", plist.FormatNames[format])
	}
	return err
}
