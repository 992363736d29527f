package workers

import (
	"context"
	"encoding/json"
	"strings"
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

// TestShellDrainReadsWhatThePTYHolds: the end of a program's output, left
// in the PTY when it exits, is stored even when the reader comes to it
// after the drain's deadline (a loaded machine kept it from running). A
// read past its deadline fails before it looks, and the end was lost: one
// terminal in a hundred lost its last line in a loaded CI run
// (e2e/shellmemory_test.go).
func TestShellDrainReadsWhatThePTYHolds(t *testing.T) {
	w, st, spec, gen := shellWorker(t)
	spec.InitialCommand = `sleep 0.3; head -c 8000 /dev/zero | tr '\0' a; echo; echo END-$((6*7))`
	open, _ := json.Marshal(spec)
	require.True(t, w.shellControl(store.Control{Type: store.ControlShellOpen, Shell: "k1", Gen: gen, Data: open}))
	var sh *shell
	require.Eventually(t, func() bool {
		w.shells.mu.Lock()
		defer w.shells.mu.Unlock()
		sh = w.shells.m["k1"]
		return sh != nil
	}, 10*time.Second, time.Millisecond)

	// The reader stops at its first read of the output (it waits for
	// outMu to hand it on), the rest stays in the PTY, the program ends,
	// and the drain's deadline passes before the reader goes on.
	sh.outMu.Lock()
	select {
	case <-sh.p.exited:
	case <-time.After(20 * time.Second):
		sh.outMu.Unlock()
		t.Fatal("the program did not end")
	}
	require.NoError(t, sh.p.f.SetReadDeadline(time.Now()))
	sh.drainWait = 0
	sh.outMu.Unlock()

	require.Eventually(t, func() bool { return shellExited(t, st) }, 20*time.Second, 10*time.Millisecond, "the exit")
	chunks, err := st.ShellOutput(context.Background(), "k1", 0, 1000)
	require.NoError(t, err)
	var out strings.Builder
	for _, c := range chunks {
		out.WriteString(c.Data)
	}
	require.Equal(t, 8000, strings.Count(out.String(), "a"), "the program's output, whole")
	require.Contains(t, out.String(), "END-42")
}
