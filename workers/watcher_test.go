package workers

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// broadcasts collects the broadcast frames of a store.
type broadcasts struct {
	mu     sync.Mutex
	frames []map[string]any
}

func listen(t *testing.T, st *store.Store) *broadcasts {
	b := &broadcasts{}
	sub := st.NewSubscriber(store.SubscriberHandlers{Broadcast: func(frame []byte) {
		var m map[string]any
		if json.Unmarshal(frame, &m) == nil {
			b.mu.Lock()
			b.frames = append(b.frames, m)
			b.mu.Unlock()
		}
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = sub.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	time.Sleep(100 * time.Millisecond) // the broadcast channel is subscribed at start
	return b
}

func (b *broadcasts) of(typ string) []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, f := range b.frames {
		if f["type"] == typ {
			out = append(out, f)
		}
	}
	return out
}

func TestProjectsWatcher(t *testing.T) {
	st := storetest.New(t, storetest.Redis(t))
	got := listen(t, st)
	home := t.TempDir()
	proj := filepath.Join(home, ".claude", "projects", "-work-demo")
	require.NoError(t, os.MkdirAll(proj, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(proj, "old.jsonl"), []byte("{}\n"), 0o600))
	runWorker(t, st, Config{Providers: map[app.Provider]Provider{app.Claude: scriptProvider{}}, Env: []string{"HOME=" + home}, WatchInterval: 50 * time.Millisecond})

	require.Eventually(t, func() bool {
		l := got.of("loading_progress")
		return len(l) > 0 && l[len(l)-1]["phase"] == "complete"
	}, 5*time.Second, 10*time.Millisecond)
	loading := got.of("loading_progress")
	require.Equal(t, map[string]any{"type": "loading_progress", "phase": "loading", "current": 1.0, "total": 1.0, "currentProject": "-work-demo"}, loading[0])
	require.Empty(t, got.of("projects_updated"), "nothing changed yet")

	// A new session of Claude, and one of Codex in its dated folders.
	require.NoError(t, os.WriteFile(filepath.Join(proj, "6f1c.jsonl"), []byte("{}\n"), 0o600))
	codex := filepath.Join(home, ".codex", "sessions", "2026", "11", "22")
	require.NoError(t, os.MkdirAll(codex, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(codex, "rollout-1.jsonl"), []byte("{}\n"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(proj, "ignored.txt"), []byte("x"), 0o600))
	// Usually one batched frame; two if a poll fell between the writes.
	var upd map[string]any
	require.Eventually(t, func() bool {
		ids := map[any]bool{}
		for _, u := range got.of("projects_updated") {
			for _, id := range u["updatedSessionIds"].([]any) {
				ids[id] = true
			}
			upd = u
		}
		return ids["6f1c"] && ids["rollout-1"]
	}, 5*time.Second, 10*time.Millisecond)
	require.Subset(t, []any{"add", "add"}, upd["changeTypes"])
	require.Subset(t, []any{"claude", "codex"}, upd["watchProviders"])
	require.Equal(t, true, upd["batched"])
	require.Equal(t, upd["updatedSessionIds"].([]any)[0], upd["updatedSessionId"])
	projects := upd["projects"].([]any)
	require.Len(t, projects, 2)
	names := map[string]float64{}
	for _, p := range projects {
		m := p.(map[string]any)
		names[m["provider"].(string)+"/"+m["name"].(string)] = m["sessionCount"].(float64)
	}
	require.Equal(t, map[string]float64{"claude/-work-demo": 2, "codex/2026": 1}, names)

	// A change to an existing file.
	n := len(got.of("projects_updated"))
	later := time.Now().Add(time.Minute)
	require.NoError(t, os.Chtimes(filepath.Join(proj, "old.jsonl"), later, later))
	require.Eventually(t, func() bool { return len(got.of("projects_updated")) > n }, 5*time.Second, 10*time.Millisecond)
	last := got.of("projects_updated")[n]
	require.Equal(t, "change", last["changeType"])
	require.Equal(t, "old", last["updatedSessionId"])
	require.Equal(t, string(app.Claude), last["watchProvider"])
}
