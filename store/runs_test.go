package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// eachBackend runs f against miniredis and a real redis-server.
func eachBackend(t *testing.T, f func(t *testing.T, st *store.Store)) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			f(t, storetest.New(t, storetest.Start(t, b)))
		})
	}
}

func newSession(owner string) app.Session {
	return app.Session{ID: app.NewID(), Owner: owner, Provider: app.Claude, ProjectPath: "/tmp"}
}

func accept(t *testing.T, st *store.Store, sess app.Session, isNew bool) store.AcceptResult {
	t.Helper()
	res, err := st.Accept(context.Background(), &store.AcceptRequest{
		Session: sess, New: isNew,
		Job: app.Job{SessionID: sess.ID, Owner: sess.Owner, Provider: sess.Provider, Command: "hi"},
	})
	require.NoError(t, err)
	return res
}

// newRun accepts a command in a new session of owner's and returns the
// session and its run.
func newRun(t *testing.T, st *store.Store, owner string) (app.Session, store.RunRef) {
	t.Helper()
	sess := newSession(owner)
	res := accept(t, st, sess, true)
	return sess, store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: sess.Provider}
}

func decode(t *testing.T, frame []byte) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(frame, &m), string(frame))
	return m
}

func kinds(evs []store.StoredEvent) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.Kind
	}
	return out
}

func TestAcceptNewSession(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		sess := newSession("alice")
		res := accept(t, st, sess, true)
		require.NotEmpty(t, res.RunID)
		require.Equal(t, int64(0), res.PrevSeq)

		got, err := st.Session(ctx, sess.ID)
		require.NoError(t, err)
		require.Equal(t, app.StateRunning, got.State)
		require.Equal(t, res.RunID, got.RunID)
		require.Equal(t, res.StartedAt, got.StartedAt)
		require.InDelta(t, time.Now().UnixMilli(), got.StartedAt, 5000)
		require.Equal(t, int64(2), got.LastSeq)
		require.Equal(t, "alice", got.Owner)

		evs, err := st.Events(ctx, sess.ID, 0, 100)
		require.NoError(t, err)
		require.Equal(t, []string{"session-state-changed", "session_created"}, kinds(evs))
		for i, e := range evs {
			require.Equal(t, int64(i+1), e.Seq)
			seq, ok := app.FrameSeq(e.Data)
			require.True(t, ok)
			require.Equal(t, e.Seq, seq)
			m := decode(t, e.Data)
			require.Equal(t, res.RunID, m["runId"])
			require.Equal(t, sess.ID, m["sessionId"])
			require.Equal(t, "claude", m["provider"])
		}
		created := decode(t, evs[1].Data)
		require.Equal(t, sess.ID, created["newSessionId"])
		running := decode(t, evs[0].Data)
		require.Equal(t, "running", running["state"])
		require.Equal(t, "command-accepted", running["reason"])
		require.Equal(t, "hi", running["prompt"], "the run's prompt, which no CLI prints back")
		require.EqualValues(t, res.StartedAt, running["startedAt"])
		require.EqualValues(t, res.StartedAt, running["changedAt"])

		jobs, err := st.ReadJobs(ctx, "w1", 10, 100*time.Millisecond)
		require.NoError(t, err)
		require.Len(t, jobs, 1)
		require.NoError(t, jobs[0].Err)
		require.Equal(t, sess.ID, jobs[0].Job.SessionID)
		require.Equal(t, res.RunID, jobs[0].Job.RunID)
		require.Equal(t, "hi", jobs[0].Job.Command)
	})
}

