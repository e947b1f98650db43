package mbuftest

import (
	"fmt"
	"strings"
	"testing"
)

// fakeT records errors instead of failing, and runs cleanups on demand.
type fakeT struct {
	testing.TB
	errs     []string
	cleanups []func()
}

func (f *fakeT) Helper()           {}
func (f *fakeT) Cleanup(fn func()) { f.cleanups = append(f.cleanups, fn) }
func (f *fakeT) Errorf(format string, args ...any) {
	f.errs = append(f.errs, fmt.Sprintf(format, args...))
}
func (f *fakeT) finish() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

func TestCheckPools(t *testing.T) {
	a, b := NewPool(t, "rx", 4, 256, 32), NewPool(t, "tx", 2, 100, 0)
	ft := &fakeT{TB: t}
	CheckPools(ft, a, b)
	m1, m2 := a.Get(), a.Get()
	n := b.Get()
	n.Free()
	m1.Free()
	ft.finish()
	if len(ft.errs) != 1 || !strings.Contains(ft.errs[0], `"rx"`) || !strings.Contains(ft.errs[0], "leaked 1 of 4") {
		t.Fatalf("errors = %q", ft.errs)
	}
	m2.Free()
	ft.errs = nil
	ft.finish()
	if len(ft.errs) != 0 {
		t.Fatalf("errors after freeing = %q", ft.errs)
	}
}
