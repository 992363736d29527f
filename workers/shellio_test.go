package workers

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store"
)

// TestShellOutputWholeAfterABacklog: once output piled up past twice a
// batch (Redis slow or away while the PTY kept being read: up to
// shellPendingMax), its buffer is let go rather than kept as the spare.
// What is read while the next appends are on their way must never land in
// the buffer of one of them: every byte is stored once, in order. (The
// spare used to stay the buffer being read into, so the reader overwrote
// an append's bytes while go-redis sent them: found by the end-to-end
// TestShellFloodThroughRedisKill.) Output is put where the PTY reader puts
// it, beside a bash that prints nothing more than its prompt.
func TestShellOutputWholeAfterABacklog(t *testing.T) {
	w, st, spec, gen := shellWorker(t)
	open, _ := json.Marshal(spec)
	require.True(t, w.shellControl(store.Control{Type: store.ControlShellOpen, Shell: "k1", Gen: gen, Data: open}))
	stored := func() string { return storedText(t, st) }
	// The whole prompt: bash writes it in pieces (bracketed paste on, then
	// PS1), which may be read and stored apart.
	require.Eventually(t, func() bool {
		before := stored()
		time.Sleep(200 * time.Millisecond)
		return before != "" && stored() == before
	}, 20*time.Second, 5*time.Millisecond, "the prompt")
	w.shells.mu.Lock()
	sh := w.shells.m["k1"]
	w.shells.mu.Unlock()
	prompt := stored()

	var fed strings.Builder
	read := func(s string) {
		sh.outMu.Lock()
		sh.pending = append(sh.pending, s...)
		sh.outCond.Broadcast()
		sh.outMu.Unlock()
		fed.WriteString(s)
	}
	var backlog strings.Builder
	for i := 0; backlog.Len() < 3*shellBatchMax; i++ {
		fmt.Fprintf(&backlog, "backlog-%d\r\n", i)
	}
	read(backlog.String())
	for i := range 100_000 {
		read(fmt.Sprintf("line-%d\r\n", i))
		if i%500 == 0 {
			time.Sleep(100 * time.Microsecond) // let appends go out meanwhile
		}
	}
	want := prompt + fed.String()
	require.Eventually(t, func() bool { return len(stored()) >= len(want) }, 30*time.Second, 10*time.Millisecond, "everything stored")
	got := stored()
	if got != want {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("the stored output differs from what was read at byte %d of %d: stored %q, read %q",
			i, len(want), got[i:min(i+40, len(got))], want[i:min(i+40, len(want))])
	}
}

// TestQueuedResizesBounded: resizes for a PTY whose input loop is stuck
// (a process that reads nothing, its input buffer full) do not pile up:
// one after another replaces the last, and each op counts against the
// queue's bound, data or not. Before, a client sending resizes grew the
// worker's memory without end.
func TestQueuedResizesBounded(t *testing.T) {
	sh := &shell{log: slog.New(slog.DiscardHandler), inWake: make(chan struct{}, 1)}
	for i := range 100000 {
		sh.enqueue(shellOp{cols: 80 + i%2, rows: 24})
	}
	require.Len(t, sh.inQ, 1)
	require.Equal(t, 81, sh.inQ[0].cols, "the last resize is kept")
	for range 100000 {
		sh.enqueue(shellOp{data: []byte("x")})
		sh.enqueue(shellOp{cols: 80, rows: 24})
	}
	require.LessOrEqual(t, len(sh.inQ), 2*shellInputMax/shellOpCost+1)
	require.Nil(t, sh.inQ[len(sh.inQ)-1].data, "a resize is never dropped: the last op is one")
}