func TestAcceptBusyAndRace(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		sess := newSession("alice")
		first := accept(t, st, sess, true)

		_, err := st.Accept(ctx, &store.AcceptRequest{Session: sess})
		var busy *store.BusyError
		require.ErrorAs(t, err, &busy)
		require.ErrorIs(t, err, app.ErrSessionBusy)
		require.Equal(t, first.StartedAt, busy.StartedAt)

		_, err = st.Complete(ctx, store.RunRef{SessionID: sess.ID, RunID: first.RunID, Provider: app.Claude}, app.Outcome{})
		require.NoError(t, err)

		// Many gateways racing on one idle session: exactly one run.
		var wg sync.WaitGroup
		var mu sync.Mutex
		var ok, busyN int
		for i := 0; i < 20; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := st.Accept(ctx, &store.AcceptRequest{Session: sess})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					ok++
				case errors.Is(err, app.ErrSessionBusy):
					busyN++
				default:
					t.Errorf("accept: %v", err)
				}
			}()
		}
		wg.Wait()
		require.Equal(t, 1, ok)
		require.Equal(t, 19, busyN)
	})
}

// TestAcceptCopyAnswersAsTheFirst: an accept written twice under one ID
// (go-redis's retry after a stalled Redis's read timeout; Redis runs both)
// answers the second time as it did the first, and starts one run: before,
// the copy answered "busy" (or "exists" for a new session) for the run
// that was starting, and the user was told the command was refused.
func TestAcceptCopyAnswersAsTheFirst(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		for _, isNew := range []bool{true, false} {
			sess := newSession("alice")
			if !isNew {
				res := accept(t, st, sess, true)
				_, err := st.Complete(ctx, store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}, app.Outcome{})
				require.NoError(t, err)
			}
			before, err := st.Events(ctx, sess.ID, 0, 100)
			require.NoError(t, err)
			req := func() *store.AcceptRequest {
				return &store.AcceptRequest{Session: sess, New: isNew, ID: "accept-1",
					Job: app.Job{SessionID: sess.ID, Owner: sess.Owner, Provider: sess.Provider, Command: "hi"}}
			}
			first, err := st.Accept(ctx, req())
			require.NoError(t, err)
			again, err := st.Accept(ctx, req())
			require.NoError(t, err, "new session: %v", isNew)
			require.Equal(t, first, again)
			evs, err := st.Events(ctx, sess.ID, 0, 100)
			require.NoError(t, err)
			require.Equal(t, []string{"session-state-changed"}, kinds(evs[len(before):len(before)+1]))
			require.Len(t, evs, len(before)+map[bool]int{true: 2, false: 1}[isNew], "events of one accept: %v", kinds(evs))

			// Another accept (another ID) finds the session busy.
			_, err = st.Accept(ctx, &store.AcceptRequest{Session: sess})
			require.ErrorIs(t, err, app.ErrSessionBusy)
		}
	})
}

// TestAcceptLateWritesNothing: an accept that Redis runs past its caller's
// deadline (in Redis's clock; a stalled Redis runs what waited in its
// sockets when it goes on, after the caller told its user the command
// failed) starts nothing, and is reported as an outage.
func TestAcceptLateWritesNothing(t *testing.T) {
	m := miniredis.RunT(t)
	st := storetest.New(t, "redis://"+m.Addr())
	require.Eventually(t, st.ClockMeasured, 5*time.Second, 5*time.Millisecond, "Redis's clock measured")
	m.SetTime(time.Now().Add(time.Minute)) // the script runs a minute after it was sent
	sess := newSession("alice")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := st.Accept(ctx, &store.AcceptRequest{Session: sess, New: true,
		Job: app.Job{SessionID: sess.ID, Owner: sess.Owner, Provider: sess.Provider, Command: "hi"}})
	require.ErrorIs(t, err, store.ErrLate)
	require.True(t, store.Unavailable(err))
	_, err = st.Session(context.Background(), sess.ID)
	require.ErrorIs(t, err, app.ErrNotFound, "a command its caller was told failed started")
	accept(t, st, sess, true) // no deadline: taken
}

func TestAcceptForeignOwnerIsMissing(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		sess := newSession("alice")
		accept(t, st, sess, true)
		other := sess
		other.Owner = "mallory"
		_, err := st.Accept(context.Background(), &store.AcceptRequest{Session: other})
		require.ErrorIs(t, err, app.ErrNotFound)
	})
}

