package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
)

// TestKeepSessions: past the sessions a user keeps, a new session forgets
// the least recently active idle ones (their hash, events and provider id
// with them); a running session is kept until it has ended, and other
// users' sessions are not touched.
func TestKeepSessions(t *testing.T) {
	eachBackend(t, testKeepSessions)
}

func testKeepSessions(t *testing.T, st *store.Store) {
	ctx := context.Background()
	start := func(owner string) (app.Session, store.RunRef) {
		t.Helper()
		time.Sleep(2 * time.Millisecond) // distinct activity times, which order the list
		sess := newSession(owner)
		res, err := st.Accept(ctx, &store.AcceptRequest{
			Session: sess, New: true, KeepSessions: 3,
			Job: app.Job{SessionID: sess.ID, Owner: sess.Owner, Provider: sess.Provider, Command: "hi"},
		})
		require.NoError(t, err)
		return sess, store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}
	}
	end := func(run store.RunRef) {
		t.Helper()
		time.Sleep(2 * time.Millisecond) // an end is activity too
		_, err := st.Complete(ctx, run, app.Outcome{})
		require.NoError(t, err)
	}
	listed := func(owner string) []string {
		t.Helper()
		list, err := st.ListSessions(ctx, store.SessionFilter{Owner: owner})
		require.NoError(t, err)
		ids := make([]string, len(list))
		for i, s := range list {
			ids[i] = s.ID
		}
		return ids
	}
	gone := func(id string) {
		t.Helper()
		_, err := st.Session(ctx, id)
		require.ErrorIs(t, err, app.ErrNotFound)
		evs, err := st.Events(ctx, id, 0, 10)
		require.NoError(t, err)
		require.Empty(t, evs, "the events of a forgotten session")
	}

	bob, bobRun := start("bob")
	end(bobRun)
	s1, run1 := start("alice")
	// A CLI may print several ids: each indexes the session.
	var err error
	for _, psid := range []string{"psid-s1a", "psid-s1b", "psid-s1"} {
		_, err = st.Append(ctx, run1, []app.Event{app.Text("assistant", "hi")}, map[string]string{"providerSessionId": psid})
		require.NoError(t, err)
	}
	found, err := st.SessionByProviderID(ctx, app.Claude, "psid-s1a")
	require.NoError(t, err)
	require.Equal(t, s1.ID, found)
	end(run1)
	s2, run2 := start("alice") // still running when it becomes the oldest
	s3, run3 := start("alice")
	end(run3)
	s4, run4 := start("alice")
	end(run4)
	require.Equal(t, []string{s4.ID, s3.ID, s2.ID}, listed("alice"), "the fourth session forgot the first")
	gone(s1.ID)
	for _, psid := range []string{"psid-s1a", "psid-s1b", "psid-s1"} {
		_, err = st.SessionByProviderID(ctx, app.Claude, psid)
		require.ErrorIs(t, err, app.ErrNotFound, "the provider id %s of a forgotten session", psid)
	}

	s5, run5 := start("alice")
	end(run5)
	require.Equal(t, []string{s5.ID, s4.ID, s3.ID, s2.ID}, listed("alice"), "a running session is kept")

	end(run2) // its end is activity: it is now the second most recent
	s6, run6 := start("alice")
	end(run6)
	require.Equal(t, []string{s6.ID, s2.ID, s5.ID}, listed("alice"), "the two least recently active go")
	gone(s3.ID)
	gone(s4.ID)
	require.Equal(t, []string{bob.ID}, listed("bob"), "another user's sessions")
	_, err = st.Session(ctx, bob.ID)
	require.NoError(t, err)
}

// TestProviderIDsKept: a session stays indexed under its 8 most recent
// provider ids; older ones leave the provider's index (a CLI that prints a
// new id each run grew it for good).
func TestProviderIDsKept(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		sess, run := newRun(t, st, "alice")
		for i := range 10 {
			_, err := st.Append(ctx, run, []app.Event{app.Text("assistant", "hi")},
				map[string]string{"providerSessionId": fmt.Sprintf("psid-%d", i)})
			require.NoError(t, err)
		}
		// Again the newest: no change.
		_, err := st.Append(ctx, run, nil, map[string]string{"providerSessionId": "psid-9"})
		require.NoError(t, err)
		for i := range 10 {
			found, err := st.SessionByProviderID(ctx, app.Claude, fmt.Sprintf("psid-%d", i))
			if i < 2 {
				require.ErrorIs(t, err, app.ErrNotFound, "psid-%d", i)
				continue
			}
			require.NoError(t, err, "psid-%d", i)
			require.Equal(t, sess.ID, found)
		}
	})
}
