package workers

import (
	"syscall"
	"time"
)

// A PTY hands its reader at most what its line discipline holds, 4 KiB,
// and whatever has arrived since the last read: a reader that is always
// waiting gets a flood a few hundred bytes at a time, one system call and
// one wake-up each, which was half of the worker's CPU per MB. ptyPacer
// makes the reader of a flood pause before its next read, long enough for
// most of a buffer to arrive but not so long that the writer fills it and
// waits; output that comes in small reads (echo, prompts) is never held.
const (
	// ptyPaceFrom is the least read that counts as a flood.
	ptyPaceFrom = 1 << 10
	// ptyPaceTarget is the read the pause aims at: under the buffer, so
	// that the writer seldom finds it full.
	ptyPaceTarget = 3 << 10
	// ptyPaceFull is a read that found the buffer (nearly) full: the
	// reader is behind, and halves its pause.
	ptyPaceFull = 4000
	ptyPauseMin = 20 * time.Microsecond
	ptyPauseMax = 250 * time.Microsecond
)

// ptyPacer holds the reader's pause, adapted after every read.
type ptyPacer struct {
	pause time.Duration
}

// after returns the pause before the next read, given the last read's size.
func (p *ptyPacer) after(n int) time.Duration {
	switch {
	case n < ptyPaceFrom:
		p.pause = 0
	case n >= ptyPaceFull:
		p.pause /= 2
		if p.pause < ptyPauseMin {
			p.pause = 0
		}
	case p.pause == 0:
		p.pause = ptyPauseMin
	default:
		p.pause = min(max(p.pause*ptyPaceTarget/time.Duration(n), ptyPauseMin), ptyPauseMax)
	}
	return p.pause
}

// nanosleep pauses the calling thread for d: time.Sleep cannot sleep less
// than about a millisecond on a loaded machine (timer resolution of the
// scheduler), which would cap a flood at 4 KiB per millisecond. The runtime
// treats it as a blocking system call, so each terminal in a flood holds
// a thread for at most ptyPauseMax at a time, not a P.
func nanosleep(d time.Duration) {
	if d > 0 {
		ts := syscall.NsecToTimespec(int64(d))
		_ = syscall.Nanosleep(&ts, nil)
	}
}