func TestRunIDsGrowEvenWithinOneMillisecond(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		sess := newSession("alice")
		var prev int64
		for i := 0; i < 5; i++ {
			res := accept(t, st, sess, i == 0)
			require.Greater(t, res.StartedAt, prev)
			prev = res.StartedAt
			_, err := st.Complete(ctx, store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}, app.Outcome{})
			require.NoError(t, err)
		}
	})
}

func TestAppendIsGuardedByRunID(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		sess, run := newRun(t, st, "alice")

		seq, err := st.Append(ctx, run, []app.Event{app.Text("assistant", "one"), app.Text("assistant", "two")},
			map[string]string{"providerSessionId": "psid-1", "statusText": "Working"})
		require.NoError(t, err)
		require.Equal(t, int64(4), seq)

		got, err := st.Session(ctx, sess.ID)
		require.NoError(t, err)
		require.Equal(t, "psid-1", got.ProviderSessionID)
		require.Equal(t, "Working", got.StatusText)
		id, err := st.SessionByProviderID(ctx, app.Claude, "psid-1")
		require.NoError(t, err)
		require.Equal(t, sess.ID, id)

		stale := run
		stale.RunID = "123"
		_, err = st.Append(ctx, stale, []app.Event{app.Text("assistant", "late")}, nil)
		require.ErrorIs(t, err, app.ErrStaleRun)

		_, err = st.Complete(ctx, run, app.Outcome{ExitCode: 0})
		require.NoError(t, err)
		_, err = st.Append(ctx, run, []app.Event{app.Text("assistant", "after complete")}, nil)
		require.ErrorIs(t, err, app.ErrStaleRun)

		evs, err := st.Events(ctx, sess.ID, 0, 100)
		require.NoError(t, err)
		require.Equal(t, []string{"session-state-changed", "session_created", "text", "text", "session-state-changed", "complete"}, kinds(evs))
	})
}

func TestExactlyOneCompleteUnderRace(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		sess, run := newRun(t, st, "alice")

		var wg sync.WaitGroup
		errs := make(chan error, 30)
		for i := 0; i < 10; i++ {
			wg.Add(3)
			go func() { defer wg.Done(); _, err := st.Complete(ctx, run, app.Outcome{}); errs <- err }()
			go func() {
				defer wg.Done()
				_, err := st.Complete(ctx, run, app.Outcome{ExitCode: 1, Reason: app.ReasonWorkerLost}, app.ErrorRow("worker lost"))
				errs <- err
			}()
			go func() { defer wg.Done(); _, err := st.Abort(ctx, sess.ID, app.Claude); errs <- err }()
		}
		wg.Wait()
		close(errs)
		wins := 0
		for err := range errs {
			if err == nil {
				wins++
				continue
			}
			require.True(t, errors.Is(err, app.ErrStaleRun) || errors.Is(err, app.ErrNoActiveRun), err)
		}
		require.Equal(t, 1, wins)

		evs, err := st.Events(ctx, sess.ID, 0, 100)
		require.NoError(t, err)
		n := 0
		for _, e := range evs {
			if e.Kind == "complete" {
				n++
			}
		}
		require.Equal(t, 1, n)
		require.Equal(t, "complete", evs[len(evs)-1].Kind, "complete is the run's last event")
		require.Equal(t, "session-state-changed", evs[len(evs)-2].Kind)
	})
}

