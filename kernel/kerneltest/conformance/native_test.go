package conformance_test

import (
	"testing"

	"github.com/nke-harness/nke/kernel/kerneltest/conformance"
)

// The native Go backend passes the suite.
func TestNative(t *testing.T) { conformance.Run(t, conformance.Native) }
