package store_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
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

// TestClusterDetected: one node's URL, the ?addr= form and a password-less
// single Redis each give the right kind of store; a database other than 0
// is refused on a cluster.
func TestClusterDetected(t *testing.T) {
	c := storetest.SharedCluster(t)
	for _, url := range []string{c.Seed, c.URL, c.Seed + "/0"} {
		st := storetest.New(t, url)
		require.True(t, st.Cluster(), url)
	}
	require.False(t, storetest.New(t, storetest.Redis(t)).Cluster())
	require.False(t, storetest.New(t, storetest.Miniredis(t)).Cluster())
	_, err := store.New(context.Background(), store.Config{URL: c.Seed + "/3"})
	require.ErrorContains(t, err, "only database 0")
}

// TestStandaloneSkipsTheProbe: a store told that its server is a single
// Redis (the embedded one) opens one connection at start, not two (the
// cluster probe's), and works.
func TestStandaloneSkipsTheProbe(t *testing.T) {
	for _, standalone := range []bool{false, true} {
		m := miniredis.RunT(t)
		st, err := store.New(context.Background(), store.Config{URL: "redis://" + m.Addr() + "/0", Standalone: standalone})
		require.NoError(t, err)
		require.False(t, st.Cluster())
		want := 2
		if standalone {
			want = 1
		}
		require.Equal(t, want, m.TotalConnectionCount(), "standalone=%v", standalone)
		require.NoError(t, st.Ping(context.Background()))
		st.Close()
	}
}

// TestOpenConnectsOnce: a store on a single Redis opens one connection at
// start, the cluster probe's, which then serves its commands: a process
// starting behind a load balancer is ready three round trips sooner. A
// store that cannot use it (a refused password) still fails to open.
func TestOpenConnectsOnce(t *testing.T) {
	srv := storetest.StartServer(t)
	admin := storetest.Client(t, srv.URL)
	ctx := context.Background()
	received := func() int {
		info, err := admin.Info(ctx, "stats").Result()
		require.NoError(t, err)
		n, err := strconv.Atoi(storetest.InfoField(info, "total_connections_received"))
		require.NoError(t, err, "total_connections_received in INFO stats")
		return n
	}
	before := received()
	st, err := store.New(ctx, store.Config{URL: srv.URL})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	// Counted before the test's own commands, which may run beside the
	// store's clock reading and take a second connection of the pool.
	require.Equal(t, 1, received()-before)
	require.NoError(t, st.Ping(ctx))

	locked := storetest.StartServerWithPassword(t, "a-password")
	_, err = store.New(ctx, store.Config{URL: strings.Replace(locked.URL, "a-password", "wrong", 1)})
	require.Error(t, err)
	_, err = store.New(ctx, store.Config{URL: strings.Replace(locked.URL, ":a-password@", "", 1)})
	require.Error(t, err)
}

// TestConnectionHandshake: a new connection says HELLO with the name
// agentgate and sends neither CLIENT SETINFO nor CLIENT
// MAINT_NOTIFICATIONS, each a round trip that open-source Redis refuses or
// that no one reads.
func TestConnectionHandshake(t *testing.T) {
	m := miniredis.RunT(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	var mu sync.Mutex
	var sent bytes.Buffer
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", m.Addr())
			if err != nil {
				_ = c.Close()
				return
			}
			go func() { _, _ = io.Copy(c, up); _ = c.Close() }()
			go func() {
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					mu.Lock()
					sent.Write(buf[:n])
					mu.Unlock()
					if _, werr := up.Write(buf[:n]); err != nil || werr != nil {
						_ = up.Close()
						return
					}
				}
			}()
		}
	}()
	st, err := store.New(context.Background(), store.Config{URL: "redis://" + ln.Addr().String() + "/0"})
	require.NoError(t, err)
	defer st.Close()
	require.NoError(t, st.Ping(context.Background()))
	mu.Lock()
	defer mu.Unlock()
	got := strings.ToUpper(sent.String())
	require.Contains(t, got, "HELLO")
	require.Contains(t, got, "SETNAME")
	require.Contains(t, sent.String(), "agentgate")
	require.NotContains(t, got, "SETINFO")
	require.NotContains(t, got, "MAINT_NOTIFICATIONS")
}