func TestAbort(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		sess := newSession("alice")
		_, err := st.Abort(ctx, sess.ID, app.Claude)
		require.ErrorIs(t, err, app.ErrNoActiveRun)

		res := accept(t, st, sess, true)
		ok, err := st.Claim(ctx, store.RunRef{SessionID: sess.ID, RunID: res.RunID}, "w1")
		require.NoError(t, err)
		require.True(t, ok)

		done, err := st.Abort(ctx, sess.ID, app.Claude)
		require.NoError(t, err)
		require.Equal(t, "w1", done.Worker)
		require.Equal(t, res.RunID, done.RunID)
		inbox, err := st.ReadInbox(ctx, "w1", "0", 10*time.Millisecond)
		require.NoError(t, err)
		require.Len(t, inbox, 1, "the worker is told to stop")
		ctl := inbox[0].Control
		require.NotEmpty(t, ctl.ID)
		ctl.ID = ""
		require.Equal(t, store.Control{Type: store.ControlAbort, SessionID: sess.ID, RunID: res.RunID}, ctl)

		got, err := st.Session(ctx, sess.ID)
		require.NoError(t, err)
		require.Equal(t, app.StateAborted, got.State)
		require.NotNil(t, got.ExitCode)
		require.Equal(t, 0, *got.ExitCode)

		evs, err := st.Events(ctx, sess.ID, 2, 100)
		require.NoError(t, err)
		require.Equal(t, []string{"session-state-changed", "complete"}, kinds(evs))
		require.Equal(t, done.Seq, evs[1].Seq, "Abort returns the seq of complete")
		c := decode(t, evs[1].Data)
		require.Equal(t, true, c["aborted"])
		require.Equal(t, false, c["success"])
		require.EqualValues(t, 0, c["exitCode"])
		require.Equal(t, sess.ID, c["actualSessionId"])
		sc := decode(t, evs[0].Data)
		require.Equal(t, "aborted", sc["state"])
		require.EqualValues(t, res.StartedAt, sc["startedAt"])

		_, err = st.Abort(ctx, sess.ID, app.Claude)
		require.ErrorIs(t, err, app.ErrNoActiveRun)
		ok, err = st.Claim(ctx, store.RunRef{SessionID: sess.ID, RunID: res.RunID}, "w2")
		require.NoError(t, err)
		require.False(t, ok, "an aborted run is never claimed")

		// An abort of that run, again (a late copy, a retried script),
		// does not end the next one.
		next := accept(t, st, sess, false)
		_, err = st.AbortRun(ctx, store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude})
		require.ErrorIs(t, err, app.ErrNoActiveRun)
		got, err = st.Session(ctx, sess.ID)
		require.NoError(t, err)
		require.Equal(t, app.StateRunning, got.State)
		done, err = st.AbortRun(ctx, store.RunRef{SessionID: sess.ID, RunID: next.RunID, Provider: app.Claude})
		require.NoError(t, err)
		require.Equal(t, next.RunID, done.RunID)
	})
}

// TestClaim: a run is claimed by one worker. A second copy of its job (a
// requeue, or a jobs stream that lost an acknowledgement in a failover)
// does not start it again in the process that claimed it; the claim script
// itself stays idempotent for the same worker (a call retried after its
// reply was lost).
func TestClaim(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) { testClaim(t, storetest.Start(t, b)) })
	}
}

func testClaim(t *testing.T, url string) {
	st := storetest.New(t, url)
	{
		ctx := context.Background()
		sess := newSession("alice")
		res := accept(t, st, sess, true)
		run := store.RunRef{SessionID: sess.ID, RunID: res.RunID}
		ok, err := st.Claim(ctx, run, "w1")
		require.NoError(t, err)
		require.True(t, ok)
		ok, err = st.Claim(ctx, run, "w1")
		require.NoError(t, err)
		require.False(t, ok, "a second copy of the job is not started again")
		again := storetest.New(t, url, store.Config{Prefix: st.Prefix()})
		ok, err = again.Claim(ctx, run, "w1")
		require.NoError(t, err)
		require.True(t, ok, "the claim script is idempotent for its worker")
		ok, err = st.Claim(ctx, run, "w2")
		require.NoError(t, err)
		require.False(t, ok)
		ok, err = st.Claim(ctx, store.RunRef{SessionID: sess.ID, RunID: "1"}, "w1")
		require.NoError(t, err)
		require.False(t, ok)
	}
}

