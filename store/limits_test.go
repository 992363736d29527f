package store_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
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
		k1, ok, err := st.ShellOpen(ctx, "k1", 0, "w1", "bash", spec, store.ShellLimit{Max: 2})
		require.NoError(t, err)
		require.True(t, ok)
		_, ok, err = st.ShellOpen(ctx, "k2", 0, "w1", "bash", spec, store.ShellLimit{Max: 2})
		require.NoError(t, err)
		require.True(t, ok)
		_, _, err = st.ShellOpen(ctx, "k3", 0, "w1", "bash", spec, store.ShellLimit{Max: 2})
		var limit *app.LimitError
		require.True(t, errors.As(err, &limit), "%v", err)
		require.Contains(t, err.Error(), "at most 2 open terminals per user, and every one is open in a tab",
			"k1 and k2 were opened but not attached to yet: their sockets are on their way")

		gen, ok, err := st.ShellOpen(ctx, "k1", k1, "w1", "bash", spec, store.ShellLimit{Max: 2})
		require.NoError(t, err, "a restart of a terminal alice has open")
		require.True(t, ok)

		bob := spec
		bob.Owner = "bob"
		_, ok, err = st.ShellOpen(ctx, "k4", 0, "w1", "bash", bob, store.ShellLimit{Max: 2})
		require.NoError(t, err)
		require.True(t, ok)

		recorded, err := st.ShellExit(ctx, "k1", gen, 0, "", store.ShellExitNormal)
		require.NoError(t, err)
		require.True(t, recorded)
		_, ok, err = st.ShellOpen(ctx, "k3", 0, "w1", "bash", spec, store.ShellLimit{Max: 2})
		require.NoError(t, err, "an ended terminal frees its slot")
		require.True(t, ok)

		// Its worker gone, an open terminal is ended as lost by the next
		// open past the limit, which takes its place.
		_, _, err = st.ShellOpen(ctx, "k5", 0, "w2", "bash", spec, store.ShellLimit{Max: 2})
		require.True(t, errors.As(err, &limit), "%v", err)
		_, _, err = st.ShellOpen(ctx, "k6", 0, "w1", "bash", spec, store.ShellLimit{Max: 2})
		require.True(t, errors.As(err, &limit), "%v", err)
		require.NoError(t, st.RemoveWorker(ctx, "w1")) // as its heartbeat expiring
		_, ok, err = st.ShellOpen(ctx, "k6", 0, "w3", "bash", spec, store.ShellLimit{Max: 2})
		require.NoError(t, err)
		require.True(t, ok)
	})
}

