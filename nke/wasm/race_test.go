//go:build race

package wasm

import "time"

// The race detector slows the scheduler and the watchdog's wake-ups.
const slack = 500 * time.Millisecond
