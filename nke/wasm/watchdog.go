package wasm

import (
	"sync"
	"time"
)

var epoch = time.Now()

// nanotime is monotonic nanoseconds since the package started.
func nanotime() int64 { return int64(time.Since(epoch)) }

// watchdog stops calls that run past the budget. The data path only
// stores the call's start time in an atomic; the watchdog polls every
// quarter budget while any instance exists and sleeps otherwise, so a
// runaway call is stopped between budget and 1.25 x budget after it
// started (plus wazero's exit, a check at the next loop back-edge or
// function entry).
type watchdog struct {
	budget time.Duration
	mu     sync.Mutex
	// +checklocks:mu
	insts map[*Instance]struct{}
	// +checklocks:mu
	running bool
	wake    chan struct{}
	quit    chan struct{}
	done    chan struct{}
}

func newWatchdog(budget time.Duration) *watchdog {
	w := &watchdog{budget: budget, insts: map[*Instance]struct{}{},
		wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
	go w.loop()
	return w
}

func (w *watchdog) add(i *Instance) {
	w.mu.Lock()
	w.insts[i] = struct{}{}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *watchdog) remove(i *Instance) {
	w.mu.Lock()
	delete(w.insts, i)
	w.mu.Unlock()
}

func (w *watchdog) stop() {
	close(w.quit)
	<-w.done
}

func (w *watchdog) loop() {
	defer close(w.done)
	period := w.budget / 4
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		w.mu.Lock()
		idle := len(w.insts) == 0
		w.mu.Unlock()
		if idle {
			// Nothing to watch: sleep until an instance is added.
			select {
			case <-w.wake:
			case <-w.quit:
				return
			}
			continue
		}
		select {
		case <-t.C:
		case <-w.wake:
			continue
		case <-w.quit:
			return
		}
		now := nanotime()
		w.mu.Lock()
		for i := range w.insts {
			if s := i.started.Load(); s != 0 && time.Duration(now-s) > w.budget {
				i.runaway.Store(true)
				i.cancel() // wazero closes the module; the call returns
			}
		}
		w.mu.Unlock()
	}
}
