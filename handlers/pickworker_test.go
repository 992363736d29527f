package handlers

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestPickWorkerPassesOverDraining: a new terminal never goes to a worker
// whose heartbeat says it drains (it would refuse it); with only such
// workers there is no worker for it.
func TestPickWorkerPassesOverDraining(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st)
	ctx := context.Background()
	require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "stopping", StartedAt: time.Now(), Draining: true}, time.Minute))
	_, err := g.srv.pickWorker(ctx)
	require.ErrorIs(t, err, app.ErrNoWorker)
	require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "fresh", StartedAt: time.Now()}, time.Minute))
	for range 50 {
		id, err := g.srv.pickWorker(ctx)
		require.NoError(t, err)
		require.Equal(t, "fresh", id)
	}
}

// TestPickWorkerPassesOverFull: a new terminal goes to a worker whose
// heartbeat says it has room for one; a worker older than the count, or
// every worker full, leaves the choice to chance (the worker refuses in
// its own words).
func TestPickWorkerPassesOverFull(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st)
	ctx := context.Background()
	beat := func(id string, terms, most int) {
		require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: id, StartedAt: time.Now(), Terminals: terms, MaxTerminals: most}, time.Minute))
	}
	picks := func() map[string]int {
		seen := map[string]int{}
		for range 60 {
			id, err := g.srv.pickWorker(ctx)
			require.NoError(t, err)
			seen[id]++
		}
		return seen
	}
	beat("full", 64, 64)
	beat("roomy", 63, 64)
	require.Equal(t, map[string]int{"roomy": 60}, picks())
	beat("roomy", 64, 64)
	require.Len(t, picks(), 2, "all full: either")
	beat("older", 0, 0)
	require.Equal(t, map[string]int{"older": 60}, picks())
}