// TestSeqFormatting guards the Lua integer formatting: gopher-lua (miniredis)
// would print 1e+06 through tostring.
func TestSeqFormatting(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			url := storetest.Start(t, b)
			prefix := storetest.Prefix()
			st := storetest.New(t, url, store.Config{Prefix: prefix})
			ctx := context.Background()
			sess := newSession("alice")
			res := accept(t, st, sess, true)
			raw := redisClient(t, url)
			require.NoError(t, raw.HSet(ctx, prefix+":session:{"+sess.ID+"}", "lastSeq", 999999).Err())
			seq, err := st.Append(ctx, store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}, []app.Event{app.Text("assistant", "x")}, nil)
			require.NoError(t, err)
			require.Equal(t, int64(1000000), seq)
			evs, err := st.Events(ctx, sess.ID, 999999, 10)
			require.NoError(t, err)
			require.Len(t, evs, 1)
			require.True(t, strings.HasPrefix(string(evs[0].Data), `{"seq":1000000,"runId":"`+res.RunID+`",`), string(evs[0].Data))
		})
	}
}

func TestEventsReplayAndTrim(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			st := storetest.New(t, storetest.Start(t, b), store.Config{HistoryLimit: 100})
			ctx := context.Background()
			sess := newSession("alice")
			res := accept(t, st, sess, true)
			run := store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}
			for i := 0; i < 500; i++ {
				_, err := st.Append(ctx, run, []app.Event{app.Text("assistant", fmt.Sprint(i))}, nil)
				require.NoError(t, err)
			}
			got, first, err := st.SessionForReplay(ctx, sess.ID)
			require.NoError(t, err)
			require.Equal(t, int64(502), got.LastSeq)
			// Approximate trimming keeps at least the limit; never the head.
			require.Greater(t, first, int64(1))
			require.LessOrEqual(t, first, int64(502-100+1))

			evs, err := st.Events(ctx, sess.ID, 450, 1000)
			require.NoError(t, err)
			require.Len(t, evs, 52)
			for i, e := range evs {
				require.Equal(t, int64(451+i), e.Seq)
			}
			evs, err = st.Events(ctx, sess.ID, 0, 10)
			require.NoError(t, err)
			require.Equal(t, first, evs[0].Seq, "a trimmed range starts at the oldest kept event")
		})
	}
}

func TestCompleteSetsRetention(t *testing.T) {
	url := storetest.Redis(t)
	prefix := storetest.Prefix()
	st := storetest.New(t, url, store.Config{Prefix: prefix, Retention: time.Hour})
	ctx := context.Background()
	sess := newSession("alice")
	res := accept(t, st, sess, true)
	raw := redisClient(t, url)
	ttl, err := raw.TTL(ctx, prefix+":session:{"+sess.ID+"}:events").Result()
	require.NoError(t, err)
	require.Equal(t, time.Duration(-1), ttl, "a running session's stream does not expire")
	_, err = st.Complete(ctx, store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}, app.Outcome{})
	require.NoError(t, err)
	ttl, err = raw.TTL(ctx, prefix+":session:{"+sess.ID+"}:events").Result()
	require.NoError(t, err)
	require.InDelta(t, time.Hour.Seconds(), ttl.Seconds(), 5)
	// A new run makes the stream permanent again.
	accept(t, st, sess, false)
	ttl, err = raw.TTL(ctx, prefix+":session:{"+sess.ID+"}:events").Result()
	require.NoError(t, err)
	require.Equal(t, time.Duration(-1), ttl)
}

func TestListSessions(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		a1, a2, b1 := newSession("alice"), newSession("alice"), newSession("bob")
		r1 := accept(t, st, a1, true)
		accept(t, st, a2, true)
		accept(t, st, b1, true)
		_, err := st.Complete(ctx, store.RunRef{SessionID: a1.ID, RunID: r1.RunID, Provider: app.Claude}, app.Outcome{})
		require.NoError(t, err)

		all, err := st.ListSessions(ctx, store.SessionFilter{Owner: "alice"})
		require.NoError(t, err)
		require.Len(t, all, 2)
		running, err := st.ListSessions(ctx, store.SessionFilter{Owner: "alice", RunningOnly: true})
		require.NoError(t, err)
		require.Len(t, running, 1)
		require.Equal(t, a2.ID, running[0].ID)
		ids, err := st.RunningSessions(ctx)
		require.NoError(t, err)
		require.ElementsMatch(t, []string{a2.ID, b1.ID}, ids)
		every, err := st.AllSessions(ctx, false, 10)
		require.NoError(t, err)
		require.Len(t, every, 3)
	})
}

