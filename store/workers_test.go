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

// TestForgetDeadWorkerSparesOneThatBeat: the reaper found a worker dead,
// and before it removed it the worker went on (it had been stopped:
// SIGSTOP, a paused VM) and beat, and a gateway sent it a control. Its
// heartbeat, registry entry and inbox stay. Before, the reaper's
// RemoveWorker deleted them: the live worker looked gone until its next
// beat, and the control was lost. A worker that did not beat is dropped
// from the registry.
func TestForgetDeadWorkerSparesOneThatBeat(t *testing.T) {
	url := storetest.Redis(t)
	st := storetest.New(t, url)
	ctx := context.Background()
	seenDead := time.Now()
	time.Sleep(5 * time.Millisecond)
	require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "resumed", StartedAt: time.Now()}, time.Minute))
	require.NoError(t, st.SendControl(ctx, "resumed", store.Control{Type: store.ControlAbort, SessionID: "s"}))

	forgot, err := st.ForgetDeadWorker(ctx, "resumed", seenDead)
	require.NoError(t, err)
	require.False(t, forgot)
	alive, err := st.WorkerAlive(ctx, "resumed")
	require.NoError(t, err)
	require.True(t, alive, "the fresh heartbeat was deleted")
	live, err := st.LiveWorkers(ctx)
	require.NoError(t, err)
	require.Len(t, live, 1)
	got, err := st.ReadInbox(ctx, "resumed", "0", 10*time.Millisecond)
	require.NoError(t, err)
	require.Len(t, got, 1, "the control sent to the resumed worker was lost")

	// Gone for good: its heartbeat expired, its last beat before seenDead.
	require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "gone", StartedAt: time.Now()}, 20*time.Millisecond))
	time.Sleep(50 * time.Millisecond)
	forgot, err = st.ForgetDeadWorker(ctx, "gone", time.Now())
	require.NoError(t, err)
	require.True(t, forgot)
	members, err := redisClient(t, url).ZRange(ctx, st.Prefix()+":workers", 0, -1).Result()
	require.NoError(t, err)
	require.Equal(t, []string{"resumed"}, members)
}
