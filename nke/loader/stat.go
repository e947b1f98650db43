package loader

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/bundle"
)

// Row is one loaded bundle, kextstat's row. Its fields map one to one
// onto the control channel's NKEStat (Index, Refs, ID, Version, Kind,
// Layer, Attachment, Order, Depends); Refused, Capabilities, Settings,
// Attached and Bundle are the loader's own.
type Row struct {
	// Index is its load number, from 1 (a replaced bundle keeps it).
	Index int
	// Refs counts the loaded bundles depending on it plus its control
	// clients.
	Refs        int
	ID, Version string
	// Kind is "builtin" or "wasm".
	Kind string
	// Layer is the manifest's.
	Layer string
	// Attachment says where it attaches, from the manifest ("ip inet,inet6",
	// "interface vt0 ethertype 0x88b5", "socket stream proto 6 global").
	Attachment string
	// Order is its ordering: "priority -5, before com.x, after com.y",
	// or "default" when the manifest sets none.
	Order string
	// Depends are the bundles (not KPIs) it depends on.
	Depends []string
	// Refused counts operations its capabilities did not allow.
	Refused uint64
	// Capabilities are the manifest's.
	Capabilities []string
	// Attached counts its live attachments (filters, protocols, socket
	// filter registrations); Filters are their names, as the hooks'
	// chains and counters show them.
	Attached int
	Filters  []string
	// Settings are what it was started with; Bundle the folder it came
	// from.
	Settings, Bundle string
}

// Stat returns a row per loaded bundle, in load order.
func (l *Loader) Stat() []Row {
	all := l.list()
	rows := make([]Row, 0, len(all))
	for _, inst := range all {
		m := inst.b.Manifest
		h := m.Harness
		r := Row{
			Index: inst.index, ID: m.ID, Version: m.Version, Kind: h.Kind(), Layer: h.Layer,
			Attachment: AttachmentString(h), Order: OrderString(h.Order()), Depends: m.Depends(),
			Refused: inst.refused.Load(), Capabilities: h.Capabilities, Settings: inst.settings, Bundle: inst.b.Name,
		}
		r.Refs = len(l.dependants(m.ID))
		if l.cfg.ControlClients != nil {
			r.Refs += len(l.cfg.ControlClients(m.ID))
		}
		inst.mu.Lock()
		for _, a := range inst.atts {
			if !a.detachedYet() {
				r.Attached++
				r.Filters = appendOnce(r.Filters, a.Name())
			}
		}
		for _, a := range inst.plain {
			select {
			case <-a.Done():
			default:
				r.Attached++
				r.Filters = appendOnce(r.Filters, a.Name())
			}
		}
		inst.mu.Unlock()
		rows = append(rows, r)
	}
	return rows
}

// appendOnce appends name unless names has it (an IP filter attaches
// once per family under one name).
func appendOnce(names []string, name string) []string {
	if slices.Contains(names, name) {
		return names
	}
	return append(names, name)
}

// AttachmentString describes where a manifest says its NKE attaches.
func AttachmentString(h bundle.Harness) string {
	a := h.Attach
	parts := []string{h.Layer}
	if a.Interface != "" {
		parts = append(parts, a.Interface)
	} else if h.Layer == bundle.LayerRaw || h.Layer == bundle.LayerInterface || h.Layer == bundle.LayerProtocol {
		parts = append(parts, "every interface")
	}
	if a.EtherType != 0 {
		parts = append(parts, fmt.Sprintf("ethertype %#04x", a.EtherType))
	}
	for _, d := range a.Demux {
		parts = append(parts, d.String())
	}
	if h.Layer == bundle.LayerIP || h.Layer == bundle.LayerSocket {
		fams := []string{}
		for _, f := range a.Families {
			fams = append(fams, f.String())
		}
		if len(fams) == 0 {
			fams = []string{nke.IPv4.String(), nke.IPv6.String()}
		}
		parts = append(parts, strings.Join(fams, ","))
	}
	if h.Layer == bundle.LayerSocket {
		if a.SocketType != 0 {
			parts = append(parts, a.SocketType.String())
		}
		if a.SocketProtocol != 0 {
			parts = append(parts, fmt.Sprintf("proto %d", a.SocketProtocol))
		}
		if a.Programmatic {
			parts = append(parts, "programmatic")
		} else {
			parts = append(parts, "global")
		}
	}
	return strings.Join(parts, " ")
}

// OrderString describes an order.
func OrderString(o nke.Order) string {
	var parts []string
	if o.Priority != 0 {
		parts = append(parts, fmt.Sprintf("priority %d", o.Priority))
	}
	if len(o.Before) > 0 {
		parts = append(parts, "before "+strings.Join(o.Before, " "))
	}
	if len(o.After) > 0 {
		parts = append(parts, "after "+strings.Join(o.After, " "))
	}
	if len(parts) == 0 {
		return "default"
	}
	return strings.Join(parts, ", ")
}

// WriteTable writes rows as kextstat does: a header, then a line each.
func WriteTable(w io.Writer, rows []Row) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "Index\tRefs\tVersion\tName\tKind\tAttachment\tOrder\tAttached\tRefused\tDepends")
	for _, r := range rows {
		deps := strings.Join(r.Depends, ",")
		if deps == "" {
			deps = "-"
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", r.Index, r.Refs, r.Version, r.ID, r.Kind, r.Attachment, r.Order, r.Attached, r.Refused, deps)
	}
	return tw.Flush()
}

// WriteTable writes the loader's Stat as a table.
func (l *Loader) WriteTable(w io.Writer) error { return WriteTable(w, l.Stat()) }