// sessionKey is any key of a session: they share its slot.
func sessionKey(st *store.Store, id string) string {
	return fmt.Sprintf("%s:session:{%s}", st.Prefix(), id)
}

// TestLostWritesNeverReuseSeq plays a failover that lost a master's last
// writes (the replica had not received them), or a single Redis restarted
// without its last second of writes: Redis' lastSeq goes
// back while clients had the events. The next write skips those seqs
// instead of giving them to other events, and a replay across the hole
// says recovered:false (SessionForReplay's first seq is past it). The
// floor comes from what the process wrote (the worker) or delivered (a
// gateway's subscriber).
func TestLostWritesNeverReuseSeq(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			url := storetest.Start(t, b)
			worker := storetest.New(t, url)
			gateway := storetest.New(t, url, store.Config{Prefix: worker.Prefix()})
			ctx, rec, sub := recordingSubscriber(t, gateway)

			sess := newSession("alice")
			require.NoError(t, sub.Subscribe(ctx, sess.ID))
			res := accept(t, worker, sess, true)
			run := store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}
			seq, err := worker.Append(ctx, run, []app.Event{app.Text("assistant", "a"), app.Text("assistant", "b"), app.Text("assistant", "c")}, nil)
			require.NoError(t, err)
			require.Equal(t, int64(5), seq)
			require.Eventually(t, func() bool { return len(rec.seqs(sess.ID)) == 5 }, 5*time.Second, 5*time.Millisecond)

			// What a failover can leave: the last two events and their seqs gone.
			raw := redisClient(t, url)
			require.NoError(t, raw.HSet(ctx, sessionKey(worker, sess.ID), "lastSeq", 3).Err())
			require.NoError(t, raw.XDel(ctx, sessionKey(worker, sess.ID)+":events", "4-0", "5-0").Err())

			seq, err = worker.Append(ctx, run, []app.Event{app.Text("assistant", "d")}, nil)
			require.NoError(t, err)
			require.Equal(t, int64(6), seq, "seqs 4 and 5 went to events clients had: never again")
			got, first, err := gateway.SessionForReplay(ctx, sess.ID)
			require.NoError(t, err)
			require.Equal(t, int64(6), got.LastSeq)
			require.Equal(t, int64(6), first, "a replay from before the hole is not complete")

			// The gateway, which only saw the events live, knows the floor too.
			require.Eventually(t, func() bool { return len(rec.seqs(sess.ID)) == 6 }, 5*time.Second, 5*time.Millisecond)
			require.NoError(t, raw.HSet(ctx, sessionKey(worker, sess.ID), "lastSeq", 5).Err())
			require.NoError(t, raw.XDel(ctx, sessionKey(worker, sess.ID)+":events", "6-0").Err())
			done, err := gateway.Abort(ctx, sess.ID, app.Claude)
			require.NoError(t, err)
			require.Equal(t, int64(8), done.Seq, "state change 7, complete 8: seq 6 is not reused")
			evs, err := gateway.Events(ctx, sess.ID, 0, 100)
			require.NoError(t, err)
			var seqs []int64
			for _, e := range evs {
				seqs = append(seqs, e.Seq)
			}
			require.Equal(t, []int64{1, 2, 3, 7, 8}, seqs)
		})
	}
}