// TestWritesOfAnotherWorkersRun: once another worker holds a run (its
// first claim lost with Redis's last writes, the job claimed again), the
// first worker's appends and complete are refused as stale, while the
// writes of nobody in particular (abort, reaper) are not; an append of the
// worker that holds the run writes back a claim that was lost, so a second
// worker's claim then fails.
func TestWritesOfAnotherWorkersRun(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			url := storetest.Start(t, b)
			st := storetest.New(t, url)
			ctx := context.Background()
			raw := redisClient(t, url)
			text := []app.Event{app.Text("assistant", "x")}

			sess := newSession("alice")
			res := accept(t, st, sess, true)
			w1 := store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude, Worker: "w1"}
			ok, err := st.Claim(ctx, w1, "w1")
			require.NoError(t, err)
			require.True(t, ok)
			_, err = st.Append(ctx, w1, text, nil)
			require.NoError(t, err)
			// Redis lost the claim; w2 (another process) took the job.
			other := storetest.New(t, url, store.Config{Prefix: st.Prefix()})
			require.NoError(t, raw.HSet(ctx, sessionKey(st, sess.ID), "worker", "").Err())
			ok, err = other.Claim(ctx, w1, "w2")
			require.NoError(t, err)
			require.True(t, ok)
			_, err = st.Append(ctx, w1, text, nil)
			require.ErrorIs(t, err, app.ErrStaleRun)
			_, err = st.Complete(ctx, w1, app.Outcome{})
			require.ErrorIs(t, err, app.ErrStaleRun)
			w2 := w1
			w2.Worker = "w2"
			_, err = st.Append(ctx, w2, text, nil)
			require.NoError(t, err)
			unclaimed := w1
			unclaimed.Worker = store.Unclaimed
			_, err = st.Complete(ctx, unclaimed, app.Outcome{})
			require.ErrorIs(t, err, app.ErrStaleRun, "the reaper's end of a run no worker took, once one did")
			anyone := w1
			anyone.Worker = ""
			_, err = st.Complete(ctx, anyone, app.Outcome{})
			require.NoError(t, err, "an abort or the reaper ends whoever's run")

			sess = newSession("alice")
			res = accept(t, st, sess, true)
			w1 = store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude, Worker: "w1"}
			ok, err = st.Claim(ctx, w1, "w1")
			require.NoError(t, err)
			require.True(t, ok)
			require.NoError(t, raw.HSet(ctx, sessionKey(st, sess.ID), "worker", "").Err())
			_, err = st.Append(ctx, w1, text, nil)
			require.NoError(t, err)
			ok, err = other.Claim(ctx, w1, "w2")
			require.NoError(t, err)
			require.False(t, ok, "w1's append wrote its lost claim back")
			confirmed, err := st.ConfirmClaims(ctx, []store.RunRef{w1, {SessionID: sess.ID, RunID: "1"}}, "w1")
			require.NoError(t, err)
			require.Equal(t, []bool{true, false}, confirmed)
			confirmed, err = st.ConfirmClaims(ctx, []store.RunRef{w1}, "w2")
			require.NoError(t, err)
			require.Equal(t, []bool{false}, confirmed)
		})
	}
}

