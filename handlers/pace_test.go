package handlers

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

func TestMustBeSeen(t *testing.T) {
	cases := []struct {
		frame string
		want  bool
	}{
		{`{"seq":1,"kind":"session-state-changed","state":"running"}`, false},
		{`{"seq":2,"kind":"session_created","newSessionId":"s"}`, true},
		{`{"seq":3,"kind":"text","content":"hi"}`, true},
		{`{"seq":4,"kind":"status","text":"token_budget"}`, true},
		{`{"seq":5,"kind":"complete"}`, true},
		{`{"type":"session-accepted"}`, false},
		{`{"type":"session-busy"}`, false},
		{`{"type":"session-status","isProcessing":true}`, true},
		{`{"type":"pending-permissions-response","data":[]}`, true},
		{`{"type":"projects_updated","projects":[]}`, true},
		{`{"type":"error","error":"x"}`, true},
		{`not json`, true},
	}
	for _, tc := range cases {
		require.Equal(t, tc.want, mustBeSeen([]byte(tc.frame)), tc.frame)
	}
}

// timedFrame is a frame and when the test client read it.
type timedFrame struct {
	m  map[string]any
	at time.Time
}

// frameReader returns a function that reads the next frame of frames, at
// most 10 s away.
func frameReader(t *testing.T, frames <-chan timedFrame) func() map[string]any {
	return func() map[string]any {
		t.Helper()
		select {
		case f, ok := <-frames:
			require.True(t, ok, "socket closed")
			return f.m
		case <-time.After(10 * time.Second):
			t.Fatal("no frame within 10s")
		}
		return nil
	}
}

// frameSender returns a function that sends v on ws as JSON.
func frameSender(t *testing.T, ws *websocket.Conn) func(v any) {
	return func(v any) {
		t.Helper()
		b, err := json.Marshal(v)
		require.NoError(t, err)
		require.NoError(t, ws.WriteMessage(websocket.TextMessage, b))
	}
}

// dialTimed opens a /ws socket with the given query and returns a channel of
// the frames it reads, each with its arrival time.
func dialTimed(t *testing.T, g *gateway, query string) (*websocket.Conn, <-chan timedFrame) {
	t.Helper()
	url := "ws" + strings.TrimPrefix(g.ts.URL, "http") + "/ws?" + query
	ws, resp, err := websocket.DefaultDialer.Dial(url, nil)
	require.NoError(t, err)
	resp.Body.Close()
	t.Cleanup(func() { ws.Close() })
	out := make(chan timedFrame, 10000)
	go func() {
		defer close(out)
		for {
			_, data, err := ws.ReadMessage()
			if err != nil {
				return
			}
			f := timedFrame{at: time.Now()}
			if json.Unmarshal(data, &f.m) != nil {
				return
			}
			out <- f
		}
	}()
	return ws, out
}

