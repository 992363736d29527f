package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestHeartbeatBesideAFullPool: a heartbeat goes through while every
// connection of the store's pool is held by other work (here one, held by
// a blocking read; on a worker, a hundred flooding terminals' appends held
// all ten, the heartbeat waited behind them past its TTL and gateways took
// the live worker for gone).
func TestHeartbeatBesideAFullPool(t *testing.T) {
	for _, b := range storetest.Backends {
		t.Run(string(b), func(t *testing.T) {
			st := storetest.New(t, storetest.Start(t, b), store.Config{PoolSize: 1})
			ctx := context.Background()
			held := make(chan struct{})
			go func() {
				defer close(held)
				_, _ = st.ReadInbox(ctx, "w1", "0", 3*time.Second)
			}()
			require.Eventually(t, func() bool {
				ps := st.PoolStats()
				return ps.TotalConns == 1 && ps.IdleConns == 0
			}, 10*time.Second, time.Millisecond, "the read has the pool's one connection")
			beatCtx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			require.NoError(t, st.Heartbeat(beatCtx, store.WorkerInfo{ID: "w1", StartedAt: time.Now()}, time.Minute))
			select {
			case <-held:
				t.Fatal("the blocking read ended before the heartbeat was tried")
			default:
			}
			<-held
			alive, err := st.WorkerAlive(ctx, "w1")
			require.NoError(t, err)
			require.True(t, alive)
		})
	}
}

// TestDrainingWorkerListed: a worker whose heartbeat says it drains is
// listed as live and draining, so that gateways open no terminal on it.
func TestDrainingWorkerListed(t *testing.T) {
	for _, b := range storetest.Backends {
		t.Run(string(b), func(t *testing.T) {
			st := storetest.New(t, storetest.Start(t, b))
			ctx := context.Background()
			require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "w1", StartedAt: time.Now()}, time.Minute))
			require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "w2", StartedAt: time.Now(), Draining: true}, time.Minute))
			live, err := st.LiveWorkers(ctx)
			require.NoError(t, err)
			draining := map[string]bool{}
			for _, w := range live {
				draining[w.ID] = w.Draining
			}
			require.Equal(t, map[string]bool{"w1": false, "w2": true}, draining)
		})
	}
}
