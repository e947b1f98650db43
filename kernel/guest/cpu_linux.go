package guest

import (
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// clockTick is USER_HZ, the unit of /proc/stat: 100 on every Linux ABI
// the harness runs on.
const clockTick = 100

func readCPU() CPUStatus {
	var c CPUStatus
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) == nil {
		c.ProcessUser = time.Duration(ru.Utime.Nano()).Seconds()
		c.ProcessSystem = time.Duration(ru.Stime.Nano()).Seconds()
	}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return c
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return c
	}
	for i, v := range f[1:] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return c
		}
		secs := float64(n) / clockTick
		switch i {
		case 3, 4: // idle, iowait
			c.GuestIdle += secs
		default:
			c.GuestBusy += secs
		}
	}
	return c
}
