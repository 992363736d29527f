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
	gen, _, err := st.ShellOpen(ctx, "k1", 0, "w1", "bash", plainSpec, store.ShellLimit{})
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

// TestWritesWhenRedisCannotSave: a Redis that cannot persist (MISCONF)
// refuses every write, the ones that go through a full Redis too; the
// errors are Refused (writers wait and retry), not Full and not an outage,
// and CheckWritable tells it, while a full Redis passes it.
func TestWritesWhenRedisCannotSave(t *testing.T) {
	srv := storetest.StartServer(t)
	st := storetest.New(t, srv.URL)
	rdb := redisClient(t, srv.URL)
	ctx := context.Background()
	require.NoError(t, st.CheckWritable(ctx))
	w := store.WorkerInfo{ID: "w1", StartedAt: time.Now()}
	require.NoError(t, st.Heartbeat(ctx, w, 10*time.Second))

	srv.FailSnapshot(t)
	for name, err := range map[string]error{
		"check":     st.CheckWritable(ctx),
		"heartbeat": st.Heartbeat(ctx, w, 10*time.Second),
		"control":   st.SendControl(ctx, "w1", store.Control{Type: store.ControlAbort}),
	} {
		require.True(t, store.Refused(err), "%s: %v", name, err)
		require.False(t, store.Full(err), "%s: %v", name, err)
		require.False(t, store.Unavailable(err), "%s: %v", name, err)
	}
	srv.FixSnapshot(t)
	require.NoError(t, st.Heartbeat(ctx, w, 10*time.Second))

	require.NoError(t, rdb.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err())
	require.NoError(t, rdb.ConfigSet(ctx, "maxmemory", "1").Err())
	require.NoError(t, st.CheckWritable(ctx), "a delete goes through a full Redis")
}
