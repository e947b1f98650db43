//go:build !race

package wasm

import "time"

// slack is scheduling noise allowed past the runaway bound.
const slack = 30 * time.Millisecond