// readUntilComplete reads frames until a complete.
func readUntilComplete(t *testing.T, ch <-chan timedFrame) []timedFrame {
	t.Helper()
	var got []timedFrame
	for {
		select {
		case f, ok := <-ch:
			require.True(t, ok, "socket closed before complete")
			got = append(got, f)
			if f.m["kind"] == "complete" {
				return got
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("no complete within 30s; got %d frames", len(got))
		}
	}
}

func name(m map[string]any) string {
	if k, ok := m["kind"].(string); ok {
		return k
	}
	return fmt.Sprint(m["type"])
}

// TestPacedDelivery: a socket that has not said it uses seq gets a quiet
// time after every frame Claude Code UI's frontend acts on, so that a
// client that handles only the latest of frames arriving together still
// sees each of them; the frames it ignores (session-accepted,
// session-state-changed) are overtaken at once. A socket that opened with
// delivery=immediate, or sent a lastSeq, gets every frame at once.
func TestPacedDelivery(t *testing.T) {
	const interval = 40 * time.Millisecond
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st, func(c *Config) { c.PaceInterval = interval })
	w := newFakeWorker(t, st)
	ws, frames := dialTimed(t, g, "token="+token(t, "alice", false))
	b, err := json.Marshal(command("hello", nil))
	require.NoError(t, err)
	require.NoError(t, ws.WriteMessage(websocket.TextMessage, b))
	_, ref := w.take()
	// One batch, as a worker appends the lines it has read.
	w.emit(ref, app.Text("assistant", "one"), app.Text("assistant", "two"), app.Text("assistant", "three"))
	w.finish(ref, 0)

	got := readUntilComplete(t, frames)
	var names []string
	for _, f := range got {
		names = append(names, name(f.m))
	}
	require.Equal(t, []string{"session-accepted", "session-state-changed", "session_created",
		"text", "text", "text", "session-state-changed", "complete"}, names)
	for i := 0; i+1 < len(got); i++ {
		gap := got[i+1].at.Sub(got[i].at)
		t.Logf("%-22s +%v", names[i], gap)
		if mustBeSeenMap(got[i].m) {
			// Timers never fire early; the slack is for the reads.
			require.GreaterOrEqual(t, gap, interval/2, "%s is followed by %s after %v", names[i], names[i+1], gap)
		}
	}

	// A socket that sends a lastSeq handles every frame: no pacing.
	seqWS, seqFrames := dialTimed(t, g, "token="+token(t, "alice", false))
	id := got[2].m["newSessionId"].(string)
	b, _ = json.Marshal(map[string]any{"type": "check-session-status", "sessionId": id, "lastSeq": 0})
	require.NoError(t, seqWS.WriteMessage(websocket.TextMessage, b))
	replayed := readUntilComplete(t, seqFrames)
	require.Len(t, replayed, 8, "session-status and the 7 stored events")
	took := replayed[len(replayed)-1].at.Sub(replayed[0].at)
	require.Less(t, took, 4*interval, "a replay of 7 events to a seq client is not paced (took %v)", took)
}

func mustBeSeenMap(m map[string]any) bool {
	b, _ := json.Marshal(m)
	return mustBeSeen(b)
}

// TestPacedBurstIsBounded: a burst larger than the socket's queue reaches a
// paced socket whole and in order: what does not fit is read back from the
// session's stream at the socket's pace, as for any slow socket, so the
// gateway holds no more than the queue.
func TestPacedBurstIsBounded(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st, func(c *Config) { c.PaceInterval = 2 * time.Millisecond; c.QueueSize = 16 })
	w := newFakeWorker(t, st)
	ws, frames := dialTimed(t, g, "token="+token(t, "alice", false))
	b, _ := json.Marshal(command("hello", nil))
	require.NoError(t, ws.WriteMessage(websocket.TextMessage, b))
	_, ref := w.take()
	const n = 300
	for i := 0; i < n; i += 50 {
		var evs []app.Event
		for j := i; j < i+50; j++ {
			evs = append(evs, app.Text("assistant", fmt.Sprint(j)))
		}
		w.emit(ref, evs...)
	}
	w.finish(ref, 0)
	got := readUntilComplete(t, frames)
	require.Len(t, got, n+5)
	seq := 0.0
	for _, f := range got[1:] {
		require.Equal(t, seq+1, f.m["seq"], "in order, none lost")
		seq = f.m["seq"].(float64)
	}
}

// TestDeliveryParameter: an unknown delivery value is refused before the
// upgrade.
func TestDeliveryParameter(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st)
	url := "ws" + strings.TrimPrefix(g.ts.URL, "http") + "/ws?delivery=fast&token=" + token(t, "alice", false)
	_, resp, err := websocket.DefaultDialer.Dial(url, nil)
	require.Error(t, err)
	require.Equal(t, 400, resp.StatusCode)
	resp.Body.Close()
}