// TestShellOpenEvictsUnwatched: a user at their terminal limit who opens
// another ends their least recently watched terminal that no socket
// watches (its place taken, its exit recorded as evicted, its worker told
// to kill it); one whose watch time went stale counts as unwatched; when
// every terminal is watched, or was opened but not yet attached to, the
// open is refused. Concurrent opens end one terminal each and never pass
// the limit, and two opens of the same key end one.
func TestShellOpenEvictsUnwatched(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "w1", StartedAt: time.Now()}, time.Hour))
		two := store.ShellLimit{Max: 2}
		open := func(key string, limit store.ShellLimit) (int64, error) {
			t.Helper()
			gen, ok, err := st.ShellOpen(ctx, key, 0, "w1", "bash", plainSpec, limit)
			if err == nil {
				require.True(t, ok, key)
			}
			return gen, err
		}
		touch := func(key string, gen int64, delta int) {
			t.Helper()
			_, err := st.ShellTouch(ctx, key, gen, delta)
			require.NoError(t, err)
			time.Sleep(3 * time.Millisecond) // distinct watch times
		}
		requireEnded := func(key string, gen int64, ended bool) {
			t.Helper()
			info, ok, err := st.Shell(ctx, key)
			require.NoError(t, err)
			require.True(t, ok, key)
			require.Equal(t, gen, info.Gen, key)
			if !ended {
				require.NotEqual(t, store.ShellExited, info.State, key)
				return
			}
			require.Equal(t, store.ShellExited, info.State, key)
			require.Equal(t, store.ShellExitEvicted, info.ExitReason, key)
		}
		requireKilled := func(key string, gen int64) {
			t.Helper()
			entries, err := st.PeekInbox(ctx, "w1", "0", 0)
			require.NoError(t, err)
			for _, e := range entries {
				if e.Control.Type == store.ControlShellKill && e.Control.Shell == key && e.Control.Gen == gen {
					return
				}
			}
			t.Fatalf("no kill of %s gen %d in the worker's inbox", key, gen)
		}
		var limit *app.LimitError

		k1, err := open("k1", two)
		require.NoError(t, err)
		k2, err := open("k2", two)
		require.NoError(t, err)
		touch("k1", k1, +1)
		touch("k2", k2, +1)
		_, err = open("k3", two)
		require.ErrorAs(t, err, &limit, "every terminal watched")
		require.Equal(t, "Limit reached: at most 2 open terminals per user, and every one is open in a tab; close one of those tabs first", err.Error())

		// k2 is left first: the least recently watched.
		touch("k2", k2, -1)
		touch("k1", k1, -1)
		k3, err := open("k3", two)
		require.NoError(t, err, "k2 gives its place")
		requireEnded("k2", k2, true)
		requireEnded("k1", k1, false)
		requireKilled("k2", k2)
		info, _, err := st.Shell(ctx, "k2")
		require.NoError(t, err)
		require.Equal(t, store.ShellExitEvicted, info.ExitReason)

		// k3 was opened but not attached to yet: it is not taken; k1 is.
		k4, err := open("k4", two)
		require.NoError(t, err)
		requireEnded("k1", k1, true)
		requireEnded("k3", k3, false)
		_, err = open("k5", two)
		require.ErrorAs(t, err, &limit, "k3 and k4 are on their way to their sockets")

		// Watched, but its watch time stale: its gateway died.
		touch("k3", k3, +1)
		touch("k4", k4, +1)
		time.Sleep(20 * time.Millisecond)
		_, err = open("k5", store.ShellLimit{Max: 2, Stale: time.Hour})
		require.ErrorAs(t, err, &limit)
		_, err = open("k5", store.ShellLimit{Max: 2, Stale: -1})
		require.ErrorAs(t, err, &limit, "watch times not trusted: the counts decide")
		_, err = open("k5", store.ShellLimit{Max: 2, Stale: 10 * time.Millisecond})
		require.NoError(t, err)
		requireEnded("k3", k3, true)
		requireEnded("k4", k4, false)

		// bob: three detached terminals and six opens at once; three get a
		// place each, by ending one terminal each.
		bob := plainSpec
		bob.Owner = "bob"
		three := store.ShellLimit{Max: 3}
		old := map[string]int64{}
		for _, k := range []string{"b1", "b2", "b3"} {
			gen, ok, err := st.ShellOpen(ctx, k, 0, "w1", "bash", bob, three)
			require.NoError(t, err)
			require.True(t, ok)
			touch(k, gen, +1)
			touch(k, gen, -1)
			old[k] = gen
		}
		errs := make(chan error, 6)
		for i := range 6 {
			go func() {
				_, _, err := st.ShellOpen(ctx, fmt.Sprintf("n%d", i), 0, "w1", "bash", bob, three)
				errs <- err
			}()
		}
		opened := 0
		for range 6 {
			if err := <-errs; err == nil {
				opened++
			} else {
				require.ErrorAs(t, err, &limit)
			}
		}
		require.Equal(t, 3, opened)
		for k, gen := range old {
			info, _, err := st.Shell(ctx, k)
			require.NoError(t, err)
			require.Equal(t, gen, info.Gen)
			require.Equal(t, store.ShellExitEvicted, info.ExitReason, k)
		}
		live := 0
		for i := range 6 {
			if info, ok, err := st.Shell(ctx, fmt.Sprintf("n%d", i)); err == nil && ok && info.State != store.ShellExited {
				live++
			}
		}
		require.Equal(t, 3, live)

		// carol: two opens of one key at once end one terminal.
		carol := plainSpec
		carol.Owner = "carol"
		var gens []int64
		for _, k := range []string{"c1", "c2"} {
			gen, ok, err := st.ShellOpen(ctx, k, 0, "w1", "bash", carol, two)
			require.NoError(t, err)
			require.True(t, ok)
			touch(k, gen, +1)
			touch(k, gen, -1)
			gens = append(gens, gen)
		}
		for range 2 {
			go func() {
				_, _, err := st.ShellOpen(ctx, "same", 0, "w1", "bash", carol, two)
				errs <- err
			}()
		}
		require.NoError(t, <-errs)
		require.NoError(t, <-errs)
		ended := 0
		for i, k := range []string{"c1", "c2"} {
			info, _, err := st.Shell(ctx, k)
			require.NoError(t, err)
			require.Equal(t, gens[i], info.Gen)
			if info.State == store.ShellExited {
				ended++
			}
		}
		require.Equal(t, 1, ended, "one place taken, one terminal ended")
	})
}

