//go:build !linux

package hugepage

import "fmt"

// Open needs Linux hugetlbfs and /proc/self/pagemap.
func Open(dir string, size int) (*Memory, error) {
	return nil, fmt.Errorf("hugepage: open hugepages in %s: %w", dir, ErrNotSupported)
}

// Close releases nothing: there is never a mapping here.
func (h *Memory) Close() error { return nil }
