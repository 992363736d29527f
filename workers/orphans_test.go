package workers

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestOrphanSweepWaitsAfterTrouble: a worker kills the processes of a dead
// worker's runs and terminals (found by the owner in their environment),
// but not in the time after it met Redis away or refusing writes: live
// workers' heartbeats may not be back yet, and their processes would be
// taken for a dead worker's. A process of another scope is left alone.
func TestOrphanSweepWaitsAfterTrouble(t *testing.T) {
	st := storetest.New(t, storetest.Start(t, storetest.Mini))
	w, err := New(Config{
		Store: st, Providers: map[app.Provider]Provider{app.Claude: scriptProvider{}},
		HeartbeatInterval: 100 * time.Millisecond, HeartbeatTTL: time.Second,
	})
	require.NoError(t, err)
	marker := strconv.Itoa(3000000 + os.Getpid()%100000)
	start := func(owner string) chan error {
		cmd := exec.Command("sleep", marker)
		cmd.Env = append(os.Environ(), owner)
		require.NoError(t, cmd.Start())
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		t.Cleanup(func() { _ = cmd.Process.Kill() })
		return exited
	}
	terminal := start(shellOwnerEnv + "=" + st.Scope() + "/w-gone")
	run := start(runOwnerEnv + "=" + st.Scope() + "/w-gone")
	other := start(runOwnerEnv + "=another-scope/w-gone")
	ctx := context.Background()
	alive := func(exited chan error) bool {
		select {
		case <-exited:
			return false
		case <-time.After(200 * time.Millisecond):
			return true
		}
	}

	w.troubleAt.Store(time.Now().UnixNano())
	w.sweepOrphans(ctx)
	require.True(t, alive(terminal), "killed right after trouble")
	require.True(t, alive(run), "killed right after trouble")

	w.troubleAt.Store(time.Now().Add(-time.Minute).UnixNano())
	w.sweepOrphans(ctx)
	for name, exited := range map[string]chan error{"terminal": terminal, "run": run} {
		select {
		case err := <-exited:
			require.ErrorContains(t, err, "killed", name)
		case <-time.After(5 * time.Second):
			t.Fatalf("a dead worker's %s process was not killed", name)
		}
	}
	require.True(t, alive(other), "a process of another scope")
}