// TestPacedRefusalsEndTheCommand: Claude Code UI's frontend drops kind-less
// frames but a few types, and keeps its composer busy until a complete, so
// a command refused before any run (no worker, a path outside the
// workspaces, invalid options, a per-user limit, a field of the wrong type,
// a provider agentgate does not run) left it spinning. A paced socket gets,
// after the error reply, an error row with the reason and a
// complete{success:false, exitCode:1}, for the session id the command
// carried (none for a new chat); an abort that finds no run gets the
// complete{aborted:true, exitCode:1} the reference sends. An immediate
// socket gets the error reply alone, as before.
func TestPacedRefusalsEndTheCommand(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st, func(c *Config) { c.PaceInterval = 2 * time.Millisecond; c.MaxRunsPerUser = 1 })
	ws, frames := dialTimed(t, g, "token="+token(t, "alice", false))
	next, send := frameReader(t, frames), frameSender(t, ws)
	quiet := func() {
		t.Helper()
		select {
		case f := <-frames:
			t.Fatalf("unexpected frame %v", f.m)
		case <-time.After(200 * time.Millisecond):
		}
	}
	// refused reads the error reply, then the row and the complete.
	refused := func(sessionID, provider, want string) {
		t.Helper()
		m := next()
		require.Equal(t, "error", m["type"], "%v", m)
		require.Contains(t, m["error"], want)
		text := m["error"]
		row := next()
		require.Equal(t, "error", row["kind"], "%v", row)
		require.Equal(t, text, row["content"])
		require.Equal(t, sessionID, row["sessionId"])
		require.Equal(t, provider, row["provider"])
		done := next()
		require.Equal(t, "complete", done["kind"], "%v", done)
		require.Equal(t, sessionID, done["sessionId"])
		require.Equal(t, sessionID, done["actualSessionId"])
		require.Equal(t, false, done["success"])
		require.Equal(t, float64(1), done["exitCode"])
		require.Equal(t, false, done["aborted"])
		require.NotContains(t, done, "seq", "a reply, not a session event")
		quiet()
	}

	send(command("hi", nil)) // a new chat, no worker alive
	refused("", "claude", "No worker available")

	newFakeWorker(t, st)
	outside := map[string]any{"sessionId": "s-1", "projectPath": "/etc"}
	send(command("hi", map[string]any{"options": outside}))
	refused("s-1", "claude", "Invalid project path")
	send(command("hi", map[string]any{"options": map[string]any{"sessionId": "s-1", "permissionMode": "yolo"}}))
	refused("s-1", "claude", "Invalid permissionMode")
	send(command("hi", map[string]any{"options": map[string]any{"sessionId": "s-1", "model": 5}}))
	refused("s-1", "claude", "Invalid field options.model")
	send(map[string]any{"type": "opencode-command", "command": "hi", "sessionId": "s-2", "options": map[string]any{"sessionId": "s-2"}})
	refused("s-2", "opencode", "Unknown message type: opencode-command")

	send(command("first", nil))
	accepted := next()
	require.Equal(t, "session-accepted", accepted["type"])
	for m := next(); m["kind"] != "session_created"; m = next() {
		require.NotEqual(t, "complete", m["kind"], "the first run goes on")
	}
	send(command("second", nil))
	refused("", "claude", "Limit reached")

	// A command refused for the running session gets its row and no
	// complete: the run's own complete ends it, once.
	running := accepted["sessionId"].(string)
	send(command("again", map[string]any{"options": map[string]any{"sessionId": running, "permissionMode": "yolo"}}))
	m := next()
	require.Contains(t, m["error"], "Invalid permissionMode", "%v", m)
	row := next()
	require.Equal(t, "error", row["kind"], "%v", row)
	require.Equal(t, running, row["sessionId"])
	quiet()

	send(map[string]any{"type": "abort-session", "sessionId": "s-3"})
	m = next()
	require.Equal(t, "No active run", m["error"], "%v", m)
	done := next()
	require.Equal(t, "complete", done["kind"], "%v", done)
	require.Equal(t, "s-3", done["sessionId"])
	require.Equal(t, "claude", done["provider"])
	require.Equal(t, true, done["aborted"])
	require.Equal(t, false, done["success"])
	require.Equal(t, float64(1), done["exitCode"])
	quiet()

	// Other refusals need nothing more.
	send(map[string]any{"type": "fly-to-the-moon"})
	require.Equal(t, "Unknown message type: fly-to-the-moon", next()["error"])
	quiet()

	// An immediate socket gets the error reply alone.
	c := g.dial("alice")
	c.send(command("hi", map[string]any{"options": outside}))
	require.Contains(t, c.next()["error"], "Invalid project path")
	c.send(map[string]any{"type": "abort-session", "sessionId": "s-3"})
	require.Equal(t, "No active run", c.next()["error"])
	c.expectNothing(200 * time.Millisecond)
}