// TestEvictionGivesThePlaceBack: a terminal chosen for eviction that a
// socket watches again between the taking of its place and its ending is
// not ended and gets its place back; the open, finding no other terminal
// to end, is refused, and holds no place (a later open at the limit still
// has to end one).
func TestEvictionGivesThePlaceBack(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "w1", StartedAt: time.Now()}, time.Hour))
		two := store.ShellLimit{Max: 2}
		gens := map[string]int64{}
		for _, k := range []string{"k1", "k2"} {
			gen, ok, err := st.ShellOpen(ctx, k, 0, "w1", "bash", plainSpec, two)
			require.NoError(t, err)
			require.True(t, ok)
			gens[k] = gen
			for _, d := range []int{+1, -1} {
				_, err := st.ShellTouch(ctx, k, gen, d)
				require.NoError(t, err)
			}
		}
		var victims []string
		st.SetBeforeEvictExit(func(victim string) {
			victims = append(victims, victim)
			_, err := st.ShellTouch(ctx, victim, gens[victim], +1)
			require.NoError(t, err)
		})
		_, _, err := st.ShellOpen(ctx, "k3", 0, "w1", "bash", plainSpec, two)
		var limit *app.LimitError
		require.ErrorAs(t, err, &limit, "both chosen, both watched again")
		require.ElementsMatch(t, []string{"k1", "k2"}, victims)
		for k, gen := range gens {
			info, ok, err := st.Shell(ctx, k)
			require.NoError(t, err)
			require.True(t, ok)
			require.Equal(t, gen, info.Gen)
			require.NotEqual(t, store.ShellExited, info.State, k)
		}

		// Left again: the next open ends one of the two. Had k3 kept a
		// place, or a victim lost its own, it would have been let in
		// without ending either.
		st.SetBeforeEvictExit(nil)
		for k, gen := range gens {
			_, err := st.ShellTouch(ctx, k, gen, -1)
			require.NoError(t, err)
		}
		_, ok, err := st.ShellOpen(ctx, "k3", 0, "w1", "bash", plainSpec, two)
		require.NoError(t, err)
		require.True(t, ok)
		ended := 0
		for k := range gens {
			info, _, err := st.Shell(ctx, k)
			require.NoError(t, err)
			if info.State == store.ShellExited {
				require.Equal(t, store.ShellExitEvicted, info.ExitReason, k)
				ended++
			}
		}
		require.Equal(t, 1, ended)
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

