package handlers

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/agentgate/agentgate/store"
)

// acker tells workers how far their terminals' output was written to this
// gateway's sockets (their flow control: a worker reads a PTY only while
// the most advanced socket keeps up). The acks of all the terminals of one
// worker go in one control: over the worker's link as soon as the control
// before has been written, so that acks made meanwhile share the next one,
// and through its inbox at most every ackInterval, so that acks never crowd
// out the keystrokes and opens that share the inbox.
type acker struct {
	mu      sync.Mutex
	pending map[string]map[*feed]struct{} // by worker: feeds written since their last ack
	sending map[string]bool               // a goroutine is acking this worker
}

// ackInterval spaces the acks to a worker through its inbox: at 20 MB/s,
// 5 ms is 100 KB, well within the worker's window (workers/shellflow.go).
// Over a link, which costs Redis nothing, acks are not spaced: a window's
// round trip is what bounds a flood's throughput with a small window, and
// a worker gets at most an ack per frame, which a flood makes about a
// thousand a second on a whole machine (bench/RESULTS.md).
const ackInterval = 5 * time.Millisecond

// maxAcksPerControl bounds one control's size.
const maxAcksPerControl = 256

// written records that sock was written the chunk seq of its terminal and
// has the terminal's worker told.
func (tm *terminals) written(sock *shellSocket, seq int64) {
	sock.mu.Lock()
	w := sock.w
	sock.mu.Unlock()
	if w == nil {
		return
	}
	f := w.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if w.gen == f.gen {
		tm.writtenLocked(f, seq)
	}
}

// writtenLocked records that a socket here has had the chunks of f's
// terminal through seq, and has the terminal's worker told. f.mu must be
// held.
func (tm *terminals) writtenLocked(f *feed, seq int64) {
	// A seq past every one of the generation's frames seen here is the
	// last generation's: its frames queued before a restart are written
	// after it, and would ack output the new one has not made.
	if seq <= f.term.written || seq > f.maxSeen {
		return
	}
	f.term.written = seq
	if worker := f.term.worker; worker != "" {
		tm.acks.mark(worker, f, func() { tm.sendAcks(worker) })
	}
}

// mark notes that f has a new written seq for worker, and starts send if
// no goroutine is acking that worker.
func (a *acker) mark(worker string, f *feed, send func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pending == nil {
		a.pending, a.sending = map[string]map[*feed]struct{}{}, map[string]bool{}
	}
	if a.pending[worker] == nil {
		a.pending[worker] = map[*feed]struct{}{}
	}
	a.pending[worker][f] = struct{}{}
	if !a.sending[worker] {
		a.sending[worker] = true
		go send()
	}
}

// take returns the feeds marked for worker since the last take; none
// means the acking goroutine of worker is done.
func (a *acker) take(worker string) map[*feed]struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	feeds := a.pending[worker]
	delete(a.pending, worker)
	if len(feeds) == 0 {
		delete(a.sending, worker)
	}
	return feeds
}

// sendAcks tells worker the written seqs of its terminals until none is
// newer than what it was told. Runs in its own goroutine, one per worker.
func (tm *terminals) sendAcks(worker string) {
	for {
		feeds := tm.acks.take(worker)
		if len(feeds) == 0 {
			return
		}
		acks := make([]store.ShellAck, 0, len(feeds))
		for f := range feeds {
			f.mu.Lock()
			if f.term.worker == worker && f.term.written > f.term.acked {
				f.term.acked = f.term.written
				acks = append(acks, store.ShellAck{Shell: f.key, Gen: f.gen, Seq: f.term.written})
			}
			f.mu.Unlock()
		}
		linked := true
		for len(acks) > 0 {
			n := min(len(acks), maxAcksPerControl)
			if !tm.sendAckControl(worker, acks[:n]) {
				linked = false
			}
			acks = acks[n:]
		}
		if !linked {
			time.Sleep(ackInterval)
		}
	}
}

// sendAckControl sends acks to worker and reports whether they took its
// link.
func (tm *terminals) sendAckControl(worker string, acks []store.ShellAck) (linked bool) {
	data, err := json.Marshal(acks)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	linked, err = tm.send(ctx, worker, store.Control{Type: store.ControlShellAcks, Data: data})
	if err != nil {
		// The worker reads on after its stall timeout; nothing is lost.
		tm.log.Debug("ack terminal output", "worker", worker, "terminals", len(acks), "err", err)
	}
	return linked
}