// TestClusterRequeuesLostJob: a job the jobs stream lost (the gateway died
// before queueing it, or a failover of the stream's master) is queued again
// once the run has waited, and the copies are claimed once.
func TestClusterRequeuesLostJob(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			url := storetest.Start(t, b)
			st := storetest.New(t, url)
			ctx := context.Background()
			sess := newSession("alice")
			res := accept(t, st, sess, true)
			jobs, err := st.ReadJobs(ctx, "w1", 10, 10*time.Millisecond)
			require.NoError(t, err)
			require.Len(t, jobs, 1)
			require.NoError(t, st.AckJob(ctx, jobs[0].StreamID)) // the job is gone, the run unclaimed

			ids, err := st.RunningSessions(ctx)
			require.NoError(t, err)
			require.Equal(t, []string{sess.ID}, ids)
			jobs, err = st.ReadJobs(ctx, "w1", 10, 10*time.Millisecond)
			require.NoError(t, err)
			require.Empty(t, jobs, "a run that waited a few seconds only is not requeued")

			raw := redisClient(t, url)
			old := time.Now().Add(-time.Minute).UnixMilli()
			require.NoError(t, raw.HSet(ctx, sessionKey(st, sess.ID), "startedAt", old).Err())
			for range 2 { // two passes: the second finds the requeued job
				_, err = st.RunningSessions(ctx)
				require.NoError(t, err)
			}
			jobs, err = st.ReadJobs(ctx, "w1", 10, 10*time.Millisecond)
			require.NoError(t, err)
			require.Len(t, jobs, 1, "queued again, once")
			require.Equal(t, res.RunID, jobs[0].Job.RunID)
			require.Equal(t, "hi", jobs[0].Job.Command)

			// The same job twice: the process that claimed it starts it once.
			ref := store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}
			ok, err := st.Claim(ctx, ref, "w1")
			require.NoError(t, err)
			require.True(t, ok)
			ok, err = st.Claim(ctx, ref, "w1")
			require.NoError(t, err)
			require.False(t, ok)
		})
	}
}

// TestRebuildIndexes: the indexes outside the sessions' slots, lost, come
// back from the session hashes; a stale running-set entry goes.
func TestRebuildIndexes(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			url := storetest.Start(t, b)
			st := storetest.New(t, url)
			ctx := context.Background()
			running, done := newSession("alice"), newSession("alice")
			accept(t, st, running, true)
			res := accept(t, st, done, true)
			_, err := st.Append(ctx, store.RunRef{SessionID: done.ID, RunID: res.RunID, Provider: app.Claude},
				nil, map[string]string{"providerSessionId": "p-1"})
			require.NoError(t, err)
			_, err = st.Complete(ctx, store.RunRef{SessionID: done.ID, RunID: res.RunID, Provider: app.Claude}, app.Outcome{})
			require.NoError(t, err)

			raw := redisClient(t, url)
			p := st.Prefix()
			for _, k := range []string{p + ":sessions:running", p + ":user:{alice}:sessions", p + ":user:{alice}:running", p + ":provider:{claude}:sessions"} {
				require.NoError(t, raw.Del(ctx, k).Err())
			}
			require.NoError(t, st.RebuildIndexes(ctx))
			ids, err := st.RunningSessions(ctx)
			require.NoError(t, err)
			require.Equal(t, []string{running.ID}, ids)
			list, err := st.ListSessions(ctx, store.SessionFilter{Owner: "alice"})
			require.NoError(t, err)
			require.Len(t, list, 2)
			id, err := st.SessionByProviderID(ctx, app.Claude, "p-1")
			require.NoError(t, err)
			require.Equal(t, done.ID, id)
			n, err := raw.ZCard(ctx, p+":user:{alice}:running").Result()
			require.NoError(t, err)
			require.Equal(t, int64(1), n)
		})
	}
}

