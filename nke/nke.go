// Package nke is the kernel programming interface (KPI) that network kernel
// extensions are written against: the verdicts a filter returns, how a
// filter is placed among others on a hook, and the errors the control
// callbacks use. It follows Apple's NKE KPI (kpi_interfacefilter.h,
// kpi_ipfilter.h, kpi_protocol.h) where the semantics are the same, and
// says where it differs.
//
// An NKE imports only nke/... packages: packets are nke/mbuf's. The guest
// runtime (kernel/...) implements the hooks and runs the filters.
package nke

import (
	"errors"
	"fmt"
)

// Verdict is what a data-path callback decides about a packet: Apple's
// return value of an input or output filter (0, EJUSTRETURN, or another
// errno).
type Verdict uint8

const (
	// Continue passes the packet to the next filter or layer (Apple: 0).
	Continue Verdict = iota
	// Swallow stops the packet: the filter owns it now and may free it
	// or re-inject it later (Apple: EJUSTRETURN). The caller does not
	// free it.
	Swallow
	// Drop stops the packet: the caller frees it and counts the drop
	// against the filter (Apple: any other errno).
	Drop

	numVerdicts = 3
)

// NumVerdicts is the number of verdicts, for tables indexed by Verdict.
const NumVerdicts = numVerdicts

func (v Verdict) String() string {
	switch v {
	case Continue:
		return "continue"
	case Swallow:
		return "swallow"
	case Drop:
		return "drop"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// Errors of control callbacks (ioctl and the like), Apple's rule: nil is
// success, ErrSwallowed means "succeed without doing the operation"
// (EJUSTRETURN), ErrNotMine passes the call on to the next filter
// (EOPNOTSUPP), and any other error stops the call and is returned to the
// caller.
var (
	ErrSwallowed = errors.New("nke: handled by a filter")
	ErrNotMine   = errors.New("nke: not handled by this filter")
)

// Order places a filter among the others on the same hook. Without
// constraints a hook keeps Apple's order for its layer (interface filters
// in attach order, IP filters newest first); Priority and the Before and
// After constraints override it, resolved deterministically: constraints
// first, then lower Priority, then the layer's default order, then name.
type Order struct {
	// Priority orders filters the constraints leave free; lower runs
	// first. The zero value keeps the default order.
	Priority int
	// Before names filters this one must run before. A name that is not
	// attached is ignored.
	Before []string
	// After names filters this one must run after. Each must be attached
	// when this one is, or the attach is refused.
	After []string
}

// MaxNameLen bounds a filter's name (Apple's bundle identifiers).
const MaxNameLen = 96

// CheckName reports whether name is a usable filter name: non-empty,
// printable ASCII without spaces, at most MaxNameLen bytes, like a bundle
// identifier ("com.example.firewall").
func CheckName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("nke: filter name %q: want 1 to %d bytes", name, MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("nke: filter name %q: byte %d is not printable ASCII without spaces", name, i)
		}
	}
	return nil
}