// TestUnpacedReferenceClientGetsRefusalsEnded: with pacing off
// (--pace-interval 0), a socket without ?delivery=immediate is still taken
// for Claude Code UI's frontend until it sends a lastSeq, and a refused
// command still ends with a complete; after a lastSeq it gets the error
// reply alone.
func TestUnpacedReferenceClientGetsRefusalsEnded(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st, func(c *Config) { c.PaceInterval = -1 })
	ws, frames := dialTimed(t, g, "token="+token(t, "alice", false))
	next, send := frameReader(t, frames), frameSender(t, ws)
	send(map[string]any{"type": "abort-session", "sessionId": "s-3"})
	require.Equal(t, "No active run", next()["error"])
	require.Equal(t, "complete", next()["kind"])
	send(map[string]any{"type": "check-session-status", "sessionId": "s-3", "lastSeq": 0})
	require.Equal(t, "session-status", next()["type"])
	send(map[string]any{"type": "abort-session", "sessionId": "s-3"})
	require.Equal(t, "No active run", next()["error"])
	select {
	case f := <-frames:
		t.Fatalf("unexpected frame %v", f.m)
	case <-time.After(200 * time.Millisecond):
	}
}

// TestPacedBusyCommandGetsARow: Claude Code UI's frontend drops
// session-busy (a kind-less frame), so a prompt sent from a second tab to a
// session that is running vanished without a word. A paced socket gets,
// after session-busy, an error row with the reason in that session, and no
// complete of its own: the run's complete, which it now follows, ends it.
func TestPacedBusyCommandGetsARow(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g, w, _, id, ref := startRun(t, st, func(c *Config) { c.PaceInterval = 2 * time.Millisecond })
	ws, frames := dialTimed(t, g, "token="+token(t, "alice", false))
	next, send := frameReader(t, frames), frameSender(t, ws)
	send(command("second", map[string]any{"sessionId": id}))
	busy := next()
	require.Equal(t, "session-busy", busy["type"], "%v", busy)
	row := next()
	require.Equal(t, "error", row["kind"], "%v", row)
	require.Equal(t, id, row["sessionId"])
	require.Equal(t, "claude", row["provider"])
	require.Contains(t, row["content"], "already processing")
	require.NotContains(t, row, "seq", "a reply, not a session event")
	select {
	case f := <-frames:
		t.Fatalf("unexpected frame %v", f.m)
	case <-time.After(200 * time.Millisecond):
	}
	w.emit(ref, app.Text("assistant", "done"))
	w.finish(ref, 0)
	got := readUntilComplete(t, frames)
	require.Equal(t, "done", got[0].m["content"], "%v", got[0].m)
	require.Equal(t, id, got[len(got)-1].m["sessionId"])
}

