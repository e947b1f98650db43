//go:build !linux

package dma

import "fmt"

// OpenHugepages needs Linux hugetlbfs and /proc/self/pagemap.
func OpenHugepages(dir string, size int) (*Hugepages, error) {
	return nil, fmt.Errorf("dma: open hugepages in %s: %w", dir, ErrNotSupported)
}

// Close releases nothing: there is never a mapping here.
func (h *Hugepages) Close() error { return nil }
