package handlers

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestPacedCheckReplaysTheRunsLatestEvents: Claude Code UI's frontend
// reads a session's history, then checks it; a paced socket's first
// check of a running session replays the run's events of the last few
// seconds, so that one stored between the two is not lost. Nothing of an
// earlier run (its complete would end the indicator) and not the run's
// session_created (which would navigate the page) is replayed.
func TestPacedCheckReplaysTheRunsLatestEvents(t *testing.T) {
	g, w, c, id, ref := startRun(t, newStore(t, storetest.Mini))
	w.emit(ref, app.Text("assistant", "one"))
	w.finish(ref, 0)
	c.until(func(m map[string]any) bool { return m["kind"] == "complete" })

	c.send(command("second", map[string]any{"sessionId": id}))
	c.until(isType("session-accepted"))
	_, ref = w.take()
	w.emit(ref, app.Text("assistant", "two")) // after the frontend's history read

	front := g.dialQuery("token=" + token(t, "alice", false))
	front.send(map[string]any{"type": "check-session-status", "sessionId": id, "provider": "claude"})
	status := front.next()
	require.Equal(t, "session-status", status["type"])
	require.Equal(t, true, status["isProcessing"])
	got := front.until(func(m map[string]any) bool { return m["content"] == "two" })
	for _, m := range got[1:] {
		require.NotEqual(t, "complete", m["kind"], "an earlier run's end: %v", got)
		require.NotEqual(t, "session_created", m["kind"])
		require.NotEqual(t, "one", m["content"])
	}
	w.emit(ref, app.Text("assistant", "three"))
	require.Equal(t, "three", front.until(func(m map[string]any) bool { return m["kind"] == "text" })[0]["content"])

	// A check of a socket that follows the session already keeps its
	// place; one that sends a lastSeq is answered from it, as ever.
	front.send(map[string]any{"type": "check-session-status", "sessionId": id, "provider": "claude"})
	require.Equal(t, "session-status", front.next()["type"])
	front.expectNothing(300 * time.Millisecond)
}

// TestRecentStart: only the run's own events of the window are replayed.
func TestRecentStart(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g, w, c, id, ref := startRun(t, st)
	w.emit(ref, app.Text("assistant", "one"), app.Text("assistant", "two"))
	c.until(func(m map[string]any) bool { return m["content"] == "two" })
	ctx := context.Background()
	sess, err := st.Session(ctx, id)
	require.NoError(t, err)

	evs, err := st.Events(ctx, id, 0, 100)
	require.NoError(t, err)
	var created int64
	for _, e := range evs {
		if e.Kind == string(app.KindSessionCreated) {
			created = e.Seq
		}
	}
	require.NotZero(t, created)
	require.Equal(t, created+1, g.srv.recentStart(ctx, sess, time.Now()), "from after session_created")
	require.Equal(t, sess.LastSeq+1, g.srv.recentStart(ctx, sess, time.Now().Add(recentWindow+time.Second)), "none is recent")
	other := sess
	other.RunID = "another run"
	require.Equal(t, sess.LastSeq+1, g.srv.recentStart(ctx, other, time.Now()), "none of this run")
}

// FuzzFrameRunAndTime: any frame is read without a panic, and a stored
// frame's envelope is read back.
func FuzzFrameRunAndTime(f *testing.F) {
	f.Add([]byte(`{"seq":3,"runId":"17966","id":"x","sessionId":"s","timestamp":"2026-12-07T22:21:55.634768861Z","kind":"text"}`))
	f.Add([]byte(`{"seq":3,"runId":"a\"b","timestamp":"x"}`))
	f.Add([]byte(`{"runId":"`))
	f.Fuzz(func(t *testing.T, frame []byte) {
		runID, at, ok := frameRunAndTime(frame)
		if ok {
			require.NotContains(t, runID, `"`)
			require.False(t, at.IsZero())
		}
	})
}
