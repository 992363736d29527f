package workers

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestAppenderConcurrent: runs appending at once through one appender each
// get their own seqs back, in order, with nothing lost or doubled, while
// their appends share pipelines.
func TestAppenderConcurrent(t *testing.T) {
	st := storetest.New(t, storetest.Start(t, storetest.Real))
	ctx := context.Background()
	a := newAppender(st)
	const runs, lines = 20, 50
	refs := make([]store.RunRef, runs)
	for i := range refs {
		sess := app.Session{ID: app.NewID(), Owner: "alice", Provider: app.Claude, ProjectPath: "/tmp"}
		res, err := st.Accept(ctx, &store.AcceptRequest{Session: sess, New: true,
			Job: app.Job{SessionID: sess.ID, Owner: "alice", Provider: app.Claude, Command: "hi"}})
		require.NoError(t, err)
		refs[i] = store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}
	}
	var wg sync.WaitGroup
	for i, ref := range refs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := int64(0)
			for j := 1; j <= lines; j++ {
				seq, err := a.append(ctx, store.AppendReq{Run: ref, Batch: int64(j), Events: []app.Event{app.Text("assistant", fmt.Sprintf("%d-%d", i, j))}})
				if err != nil || seq <= last {
					t.Errorf("run %d line %d: seq %d after %d, err %v", i, j, seq, last, err)
					return
				}
				last = seq
			}
		}()
	}
	wg.Wait()
	for i, ref := range refs {
		evs, err := st.Events(ctx, ref.SessionID, 0, 1000)
		require.NoError(t, err)
		var texts int
		for k, ev := range evs {
			require.Equal(t, int64(k+1), ev.Seq)
			if ev.Kind == string(app.KindText) {
				texts++
			}
		}
		require.Equal(t, lines, texts, "run %d: every line once", i)
	}
	require.False(t, a.leading, "the lead is given up once the queue is empty")
}
