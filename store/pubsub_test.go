package store_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

type recorder struct {
	mu       sync.Mutex
	frames   map[string][]int64
	resyncs  map[string]int
	broadcas [][]byte
}

func newRecorder() *recorder {
	return &recorder{frames: map[string][]int64{}, resyncs: map[string]int{}}
}

// recordingSubscriber runs a subscriber of st into a recorder until the
// test ends, and returns the context it runs on.
func recordingSubscriber(t *testing.T, st *store.Store) (context.Context, *recorder, *store.Subscriber) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	rec := newRecorder()
	sub := st.NewSubscriber(rec.handlers())
	go func() { _ = sub.Run(ctx) }()
	return ctx, rec, sub
}

func (r *recorder) handlers() store.SubscriberHandlers {
	return store.SubscriberHandlers{
		Event: func(id string, frame []byte) {
			seq, _ := app.FrameSeq(frame)
			r.mu.Lock()
			r.frames[id] = append(r.frames[id], seq)
			r.mu.Unlock()
		},
		Resync: func(id string) {
			r.mu.Lock()
			r.resyncs[id]++
			r.mu.Unlock()
		},
		Broadcast: func(frame []byte) {
			r.mu.Lock()
			r.broadcas = append(r.broadcas, frame)
			r.mu.Unlock()
		},
	}
}

func (r *recorder) seqs(id string) []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int64(nil), r.frames[id]...)
}

func TestSubscriberDeliversInOrder(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx, rec, sub := recordingSubscriber(t, st)

		sess := newSession("alice")
		subCtx, subCancel := context.WithTimeout(ctx, 5*time.Second)
		defer subCancel()
		require.NoError(t, sub.Subscribe(subCtx, sess.ID))
		res := accept(t, st, sess, true)
		run := store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}
		for i := 0; i < 50; i++ {
			_, err := st.Append(ctx, run, []app.Event{app.Text("assistant", "x")}, nil)
			require.NoError(t, err)
		}
		require.Eventually(t, func() bool { return len(rec.seqs(sess.ID)) == 52 }, 5*time.Second, 5*time.Millisecond)
		for i, s := range rec.seqs(sess.ID) {
			require.Equal(t, int64(i+1), s)
		}

		require.NoError(t, st.Broadcast(ctx, "alice", []byte(`{"type":"projects_updated"}`)))
		require.Eventually(t, func() bool {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			return len(rec.broadcas) == 1
		}, 5*time.Second, 5*time.Millisecond)
		rec.mu.Lock()
		user, frame, err := store.ParseBroadcast(rec.broadcas[0])
		rec.mu.Unlock()
		require.NoError(t, err)
		require.Equal(t, "alice", user)
		require.JSONEq(t, `{"type":"projects_updated"}`, string(frame))
	})
}

// TestSubscriberResyncsAfterConnectionLoss kills the pub/sub connection on a
// real Redis: the subscriber must re-subscribe and report every session, so
// the gateway can read what was published while it was away.
func TestSubscriberResyncsAfterConnectionLoss(t *testing.T) {
	url := storetest.Redis(t)
	st := storetest.New(t, url)
	ctx, rec, sub := recordingSubscriber(t, st)

	sess := newSession("alice")
	require.NoError(t, sub.Subscribe(ctx, sess.ID))
	raw := redisClient(t, url)
	require.NoError(t, raw.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err())

	require.Eventually(t, func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return rec.resyncs[sess.ID] == 1
	}, 5*time.Second, 5*time.Millisecond)

	res := accept(t, st, sess, true)
	_, err := st.Append(ctx, store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}, []app.Event{app.Text("assistant", "x")}, nil)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(rec.seqs(sess.ID)) == 3 }, 5*time.Second, 5*time.Millisecond)
}

func TestJobsReclaimAfterConsumerDeath(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		sess := newSession("alice")
		accept(t, st, sess, true)
		jobs, err := st.ReadJobs(ctx, "dead-worker", 10, 50*time.Millisecond)
		require.NoError(t, err)
		require.Len(t, jobs, 1)

		// Not idle long enough yet.
		again, err := st.ReclaimJobs(ctx, "w2", time.Hour)
		require.NoError(t, err)
		require.Empty(t, again)

		time.Sleep(20 * time.Millisecond)
		again, err = st.ReclaimJobs(ctx, "w2", 10*time.Millisecond)
		require.NoError(t, err)
		require.Len(t, again, 1)
		require.Equal(t, sess.ID, again[0].Job.SessionID)
		require.NoError(t, st.AckJob(ctx, again[0].StreamID))

		time.Sleep(20 * time.Millisecond)
		again, err = st.ReclaimJobs(ctx, "w3", 10*time.Millisecond)
		require.NoError(t, err)
		require.Empty(t, again)
	})
}

