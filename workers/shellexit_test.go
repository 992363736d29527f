package workers

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store"
)

// shellExited reports whether terminal k1's end is recorded in Redis.
func shellExited(t *testing.T, st *store.Store) bool {
	info, ok, err := st.Shell(context.Background(), "k1")
	if err != nil {
		t.Logf("read the terminal: %v", err)
		return false
	}
	return ok && info.State == store.ShellExited
}

// TestShellExitOutlivesALongOutage: a terminal that exits while Redis is
// away for longer than the worker waits for it (outageTolerance) has its
// exit recorded once Redis is back. Before, the worker gave the exit up and
// forgot the terminal, and the reaper leaves a live worker's terminals
// alone: it stayed "running" in Redis, its owner's place taken, for the
// worker's life.
func TestShellExitOutlivesALongOutage(t *testing.T) {
	w, st, srv, sh := stallWorker(t)
	w.outageTolerance = 300 * time.Millisecond
	sh.outMu.Lock()
	sh.stallLimit = 300 * time.Millisecond
	sh.outMu.Unlock()
	srv.Stop()
	typeInto(w, sh, "exit\r")
	// Past the stall limit and the exit's own tolerance: the worker no
	// longer holds the terminal.
	require.Eventually(t, func() bool { return w.shellCount() == 0 }, 30*time.Second, 20*time.Millisecond)
	time.Sleep(time.Second)
	srv.Restart(t)
	require.Eventually(t, func() bool { return shellExited(t, st) }, 20*time.Second, 50*time.Millisecond, "the exit recorded")
}

// TestShellExitAfterAShortOutage: a terminal that exits while Redis is
// away for less than the stall limit has its exit recorded as soon as
// Redis is back, not once the stall limit is past.
func TestShellExitAfterAShortOutage(t *testing.T) {
	w, st, srv, sh := stallWorker(t)
	srv.Stop()
	typeInto(w, sh, "echo bye; exit\r")
	time.Sleep(2 * time.Second)
	srv.Restart(t)
	back := time.Now()
	require.Eventually(t, func() bool { return shellExited(t, st) }, 30*time.Second, 50*time.Millisecond, "the exit recorded")
	require.Less(t, time.Since(back), 15*time.Second, "the exit waited for the stall limit")
}
