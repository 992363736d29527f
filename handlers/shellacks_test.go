package handlers

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestAcksBatchedPerWorker: fifty terminals of one worker written while
// its acks are on their way cost its inbox one control, not fifty, and each carries every
// terminal's newest seq; a later write is acked again.
func TestAcksBatchedPerWorker(t *testing.T) {
	st := newStore(t, storetest.Mini)
	tm := &terminals{st: st, log: slog.New(slog.DiscardHandler)}
	ctx := context.Background()
	feeds := make([]*feed, 50)
	mark := func(f *feed, seq int64) {
		f.mu.Lock()
		f.term.written = seq
		tm.acks.mark("w1", f, func() { tm.sendAcks("w1") })
		f.mu.Unlock()
	}
	// The first mark starts the worker's acking goroutine, which sends what
	// was marked when it runs: here it is held back until all fifty are
	// marked (on a loaded machine it ran between marks and sent a third
	// control; batching is what marks made meanwhile share).
	release := make(chan struct{})
	tm.acks.mark("w1", &feed{term: &termFeed{}}, func() { <-release; tm.sendAcks("w1") })
	for i := range feeds {
		feeds[i] = &feed{key: fmt.Sprintf("term-%d", i), gen: 2, term: &termFeed{worker: "w1"}}
		mark(feeds[i], int64(10+i))
	}
	close(release)
	after := "0"
	read := func(want map[string]int64) int {
		t.Helper()
		got := map[string]int64{}
		controls := 0
		deadline := time.Now().Add(10 * time.Second)
		for len(got) < len(want) && time.Now().Before(deadline) {
			entries, err := st.PeekInbox(ctx, "w1", after, 100*time.Millisecond)
			require.NoError(t, err)
			for _, e := range entries {
				after = e.StreamID
				require.Equal(t, store.ControlShellAcks, e.Control.Type)
				var acks []store.ShellAck
				require.NoError(t, json.Unmarshal(e.Control.Data, &acks))
				controls++
				for _, a := range acks {
					require.Equal(t, int64(2), a.Gen)
					got[a.Shell] = a.Seq
				}
			}
		}
		require.Equal(t, want, got)
		return controls
	}
	want := map[string]int64{}
	for i, f := range feeds {
		want[f.key] = int64(10 + i)
	}
	require.Equal(t, 1, read(want), "one control for the fifty terminals marked meanwhile")

	mark(feeds[7], 99)
	require.Equal(t, 1, read(map[string]int64{"term-7": 99}))
	// Nothing newer: nothing more is sent.
	entries, err := st.PeekInbox(ctx, "w1", after, 50*time.Millisecond)
	require.NoError(t, err)
	require.Empty(t, entries)
}

// TestOldGenerationSeqNotWritten: after a terminal restarts, frames of the
// old generation still queued on a socket are written with their old seqs
// (4000 here), and a client acks them; neither counts for the new
// generation, whose worker would otherwise read past its window, or whose
// acks would wait until its output passed 4000.
func TestOldGenerationSeqNotWritten(t *testing.T) {
	tm := &terminals{}
	f := &feed{gen: 2, term: &termFeed{}}
	f.maxSeen = 3 // the new generation's chunks published so far
	tm.writtenLocked(f, 4000)
	require.Zero(t, f.term.written)
	tm.writtenLocked(f, 3)
	require.EqualValues(t, 3, f.term.written)
}
