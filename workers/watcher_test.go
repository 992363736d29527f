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

// broadcasts collects the broadcast frames of a store, with their users.
type broadcasts struct {
	mu     sync.Mutex
	frames []map[string]any
}

func listen(t *testing.T, st *store.Store) *broadcasts {
	b := &broadcasts{}
	sub := st.NewSubscriber(store.SubscriberHandlers{Broadcast: func(payload []byte) {
		user, frame, err := store.ParseBroadcast(payload)
		var m map[string]any
		if err == nil && json.Unmarshal(frame, &m) == nil {
			m["_user"] = user
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

// ids returns the session ids that frames of type typ told user about.
func (b *broadcasts) ids(user, typ string) map[string]bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[string]bool{}
	for _, f := range b.frames {
		if f["type"] == typ && f["_user"] == user {
			for _, id := range f["updatedSessionIds"].([]any) {
				out[id.(string)] = true
			}
		}
	}
	return out
}

func (b *broadcasts) types() map[any]bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[any]bool{}
	for _, f := range b.frames {
		out[f["type"]] = true
	}
	return out
}

// TestProjectsWatcher: a change to the session file of a conversation
// agentgate runs is told to its owner only, with agentgate's session id; a
// file nobody can be named for is not announced; nothing the watcher sends
// is a projects_updated or loading_progress, which Claude Code UI's
// frontend would take for its project list.
func TestProjectsWatcher(t *testing.T) {
	st := storetest.New(t, storetest.Redis(t))
	got := listen(t, st)
	home := t.TempDir()
	proj := filepath.Join(home, ".claude", "projects", "-work-demo")
	require.NoError(t, os.MkdirAll(proj, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(proj, "old.jsonl"), []byte("{}\n"), 0o600))
	h := runWorker(t, st, Config{Providers: map[app.Provider]Provider{app.Claude: scriptProvider{}}, Env: []string{"HOME=" + home}, WatchInterval: 50 * time.Millisecond})
	alice, _ := h.submit("exit 0")
	bob := app.Session{ID: app.NewID(), Owner: "bob", Provider: app.Claude, ProjectPath: h.dir}
	_, err := st.Accept(context.Background(), &store.AcceptRequest{Session: bob, New: true,
		Job: app.Job{SessionID: bob.ID, Owner: "bob", Provider: app.Claude, Command: "exit 0", ProjectPath: h.dir, NewSession: true}})
	require.NoError(t, err)
	h.waitDone(alice.ID)
	h.waitDone(bob.ID)

	for _, id := range []string{alice.ID, bob.ID, "unknown"} {
		require.NoError(t, os.WriteFile(filepath.Join(proj, id+".jsonl"), []byte("{}\n"), 0o600))
	}
	require.Eventually(t, func() bool {
		return got.ids("alice", "sessions_updated")[alice.ID] && got.ids("bob", "sessions_updated")[bob.ID]
	}, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, map[string]bool{alice.ID: true}, got.ids("alice", "sessions_updated"), "alice hears of her session only")
	require.Equal(t, map[string]bool{bob.ID: true}, got.ids("bob", "sessions_updated"))

	// A change to an existing file.
	later := time.Now().Add(time.Minute)
	require.NoError(t, os.Chtimes(filepath.Join(proj, alice.ID+".jsonl"), later, later))
	require.Eventually(t, func() bool {
		got.mu.Lock()
		defer got.mu.Unlock()
		for _, f := range got.frames {
			if f["_user"] == "alice" && f["changeType"] == "change" && f["updatedSessionId"] == alice.ID {
				require.Equal(t, string(app.Claude), f["watchProvider"])
				return true
			}
		}
		return false
	}, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, map[any]bool{"sessions_updated": true}, got.types())
}

func TestSessionIDOf(t *testing.T) {
	for path, want := range map[string]string{
		"/h/.claude/projects/-p/6f1c2d3e-aaaa-4bbb-8ccc-123456789abc.jsonl":                                    "6f1c2d3e-aaaa-4bbb-8ccc-123456789abc",
		"/h/.codex/sessions/2026/11/22/rollout-2026-11-22T10-00-00-0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b.jsonl": "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
		"/h/.gemini/tmp/abc/chats/session-1.json":                                                              "session-1",
	} {
		require.Equal(t, want, sessionIDOf(path), path)
	}
}