// TestPacedStatusChecksFollowOnlyRuns: Claude Code UI's frontend checks
// every session its user opens and never unsubscribes, and acts on every
// session event it gets whatever it shows (a complete clears its pending
// new chat and permission prompts). A status check from it follows a
// session only while it runs: an idle session is not followed, and a
// check of another session stops it following the sessions whose runs it
// has seen end. It still gets the complete of a run it started or checked
// while it ran, and a reconnect's check of a running session follows it.
// A socket that handles every frame (immediate) is followed as before.
func TestPacedStatusChecksFollowOnlyRuns(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st, func(c *Config) { c.PaceInterval = 2 * time.Millisecond })
	w := newFakeWorker(t, st)
	driver := g.dial("alice") // another tab, immediate
	// run starts a run from the driver (on id, or a new session) and
	// returns its session and ref.
	run := func(id string) (string, store.RunRef) {
		t.Helper()
		extra := map[string]any{}
		if id != "" {
			extra["sessionId"] = id
		}
		driver.send(command("go", extra))
		acc := driver.until(isType("session-accepted"))
		_, ref := w.take()
		return acc[len(acc)-1]["sessionId"].(string), ref
	}
	finish := func(ref store.RunRef) {
		t.Helper()
		w.finish(ref, 0)
		driver.until(func(m map[string]any) bool { return m["kind"] == "complete" && m["runId"] == ref.RunID })
	}
	ws, frames := dialTimed(t, g, "token="+token(t, "alice", false))
	next, send := frameReader(t, frames), frameSender(t, ws)
	quiet := func() {
		t.Helper()
		select {
		case f := <-frames:
			t.Fatalf("unexpected frame %v", f.m)
		case <-time.After(300 * time.Millisecond):
		}
	}
	check := func(id string, processing bool) {
		t.Helper()
		send(map[string]any{"type": "check-session-status", "sessionId": id})
		m := next()
		require.Equal(t, "session-status", m["type"], "%v", m)
		require.Equal(t, id, m["sessionId"])
		require.Equal(t, processing, m["isProcessing"], "%v", m)
	}

	// An idle session checked is not followed: another tab's run in it
	// sends this socket nothing.
	a, ref := run("")
	finish(ref)
	check(a, false)
	_, ref = run(a)
	w.emit(ref, app.Text("assistant", "elsewhere"))
	finish(ref)
	quiet()

	// A running session checked is followed to its complete, also after
	// a check of another session.
	b, ref := run("")
	check(b, true)
	w.emit(ref, app.Text("assistant", "b-live"))
	require.Equal(t, "b-live", next()["content"])
	check(a, false)
	w.finish(ref, 0)
	got := readUntilComplete(t, frames)
	require.Equal(t, b, got[len(got)-1].m["sessionId"])
	// Seen to its end: the next check of another session lets it go.
	check(a, false)
	_, ref = run(b)
	w.emit(ref, app.Text("assistant", "b-again"))
	finish(ref)
	quiet()

	// A run this socket started: its complete comes after checks of
	// other sessions.
	send(command("mine", nil))
	require.Equal(t, "session-accepted", next()["type"])
	_, ref = w.take()
	for m := next(); m["kind"] != "session_created"; m = next() {
	}
	check(a, false)
	w.emit(ref, app.Text("assistant", "mine"))
	w.finish(ref, 0)
	got = readUntilComplete(t, frames)
	require.Equal(t, "mine", got[0].m["content"], "%v", got[0].m)
	require.Equal(t, ref.SessionID, got[len(got)-1].m["sessionId"])
	check(a, false)
	quiet()

	// A reconnect's check of a running session follows it.
	c, ref := run("")
	ws2, frames2 := dialTimed(t, g, "token="+token(t, "alice", false))
	next2 := frameReader(t, frames2)
	frameSender(t, ws2)(map[string]any{"type": "check-session-status", "sessionId": c})
	require.Equal(t, true, next2()["isProcessing"])
	w.emit(ref, app.Text("assistant", "resumed"))
	require.Equal(t, "resumed", next2()["content"])
	w.finish(ref, 0)
	got = readUntilComplete(t, frames2)
	require.Equal(t, c, got[len(got)-1].m["sessionId"])

	// An immediate socket follows what it checks, idle or not, as before.
	imm := g.dial("alice")
	imm.send(map[string]any{"type": "check-session-status", "sessionId": a})
	require.Equal(t, false, imm.next()["isProcessing"])
	imm.send(map[string]any{"type": "check-session-status", "sessionId": b})
	require.Equal(t, false, imm.next()["isProcessing"])
	_, ref = run(a)
	finish(ref)
	evs := sessionEvents(imm.until(func(m map[string]any) bool { return m["kind"] == "complete" }))
	require.Equal(t, a, evs[0]["sessionId"])
}
