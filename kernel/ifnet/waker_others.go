//go:build !linux

package ifnet

import "time"

// chanWaker is the portable fallback: timer resolution is coarser.
type chanWaker struct{ c chan struct{} }

func newWaker() (waker, error) { return &chanWaker{c: make(chan struct{}, 1)}, nil }

func (w *chanWaker) Wait(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-w.c:
	case <-t.C:
	}
}

func (w *chanWaker) Wake() {
	select {
	case w.c <- struct{}{}:
	default:
	}
}

func (w *chanWaker) Close() {}
