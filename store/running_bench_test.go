package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// BenchmarkRunning is one reaper pass's read (store.Running) over 10,000
// running sessions whose runs no worker has taken for a minute, as while
// every worker is busy or gone: the cost a pass has every 2 s.
func BenchmarkRunning(b *testing.B) {
	url := storetest.StartServer(b).URL
	st := storetest.New(b, url)
	ctx := context.Background()
	project := b.TempDir()
	const n = 10_000
	raw := redisClient(b, url)
	old := time.Now().Add(-time.Minute).UnixMilli()
	for i := range n {
		id := fmt.Sprintf("bench-%05d", i)
		sess := app.Session{ID: id, Owner: "bench", Provider: app.Claude, ProjectPath: project}
		job := app.Job{SessionID: id, Owner: "bench", Provider: app.Claude, Command: "hi", ProjectPath: project}
		if _, err := st.Accept(ctx, &store.AcceptRequest{Session: sess, New: true, Job: job}); err != nil {
			b.Fatal(err)
		}
		if err := raw.HSet(ctx, sessionKey(st, id), "startedAt", old).Err(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		list, err := st.Running(ctx)
		if err != nil || len(list) != n {
			b.Fatalf("%d running, %v", len(list), err)
		}
	}
}