func TestInbox(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		for i := 0; i < 3; i++ {
			require.NoError(t, st.SendControl(ctx, "w1", store.Control{Type: store.ControlAbort, SessionID: "s", RunID: string(rune('a' + i))}))
		}
		got, err := st.ReadInbox(ctx, "w1", "0", 50*time.Millisecond)
		require.NoError(t, err)
		require.Len(t, got, 3)
		for i, e := range got {
			require.NoError(t, e.Err)
			require.Equal(t, string(rune('a'+i)), e.Control.RunID)
		}
		more, err := st.ReadInbox(ctx, "w1", got[2].StreamID, 50*time.Millisecond)
		require.NoError(t, err)
		require.Empty(t, more)
	})
}

// TestInboxControlIDs: each control sent gets an ID of its own, which a
// worker uses to act once on a control stored twice.
func TestInboxControlIDs(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.Eventually(t, st.ClockMeasured, 5*time.Second, 5*time.Millisecond, "Redis's clock measured")
		for range 2 {
			require.NoError(t, st.SendControl(ctx, "w1", store.Control{Type: store.ControlAbort, SessionID: "s"}))
		}
		require.NoError(t, st.SendControl(ctx, "w1", store.Control{Type: store.ControlAbort, SessionID: "s", ID: "mine"}))
		got, err := st.ReadInbox(ctx, "w1", "0", 50*time.Millisecond)
		require.NoError(t, err)
		require.Len(t, got, 3)
		require.NotEmpty(t, got[0].Control.ID)
		require.NotEqual(t, got[0].Control.ID, got[1].Control.ID)
		require.Equal(t, "mine", got[2].Control.ID)
	})
}

// TestSendControlThroughAStall: Redis stalls (SIGSTOP, as a paused VM or a
// hung disk stalls it) while a control is sent. go-redis writes the
// control, times out reading the reply (5 s), and writes it again on
// another connection of its pool; the stalled Redis runs both copies when
// it goes on. A send whose caller gave up (and told its user it failed)
// must not be sent then: before, a keystroke reported as failed was typed
// twice seconds later. One that Redis runs in time is stored under one ID
// however many copies land (the worker acts on one).
func TestSendControlThroughAStall(t *testing.T) {
	for _, tc := range []struct {
		name     string
		timeout  time.Duration // the sender's
		stall    time.Duration
		wantSent bool
	}{
		{"past the sender's deadline", 7 * time.Second, 9 * time.Second, false},
		{"within it", 20 * time.Second, 7 * time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := storetest.StartServer(t)
			st := storetest.New(t, srv.URL)
			ctx := context.Background()
			require.Eventually(t, st.ClockMeasured, 5*time.Second, 5*time.Millisecond, "Redis's clock measured")
			// The script loaded (a NOSCRIPT reply would stop the first
			// copy), and connections in the pool for go-redis's retry.
			require.NoError(t, st.SendControl(ctx, "other", store.Control{Type: store.ControlAbort}))
			var wg sync.WaitGroup
			for range 8 {
				wg.Go(func() { _, _ = st.PeekInbox(ctx, "idle", "0", 100*time.Millisecond) })
			}
			wg.Wait()

			srv.Pause(t)
			resumed := time.AfterFunc(tc.stall, func() { srv.Resume(t) })
			defer resumed.Stop()
			sendCtx, cancel := context.WithTimeout(ctx, tc.timeout)
			err := st.SendControl(sendCtx, "w1", store.Control{Type: store.ControlShellInput, Shell: "k", Gen: 1, Data: []byte(`"x"`)})
			cancel()
			t.Logf("send: %v", err)
			if tc.wantSent {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
			}
			require.Eventually(t, func() bool { return st.Ping(ctx) == nil }, 20*time.Second, 50*time.Millisecond, "Redis going on")
			got, err := st.PeekInbox(ctx, "w1", "0", 50*time.Millisecond)
			require.NoError(t, err)
			t.Logf("%d copies stored", len(got))
			if !tc.wantSent {
				require.Empty(t, got, "a control its sender gave up on was stored")
				return
			}
			require.NotEmpty(t, got)
			for _, e := range got {
				require.Equal(t, got[0].Control.ID, e.Control.ID, "copies of one send")
			}
		})
	}
}

