package store_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

func TestPermissionLifecycle(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		sess := newSession("alice")
		res := accept(t, st, sess, true)
		ref := store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}

		for i, id := range []string{"req-1", "req-2", "req-3"} {
			require.NoError(t, st.AskPermission(ctx, ref, app.PendingPermission{
				RequestID: id, ToolName: "Bash", Input: json.RawMessage(`{"command":"touch x"}`), ReceivedAt: int64(100 + i),
			}))
		}
		// A second copy of one ask (go-redis writes a call again when its
		// reply is late; a stalled Redis then runs both) asks nothing more.
		require.NoError(t, st.AskPermission(ctx, ref, app.PendingPermission{
			RequestID: "req-3", ToolName: "Bash", Input: json.RawMessage(`{"command":"touch x"}`), ReceivedAt: 102,
		}))
		pending, err := st.PendingPermissions(ctx, sess.ID)
		require.NoError(t, err)
		require.Len(t, pending, 3)
		first := decode(t, pending[0])
		require.Equal(t, "req-1", first["requestId"], "oldest first")
		require.Equal(t, sess.ID, first["sessionId"])
		require.Equal(t, map[string]any{"command": "touch x"}, first["input"])

		owner, err := st.PermissionSession(ctx, "req-2")
		require.NoError(t, err)
		require.Equal(t, sess.ID, owner)

		// An answer settles silently, once.
		ok, err := st.SettlePermission(ctx, ref, "req-1", "")
		require.NoError(t, err)
		require.True(t, ok)
		ok, err = st.SettlePermission(ctx, ref, "req-1", app.PermissionTimeout)
		require.NoError(t, err)
		require.False(t, ok, "settled twice")
		_, err = st.PermissionSession(ctx, "req-1")
		require.ErrorIs(t, err, app.ErrNotFound)

		// A timeout says so.
		ok, err = st.SettlePermission(ctx, ref, "req-2", app.PermissionTimeout)
		require.NoError(t, err)
		require.True(t, ok)

		// The end of the run cancels what is still pending, before complete.
		_, err = st.Abort(ctx, sess.ID, app.Claude)
		require.NoError(t, err)
		pending, err = st.PendingPermissions(ctx, sess.ID)
		require.NoError(t, err)
		require.Empty(t, pending)
		_, err = st.PermissionSession(ctx, "req-3")
		require.ErrorIs(t, err, app.ErrNotFound)

		evs, err := st.Events(ctx, sess.ID, 0, 100)
		require.NoError(t, err)
		require.Equal(t, []string{"session-state-changed", "session_created",
			"permission_request", "permission_request", "permission_request",
			"permission_cancelled", "permission_cancelled", "session-state-changed", "complete"}, kinds(evs))
		timeout := decode(t, evs[5].Data)
		require.Equal(t, "req-2", timeout["requestId"])
		require.Equal(t, "timeout", timeout["reason"])
		cancelled := decode(t, evs[6].Data)
		require.Equal(t, "req-3", cancelled["requestId"])
		require.Equal(t, "cancelled", cancelled["reason"])
		require.Equal(t, "permission_cancelled_req-3", cancelled["id"])
		require.Equal(t, res.RunID, cancelled["runId"])
		req := decode(t, evs[2].Data)
		require.Equal(t, "Bash", req["toolName"])
		require.Equal(t, "req-1", req["requestId"])

		// A stale run can neither ask nor emit.
		err = st.AskPermission(ctx, ref, app.PendingPermission{RequestID: "req-4", ToolName: "Bash"})
		require.ErrorIs(t, err, app.ErrStaleRun)
	})
}

