package workers

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestShellFlow: until a socket acknowledges, a window and then the
// unwatched rate; then at most a window on its way, an ack makes room,
// and acks that stall turn the window off again (nobody watches).
func TestShellFlow(t *testing.T) {
	for _, window := range []int{DefaultShellWindow, 256 << 10} { // the default, a larger --shell-window
		t.Run(strconv.Itoa(window), func(t *testing.T) {
			fl := newShellFlow(window)
			none := func() int { return 0 }
			stop := make(chan struct{})
			returned := func(pending func() int) bool {
				done := make(chan struct{})
				go func() { fl.wait(pending, stop); close(done) }()
				select {
				case <-done:
					return true
				case <-time.After(100 * time.Millisecond):
					return false
				}
			}
			fl.appendedChunks(9, []int{window})
			require.True(t, returned(none), "a window before the first ack")
			require.False(t, returned(func() int { return unwatchedRate }), "more waits for the unwatched rate")
			fl.appendedChunks(10, []int{window})

			fl.ack(9) // the first of the two chunks was written
			require.True(t, returned(none), "one window on its way")
			require.False(t, returned(func() int { return 1 }), "more than a window on its way")

			done := make(chan struct{})
			go func() { fl.wait(func() int { return 1 }, stop); close(done) }()
			acked := time.Now()
			fl.ack(10)
			select {
			case <-done:
			case <-time.After(time.Second):
				t.Fatal("an ack did not make room")
			}

			fl.appendedChunks(12, []int{window, window})
			fl.wait(none, stop)
			// The stall counts from the last ack (a loaded machine may take most of
			// it to get here).
			require.GreaterOrEqual(t, time.Since(acked), shellFlowStall, "waited for the stall")
			require.True(t, returned(none), "off after the stall")
			fl.ack(11)
			require.True(t, returned(none), "one window on its way again")
			require.False(t, returned(func() int { return 1 }), "on again after an ack")
			close(stop)
		})
	}
}

// TestShellFlowAckBeforeAppend: an ack can reach the worker before the
// reply of the append that stored its chunk (pub/sub goes out during the
// script): the chunk counts as acknowledged once recorded, so a reader
// waiting for room does not wait for the stall.
func TestShellFlowAckBeforeAppend(t *testing.T) {
	fl := newShellFlow(64 << 10)
	stop := make(chan struct{})
	defer close(stop)
	var pending atomic.Int64
	fl.appendedChunks(1, []int{32 << 10})
	fl.ack(1)
	pending.Store(72 << 10) // read, not yet recorded: over the window
	done := make(chan struct{})
	go func() { fl.wait(func() int { return int(pending.Load()) }, stop); close(done) }()
	select {
	case <-done:
		t.Fatal("room with more than a window read")
	case <-time.After(50 * time.Millisecond):
	}
	fl.ack(3) // chunks 2 and 3 reached a socket; their append has not returned here
	pending.Store(8 << 10)
	fl.appendedChunks(3, []int{32 << 10, 32 << 10})
	select {
	case <-done:
	case <-time.After(shellFlowStall / 2):
		t.Fatal("the early ack of chunks 2 and 3 did not make room")
	}
	fl.mu.Lock()
	defer fl.mu.Unlock()
	require.Equal(t, int64(96<<10), fl.acked)
	require.Empty(t, fl.ends)
}

// TestShellFlowPacesUnwatchedOutput: output nobody acknowledges goes at
// unwatchedRate once a window's worth is out, whether no socket ever
// acknowledged or the acks stalled.
func TestShellFlowPacesUnwatchedOutput(t *testing.T) {
	const window = 64 << 10
	fl := newShellFlow(window)
	stop := make(chan struct{})
	defer close(stop)
	start := time.Now()
	fl.wait(func() int { return window }, stop) // a window goes at once
	fl.appendedChunks(1, []int{window})
	quarter := unwatchedRate / 4
	fl.wait(func() int { return quarter }, stop)
	require.GreaterOrEqual(t, time.Since(start), time.Second/4, "a quarter second's worth more took a quarter second")
}

// TestShellFlowUnwatchedCreditDoesNotPileUp: time in which nothing was
// appended (a quiet terminal, or appends failing while Redis was away)
// earns no more than a window: what follows still goes at unwatchedRate.
// Before, a flood let out after a 5 s outage poured 5 MB into its stored
// output at once, past its byte budget, while its socket's gateway was
// still resubscribing, and the socket lost it to a trim.
func TestShellFlowUnwatchedCreditDoesNotPileUp(t *testing.T) {
	const window = 64 << 10
	fl := newShellFlow(window)
	stop := make(chan struct{})
	defer close(stop)
	fl.wait(func() int { return window }, stop) // flow off since now
	time.Sleep(time.Second)                     // a MiB of credit at unwatchedRate
	quarter := unwatchedRate / 4
	// Timed from here: the wait below goes on from this one's reckoning,
	// so a stall between the two (a loaded machine) counts as waiting.
	start := time.Now()
	fl.wait(func() int { return quarter }, stop) // what is pending goes
	fl.appendedChunks(1, []int{quarter})
	fl.wait(func() int { return window + quarter }, stop)
	require.GreaterOrEqual(t, time.Since(start), time.Second/5, "a window then a quarter second's worth took about a quarter second")
}

// TestShellFlowFlushedMakesRoom: output a signal key threw away makes room
// as an ack does, at once, but is not taken for a socket's ack: flow
// control stays as it was (off before the first ack).
func TestShellFlowFlushedMakesRoom(t *testing.T) {
	fl := newShellFlow(64 << 10)
	stop := make(chan struct{})
	defer close(stop)
	fl.appendedChunks(1, []int{8 << 10})
	fl.ack(1)
	fl.appendedChunks(3, []int{32 << 10, 32 << 10})
	done := make(chan struct{})
	go func() { fl.wait(func() int { return 4 << 10 }, stop); close(done) }()
	select {
	case <-done:
		t.Fatal("room with more than a window on its way")
	case <-time.After(50 * time.Millisecond):
	}
	fl.flushed(3)
	select {
	case <-done:
	case <-time.After(shellFlowStall / 2):
		t.Fatal("the flushed output did not make room")
	}

	off := newShellFlow(64 << 10)
	off.appendedChunks(2, []int{32 << 10, 32 << 10})
	off.flushed(2)
	off.mu.Lock()
	defer off.mu.Unlock()
	require.False(t, off.on, "no socket acknowledged anything")
	require.Equal(t, int64(64<<10), off.acked)
}
