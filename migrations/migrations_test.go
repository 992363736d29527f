package migrations_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/migrations"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestMain stops the Redis Cluster the tests share once they are done.
func TestMain(m *testing.M) { os.Exit(storetest.RunMain(m)) }

func TestApplyIsIdempotent(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			st := storetest.New(t, storetest.Start(t, b))
			ctx := context.Background()
			v, err := migrations.Apply(ctx, st)
			require.NoError(t, err)
			require.Equal(t, migrations.Current, v)
			v, err = migrations.Apply(ctx, st)
			require.NoError(t, err)
			require.Equal(t, migrations.Current, v)
			got, err := st.SchemaVersion(ctx)
			require.NoError(t, err)
			require.Equal(t, migrations.Current, got)
		})
	}
}

// TestConcurrentApplyRunsEachOnce: processes that find the schema missing
// at once (gateways' /readyz after Redis came back empty) migrate one at a
// time under the lease, so each migration runs once and the others find
// nothing left to do.
func TestConcurrentApplyRunsEachOnce(t *testing.T) {
	st := storetest.New(t, storetest.Redis(t))
	saved := migrations.All
	t.Cleanup(func() { migrations.All = saved })
	runs := make([]atomic.Int32, len(saved))
	migrations.All = nil
	for i, m := range saved {
		up := m.Up
		m.Up = func(ctx context.Context, st *store.Store) error {
			runs[i].Add(1)
			time.Sleep(50 * time.Millisecond) // long enough for the others to meet the lease
			return up(ctx, st)
		}
		migrations.All = append(migrations.All, m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errs := make(chan error, 4)
	for range cap(errs) {
		go func() {
			v, err := migrations.Apply(ctx, st)
			if err == nil && v != migrations.Current {
				err = fmt.Errorf("version %d after Apply", v)
			}
			errs <- err
		}()
	}
	for range cap(errs) {
		require.NoError(t, <-errs)
	}
	for i := range runs {
		require.EqualValues(t, 1, runs[i].Load(), "migration %d", saved[i].Version)
	}
}

func TestApplyRefusesNewerSchema(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	ctx := context.Background()
	require.NoError(t, st.SetSchemaVersion(ctx, migrations.Current+1))
	_, err := migrations.Apply(ctx, st)
	require.ErrorContains(t, err, "newer")
}

// TestApplyUnsharedTakesNoLease: with the migration lease held by another
// process, Apply waits (here until its deadline) and ApplyUnshared, for a
// store nothing else reaches, migrates at once.
func TestApplyUnsharedTakesNoLease(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	ctx := context.Background()
	ok, err := st.AcquireLease(ctx, "migrate", "another-process", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err = migrations.Apply(short, st)
	require.ErrorContains(t, err, "wait for lease")
	v, err := migrations.ApplyUnshared(ctx, st)
	require.NoError(t, err)
	require.Equal(t, migrations.Current, v)
	got, err := st.SchemaVersion(ctx)
	require.NoError(t, err)
	require.Equal(t, migrations.Current, got)
}

// TestSchema2FromSchema1 migrates a store laid out as schema 1 wrote it
// (the keys its scripts wrote, here by hand: a running run whose job waits
// in the jobs stream, a finished session with a provider id) to schema 2:
// the queued job is kept beside its session, so that once the stream loses
// it the run is queued again, and the indexes are whole.
func TestSchema2FromSchema1(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			url := storetest.Start(t, b)
			st := storetest.New(t, url)
			p := st.Prefix()
			ctx := context.Background()
			raw := storetest.Client(t, url)
			old := time.Now().Add(-time.Hour).UnixMilli()
			runID := strconv.FormatInt(old, 10)
			job := `{"sessionId":"s1","owner":"alice","provider":"claude","command":"hi","projectPath":"/w"}`
			require.NoError(t, raw.HSet(ctx, p+":session:{s1}", "id", "s1", "owner", "alice", "provider", "claude",
				"projectPath", "/w", "providerSessionId", "", "state", "running", "runId", runID, "startedAt", runID,
				"statusText", "", "canInterrupt", 1, "worker", "", "lastSeq", 2, "createdAt", runID, "updatedAt", runID).Err())
			require.NoError(t, raw.XAdd(ctx, &redis.XAddArgs{Stream: p + ":session:{s1}:events", ID: "1-0", Values: []any{"seq", 1, "kind", "session-state-changed", "data", `{"seq":1}`}}).Err())
			require.NoError(t, raw.XAdd(ctx, &redis.XAddArgs{Stream: p + ":session:{s1}:events", ID: "2-0", Values: []any{"seq", 2, "kind", "session_created", "data", `{"seq":2}`}}).Err())
			require.NoError(t, raw.XAdd(ctx, &redis.XAddArgs{Stream: p + ":jobs", Values: []any{"session", "s1", "run", runID, "job", job}}).Err())
			require.NoError(t, raw.HSet(ctx, p+":session:{s2}", "id", "s2", "owner", "bob", "provider", "claude",
				"projectPath", "/w", "providerSessionId", "p-2", "state", "completed", "runId", "1", "startedAt", "1",
				"lastSeq", 4, "createdAt", "1", "updatedAt", "2").Err())
			require.NoError(t, raw.ZAdd(ctx, p+":sessions:running", redis.Z{Score: float64(old), Member: "s1"}).Err())
			require.NoError(t, raw.ZAdd(ctx, p+":user:{alice}:sessions", redis.Z{Score: float64(old), Member: "s1"}).Err())
			require.NoError(t, raw.ZAdd(ctx, p+":user:{alice}:running", redis.Z{Score: float64(old), Member: "s1"}).Err())
			require.NoError(t, raw.HSet(ctx, p+":provider:{claude}:sessions", "p-2", "s2").Err())
			// bob's list lost its entry: the rebuild brings it back.
			require.NoError(t, st.SetSchemaVersion(ctx, 1))

			v, err := migrations.Apply(ctx, st)
			require.NoError(t, err)
			require.Equal(t, 2, v)
			kept, err := raw.Get(ctx, p+":session:{s1}:job").Result()
			require.NoError(t, err)
			require.Equal(t, job, kept)
			n, err := raw.Exists(ctx, p+":session:{s2}:job").Result()
			require.NoError(t, err)
			require.Zero(t, n, "a finished session keeps no job")
			bobs, err := st.ListSessions(ctx, store.SessionFilter{Owner: "bob"})
			require.NoError(t, err)
			require.Len(t, bobs, 1)

			// The stream loses the job: the run is queued again from what
			// the migration kept, and runs on schema 2.
			entries, err := st.ReadJobs(ctx, "w1", 10, 10*time.Millisecond)
			require.NoError(t, err)
			require.Len(t, entries, 1)
			require.NoError(t, st.AckJob(ctx, entries[0].StreamID))
			for range 2 {
				_, err = st.RunningSessions(ctx)
				require.NoError(t, err)
			}
			entries, err = st.ReadJobs(ctx, "w1", 10, 10*time.Millisecond)
			require.NoError(t, err)
			require.Len(t, entries, 1)
			require.Equal(t, runID, entries[0].Job.RunID)
			ref := store.RunRef{SessionID: "s1", RunID: runID, Provider: app.Claude}
			ok, err := st.Claim(ctx, ref, "w1")
			require.NoError(t, err)
			require.True(t, ok)
			seq, err := st.Append(ctx, ref, []app.Event{app.Text("assistant", "hello")}, nil)
			require.NoError(t, err)
			require.Equal(t, int64(3), seq)
			done, err := st.Complete(ctx, ref, app.Outcome{})
			require.NoError(t, err)
			require.Equal(t, int64(5), done.Seq)
		})
	}
}
