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
