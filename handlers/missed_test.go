package handlers

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestPacedCheckSendsWhatTheHistoryMissed: Claude Code UI's frontend
// reads a session's history over REST, then checks the session; the
// check of its (paced) socket is sent what was stored between the two,
// whether the run goes on or ended meanwhile, without a complete or a
// session_created; a subscribe is not.
func TestPacedCheckSendsWhatTheHistoryMissed(t *testing.T) {
	g, w, c, id, ref := startRun(t, newStore(t, storetest.Mini))
	alice := token(t, "alice", false)
	readHistory := func(id string) {
		t.Helper()
		// Claude Code UI's refresh on a reconnect: the whole history.
		code, _ := httpGet(t, g.ts.URL+"/api/providers/sessions/"+id+"/messages", alice)
		require.Equal(t, http.StatusOK, code)
	}
	check := func(front *client, id string) map[string]any {
		t.Helper()
		front.send(map[string]any{"type": "check-session-status", "sessionId": id, "provider": "claude"})
		status := front.next()
		require.Equal(t, "session-status", status["type"])
		return status
	}
	texts := func(frames []map[string]any) (out []any) {
		for _, m := range frames {
			// Only what the history route gives is sent again: a status
			// or permission request after the status reply would show an
			// ended run as running.
			require.NotContains(t, []any{"complete", "session_created", "status", "session-state-changed"}, m["kind"], "%v", m)
			if m["kind"] == "text" {
				out = append(out, m["content"])
			}
		}
		return out
	}
	newRun := func() (string, store.RunRef) {
		t.Helper()
		c.send(command("go", nil))
		id := c.until(isType("session-accepted"))
		_, ref := w.take()
		return id[len(id)-1]["sessionId"].(string), ref
	}
	content := func(text string) func(map[string]any) bool {
		return func(m map[string]any) bool { return m["content"] == text }
	}

	// The run goes on: what came after the read, then live.
	w.emit(ref, app.Text("assistant", "one"))
	c.until(content("one"))
	readHistory(id)
	w.emit(ref, app.Text("assistant", "two"))
	c.until(content("two"))
	front := g.dialQuery("token=" + alice)
	require.Equal(t, true, check(front, id)["isProcessing"])
	require.Equal(t, []any{"two"}, texts(front.until(content("two"))))
	w.emit(ref, app.Text("assistant", "three"))
	require.Equal(t, []any{"three"}, texts(front.until(func(m map[string]any) bool { return m["kind"] == "text" })))

	// The run ends between the read and the check: its last answer comes,
	// not its complete, and the session is not followed.
	id, ref = newRun()
	readHistory(id)
	w.emit(ref, app.Text("assistant", "four"))
	w.finish(ref, 0)
	c.until(func(m map[string]any) bool { return m["kind"] == "complete" })
	late := g.dialQuery("token=" + alice)
	require.Equal(t, false, check(late, id)["isProcessing"])
	require.Equal(t, []any{"four"}, texts(late.until(content("four"))))
	late.expectNothing(300 * time.Millisecond)
	// Once a session: the socket's later checks have no read before them
	// (opening a session checks it first), and what it got live would
	// show twice.
	require.Equal(t, false, check(late, id)["isProcessing"])
	late.expectNothing(300 * time.Millisecond)

	// A run ended and the next began between the read and the check.
	id, ref = newRun()
	w.emit(ref, app.Text("assistant", "five"))
	readHistory(id)
	w.emit(ref, app.Text("assistant", "six"), app.NewEvent(app.KindStatus, map[string]any{"text": "Reconnecting... 1/5"}))
	w.finish(ref, 0)
	c.until(func(m map[string]any) bool { return m["kind"] == "complete" })
	c.send(command("again", map[string]any{"sessionId": id}))
	c.until(isType("session-accepted"))
	_, ref = w.take()
	w.emit(ref, app.Text("assistant", "seven"))
	c.until(content("seven"))
	third := g.dialQuery("token=" + alice)
	require.Equal(t, true, check(third, id)["isProcessing"])
	require.Equal(t, []any{"six", "seven"}, texts(third.until(content("seven"))))

	// A page of the history (opening a session: its check came first)
	// notes nothing.
	pid, pref := newRun()
	code, _ := httpGet(t, g.ts.URL+"/api/providers/sessions/"+pid+"/messages?limit=20&offset=0", alice)
	require.Equal(t, http.StatusOK, code)
	w.emit(pref, app.Text("assistant", "paged"))
	c.until(content("paged"))
	paged := g.dialQuery("token=" + alice)
	require.Equal(t, true, check(paged, pid)["isProcessing"])
	paged.expectNothing(300 * time.Millisecond)
	w.finish(pref, 0)

	// subscribe follows PROTOCOL §3.5: without lastSeq, live events only.
	readHistory(id)
	w.emit(ref, app.Text("assistant", "eight"))
	c.until(content("eight"))
	sub := g.dialQuery("token=" + alice)
	sub.send(map[string]any{"type": "subscribe", "sessions": []any{map[string]any{"sessionId": id}}})
	require.Equal(t, "session-status", sub.next()["type"])
	sub.expectNothing(300 * time.Millisecond)
	w.emit(ref, app.Text("assistant", "nine"))
	require.Equal(t, []any{"nine"}, texts(sub.until(func(m map[string]any) bool { return m["kind"] == "text" })))
}

// TestSecondCheckWhileMissedAreSent: a socket that checks a session again
// while the events its history read missed are being sent to it gets
// every event once, in order: the second check started the watch past
// them, and the first then moved it back (later events first, then the
// earlier ones again).
func TestSecondCheckWhileMissedAreSent(t *testing.T) {
	testHookMissedSent = func() { time.Sleep(400 * time.Millisecond) }
	t.Cleanup(func() { testHookMissedSent = nil })
	g, w, c, id, ref := startRun(t, newStore(t, storetest.Mini))
	alice := token(t, "alice", false)
	content := func(text string) func(map[string]any) bool {
		return func(m map[string]any) bool { return m["content"] == text }
	}
	w.emit(ref, app.Text("assistant", "one"))
	c.until(content("one"))
	code, _ := httpGet(t, g.ts.URL+"/api/providers/sessions/"+id+"/messages", alice)
	require.Equal(t, http.StatusOK, code)
	w.emit(ref, app.Text("assistant", "two"))
	c.until(content("two"))
	front := g.dialQuery("token=" + alice)
	check := func() {
		front.send(map[string]any{"type": "check-session-status", "sessionId": id, "provider": "claude"})
	}
	check()
	time.Sleep(100 * time.Millisecond)
	w.emit(ref, app.Text("assistant", "three"))
	c.until(content("three"))
	check()
	time.Sleep(100 * time.Millisecond)
	w.emit(ref, app.Text("assistant", "four"))
	var texts []any
	for _, m := range front.until(content("four")) {
		if m["kind"] == "text" {
			texts = append(texts, m["content"])
		}
	}
	require.Equal(t, []any{"two", "three", "four"}, texts)
	front.expectNothing(500 * time.Millisecond)
}
