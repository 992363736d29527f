package main

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestSessionsAdmin runs `agentgate sessions ls|show|abort` against a real
// Redis holding a running session.
func TestSessionsAdmin(t *testing.T) {
	url := storetest.Redis(t)
	prefix := storetest.Prefix()
	st := storetest.New(t, url, store.Config{Prefix: prefix})
	ctx := context.Background()
	sess := app.Session{ID: app.NewID(), Owner: "alice", Provider: app.Claude, ProjectPath: "/work/p"}
	_, err := st.Accept(ctx, store.AcceptRequest{Session: sess, New: true, Job: app.Job{SessionID: sess.ID}})
	require.NoError(t, err)
	flags := []string{"--redis", url, "--key-prefix", prefix, "--retention", "1h"}
	admin := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(ctx, append(append([]string{"sessions"}, args...), flags...), &out, io.Discard)
		return out.String(), err
	}

	out, err := admin("ls", "--running")
	require.NoError(t, err)
	require.Contains(t, out, sess.ID)
	require.Contains(t, out, "alice")
	require.Contains(t, out, "running")

	out, err = admin("show", sess.ID)
	require.NoError(t, err)
	require.Contains(t, out, "/work/p")
	require.Contains(t, out, `"kind":"session-state-changed"`)

	out, err = admin("abort", sess.ID)
	require.NoError(t, err)
	require.Contains(t, out, "aborted run")
	got, err := st.Session(ctx, sess.ID)
	require.NoError(t, err)
	require.Equal(t, app.StateAborted, got.State)
	opts, err := redis.ParseURL(url)
	require.NoError(t, err)
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	ttl, err := rdb.TTL(ctx, prefix+":session:{"+sess.ID+"}:events").Result()
	require.NoError(t, err)
	require.InDelta(t, time.Hour.Seconds(), ttl.Seconds(), 5, "the admin's abort applies --retention")

	_, err = admin("abort", sess.ID)
	require.ErrorIs(t, err, app.ErrNoActiveRun)
	_, err = admin("show", "no-such-session")
	require.ErrorIs(t, err, app.ErrNotFound)
	_, err = admin("frobnicate")
	require.EqualError(t, err, `sessions: unknown subcommand "frobnicate"`)
}
