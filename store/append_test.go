package store_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestAppendBatchOnce: an append retried after its reply was lost (the
// same batch number again) adds no event; the next batch goes on from the
// session's last seq, and a new run's batches start afresh.
func TestAppendBatchOnce(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		sess, run := newRun(t, st, "alice")

		first, err := st.AppendBatch(ctx, run, 1, []app.Event{app.Text("assistant", "one"), app.Text("assistant", "two")}, nil)
		require.NoError(t, err)
		again, err := st.AppendBatch(ctx, run, 1, []app.Event{app.Text("assistant", "one"), app.Text("assistant", "two")}, nil)
		require.NoError(t, err)
		require.Equal(t, first, again, "a repeated batch answers the session's last seq")
		next, err := st.AppendBatch(ctx, run, 2, []app.Event{app.Text("assistant", "three")}, nil)
		require.NoError(t, err)
		require.Equal(t, first+1, next)
		// An older batch arriving late (a retry overtaken) changes nothing.
		late, err := st.AppendBatch(ctx, run, 1, []app.Event{app.Text("assistant", "one")}, nil)
		require.NoError(t, err)
		require.Equal(t, next, late)
		// Unnumbered appends are always taken.
		plain, err := st.Append(ctx, run, []app.Event{app.Text("assistant", "four")}, nil)
		require.NoError(t, err)
		require.Equal(t, next+1, plain)

		_, err = st.Complete(ctx, run, app.Outcome{})
		require.NoError(t, err)
		res2 := accept(t, st, sess, false)
		run2 := store.RunRef{SessionID: sess.ID, RunID: res2.RunID, Provider: app.Claude}
		seq, err := st.AppendBatch(ctx, run2, 1, []app.Event{app.Text("assistant", "second run")}, nil)
		require.NoError(t, err)

		evs, err := st.Events(ctx, sess.ID, 0, 100)
		require.NoError(t, err)
		var texts []string
		for i, ev := range evs {
			require.Equal(t, int64(i+1), ev.Seq, "seqs without gaps or repeats")
			if ev.Kind == string(app.KindText) {
				var f struct{ Content string }
				require.NoError(t, json.Unmarshal(ev.Data, &f))
				texts = append(texts, f.Content)
			}
		}
		require.Equal(t, []string{"one", "two", "three", "four", "second run"}, texts)
		require.Equal(t, evs[len(evs)-1].Seq, seq)
	})
}

// TestShellAppendBatchOnce: a terminal's output append repeated with the
// same batch number stores nothing; a new generation numbers afresh.
func TestShellAppendBatchOnce(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		spec := plainSpec
		gen, ok, err := st.ShellOpen(ctx, "once", 0, "w1", "bash", spec, store.ShellLimit{})
		require.NoError(t, err)
		require.True(t, ok)
		seq, err := st.ShellAppendBatch(ctx, "once", gen, 1, []string{"a", "b"})
		require.NoError(t, err)
		require.Equal(t, int64(2), seq)
		seq, err = st.ShellAppendBatch(ctx, "once", gen, 1, []string{"a", "b"})
		require.NoError(t, err)
		require.Equal(t, int64(2), seq, "the repeat is not stored")
		seq, err = st.ShellAppendBatch(ctx, "once", gen, 2, []string{"c"})
		require.NoError(t, err)
		require.Equal(t, int64(3), seq)
		chunks, err := st.ShellOutput(ctx, "once", 0, 10)
		require.NoError(t, err)
		require.Equal(t, []store.ShellChunk{{Seq: 1, Data: "a"}, {Seq: 2, Data: "b"}, {Seq: 3, Data: "c"}}, chunks)

		gen2, ok, err := st.ShellOpen(ctx, "once", gen, "w1", "bash", spec, store.ShellLimit{})
		require.NoError(t, err)
		require.True(t, ok)
		seq, err = st.ShellAppendBatch(ctx, "once", gen2, 1, []string{"new"})
		require.NoError(t, err)
		require.Equal(t, int64(1), seq, "a new generation's first batch is taken")
	})
}

// TestAppendMany: the appends of several runs in one pipeline each land in
// their own session as AppendBatch would: a stale run is refused alone, a
// repeated batch adds nothing, and after SCRIPT FLUSH (a restarted Redis)
// the script is loaded again.
func TestAppendMany(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			url := storetest.Start(t, b)
			st := storetest.New(t, url)
			ctx := context.Background()
			var runs []store.RunRef
			for range 5 {
				sess := newSession("alice")
				res := accept(t, st, sess, true)
				runs = append(runs, store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude})
			}
			stale := runs[4]
			stale.RunID = "999"
			reqs := []store.AppendReq{
				{Run: runs[0], Batch: 1, Events: []app.Event{app.Text("assistant", "a0")}},
				{Run: runs[1], Batch: 1, Events: []app.Event{app.Text("assistant", "a1"), app.Text("assistant", "b1")}},
				{Run: runs[2], Events: []app.Event{app.Text("assistant", "a2")}, Set: map[string]string{"statusText": "Working"}},
				{Run: stale, Batch: 1, Events: []app.Event{app.Text("assistant", "late")}},
			}
			got := st.AppendMany(ctx, reqs)
			require.Len(t, got, 4)
			require.NoError(t, got[0].Err)
			require.NoError(t, got[1].Err)
			require.NoError(t, got[2].Err)
			require.ErrorIs(t, got[3].Err, app.ErrStaleRun)
			// Accept wrote 2 events (the user's message, the state change).
			require.Equal(t, []int64{3, 4, 3}, []int64{got[0].Seq, got[1].Seq, got[2].Seq})

			switch c := redisClient(t, url).(type) {
			case *redis.ClusterClient:
				require.NoError(t, c.ForEachShard(ctx, func(ctx context.Context, n *redis.Client) error { return n.ScriptFlush(ctx).Err() }))
			default:
				require.NoError(t, c.ScriptFlush(ctx).Err())
			}
			got = st.AppendMany(ctx, []store.AppendReq{
				{Run: runs[0], Batch: 1, Events: []app.Event{app.Text("assistant", "a0")}}, // a repeat
				{Run: runs[0], Batch: 2, Events: []app.Event{app.Text("assistant", "c0")}},
				{Run: runs[3], Batch: 1, Events: []app.Event{app.Text("assistant", "a3")}},
			})
			for _, r := range got {
				require.NoError(t, r.Err)
			}
			require.Equal(t, []int64{3, 4, 3}, []int64{got[0].Seq, got[1].Seq, got[2].Seq})
			evs, err := st.Events(ctx, runs[0].SessionID, 0, 100)
			require.NoError(t, err)
			require.Len(t, evs, 4)
			sess, err := st.Session(ctx, runs[2].SessionID)
			require.NoError(t, err)
			require.Equal(t, "Working", sess.StatusText)
		})
	}
}