// TestClusterAdminScansEveryMaster: listing every session and every plugin
// finds keys on all three masters, not only on the node a SCAN reaches.
func TestClusterAdminScansEveryMaster(t *testing.T) {
	c := storetest.SharedCluster(t)
	st := storetest.New(t, c.Seed)
	ctx := context.Background()
	masters := map[string]bool{}
	var users []string
	for i := 0; len(masters) < 3 && i < 200; i++ {
		user := fmt.Sprintf("u%d", i)
		addr := c.MasterOf(t, fmt.Sprintf("%s:user:{%s}:sessions", st.Prefix(), user)).Addr
		if !masters[addr] {
			masters[addr] = true
			users = append(users, user)
		}
	}
	require.Len(t, masters, 3)
	for i, u := range users {
		accept(t, st, newSession(u), true)
		require.NoError(t, st.SetPlugin(ctx, fmt.Sprintf("p%d", i), fmt.Sprintf("127.0.0.1:%d", 9000+i)))
	}
	all, err := st.AllSessions(ctx, false, 100)
	require.NoError(t, err)
	require.Len(t, all, 3)
	plugins, err := st.Plugins(ctx)
	require.NoError(t, err)
	require.Len(t, plugins, 3)
	id, err := st.Identity(ctx)
	require.NoError(t, err)
	require.Len(t, strings.Split(id.RunID, ","), 3, "one run id a master")
}

// TestClusterFailover kills -9 the master that owns a streaming session's
// slot. Writes retried across the failover go on once the replica is
// promoted, the run ends with exactly one complete, the subscriber moves
// the session's channel to the new master and reports a resync, and the
// stream holds every seq once.
func TestClusterFailover(t *testing.T) {
	c := storetest.StartCluster(t)
	st := storetest.New(t, c.Seed)
	ctx, rec, sub := recordingSubscriber(t, st)

	sess := newSession("alice")
	require.NoError(t, sub.Subscribe(ctx, sess.ID))
	res := accept(t, st, sess, true)
	run := store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}
	last := int64(2)
	write := func(text string) {
		t.Helper()
		// As the worker does: an outage is waited out, never taken as an
		// answer.
		deadline := time.Now().Add(time.Minute)
		for {
			seq, err := st.Append(ctx, run, []app.Event{app.Text("assistant", text)}, nil)
			if err == nil {
				require.Equal(t, last+1, seq, "no seq skipped or reused")
				last = seq
				return
			}
			require.True(t, store.Unavailable(err), "%v", err)
			require.True(t, time.Now().Before(deadline), "Redis did not come back: %v", err)
			wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
			_ = st.WaitAvailable(wctx)
			wcancel()
		}
	}
	for i := range 5 {
		write(fmt.Sprint("before ", i))
	}
	require.Eventually(t, func() bool { return len(rec.seqs(sess.ID)) == 7 }, 5*time.Second, 5*time.Millisecond)
	master := c.MasterOf(t, sessionKey(st, sess.ID))
	c.WaitReplicated(t, master)
	master.Stop()
	for i := range 5 {
		write(fmt.Sprint("after ", i))
	}
	c.WaitHealthy(t)
	require.Eventually(t, func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return rec.resyncs[sess.ID] >= 1
	}, 30*time.Second, 10*time.Millisecond, "the subscriber follows the session to the new master")
	write("live again")
	require.Eventually(t, func() bool {
		s := rec.seqs(sess.ID)
		return len(s) > 0 && s[len(s)-1] == last
	}, 10*time.Second, 5*time.Millisecond, "events after the failover arrive live")

	var done store.CompleteResult
	for {
		var err error
		done, err = st.Complete(ctx, run, app.Outcome{})
		if err == nil {
			break
		}
		require.True(t, store.Unavailable(err), "%v", err)
	}
	_, err := st.Complete(ctx, run, app.Outcome{ExitCode: 1})
	require.ErrorIs(t, err, app.ErrStaleRun, "one complete")
	evs, err := st.Events(ctx, sess.ID, 0, 100)
	require.NoError(t, err)
	require.Len(t, evs, int(done.Seq))
	completes := 0
	for i, e := range evs {
		require.Equal(t, int64(i+1), e.Seq)
		if e.Kind == string(app.KindComplete) {
			completes++
		}
	}
	require.Equal(t, 1, completes)
	_, first, err := st.SessionForReplay(ctx, sess.ID)
	require.NoError(t, err)
	require.Equal(t, int64(1), first, "nothing was lost: the replica had it all")
}

