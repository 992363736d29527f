package main

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestBroadcastCommand: `agentgate broadcast --user NAME` publishes the
// frame on stdin for that user, and refuses a frame that is not one a
// projects service may send.
func TestBroadcastCommand(t *testing.T) {
	url := storetest.Redis(t)
	prefix := storetest.Prefix()
	st := storetest.New(t, url, store.Config{Prefix: prefix})
	var mu sync.Mutex
	var got []string
	sub := st.NewSubscriber(store.SubscriberHandlers{Broadcast: func(payload []byte) {
		user, frame, err := store.ParseBroadcast(payload)
		require.NoError(t, err)
		mu.Lock()
		got = append(got, user+" "+string(frame))
		mu.Unlock()
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = sub.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	time.Sleep(100 * time.Millisecond) // the broadcast channel is subscribed at start

	flags := []string{"--redis", url, "--key-prefix", prefix}
	broadcast := func(stdin string, args ...string) error {
		return runBroadcast(context.Background(), append(args, flags...), strings.NewReader(stdin), io.Discard)
	}
	require.ErrorContains(t, broadcast(`{"type":"projects_updated"}`), "invalid user name")
	require.ErrorContains(t, broadcast(`{"kind":"complete"}`, "--user", "alice"), "no kind")
	require.ErrorContains(t, broadcast(`{"type":"projects_updated"}`, "--user", "alice", "extra"), "unexpected argument")
	require.NoError(t, broadcast("{\"type\":\"projects_updated\",\"projects\":[]}\n", "--user", "alice"))
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 1
	}, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, `alice {"type":"projects_updated","projects":[]}`, got[0])
}
