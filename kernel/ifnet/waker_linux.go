package ifnet

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// eventWaker sleeps in ppoll on an eventfd: a precise sub-millisecond
// timeout (Go timers round idle sleeps up to a millisecond) and an early
// wake-up from any goroutine. The poll loop holds its OS thread, so
// blocking in the syscall stalls nothing else.
type eventWaker struct {
	fd int
}

func newWaker() (waker, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &eventWaker{fd: fd}, nil
}

func (w *eventWaker) Wait(d time.Duration) {
	ts := unix.NsecToTimespec(d.Nanoseconds())
	fds := [1]unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}}
	n, _ := unix.Ppoll(fds[:], &ts, nil)
	if n > 0 {
		var buf [8]byte
		unix.Read(w.fd, buf[:])
	}
}

func (w *eventWaker) Wake() {
	one := [8]byte{1}
	unix.Write(w.fd, one[:])
}

func (w *eventWaker) Close() { unix.Close(w.fd) }
