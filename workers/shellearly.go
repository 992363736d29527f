package workers

import (
	"strconv"
	"time"
)

// Bounds of the input kept for terminals whose open has not arrived yet.
const (
	earlyInputFor   = 10 * time.Second
	earlyInputBytes = 64 << 10
	earlyInputKeys  = 64
)

// earlyInput is input and resizes that reached this worker for a terminal
// generation before its open control did. Two gateways opening one
// terminal at once both see it opened; the open control of the one that
// won is queued in this worker's inbox after its script ran, so the other
// one's keystrokes can come first. They are kept here, bounded and for a
// few seconds, and played once the open arrives, instead of lost.
type earlyInput struct {
	ops   []shellOp
	bytes int
	at    time.Time
}

func earlyKey(shell string, gen int64) string { return shell + " " + strconv.FormatInt(gen, 10) }

// keepEarlyLocked keeps op for a generation that has no terminal here yet,
// unless a newer generation of the key runs (then op is stale).
// w.shells.mu must be held.
func (w *Worker) keepEarlyLocked(shell string, gen int64, op shellOp) {
	if sh := w.shells.m[shell]; sh != nil && sh.gen >= gen || w.shells.closing {
		return
	}
	now := time.Now()
	for k, e := range w.shells.early {
		if now.Sub(e.at) > earlyInputFor {
			delete(w.shells.early, k)
		}
	}
	k := earlyKey(shell, gen)
	e := w.shells.early[k]
	if e == nil {
		if len(w.shells.early) >= earlyInputKeys {
			return
		}
		if w.shells.early == nil {
			w.shells.early = map[string]*earlyInput{}
		}
		e = &earlyInput{at: now}
		w.shells.early[k] = e
	}
	e.ops, e.bytes, _ = queueOp(e.ops, e.bytes, earlyInputBytes, op)
}

// takeEarly returns and forgets what was kept for a generation, and
// forgets what was kept for older generations of its key.
// w.shells.mu must be held.
func (w *Worker) takeEarly(shell string, gen int64) []shellOp {
	for old := gen - 1; old >= 0 && len(w.shells.early) > 0; old-- {
		delete(w.shells.early, earlyKey(shell, old))
		if old < gen-16 {
			break // generations move one at a time; far older ones expire
		}
	}
	k := earlyKey(shell, gen)
	e := w.shells.early[k]
	if e == nil {
		return nil
	}
	delete(w.shells.early, k)
	if time.Since(e.at) > earlyInputFor {
		return nil
	}
	return e.ops
}