// TestSubscriberOneConnectionPerMaster: sessions on every master are
// followed over one shard connection per master, plus one for broadcasts.
func TestSubscriberOneConnectionPerMaster(t *testing.T) {
	c := storetest.StartCluster(t)
	st := storetest.New(t, c.Seed)
	ctx, _, sub := recordingSubscriber(t, st)
	masters := map[string]int{}
	for i := 0; i < 30; i++ {
		sess := newSession("alice")
		require.NoError(t, sub.Subscribe(ctx, sess.ID))
		masters[c.MasterOf(t, sessionKey(st, sess.ID)).Addr]++
	}
	require.Len(t, masters, 3)
	require.Eventually(t, func() bool {
		total := 0
		for _, n := range c.Nodes {
			rdb := redis.NewClient(&redis.Options{Addr: n.Addr})
			list, err := rdb.ClientList(ctx).Result()
			_ = rdb.Close()
			if err != nil {
				return false
			}
			for _, line := range strings.Split(list, "\n") {
				if strings.Contains(line, "ssub=") && !strings.Contains(line, "ssub=0") {
					total++
				}
			}
		}
		return total == 3
	}, 10*time.Second, 20*time.Millisecond)
}

// TestLostCompleteWrittenAgain plays a failover that lost a run's complete
// (the replica had not received it), or a restart that did: the session
// reads as running
// that run again, with a worker that no longer runs it. The process that
// wrote the complete checks it once and writes it again, past the seqs
// clients had, so the run still ends exactly once in the stream. A complete
// that survived is not written twice.
func TestLostCompleteWrittenAgain(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			url := storetest.Start(t, b)
			st := storetest.New(t, url)
			ctx := context.Background()
			lost, kept := newSession("alice"), newSession("alice")
			res := accept(t, st, lost, true)
			run := store.RunRef{SessionID: lost.ID, RunID: res.RunID, Provider: app.Claude}
			_, err := st.Append(ctx, run, []app.Event{app.Text("assistant", "a")}, nil)
			require.NoError(t, err)
			done, err := st.Complete(ctx, run, app.Outcome{})
			require.NoError(t, err)
			require.Equal(t, int64(5), done.Seq)
			resKept := accept(t, st, kept, true)
			_, err = st.Complete(ctx, store.RunRef{SessionID: kept.ID, RunID: resKept.RunID, Provider: app.Claude}, app.Outcome{})
			require.NoError(t, err)

			raw := redisClient(t, url)
			require.NoError(t, raw.HSet(ctx, sessionKey(st, lost.ID), "state", "running", "lastSeq", 3).Err())
			require.NoError(t, raw.XDel(ctx, sessionKey(st, lost.ID)+":events", "4-0", "5-0").Err())

			n, err := st.RecheckCompletes(ctx, 0)
			require.NoError(t, err)
			require.Equal(t, 1, n, "the lost complete only")
			got, err := st.Session(ctx, lost.ID)
			require.NoError(t, err)
			require.Equal(t, app.StateCompleted, got.State)
			evs, err := st.Events(ctx, lost.ID, 0, 100)
			require.NoError(t, err)
			var seqs []int64
			for _, e := range evs {
				seqs = append(seqs, e.Seq)
			}
			require.Equal(t, []int64{1, 2, 3, 6, 7}, seqs, "seqs 4 and 5 were the lost complete's: not reused")
			require.Equal(t, []string{"session-state-changed", "session_created", "text", "session-state-changed", "complete"}, kinds(evs))
			n, err = st.RecheckCompletes(ctx, 0)
			require.NoError(t, err)
			require.Zero(t, n, "checked once")
		})
	}
}

// TestClusterWithPassword: a cluster whose nodes require a password is
// detected and used from one node's URL or the ?addr= form, the password in
// the URL; without it, the store refuses to start.
func TestClusterWithPassword(t *testing.T) {
	password := app.NewID()
	c := storetest.StartClusterWithPassword(t, password)
	for _, url := range []string{c.Seed, c.URL} {
		st := storetest.New(t, url)
		require.True(t, st.Cluster(), url)
		sess := newSession("alice")
		res := accept(t, st, sess, true)
		done, err := st.Complete(context.Background(), store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}, app.Outcome{})
		require.NoError(t, err)
		require.Equal(t, int64(4), done.Seq)
	}
	_, err := store.New(context.Background(), store.Config{URL: strings.Replace(c.Seed, ":"+password+"@", "", 1)})
	require.Error(t, err)
}

