package store_test

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestLargeEvents: an event over 1 MiB is stored whole and published as
// its seq alone (`{"seq":N}`), so that a subscriber's connection, which
// Redis drops past 32 MB of output, carries no large frames; an event
// whose encoding passes app.MaxEventBytes (a 3 MiB line of control bytes
// encodes to 18 MiB) is stored as an error row saying it was dropped; and
// markup is not HTML-escaped (a line of 16 MiB of `<` encoded to 96 MiB).
func TestLargeEvents(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		var mu sync.Mutex
		var frames [][]byte
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		sub := st.NewSubscriber(store.SubscriberHandlers{Event: func(_ string, frame []byte) {
			mu.Lock()
			frames = append(frames, frame)
			mu.Unlock()
		}})
		go func() { _ = sub.Run(ctx) }()
		sess := newSession("alice")
		require.NoError(t, sub.Subscribe(ctx, sess.ID))
		res := accept(t, st, sess, true)
		run := store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}

		markup := strings.Repeat("<a href='x'>&</a>", 1<<16) // 1.06 MiB
		control := strings.Repeat("\x01", 3<<20)             // 18 MiB once escaped
		last, err := st.Append(ctx, run, []app.Event{app.Text("assistant", "small"), app.Text("assistant", markup), app.Text("assistant", control)}, nil)
		require.NoError(t, err)

		stored, err := st.Events(ctx, sess.ID, last-3, 10)
		require.NoError(t, err)
		require.Len(t, stored, 3)
		require.Contains(t, string(stored[1].Data), markup, "stored whole, not HTML-escaped")
		require.Less(t, len(stored[1].Data), len(markup)+1024)
		require.Equal(t, string(app.KindError), stored[2].Kind)
		require.Contains(t, string(stored[2].Data), "An output event over 16 MiB was dropped.")

		var got [][]byte
		require.Eventually(t, func() bool {
			mu.Lock()
			defer mu.Unlock()
			got = nil
			for _, f := range frames {
				if seq, ok := app.FrameSeq(f); ok && seq > last-3 {
					got = append(got, f)
				} else if seq, ok := app.StoredOnlySeq(f); ok && seq > last-3 {
					got = append(got, f)
				}
			}
			return len(got) == 3
		}, 10*time.Second, 10*time.Millisecond)
		require.Equal(t, stored[0].Data, got[0], "a small event is published as stored")
		seq, ok := app.StoredOnlySeq(got[1])
		require.True(t, ok, "a large event is published as its seq: %.80s", got[1])
		require.Equal(t, last-1, seq)
		require.Equal(t, stored[2].Data, got[2])
	})
}

// TestEventsWithin: a bounded read returns events in order until their
// data passes the bound (one at least, however large), reads on past a
// first batch of small ones, and a reader that goes on from its last seq
// gets every event once.
func TestEventsWithin(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		sess, run := newRun(t, st, "alice")
		var evs []app.Event
		for i := range 200 {
			size := 100
			if i%50 == 49 {
				size = 300 << 10
			}
			evs = append(evs, app.Text("assistant", strings.Repeat("x", size)))
		}
		last, err := st.Append(ctx, run, evs, nil)
		require.NoError(t, err)

		got, err := st.EventsWithin(ctx, sess.ID, 0, 1000, 1)
		require.NoError(t, err)
		require.Len(t, got, 1, "one event at least")

		var after int64
		reads := 0
		for after < last {
			got, err := st.EventsWithin(ctx, sess.ID, after, 500, 256<<10)
			require.NoError(t, err)
			require.NotEmpty(t, got)
			size := 0
			for _, ev := range got {
				require.Equal(t, after+1, ev.Seq)
				after = ev.Seq
				size += len(ev.Data)
			}
			require.True(t, len(got) == 1 || size <= 256<<10, "%d events, %d bytes", len(got), size)
			reads++
		}
		require.Equal(t, last, after)
		require.GreaterOrEqual(t, reads, 5, "the large events each end a read")
	})
}

// TestEventsWithinFetchesWhatItKeeps: small events followed by large ones
// (a chat, then a tool's long outputs) are not fetched whole to keep the
// few that fit: a read of a MiB allocates about a MiB. Sizing reads by the
// average of the first events fetched about 400 events of 300 KiB here.
func TestEventsWithinFetchesWhatItKeeps(t *testing.T) {
	st := storetest.New(t, storetest.Start(t, storetest.Real))
	ctx := context.Background()
	sess, run := newRun(t, st, "alice")
	var evs []app.Event
	for range 4 {
		evs = append(evs, app.Text("assistant", "hi"))
	}
	for range 100 {
		evs = append(evs, app.Text("assistant", strings.Repeat("x", 300<<10)))
	}
	_, err := st.Append(ctx, run, evs, nil)
	require.NoError(t, err)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	got, err := st.EventsWithin(ctx, sess.ID, 0, 500, 1<<20)
	require.NoError(t, err)
	runtime.ReadMemStats(&after)
	size := 0
	for _, ev := range got {
		size += len(ev.Data)
	}
	require.LessOrEqual(t, size, 1<<20)
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(8<<20), "allocated for %d events, %d bytes", len(got), size)
}