// TestPermissionIDsAreCheckedAndIndexPerSession: an id that could break the
// scripts' JSON is refused, and settling a request never removes the index
// entry of another session's request.
func TestPermissionIDsAreCheckedAndIndexPerSession(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		a, b := newSession("alice"), newSession("bob")
		resA, resB := accept(t, st, a, true), accept(t, st, b, true)
		refA := store.RunRef{SessionID: a.ID, RunID: resA.RunID, Provider: app.Claude}
		refB := store.RunRef{SessionID: b.ID, RunID: resB.RunID, Provider: app.Claude}
		for _, bad := range []string{"", `a"b`, "50%", "a b"} {
			require.Error(t, st.AskPermission(ctx, refA, app.PendingPermission{RequestID: bad, ToolName: "Bash"}), bad)
		}

		require.NoError(t, st.AskPermission(ctx, refA, app.PendingPermission{RequestID: "same", ToolName: "Bash"}))
		require.NoError(t, st.AskPermission(ctx, refB, app.PendingPermission{RequestID: "same", ToolName: "Bash"}))
		// A settle in A's session leaves the index to B, which asked last.
		ok, err := st.SettlePermission(ctx, refA, "same", "")
		require.NoError(t, err)
		require.True(t, ok)
		owner, err := st.PermissionSession(ctx, "same")
		require.NoError(t, err)
		require.Equal(t, b.ID, owner)
		// The end of A's run, with a request of the same id pending in
		// both, does not drop B's entry either.
		require.NoError(t, st.AskPermission(ctx, refA, app.PendingPermission{RequestID: "twice", ToolName: "Bash"}))
		require.NoError(t, st.AskPermission(ctx, refB, app.PendingPermission{RequestID: "twice", ToolName: "Bash"}))
		_, err = st.Abort(ctx, a.ID, app.Claude)
		require.NoError(t, err)
		for _, id := range []string{"same", "twice"} {
			owner, err = st.PermissionSession(ctx, id)
			require.NoError(t, err)
			require.Equal(t, b.ID, owner, "A's end does not drop B's entry %s", id)
		}
		_, err = st.Abort(ctx, b.ID, app.Claude)
		require.NoError(t, err)
		_, err = st.PermissionSession(ctx, "same")
		require.ErrorIs(t, err, app.ErrNotFound)
	})
}

// TestPermissionAskLateWritesNothing: a request Redis runs past its
// caller's deadline (a stalled Redis runs what waited in its sockets, after
// the worker gave up on the call and denied the tool) records nothing: it
// would be a prompt no answer reaches.
func TestPermissionAskLateWritesNothing(t *testing.T) {
	m := miniredis.RunT(t)
	st := storetest.New(t, "redis://"+m.Addr())
	require.Eventually(t, st.ClockMeasured, 5*time.Second, 5*time.Millisecond, "Redis's clock measured")
	sess := newSession("alice")
	res := accept(t, st, sess, true)
	run := store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}
	m.SetTime(time.Now().Add(time.Minute)) // the script runs a minute after it was sent
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := st.AskPermission(ctx, run, app.PendingPermission{RequestID: "req-1", ToolName: "Bash", Input: json.RawMessage(`{}`)})
	require.ErrorIs(t, err, store.ErrLate)
	pending, err := st.PendingPermissions(context.Background(), sess.ID)
	require.NoError(t, err)
	require.Empty(t, pending)
	_, err = st.PermissionSession(context.Background(), "req-1")
	require.ErrorIs(t, err, app.ErrNotFound, "not indexed either")
}

// TestPermissionIndexSwept: an index entry whose request is pending nowhere
// (its unlink was lost) goes at the second sweep that finds it so; an entry
// of a pending request stays, and so does one written just before its
// request (AskPermission writes the index first).
func TestPermissionIndexSwept(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) { testPermissionIndexSwept(t, storetest.Start(t, b)) })
	}
}

func testPermissionIndexSwept(t *testing.T, url string) {
	st := storetest.New(t, url)
	ctx := context.Background()
	sess := newSession("alice")
	res := accept(t, st, sess, true)
	ref := store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}
	require.NoError(t, st.AskPermission(ctx, ref, app.PendingPermission{RequestID: "live", ToolName: "Bash"}))
	rdb := redisClient(t, url)
	index := st.Prefix() + ":permissions"
	require.NoError(t, rdb.HSet(ctx, index, "lost", sess.ID).Err())

	require.NoError(t, st.SweepPermissionIndex(ctx))
	n, err := rdb.HLen(ctx, index).Result()
	require.NoError(t, err)
	require.EqualValues(t, 2, n, "one sweep removes nothing")

	// Between the sweeps the lost request is asked after all: it stays.
	require.NoError(t, rdb.HSet(ctx, index, "late", sess.ID).Err())
	require.NoError(t, st.SweepPermissionIndex(ctx))
	require.NoError(t, st.AskPermission(ctx, ref, app.PendingPermission{RequestID: "late", ToolName: "Bash"}))
	require.NoError(t, st.SweepPermissionIndex(ctx))
	got, err := rdb.HKeys(ctx, index).Result()
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"live", "late"}, got)
	owner, err := st.PermissionSession(ctx, "live")
	require.NoError(t, err)
	require.Equal(t, sess.ID, owner)
}
