package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestWritesWhenRedisIsFull: with Redis at its maxmemory (noeviction), what
// keeps workers and terminals alive, reaches workers and ends runs goes
// through (each script's first write cannot grow memory, and Redis refuses
// only a script's first write), and what would grow is refused with an
// error Full recognizes.
func TestWritesWhenRedisIsFull(t *testing.T) {
	url := storetest.Start(t, storetest.Real)
	st := storetest.New(t, url)
	rdb := redisClient(t, url)
	ctx := context.Background()

	w := store.WorkerInfo{ID: "w1", Host: "h", PID: 1, StartedAt: time.Now(), Link: "127.0.0.1:1", LinkToken: "x"}
	require.NoError(t, st.Heartbeat(ctx, w, 10*time.Second))
	sess := newSession("alice")
	res := accept(t, st, sess, true)
	run := store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}
	gen, _, err := st.ShellOpen(ctx, "k1", 0, "w1", "bash", plainSpec, 0)
	require.NoError(t, err)

	require.NoError(t, rdb.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err())
	require.NoError(t, rdb.ConfigSet(ctx, "maxmemory", "1").Err())
	t.Cleanup(func() { rdb.ConfigSet(context.Background(), "maxmemory", "0") })

	// Refused, and told as full (not as an outage).
	_, err = st.Append(ctx, run, []app.Event{app.ErrorRow("more output")}, nil)
	require.True(t, store.Full(err), "%v", err)
	require.False(t, store.Unavailable(err), "%v", err)
	_, err = st.Accept(ctx, &store.AcceptRequest{Session: newSession("bob"), New: true,
		Job: app.Job{Owner: "bob", Provider: app.Claude, Command: "hi"}})
	require.True(t, store.Full(err), "%v", err)
	_, err = st.ShellAppend(ctx, "k1", gen, []string{"output"})
	require.True(t, store.Full(err), "%v", err)

	// Through: a heartbeat (first and later), a new worker's too.
	w.Runs = 1
	require.NoError(t, st.Heartbeat(ctx, w, 10*time.Second))
	require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "w2", StartedAt: time.Now()}, 10*time.Second))
	live, err := st.LiveWorkers(ctx)
	require.NoError(t, err)
	require.Len(t, live, 2)
	runs, err := rdb.HGet(ctx, st.Prefix()+":worker:w1", "runs").Result()
	require.NoError(t, err)
	require.Equal(t, "1", runs)
	ttl, err := rdb.PTTL(ctx, st.Prefix()+":worker:w1").Result()
	require.NoError(t, err)
	require.Greater(t, ttl, 9*time.Second)

	// A terminal's refresh, attach and detach.
	n, err := st.ShellTouch(ctx, "k1", gen, +1)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	_, err = st.ShellTouch(ctx, "k1", gen, 0)
	require.NoError(t, err)
	ttl, err = rdb.PTTL(ctx, st.Prefix()+":shell:{k1}").Result()
	require.NoError(t, err)
	require.Equal(t, time.Duration(-1), ttl, "a live terminal's hash keeps no TTL")

	// A control to a worker, the reaper's lease, a run's end.
	require.NoError(t, st.SendControl(ctx, "w1", store.Control{Type: store.ControlAbort, SessionID: sess.ID, RunID: res.RunID}))
	got, err := st.ReadInbox(ctx, "w1", "0", 10*time.Millisecond)
	require.NoError(t, err)
	require.Equal(t, store.ControlAbort, got[len(got)-1].Control.Type) // after the terminal's open
	ok, err := st.AcquireLease(ctx, "reaper", "gw1", time.Second)
	require.NoError(t, err)
	require.True(t, ok)
	done, err := st.Complete(ctx, run, app.Outcome{ExitCode: 1, Aborted: true})
	require.NoError(t, err)
	require.Positive(t, done.Seq)
	sum, err := st.Session(ctx, sess.ID)
	require.NoError(t, err)
	require.NotEqual(t, "running", string(sum.State))
}
