package workers

import (
	"sync"
	"time"
)

const (
	// DefaultShellWindow is how much output may be on its way to the
	// sockets (appended to Redis, not yet written to any socket) before
	// the worker stops reading the PTY, as ttyd stops a flood at its
	// client's watermark: a Ctrl-C then has at most this much left to
	// show. Config.ShellWindow changes it. 64 KiB rather than 256: on a
	// 2-vCPU VM a Ctrl-C's prompt came back within 5 ms with under 64 KiB
	// after the key in every round, and a flood ran as fast
	// (bench/RESULTS.md, 2026-12-06, evening).
	DefaultShellWindow = 64 << 10
	// shellFlowStall is how long the worker waits for an ack before it
	// takes the watching sockets for gone and reads on: a terminal nobody
	// watches keeps running into its (bounded) stored output.
	shellFlowStall = time.Second
	// shellFlowSeqs bounds the seq -> offset entries kept for acks.
	shellFlowSeqs = 4096
	// unwatchedRate bounds what a terminal appends while no socket
	// acknowledges its output (before the first ack, or after they
	// stalled), past a window's worth: a flood nobody reads still goes
	// into its stored output, but must not take Redis from everyone.
	unwatchedRate = 1 << 20 // bytes a second
)

// shellFlow is a terminal's flow control: the output appended to Redis
// against what the gateways acknowledge having written to a socket (the
// most advanced socket: one far behind reads the stream at its own pace and
// holds nobody back). It is off until the first ack, and off again after an
// ack stalls for shellFlowStall.
type shellFlow struct {
	window   int64 // bytes that may be on their way
	mu       sync.Mutex
	on       bool
	appended int64 // bytes appended to Redis
	acked    int64 // bytes of the most advanced ack
	// ackedSeq is the most advanced seq acknowledged: a gateway can ack a
	// chunk before the append that stored it has returned here (pub/sub
	// goes out during the script, its reply after), and the chunk then
	// counts as acknowledged once it is recorded.
	ackedSeq int64
	lastAck  time.Time
	ends     []seqEnd // the appended offset after each recent seq
	wake     chan struct{}
	// offSince and offBase are when flow control went off and what had
	// been appended then (offSince zero: not yet measured).
	offSince time.Time
	offBase  int64
}

// seqEnd is the appended offset once the chunk of seq was appended.
type seqEnd struct {
	seq int64
	end int64
}

func newShellFlow(window int) *shellFlow {
	return &shellFlow{window: int64(window), wake: make(chan struct{}, 1)}
}

// appendedChunks records chunks of sizes, the last of which got seq last.
func (fl *shellFlow) appendedChunks(last int64, sizes []int) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	for i, n := range sizes {
		fl.appended += int64(n)
		fl.ends = append(fl.ends, seqEnd{seq: last - int64(len(sizes)-1-i), end: fl.appended})
	}
	if over := len(fl.ends) - shellFlowSeqs; over > 0 {
		fl.ends = append(fl.ends[:0], fl.ends[over:]...)
	}
	if fl.creditLocked() {
		fl.wakeReader()
	}
}

// creditLocked counts the recorded chunks up to ackedSeq as acknowledged,
// and reports whether any was. fl.mu must be held.
func (fl *shellFlow) creditLocked() bool {
	i := 0
	for i < len(fl.ends) && fl.ends[i].seq <= fl.ackedSeq {
		fl.acked = max(fl.acked, fl.ends[i].end)
		i++
	}
	fl.ends = append(fl.ends[:0], fl.ends[i:]...)
	return i > 0
}

// wakeReader wakes a reader waiting for room, if one is.
func (fl *shellFlow) wakeReader() {
	select {
	case fl.wake <- struct{}{}:
	default:
	}
}

// ack records that a socket was written the output up to seq.
func (fl *shellFlow) ack(seq int64) {
	fl.mu.Lock()
	fl.ackedSeq = max(fl.ackedSeq, seq)
	fl.creditLocked()
	fl.on, fl.lastAck, fl.offSince = true, time.Now(), time.Time{}
	fl.mu.Unlock()
	fl.wakeReader()
}

// flushed counts the output through seq as delivered without taking it
// for a socket's ack: a signal key threw it away, and the socket that
// typed the key skips it (workers/shellintr.go), so the output after the
// key is read at once rather than after that socket's next ack.
func (fl *shellFlow) flushed(seq int64) {
	fl.mu.Lock()
	fl.ackedSeq = max(fl.ackedSeq, seq)
	credited := fl.creditLocked()
	fl.mu.Unlock()
	if credited {
		fl.wakeReader()
	}
}

// wait blocks while more than the window is on its way (pending more
// read but not yet appended), until an ack makes room, the acks stall, or
// stop closes. With no acks, it paces the output to unwatchedRate.
func (fl *shellFlow) wait(pending func() int, stop <-chan struct{}) {
	for {
		fl.mu.Lock()
		var pause time.Duration
		switch {
		case !fl.on:
			pause = fl.unwatchedPauseLocked(int64(pending()))
			if pause <= 0 {
				fl.mu.Unlock()
				return
			}
		case fl.appended+int64(pending())-fl.acked <= fl.window:
			fl.mu.Unlock()
			return
		default:
			pause = shellFlowStall - time.Since(fl.lastAck)
			if pause <= 0 {
				// Nobody acknowledges: the sockets went away.
				fl.on, fl.offSince, fl.offBase = false, time.Now(), fl.appended
				fl.mu.Unlock()
				continue
			}
		}
		fl.mu.Unlock()
		select {
		case <-fl.wake:
		case <-time.After(pause):
		case <-stop:
			return
		}
	}
}

// unwatchedPauseLocked is how long a reader with pending bytes waits
// while flow control is off: output up to a window, then unwatchedRate
// since it went off. Credit is kept only up to what is pending and a
// window more: a terminal quiet for a minute, or one whose appends failed
// for seconds (Redis away), does not then pour a minute's worth into its
// stored output at once, past its byte budget, before a socket that was
// cut off meanwhile can catch up. fl.mu must be held.
func (fl *shellFlow) unwatchedPauseLocked(pending int64) time.Duration {
	now := time.Now()
	if fl.offSince.IsZero() {
		fl.offSince, fl.offBase = now, fl.appended
	}
	allowed := fl.window + int64(now.Sub(fl.offSince).Seconds()*unwatchedRate)
	if allowed-(fl.appended-fl.offBase) > fl.window+pending {
		// The pending bytes go, and a window after them; the rate counts
		// from now.
		fl.offSince, fl.offBase = now, fl.appended+pending
		return 0
	}
	over := fl.appended + pending - fl.offBase - allowed
	if over <= 0 {
		return 0
	}
	return min(time.Duration(over)*time.Second/unwatchedRate, 100*time.Millisecond)
}
