package virtiopci

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// Resource flags from include/linux/ioport.h, as sysfs "resource" shows them.
const (
	ioresourceIO  = 0x100
	ioresourceMem = 0x200
)

// barInfo is one line of a function's sysfs "resource" file: the CPU
// physical range a BAR decodes and its flags.
type barInfo struct {
	Start, End, Flags uint64
}

// Size is the BAR's length in bytes; 0 for an unimplemented BAR (or the
// upper half of a 64-bit BAR).
func (b barInfo) Size() uint64 {
	if b.Start == 0 && b.End == 0 {
		return 0
	}
	return b.End - b.Start + 1
}

func (b barInfo) kind() string {
	switch {
	case b.Size() == 0:
		return "unimplemented"
	case b.Flags&ioresourceIO != 0:
		return "I/O"
	case b.Flags&ioresourceMem != 0:
		return "memory"
	}
	return fmt.Sprintf("flags %#x", b.Flags)
}

// isMem reports a memory BAR: the only kind that can be mmapped.
func (b barInfo) isMem() bool { return b.Size() != 0 && b.Flags&ioresourceMem != 0 }

// parseResources decodes the first six lines (BAR0-5) of a sysfs
// "resource" file: "0x%016llx 0x%016llx 0x%016llx" per resource.
func parseResources(data []byte) ([6]barInfo, error) {
	var bars [6]barInfo
	sc := bufio.NewScanner(bytes.NewReader(data))
	for i := range bars {
		if !sc.Scan() {
			return bars, fmt.Errorf("resource file has %d lines, want at least 6", i)
		}
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			return bars, fmt.Errorf("resource line %d: %q: want 3 fields", i, sc.Text())
		}
		var v [3]uint64
		for j, s := range f {
			n, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
			if err != nil || !strings.HasPrefix(s, "0x") {
				return bars, fmt.Errorf("resource line %d: %q is not 0x-prefixed hex", i, s)
			}
			v[j] = n
		}
		b := barInfo{Start: v[0], End: v[1], Flags: v[2]}
		if b.End < b.Start {
			return bars, fmt.Errorf("resource line %d: end %#x before start %#x", i, b.End, b.Start)
		}
		bars[i] = b
	}
	return bars, nil
}
