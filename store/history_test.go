package store_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// streamHolds checks a session stream against the counts its hash keeps:
// streamLen is the number of events it holds and streamBytes the sum of
// their data, within budget unless the newest alone is over it; the newest
// event is lastSeq. It returns the stream's data size and its event count.
func streamHolds(t *testing.T, raw redis.UniversalClient, prefix, id string, budget int64) (int64, int) {
	t.Helper()
	ctx := context.Background()
	base := prefix + ":session:{" + id + "}"
	msgs, err := raw.XRange(ctx, base+":events", "-", "+").Result()
	require.NoError(t, err)
	var total int64
	for _, m := range msgs {
		data, _ := m.Values["data"].(string)
		total += int64(len(data))
	}
	h, err := raw.HMGet(ctx, base, "streamBytes", "streamLen", "lastSeq").Result()
	require.NoError(t, err)
	require.Equal(t, strconv.FormatInt(total, 10), h[0], "streamBytes is what the stream holds")
	require.Equal(t, strconv.Itoa(len(msgs)), h[1], "streamLen is what the stream holds")
	require.Equal(t, h[2], msgs[len(msgs)-1].Values["seq"], "the newest event is never trimmed")
	if len(msgs) > 1 {
		require.LessOrEqual(t, total, budget)
	}
	return total, len(msgs)
}

// TestSessionStreamByteBudget: a session stream keeps at most its byte
// budget of event data (the newest event always), whatever size its events
// and whichever script wrote them, and at most its event count plus the
// trimming slack; its counts start afresh when the stream expired.
func TestSessionStreamByteBudget(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			ctx := context.Background()
			url := storetest.Start(t, b)
			prefix := storetest.Prefix()
			const budget = 64 << 10
			st := storetest.New(t, url, store.Config{Prefix: prefix, HistoryLimit: 50, HistoryBytes: budget})
			raw := redisClient(t, url)
			sess := newSession("alice")
			res := accept(t, st, sess, true)
			run := store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}

			// Large events, alone and in batches: trimmed by bytes.
			big := strings.Repeat("x", 3000)
			for i := range 60 {
				evs := []app.Event{app.Text("assistant", big)}
				if i%7 == 0 {
					evs = append(evs, app.Text("assistant", big), app.Text("assistant", big))
				}
				_, err := st.Append(ctx, run, evs, nil)
				require.NoError(t, err)
				total, _ := streamHolds(t, raw, prefix, sess.ID, budget)
				require.LessOrEqual(t, total, int64(budget))
			}
			// Events written by the other scripts are counted too.
			require.NoError(t, st.AskPermission(ctx, run, app.PendingPermission{RequestID: "req1", ToolName: "Bash", Input: []byte(`{"command":"ls"}`)}))
			streamHolds(t, raw, prefix, sess.ID, budget)

			// One event over the budget stays alone.
			_, err := st.Append(ctx, run, []app.Event{app.Text("assistant", strings.Repeat("y", 2*budget))}, nil)
			require.NoError(t, err)
			_, n := streamHolds(t, raw, prefix, sess.ID, budget)
			require.Equal(t, 1, n)

			// Small events: trimmed by count, to the limit once past the slack.
			for i := range 300 {
				_, err := st.Append(ctx, run, []app.Event{app.Text("assistant", fmt.Sprint(i))}, nil)
				require.NoError(t, err)
			}
			_, n = streamHolds(t, raw, prefix, sess.ID, budget)
			require.GreaterOrEqual(t, n, 50)
			require.LessOrEqual(t, n, 50+64)

			// Counts edited by hand are put right at the next trim.
			base := prefix + ":session:{" + sess.ID + "}"
			require.NoError(t, raw.HSet(ctx, base, "streamBytes", 1<<40, "streamLen", 3).Err())
			_, err = st.Append(ctx, run, []app.Event{app.Text("assistant", "z")}, nil)
			require.NoError(t, err)
			streamHolds(t, raw, prefix, sess.ID, budget)

			// The stream expires (deleted here, the counts left behind): the
			// next run counts afresh.
			_, err = st.Complete(ctx, run, app.Outcome{})
			require.NoError(t, err)
			require.NoError(t, raw.Del(ctx, base+":events").Err())
			res = accept(t, st, sess, false)
			run = store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}
			_, err = st.Append(ctx, run, []app.Event{app.Text("assistant", "after")}, nil)
			require.NoError(t, err)
			_, n = streamHolds(t, raw, prefix, sess.ID, budget)
			require.Equal(t, 2, n, "session-state-changed and the text")

			// A stream written before its counts were kept is counted at
			// its next run.
			_, err = st.Complete(ctx, run, app.Outcome{})
			require.NoError(t, err)
			require.NoError(t, raw.HDel(ctx, base, "streamLen", "streamBytes").Err())
			accept(t, st, sess, false)
			_, n = streamHolds(t, raw, prefix, sess.ID, budget)
			require.Equal(t, 5, n, "two runs' events: running, text, ended, complete, running")
		})
	}
}

// TestSessionStreamMemoryIsBounded: on a real redis-server, a session that
// prints 16 MB of output holds about its byte budget in memory.
func TestSessionStreamMemoryIsBounded(t *testing.T) {
	ctx := context.Background()
	url := storetest.Redis(t)
	prefix := storetest.Prefix()
	const budget = 1 << 20
	st := storetest.New(t, url, store.Config{Prefix: prefix, HistoryBytes: budget})
	raw := redisClient(t, url)
	sess := newSession("alice")
	res := accept(t, st, sess, true)
	run := store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}
	chunk := strings.Repeat("z", 64<<10)
	for range 256 {
		_, err := st.Append(ctx, run, []app.Event{app.Text("assistant", chunk)}, nil)
		require.NoError(t, err)
	}
	base := prefix + ":session:{" + sess.ID + "}"
	used, err := raw.MemoryUsage(ctx, base+":events").Result()
	require.NoError(t, err)
	t.Logf("16 MiB printed, the stream holds %d KiB (budget %d KiB)", used>>10, budget>>10)
	require.Less(t, used, int64(budget+budget/2))
}
