package main

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestSessionsAdmin runs `agentgate sessions ls|show|abort` against a real
// Redis holding a running session.
func TestSessionsAdmin(t *testing.T) {
	t.Run("redis", func(t *testing.T) { testSessionsAdmin(t, storetest.Redis(t)) })
	// The cluster named in go-redis' cluster URL form.
	t.Run("cluster", func(t *testing.T) { testSessionsAdmin(t, storetest.SharedCluster(t).URL) })
}

func testSessionsAdmin(t *testing.T, url string) {
	prefix := storetest.Prefix()
	st := storetest.New(t, url, store.Config{Prefix: prefix})
	ctx := context.Background()
	sess := app.Session{ID: app.NewID(), Owner: "alice", Provider: app.Claude, ProjectPath: "/srv/p"}
	_, err := st.Accept(ctx, &store.AcceptRequest{Session: sess, New: true, Job: app.Job{SessionID: sess.ID}})
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
	out, err = admin("ls")
	require.NoError(t, err)
	require.Contains(t, out, sess.ID, "every session, found by SCAN (on every master of a cluster)")

	var migrated bytes.Buffer
	require.NoError(t, run(ctx, append([]string{"migrate"}, flags[:4]...), &migrated, io.Discard))
	require.Contains(t, migrated.String(), "key schema at version")

	run := store.RunRef{SessionID: sess.ID, RunID: mustSession(t, st, sess.ID).RunID, Provider: app.Claude}
	require.NoError(t, st.AskPermission(ctx, run, app.PendingPermission{RequestID: "req-1", ToolName: "Bash", SessionID: sess.ID}))
	out, err = admin("show", sess.ID)
	require.NoError(t, err)
	require.Contains(t, out, "/srv/p")
	require.Contains(t, out, `"kind":"session-state-changed"`)
	require.Contains(t, out, "exit code:   -")
	require.Contains(t, out, "waiting for permission:")
	require.Contains(t, out, `"requestId":"req-1"`)

	out, err = admin("abort", sess.ID)
	require.NoError(t, err)
	require.Contains(t, out, "aborted run")
	got, err := st.Session(ctx, sess.ID)
	require.NoError(t, err)
	require.Equal(t, app.StateAborted, got.State)
	rdb := storetest.Client(t, url)
	ttl, err := rdb.TTL(ctx, prefix+":session:{"+sess.ID+"}:events").Result()
	require.NoError(t, err)
	require.InDelta(t, time.Hour.Seconds(), ttl.Seconds(), 5, "the admin's abort applies --retention")

	_, err = admin("abort", sess.ID)
	require.ErrorIs(t, err, app.ErrNoActiveRun)
	_, err = admin("show", "no-such-session")
	require.ErrorIs(t, err, app.ErrNotFound)
	_, err = admin("frobnicate")
	require.EqualError(t, err, `sessions: unknown subcommand "frobnicate"`)

	// A user names their project folder with escape sequences that would
	// retitle the admin's terminal and erase the row above: printed
	// escaped, never raw.
	evil := app.Session{ID: app.NewID(), Owner: "alice", Provider: app.Claude, ProjectPath: "/srv/p\x1b]0;owned\x07\x1b[1A\x1b[2K\rX\t\u009b2J\xff"}
	_, err = st.Accept(ctx, &store.AcceptRequest{Session: evil, New: true, Job: app.Job{SessionID: evil.ID}})
	require.NoError(t, err)
	for _, args := range [][]string{{"ls"}, {"show", evil.ID}} {
		out, err = admin(args...)
		require.NoError(t, err)
		require.Contains(t, out, `/srv/p\u001b]0;owned\u0007\u001b[1A\u001b[2K\u000dX\u0009\u009b2J\xff`, "sessions %s", args[0])
		require.NotContains(t, out, "\x1b", "sessions %s", args[0])
		require.NotContains(t, out, "\u009b", "sessions %s", args[0])
		require.NotContains(t, out, "\r", "sessions %s", args[0])
	}
}

func mustSession(t *testing.T, st *store.Store, id string) app.Session {
	t.Helper()
	s, err := st.Session(context.Background(), id)
	require.NoError(t, err)
	return s
}