// TestSubscriberFollowsAMovedSlot: a resharding moves the slot of a
// followed session to another master. Redis tells the subscriber
// (sunsubscribe); it subscribes the channel on the new owner and reports a
// resync, and the session's events arrive live from there.
func TestSubscriberFollowsAMovedSlot(t *testing.T) {
	c := storetest.StartCluster(t)
	st := storetest.New(t, c.Seed)
	ctx, rec, sub := recordingSubscriber(t, st)

	sess := newSession("alice")
	require.NoError(t, sub.Subscribe(ctx, sess.ID))
	res := accept(t, st, sess, true)
	run := store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}
	require.Eventually(t, func() bool { return len(rec.seqs(sess.ID)) == 2 }, 5*time.Second, 5*time.Millisecond)

	from := c.MasterOf(t, sessionKey(st, sess.ID))
	var to *storetest.Server
	for _, m := range c.Masters(t) {
		if m != from {
			to = m
			break
		}
	}
	c.MoveSlot(t, sessionKey(st, sess.ID), to)
	require.Eventually(t, func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return rec.resyncs[sess.ID] >= 1
	}, 10*time.Second, 10*time.Millisecond, "the subscriber follows the slot")

	seq, err := st.Append(ctx, run, []app.Event{app.Text("assistant", "after the move")}, nil)
	require.NoError(t, err)
	require.Equal(t, int64(3), seq, "the session's keys moved with their slot")
	require.Eventually(t, func() bool {
		s := rec.seqs(sess.ID)
		return len(s) > 0 && s[len(s)-1] == 3
	}, 10*time.Second, 5*time.Millisecond, "live from the new owner")
}

// TestRequeueAfterRestartLostJob: a run whose job a pass found queued is
// not looked for again for a while, unless Redis restarted since (a new
// run id, as the reaper reads it every pass): the restart may have lost
// the job, and the next pass queues it again.
func TestRequeueAfterRestartLostJob(t *testing.T) {
	srv := storetest.StartServerWith(t, storetest.Options{AOF: true, Config: []string{"appendfsync always"}})
	st := storetest.New(t, srv.URL)
	ctx := context.Background()
	raw := redisClient(t, srv.URL)
	sess := newSession("alice")
	res := accept(t, st, sess, true)
	require.NoError(t, raw.HSet(ctx, sessionKey(st, sess.ID), "startedAt", time.Now().Add(-time.Minute).UnixMilli()).Err())
	_, err := st.Identity(ctx)
	require.NoError(t, err)
	_, err = st.RunningSessions(ctx) // finds the job queued
	require.NoError(t, err)

	lose := func() {
		jobs, err := raw.XRange(ctx, st.Prefix()+":jobs", "-", "+").Result()
		require.NoError(t, err)
		require.Len(t, jobs, 1)
		require.NoError(t, raw.XDel(ctx, st.Prefix()+":jobs", jobs[0].ID).Err())
	}
	lose() // lost without a restart: looked for again only after requeueRecheck
	_, err = st.RunningSessions(ctx)
	require.NoError(t, err)
	n, err := raw.XLen(ctx, st.Prefix()+":jobs").Result()
	require.NoError(t, err)
	require.Zero(t, n, "checked a moment ago")

	srv.Stop()
	srv.Restart(t)
	require.Eventually(t, func() bool { _, err := st.Identity(ctx); return err == nil }, 10*time.Second, 20*time.Millisecond)
	_, err = st.RunningSessions(ctx)
	require.NoError(t, err)
	jobs, err := st.ReadJobs(ctx, "w1", 10, 10*time.Millisecond)
	require.NoError(t, err)
	require.Len(t, jobs, 1, "queued again after the restart")
	require.Equal(t, res.RunID, jobs[0].Job.RunID)
}

