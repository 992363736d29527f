package storetest

import (
	"context"
	"sync"
	"testing"

	"github.com/agentgate/agentgate/store"
)

// ShellMessages subscribes to the channel of terminal key on st and returns
// a function that lists the messages received so far, decoded, in order.
func ShellMessages(t testing.TB, st *store.Store, key string) func() []store.ShellLive {
	t.Helper()
	var mu sync.Mutex
	var got []store.ShellLive
	sub := st.NewSubscriber(store.SubscriberHandlers{})
	sub.HandleShell(store.ShellHandlers{Message: func(_ string, m store.ShellLive) {
		mu.Lock()
		got = append(got, m)
		mu.Unlock()
	}})
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = sub.Run(ctx) }()
	t.Cleanup(func() { stop(); <-done })
	if err := sub.SubscribeShell(context.Background(), key); err != nil {
		t.Fatalf("subscribe to terminal %s: %v", key, err)
	}
	return func() []store.ShellLive {
		mu.Lock()
		defer mu.Unlock()
		return append([]store.ShellLive(nil), got...)
	}
}