// TestListSessionsReadsWhatItNeeds: a user's list reads as many session
// hashes as it returns, not four times the limit (a user with thousands
// of sessions made each GET /api/sessions read up to 4000), and still
// makes up for stale index entries; running-only still looks past the
// newest idle sessions.
func TestListSessionsReadsWhatItNeeds(t *testing.T) {
	url := storetest.Redis(t)
	st := storetest.New(t, url)
	raw := redisClient(t, url)
	ctx := context.Background()
	var newest []string // most recently active first
	var running app.Session
	for i := range 20 {
		time.Sleep(2 * time.Millisecond) // distinct activity times, which order the list
		sess, ref := newRun(t, st, "alice")
		if i == 0 {
			running = sess // the oldest, still running
		} else {
			_, err := st.Complete(ctx, ref, app.Outcome{})
			require.NoError(t, err)
		}
		newest = append([]string{sess.ID}, newest...)
	}
	hashReads := func(f store.SessionFilter) ([]string, int) {
		t.Helper()
		require.NoError(t, raw.ConfigResetStat(ctx).Err())
		list, err := st.ListSessions(ctx, f)
		require.NoError(t, err)
		info, err := raw.Info(ctx, "commandstats").Result()
		require.NoError(t, err)
		calls := 0
		if stat := storetest.InfoField(info, "cmdstat_hgetall"); stat != "" {
			_, err := fmt.Sscanf(stat, "calls=%d", &calls)
			require.NoError(t, err)
		}
		ids := make([]string, len(list))
		for i, s := range list {
			ids[i] = s.ID
		}
		return ids, calls
	}

	ids, reads := hashReads(store.SessionFilter{Owner: "alice", Limit: 5})
	require.Equal(t, newest[:5], ids)
	require.Equal(t, 5, reads, "one hash read a listed session")
	ids, _ = hashReads(store.SessionFilter{Owner: "alice", Limit: 5, RunningOnly: true})
	require.Equal(t, []string{running.ID}, ids, "found past 19 newer idle sessions")

	// Stale entries (hashes gone) ahead of the rest are made up for.
	index := st.Prefix() + ":user:{alice}:sessions"
	for range 3 {
		require.NoError(t, raw.ZAdd(ctx, index, redis.Z{Score: float64(time.Now().Add(time.Hour).UnixMilli()), Member: app.NewID()}).Err())
	}
	ids, reads = hashReads(store.SessionFilter{Owner: "alice", Limit: 5})
	require.Equal(t, newest[:5], ids)
	require.Equal(t, 8, reads, "the stale entries, then as many as were missing")
}

// TestAllSessionsNewestFirst: the admin list puts running sessions first,
// then the newest of every user's, whatever order the users' lists are
// found in. Before, it took the lists in SCAN order and stopped when full:
// one user with many sessions could hide every other user's, running ones
// included.
func TestAllSessionsNewestFirst(t *testing.T) {
	for _, b := range storetest.Backends {
		t.Run(string(b), func(t *testing.T) {
			st := storetest.New(t, storetest.Start(t, b))
			ctx := context.Background()
			end := func(sess app.Session, res store.AcceptResult) {
				_, err := st.Complete(ctx, store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}, app.Outcome{})
				require.NoError(t, err)
			}
			for range 30 {
				sess := newSession("alice")
				end(sess, accept(t, st, sess, true))
			}
			time.Sleep(5 * time.Millisecond)
			idle := newSession("bob")
			end(idle, accept(t, st, idle, true))
			running := newSession("carol")
			accept(t, st, running, true)
			for range 10 {
				got, err := st.AllSessions(ctx, false, 10)
				require.NoError(t, err)
				require.Len(t, got, 10)
				require.Equal(t, running.ID, got[0].ID)
				require.Equal(t, idle.ID, got[1].ID)
				for _, sess := range got[2:] {
					require.Equal(t, "alice", sess.Owner)
				}
			}
		})
	}
}

// TestLastSeqs: the newest seq of several sessions in one read; a session
// Redis does not hold is said so.
func TestLastSeqs(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		sess, ref := newRun(t, st, "alice")
		_, err := st.Append(ctx, ref, []app.Event{app.Text("assistant", "x")}, nil)
		require.NoError(t, err)
		got, err := st.Session(ctx, sess.ID)
		require.NoError(t, err)
		last, ok, err := st.LastSeqs(ctx, []string{sess.ID, app.NewID()})
		require.NoError(t, err)
		require.Equal(t, []int64{got.LastSeq, 0}, last)
		require.Equal(t, []bool{true, false}, ok)
		require.Positive(t, last[0])
	})
}