// TestStaleOwnCompleteRechecked: a complete whose first copy took effect
// while its caller heard only the second copy's STALE (go-redis sent it
// again after a timeout; the caller asked again after a lost reply) is
// checked like one that succeeded: a restart that loses it has it written
// again. Before, it was not remembered, and the session stayed running
// with a live worker the reaper leaves alone.
func TestStaleOwnCompleteRechecked(t *testing.T) {
	for _, b := range storetest.Backends {
		t.Run(string(b), func(t *testing.T) {
			url := storetest.Start(t, b)
			st := storetest.New(t, url)
			ctx := context.Background()
			sess := newSession("alice")
			res := accept(t, st, sess, true)
			run := store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude, Worker: "w1"}
			// The first copy, as seen by Redis (another client: nothing of
			// it is remembered by st).
			_, err := storetest.New(t, url, store.Config{Prefix: st.Prefix()}).Complete(ctx, run, app.Outcome{})
			require.NoError(t, err)
			_, err = st.Complete(ctx, run, app.Outcome{})
			require.ErrorIs(t, err, app.ErrStaleRun)
			raw := redisClient(t, url)
			require.NoError(t, raw.HSet(ctx, sessionKey(st, sess.ID), "state", "running").Err())
			n, err := st.RecheckCompletes(ctx, 0)
			require.NoError(t, err)
			require.Equal(t, 1, n)
			got, err := st.Session(ctx, sess.ID)
			require.NoError(t, err)
			require.Equal(t, app.StateCompleted, got.State)
		})
	}
}

// TestAccountUIDWaitsForAReplica: on a Redis Cluster a uid is handed out
// only once a replica of its master has it: replication is asynchronous,
// and a failover that lost the assignment gave the next user the same uid
// (two users, one OS account). With the replica stalled the worker is told
// to try again; once it answers, the uid is given.
func TestAccountUIDWaitsForAReplica(t *testing.T) {
	c := storetest.StartCluster(t)
	st := storetest.New(t, c.URL)
	ctx := context.Background()
	key := st.Prefix() + ":{accounts}"
	master := c.MasterOf(t, key)
	var replica *storetest.Server
	for _, n := range c.Nodes {
		if n == master {
			continue
		}
		rdb := redis.NewClient(&redis.Options{Addr: n.Addr})
		info, err := rdb.Info(ctx, "replication").Result()
		_ = rdb.Close()
		require.NoError(t, err)
		if storetest.InfoField(info, "master_port") == master.Addr[strings.LastIndexByte(master.Addr, ':')+1:] {
			replica = n
		}
	}
	require.NotNil(t, replica, "the master's replica")
	replica.Pause(t)
	_, err := st.AccountUID(ctx, "alice", 50000, 50009)
	require.ErrorContains(t, err, "try again")
	replica.Resume(t)
	uid, err := st.AccountUID(ctx, "alice", 50000, 50009)
	require.NoError(t, err)
	require.Equal(t, 50000, uid)
}

