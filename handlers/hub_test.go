package handlers

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
)

// TestResyncDuringCatchUpReadsAgain: the pub/sub connection drops and comes
// back while a socket's catch-up reads the stream, and an event published
// meanwhile reached no gateway. The catch-up's read that found nothing
// newer must not make the socket live: the event would wait for the next
// one to be noticed (for good, were it the run's complete).
func TestResyncDuringCatchUpReadsAgain(t *testing.T) {
	st, rdb := realStore(t)
	g := startGateway(t, st)
	ctx := context.Background()

	// The hook runs at the catch-up's read that finds nothing newer,
	// once armed: it drops the pub/sub connection, has the worker append
	// an event nobody hears, and returns once the subscription is back.
	var (
		mu     sync.Mutex
		armed  func()
		chat   = g.srv.hub.chat
		stored = chat.read
	)
	chat.read = func(ctx context.Context, id string, after int64, n int) ([]storedFrame, error) {
		frames, err := stored(ctx, id, after, n)
		mu.Lock()
		hook := armed
		if err == nil && len(frames) == 0 && hook != nil {
			armed = nil
		}
		mu.Unlock()
		if err == nil && len(frames) == 0 && hook != nil {
			hook()
		}
		return frames, err
	}

	w := newFakeWorker(t, st)
	c := g.dial("alice")
	c.send(command("go", nil))
	id := c.next()["sessionId"].(string)
	_, ref := w.take()
	w.emit(ref, app.Text("assistant", "one"))
	c.until(func(m map[string]any) bool { return m["content"] == "one" })

	// Another watch of the session here would read the stream at the
	// resync and find the event for the feed: the socket is alone.
	c.send(map[string]any{"type": "unsubscribe", "sessionId": id})
	require.Eventually(t, func() bool {
		f := g.srv.hub.feed(chat, id)
		return f == nil
	}, 10*time.Second, 5*time.Millisecond)
	sess, err := st.Session(ctx, id)
	require.NoError(t, err)
	missed := sess.LastSeq + 1
	mu.Lock()
	armed = func() {
		// On the catch-up's goroutine: failures are reported, not fatal.
		if err := rdb.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
			t.Errorf("kill pub/sub: %v", err)
		}
		if _, err := st.Append(ctx, ref, []app.Event{app.Text("assistant", "missed")}, nil); err != nil {
			t.Errorf("append: %v", err)
		}
		// Back once the gateway's subscriber was told so: resync runs
		// then, under the feed's lock.
		channel := st.Prefix() + ":session:{" + id + "}:live"
		f := g.srv.hub.feed(chat, id)
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			n, err := rdb.PubSubNumSub(ctx, channel).Result()
			if err != nil || n[channel] == 0 {
				continue
			}
			f.mu.Lock()
			resynced := false
			for w := range f.watches {
				resynced = resynced || w.resynced
			}
			f.mu.Unlock()
			if resynced {
				return
			}
		}
		t.Errorf("the subscription did not come back")
	}
	mu.Unlock()

	// Another socket of alice's catches up from the start.
	r := g.dial("alice")
	r.send(map[string]any{"type": "check-session-status", "sessionId": id, "lastSeq": 0})
	got := r.until(func(m map[string]any) bool { return m["content"] == "missed" })
	require.EqualValues(t, missed, got[len(got)-1]["seq"], "the event published while pub/sub was away")
}

// TestChatSocketsToldOfAFlushedRedis: Redis loses a session's events
// without dropping the gateway's pub/sub connection (FLUSHALL): the run's
// worker can write nothing more, no complete comes, and a socket that got
// events Redis no longer holds is closed with 1012 within a check, so that
// its client reconnects and resumes (recovered:false), instead of waiting
// for good.
func TestChatSocketsToldOfAFlushedRedis(t *testing.T) {
	st, rdb := realStore(t)
	_, w, c, _, ref := startRun(t, st)
	w.emit(ref, app.Text("assistant", "one"))
	c.until(func(m map[string]any) bool { return m["content"] == "one" })
	require.NoError(t, rdb.FlushAll(context.Background()).Err())
	require.Equal(t, 1012, c.closeCode())
}
