package store_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestAcceptRunLimit: a user at their running limit is refused with a
// LimitError that names it, and no session or job is left behind; another
// user is not affected; a finished run frees its slot, and so does an entry
// whose session no longer runs (a store restored from an older copy).
func TestAcceptRunLimit(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) { testAcceptRunLimit(t, storetest.Start(t, b)) })
	}
}

func testAcceptRunLimit(t *testing.T, url string) {
	st := storetest.New(t, url)
	{
		ctx := context.Background()
		acceptMax := func(sess app.Session, isNew bool) (store.AcceptResult, error) {
			return st.Accept(ctx, &store.AcceptRequest{
				Session: sess, New: isNew, MaxRunning: 2,
				Job: app.Job{SessionID: sess.ID, Owner: sess.Owner, Provider: sess.Provider, Command: "hi"},
			})
		}
		a1, a2, a3 := newSession("alice"), newSession("alice"), newSession("alice")
		r1, err := acceptMax(a1, true)
		require.NoError(t, err)
		_, err = acceptMax(a2, true)
		require.NoError(t, err)
		_, err = acceptMax(a3, true)
		var limit *app.LimitError
		require.True(t, errors.As(err, &limit), "%v", err)
		require.Equal(t, "Limit reached: at most 2 running sessions per user; wait for a run to finish or abort one", err.Error())
		_, err = st.Session(ctx, a3.ID)
		require.ErrorIs(t, err, app.ErrNotFound, "a refused new session is not created")

		_, err = acceptMax(newSession("bob"), true)
		require.NoError(t, err, "bob has his own limit")

		_, err = st.Complete(ctx, store.RunRef{SessionID: a1.ID, RunID: r1.RunID, Provider: app.Claude}, app.Outcome{})
		require.NoError(t, err)
		_, err = acceptMax(a3, true)
		require.NoError(t, err, "a finished run frees its slot")
		// An existing session of alice's at the limit is refused too.
		_, err = acceptMax(a1, false)
		require.True(t, errors.As(err, &limit), "%v", err)

		// A stale entry: a2's hash says it no longer runs.
		rdb := redisClient(t, url)
		require.NoError(t, rdb.HSet(ctx, fmt.Sprintf("%s:session:{%s}", st.Prefix(), a2.ID), "state", "failed").Err())
		_, err = acceptMax(a1, false)
		require.NoError(t, err, "a stale entry holds no slot")
	}
}

// TestShellOpenLimit: a user at their terminal limit cannot open another,
// may always reopen one they have, and an ended terminal frees its slot.
func TestShellOpenLimit(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		spec := plainSpec
		// The terminals' worker is alive: one that is not ends them (below).
		require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "w1", StartedAt: time.Now()}, time.Hour))
		k1, ok, err := st.ShellOpen(ctx, "k1", 0, "w1", "bash", spec, 2)
		require.NoError(t, err)
		require.True(t, ok)
		_, ok, err = st.ShellOpen(ctx, "k2", 0, "w1", "bash", spec, 2)
		require.NoError(t, err)
		require.True(t, ok)
		_, _, err = st.ShellOpen(ctx, "k3", 0, "w1", "bash", spec, 2)
		var limit *app.LimitError
		require.True(t, errors.As(err, &limit), "%v", err)
		require.Contains(t, err.Error(), "at most 2 open terminals per user")

		gen, ok, err := st.ShellOpen(ctx, "k1", k1, "w1", "bash", spec, 2)
		require.NoError(t, err, "a restart of a terminal alice has open")
		require.True(t, ok)

		bob := spec
		bob.Owner = "bob"
		_, ok, err = st.ShellOpen(ctx, "k4", 0, "w1", "bash", bob, 2)
		require.NoError(t, err)
		require.True(t, ok)

		recorded, err := st.ShellExit(ctx, "k1", gen, 0, "", store.ShellExitNormal)
		require.NoError(t, err)
		require.True(t, recorded)
		_, ok, err = st.ShellOpen(ctx, "k3", 0, "w1", "bash", spec, 2)
		require.NoError(t, err, "an ended terminal frees its slot")
		require.True(t, ok)

		// Its worker gone, an open terminal is ended as lost by the next
		// open past the limit, which takes its place.
		_, _, err = st.ShellOpen(ctx, "k5", 0, "w2", "bash", spec, 2)
		require.True(t, errors.As(err, &limit), "%v", err)
		_, _, err = st.ShellOpen(ctx, "k6", 0, "w1", "bash", spec, 2)
		require.True(t, errors.As(err, &limit), "%v", err)
		require.NoError(t, st.RemoveWorker(ctx, "w1")) // as its heartbeat expiring
		_, ok, err = st.ShellOpen(ctx, "k6", 0, "w3", "bash", spec, 2)
		require.NoError(t, err)
		require.True(t, ok)
	})
}

// TestAccountUID: users get consecutive uids of the range, the same one
// every time, and none once the range is used up.
func TestAccountUID(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		a, err := st.AccountUID(ctx, "alice", 50000, 50001)
		require.NoError(t, err)
		b, err := st.AccountUID(ctx, "bob", 50000, 50001)
		require.NoError(t, err)
		require.Equal(t, []int{50000, 50001}, []int{a, b})
		again, err := st.AccountUID(ctx, "alice", 50000, 50001)
		require.NoError(t, err)
		require.Equal(t, a, again)
		_, err = st.AccountUID(ctx, "carol", 50000, 50001)
		require.ErrorContains(t, err, "every uid of 50000-50001 is taken")
		_, err = st.AccountUID(ctx, "alice", 60000, 60010)
		require.ErrorContains(t, err, "outside 60000-60010", "a uid recorded under another range is not used")
	})
}