// TestShellIndexesRebuilt: a terminal's entries in its owner's index and in
// the open terminals lost (a failover took the writes, or a process died
// between an eviction's two steps) come back from the terminal hashes at
// RebuildIndexes, at the generation's open time, so the limit counts the
// terminal again: an open past it is refused while every one is watched,
// and evicts the unwatched one as usual; the reaper lists it again. An
// ended terminal is not put back, and an entry still there keeps its score.
func TestShellIndexesRebuilt(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			url := storetest.Start(t, b)
			st := storetest.New(t, url)
			raw := redisClient(t, url)
			ctx := context.Background()
			p := st.Prefix()
			userShells, shellsOpen := p+":user:{alice}:shells", p+":shells:open"
			require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "w1", StartedAt: time.Now()}, time.Hour))
			two := store.ShellLimit{Max: 2}
			gens := map[string]int64{}
			for _, k := range []string{"k1", "k2"} {
				gen, ok, err := st.ShellOpen(ctx, k, 0, "w1", "bash", plainSpec, two)
				require.NoError(t, err)
				require.True(t, ok)
				gens[k] = gen
				_, err = st.ShellAppend(ctx, k, gen, []string{"$ "}) // running
				require.NoError(t, err)
				_, err = st.ShellTouch(ctx, k, gen, +1) // watched in a tab
				require.NoError(t, err)
			}
			// An ended terminal, out of the indexes as it should be.
			gen9, ok, err := st.ShellOpen(ctx, "k9", 0, "w1", "bash", plainSpec, store.ShellLimit{})
			require.NoError(t, err)
			require.True(t, ok)
			_, err = st.ShellExit(ctx, "k9", gen9, 0, "", store.ShellExitNormal)
			require.NoError(t, err)

			k2Score, err := raw.ZScore(ctx, userShells, "k2").Result()
			require.NoError(t, err)
			// The lost writes: k1's entries in both indexes.
			require.NoError(t, raw.ZRem(ctx, userShells, "k1").Err())
			require.NoError(t, raw.ZRem(ctx, shellsOpen, "k1").Err())

			require.NoError(t, st.RebuildIndexes(ctx))
			created, err := raw.HGet(ctx, p+":shell:{k1}", "createdAt").Int64()
			require.NoError(t, err)
			for _, index := range []string{userShells, shellsOpen} {
				score, err := raw.ZScore(ctx, index, "k1").Result()
				require.NoError(t, err, "k1 is back in %s", index)
				require.Equal(t, float64(created), score, "at its generation's open time")
				_, err = raw.ZScore(ctx, index, "k9").Result()
				require.ErrorIs(t, err, redis.Nil, "an ended terminal stays out of %s", index)
			}
			score, err := raw.ZScore(ctx, userShells, "k2").Result()
			require.NoError(t, err)
			require.Equal(t, k2Score, score, "an entry still there keeps its score")
			open, err := st.OpenShells(ctx)
			require.NoError(t, err)
			listed := map[string]bool{}
			for _, o := range open {
				listed[o.Key] = true
			}
			require.True(t, listed["k1"] && listed["k2"], "the reaper sees both: %v", open)

			// At the limit again: refused while both are watched.
			var limit *app.LimitError
			_, _, err = st.ShellOpen(ctx, "k3", 0, "w1", "bash", plainSpec, two)
			require.ErrorAs(t, err, &limit, "k1 counts again")
			// k1 left: it gives its place.
			_, err = st.ShellTouch(ctx, "k1", gens["k1"], -1)
			require.NoError(t, err)
			_, ok, err = st.ShellOpen(ctx, "k3", 0, "w1", "bash", plainSpec, two)
			require.NoError(t, err)
			require.True(t, ok)
			info, _, err := st.Shell(ctx, "k1")
			require.NoError(t, err)
			require.Equal(t, store.ShellExited, info.State)
			require.Equal(t, store.ShellExitEvicted, info.ExitReason)
			n, err := raw.ZCard(ctx, userShells).Result()
			require.NoError(t, err)
			require.Equal(t, int64(2), n)
		})
	}
}