// TestSubscriberNotHeldByAStalledMaster: a Subscribe whose channel lives on
// a stalled master (SIGSTOP: its connections stay open, nothing is
// answered) does not hold up the Subscribes of the other masters. First
// with no connection to that master yet (the Subscribe dials it and waits
// for its handshake), then after its shard answered no ping and was
// dropped, while the slot map may still name it: a session subscribed then
// is followed once the replica took over.
func TestSubscriberNotHeldByAStalledMaster(t *testing.T) {
	c := storetest.StartCluster(t)
	gaveUp := &gaveUpLog{Handler: slog.Default().Handler(), addrs: make(chan string, 16)}
	st := storetest.New(t, c.Seed, store.Config{Logger: slog.New(gaveUp)})
	ctx, rec, sub := recordingSubscriber(t, st)
	masters := c.Masters(t)
	m1, m2 := masters[0], masters[1]
	on := func(m *storetest.Server) app.Session {
		for {
			if s := newSession("alice"); c.MasterOf(t, sessionKey(st, s.ID)) == m {
				return s
			}
		}
	}
	// sent has the channels whose SSUBSCRIBE went out (or that were
	// queued for the mover of a stalled master's channels).
	sent := make(chan string, 64)
	sub.SetSending(func(channel string) {
		select {
		case sent <- channel:
		default:
		}
	})
	// inFlight waits until the subscribe of session id is under way.
	inFlight := func(id string) {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case ch := <-sent:
				if strings.Contains(ch, id) {
					return
				}
			case <-timeout:
				t.Fatalf("the subscribe of %s was not sent", id)
			}
		}
	}
	subscribe := func(id string) <-chan error {
		done := make(chan error, 1)
		go func() {
			sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			done <- sub.Subscribe(sctx, id)
		}()
		return done
	}
	// Picked while every node answers.
	a, a2, a3, b, d := on(m1), on(m1), on(m1), on(m2), on(m2)
	// healthy subscribes to s, of m1, while the one on the stalled master
	// is in flight: it ends, while that one waits (for the master, or its
	// replica), and the stalled master is resumed only after (a subscribe
	// held by the stalled one would end with it, after its 30 s).
	healthy := func(s app.Session) {
		t.Helper()
		began := time.Now()
		require.NoError(t, sub.Subscribe(ctx, s.ID))
		t.Logf("a subscribe on a healthy master took %v", time.Since(began))
	}
	require.NoError(t, sub.Subscribe(ctx, a.ID))

	// No connection to m2 yet: the Subscribe dials it; a second one of the
	// same session waits for it.
	m2.Pause(t)
	stalled := subscribe(b.ID)
	inFlight(b.ID) // the stalled one first
	again := subscribe(b.ID)
	healthy(a2)
	select {
	case err := <-stalled:
		t.Fatalf("the subscribe on the stalled master ended first (%v)", err)
	case err := <-again:
		t.Fatalf("the subscribe on the stalled master ended first (%v)", err)
	default:
	}
	m2.Resume(t)
	require.NoError(t, <-stalled, "subscribed once the master answers again")
	require.NoError(t, <-again)
	accept(t, st, b, true)
	require.Eventually(t, func() bool { return len(rec.seqs(b.ID)) == 2 }, 10*time.Second, 5*time.Millisecond)

	// m2 stalls for good: its shard answers no ping and is dropped.
	m2.Pause(t)
	deadline := time.After(time.Minute)
	for addr := ""; addr != m2.Addr; {
		select {
		case addr = <-gaveUp.addrs:
		case <-deadline:
			t.Fatal("the shard of the stalled master was not given up")
		}
	}
	began := time.Now()
	stalled = subscribe(d.ID)
	inFlight(d.ID)
	healthy(a3)
	require.NoError(t, <-stalled, "subscribed on the replica that took over")
	t.Logf("the subscribe on the stalled master's slots took %v", time.Since(began))
	m2.Resume(t)
	c.WaitHealthy(t)
	accept(t, st, d, true)
	require.Eventually(t, func() bool { return len(rec.seqs(d.ID)) == 2 }, 10*time.Second, 5*time.Millisecond)
}

// gaveUpLog passes logs on, and sends the address of each shard connection
// a Subscriber gave up on because it answered no ping.
type gaveUpLog struct {
	slog.Handler
	addrs chan string
}

func (h *gaveUpLog) Handle(ctx context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, "pub/sub shard answers no ping") {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "addr" {
				select {
				case h.addrs <- a.Value.String():
				default:
				}
			}
			return true
		})
	}
	return h.Handler.Handle(ctx, r)
}

func (h *gaveUpLog) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &gaveUpLog{Handler: h.Handler.WithAttrs(attrs), addrs: h.addrs}
}

func (h *gaveUpLog) WithGroup(name string) slog.Handler {
	return &gaveUpLog{Handler: h.Handler.WithGroup(name), addrs: h.addrs}
}