// TestInboxOfADeadWorkerExpires: an inbox nobody reads (its worker was
// killed before it could delete it) is not kept for ever.
func TestInboxOfADeadWorkerExpires(t *testing.T) {
	url := storetest.Redis(t)
	prefix := storetest.Prefix()
	st := storetest.New(t, url, store.Config{Prefix: prefix})
	ctx := context.Background()
	require.NoError(t, st.SendControl(ctx, "gone", store.Control{Type: store.ControlAbort, SessionID: "s", RunID: "r"}))
	ttl, err := redisClient(t, url).TTL(ctx, prefix+":worker:gone:inbox").Result()
	require.NoError(t, err)
	require.Positive(t, ttl)
	require.LessOrEqual(t, ttl, time.Hour)
}

func TestWorkersAndLease(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "w1", Host: "h", PID: 1, StartedAt: time.Now()}, time.Minute))
		require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "w2", Host: "h", PID: 2, StartedAt: time.Now()}, time.Minute))
		live, err := st.LiveWorkers(ctx)
		require.NoError(t, err)
		require.Len(t, live, 2)
		require.NoError(t, st.RemoveWorker(ctx, "w1"))
		alive, err := st.WorkerAlive(ctx, "w1")
		require.NoError(t, err)
		require.False(t, alive)
		live, err = st.LiveWorkers(ctx)
		require.NoError(t, err)
		require.Len(t, live, 1)
		require.Equal(t, "w2", live[0].ID)

		ok, err := st.AcquireLease(ctx, "reaper", "a", time.Minute)
		require.NoError(t, err)
		require.True(t, ok)
		ok, err = st.AcquireLease(ctx, "reaper", "b", time.Minute)
		require.NoError(t, err)
		require.False(t, ok)
		ok, err = st.AcquireLease(ctx, "reaper", "a", time.Minute)
		require.NoError(t, err)
		require.True(t, ok, "the holder extends its lease")
		require.NoError(t, st.ReleaseLease(ctx, "reaper", "a"))
		ok, err = st.AcquireLease(ctx, "reaper", "b", time.Minute)
		require.NoError(t, err)
		require.True(t, ok)
	})
}

// TestFailedSubscribeLeavesNoChannel: a subscribe that fails (Redis down)
// is not subscribed later by the connection that comes back: go-redis
// keeps such a channel and subscribes it on each new connection, and
// nothing would have unsubscribed it.
func TestFailedSubscribeLeavesNoChannel(t *testing.T) {
	srv := storetest.StartServer(t)
	st := storetest.New(t, srv.URL)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h := newRecorder().handlers()
	outage := make(chan struct{}, 1)
	h.Outage = func() {
		select {
		case outage <- struct{}{}:
		default:
		}
	}
	sub := st.NewSubscriber(h)
	go func() { _ = sub.Run(ctx) }()
	kept := newSession("alice")
	require.NoError(t, sub.Subscribe(ctx, kept.ID))

	srv.Stop()
	// Once the subscriber saw its connection fail: a SUBSCRIBE sent before
	// could still go out on it, and only time out.
	select {
	case <-outage:
	case <-time.After(10 * time.Second):
		t.Fatal("the subscriber did not see Redis go")
	}
	lost := newSession("alice")
	subCtx, cancel := context.WithTimeout(ctx, time.Second)
	require.Error(t, sub.Subscribe(subCtx, lost.ID))
	cancel()
	srv.Restart(t)

	// The subscribe may also have failed later, waiting for Redis's
	// confirmation (a write into a dead connection can pass): that
	// channel is let go after the grace of any unsubscribe. Either way
	// only the kept one stays.
	raw := redisClient(t, srv.URL)
	var channels []string
	require.Eventually(t, func() bool {
		channels, _ = raw.PubSubChannels(ctx, st.Prefix()+":session:*").Result()
		return len(channels) == 1 && strings.Contains(channels[0], kept.ID)
	}, 20*time.Second, 20*time.Millisecond, "only the kept channel stays subscribed")
}
