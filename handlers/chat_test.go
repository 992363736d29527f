package handlers

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/gorilla/websocket"
	"github.com/olahol/melody"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

func TestUpgradeNeedsValidToken(t *testing.T) {
	g := startGateway(t, newStore(t, storetest.Mini))
	expired, err := IssueToken(testSecret, "alice", false, -time.Minute)
	require.NoError(t, err)
	wrongKey, err := IssueToken([]byte("other-secret"), "alice", false, time.Hour)
	require.NoError(t, err)
	cases := []struct {
		name   string
		query  string
		header http.Header
		origin string
		want   int
	}{
		{name: "no token", want: http.StatusUnauthorized},
		{name: "malformed", query: "?token=not-a-jwt", want: http.StatusUnauthorized},
		{name: "expired", query: "?token=" + expired, want: http.StatusUnauthorized},
		{name: "wrong secret", query: "?token=" + wrongKey, want: http.StatusUnauthorized},
		{name: "bearer header", header: http.Header{"Authorization": {"Bearer " + token(t, "alice", false)}}, want: http.StatusSwitchingProtocols},
		{name: "query token", query: "?token=" + token(t, "alice", false), want: http.StatusSwitchingProtocols},
		{name: "foreign origin", query: "?token=" + token(t, "alice", false), origin: "http://evil.example", want: http.StatusForbidden},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.header.Clone()
			if h == nil {
				h = http.Header{}
			}
			if tc.origin != "" {
				h.Set("Origin", tc.origin)
			}
			url := "ws" + strings.TrimPrefix(g.ts.URL, "http") + "/ws" + tc.query
			ws, resp, err := websocket.DefaultDialer.Dial(url, h)
			if ws != nil {
				ws.Close()
			}
			require.NotNil(t, resp, "dial: %v", err)
			require.Equal(t, tc.want, resp.StatusCode)
		})
	}
}

func TestBadFramesGetClearErrors(t *testing.T) {
	g := startGateway(t, newStore(t, storetest.Mini))
	c := g.dial("alice")
	cases := []struct {
		frame string
		want  string
	}{
		{`not json`, "Invalid websocket payload"},
		{`[1,2,3]`, "Invalid websocket payload"},
		{`"a string"`, "Invalid websocket payload"},
		{`{"type":`, "Invalid websocket payload"},
		{`{}`, "Message type is required"},
		{`{"type":""}`, "Message type is required"},
		{`{"type":42}`, "Message type is required"},
		{`{"type":"fly-to-the-moon"}`, "Unknown message type: fly-to-the-moon"},
		{`{"type":"claude-command","command":5}`, "Invalid field command: expected a string"},
		{`{"type":"check-session-status","sessionId":"x","lastSeq":"ten"}`, "Invalid field lastSeq: expected a whole number"},
		{`{"type":"claude-command","requestId":{"a":1}}`, "Invalid field requestId: expected a string or a number"},
	}
	for _, tc := range cases {
		c.send(tc.frame)
		m := c.next()
		require.Equal(t, "error", m["type"], tc.frame)
		require.Equal(t, tc.want, m["error"], tc.frame)
	}
	// A field of the wrong type: the answer names the request it refuses.
	c.send(`{"type":"claude-command","command":5,"requestId":"r9"}`)
	m := c.next()
	require.Equal(t, "r9", m["requestId"], m)
	c.send(`{"type":"check-session-status","sessionId":"s1","lastSeq":1.5}`)
	m = c.next()
	require.Equal(t, "Invalid field lastSeq: expected a whole number", m["error"], m)
	require.Equal(t, "s1", m["sessionId"], m)
	many := make([]map[string]any, maxSubscribe+1)
	for i := range many {
		many[i] = map[string]any{"sessionId": "s"}
	}
	c.send(map[string]any{"type": "subscribe", "sessions": many})
	require.Equal(t, "Too many sessions: at most 100 per subscribe", c.next()["error"])
	// Binary frames are refused too, and none of this closed the socket.
	require.NoError(t, c.ws.WriteMessage(websocket.BinaryMessage, []byte{1, 2}))
	require.Equal(t, "Invalid websocket payload", c.next()["error"])
	c.send(map[string]any{"type": "get-active-sessions"})
	require.Equal(t, "active-sessions", c.next()["type"])
}

func TestOversizeFrameClosesWith1009(t *testing.T) {
	g := startGateway(t, newStore(t, storetest.Mini), func(c *Config) { c.MaxMessageSize = 4096 })
	c := g.dial("alice")
	c.send(`{"type":"claude-command","command":"` + strings.Repeat("x", 5000) + `"}`)
	require.Equal(t, websocket.CloseMessageTooBig, c.closeCode())
	// The gateway keeps serving.
	other := g.dial("alice")
	other.send(map[string]any{"type": "get-active-sessions"})
	require.Equal(t, "active-sessions", other.next()["type"])
}

func command(text string, extra map[string]any) map[string]any {
	m := map[string]any{"type": "claude-command", "command": text, "requestId": "req-1", "options": map[string]any{}}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

// checkSeqs asserts that events carry consecutive seqs from first.
func checkSeqs(t *testing.T, events []map[string]any, first int64) {
	t.Helper()
	for i, e := range events {
		require.EqualValues(t, first+int64(i), e["seq"], "event %d: %v", i, e)
	}
}

func sessionEvents(frames []map[string]any) []map[string]any {
	var out []map[string]any
	for _, f := range frames {
		if f["kind"] != nil {
			out = append(out, f)
		}
	}
	return out
}

func TestCommandLifecycle(t *testing.T) {
	for _, b := range storetest.Backends {
		t.Run(string(b), func(t *testing.T) {
			st := newStore(t, b)
			g := startGateway(t, st)
			w := newFakeWorker(t, st)
			c := g.dial("alice")
			c.send(command("hello", map[string]any{"options": map[string]any{"projectPath": g.dir, "model": "sonnet"}}))

			acc := c.next()
			require.Equal(t, "session-accepted", acc["type"], acc)
			require.Equal(t, "claude", acc["provider"])
			require.Equal(t, "req-1", acc["requestId"])
			require.Equal(t, "claude-command", acc["requestType"])
			require.Equal(t, true, acc["isNewSession"])
			id := acc["sessionId"].(string)
			require.True(t, app.ValidSessionID(id))

			job, ref := w.take()
			require.Equal(t, id, job.SessionID)
			require.Equal(t, "hello", job.Command)
			require.Equal(t, "sonnet", job.Options.Model)
			require.True(t, job.NewSession)
			require.Equal(t, g.dir, job.ProjectPath)
			w.emit(ref, app.Text("assistant", "Hi"), app.Text("assistant", "there"))
			w.finish(ref, 0)

			evs := sessionEvents(c.until(func(m map[string]any) bool { return m["kind"] == "complete" }))
			checkSeqs(t, evs, 1)
			var kinds []string
			for _, e := range evs {
				kinds = append(kinds, e["kind"].(string))
				require.Equal(t, id, e["sessionId"])
				require.Equal(t, ref.RunID, e["runId"])
				require.Nil(t, e["type"], "session events carry kind, never type")
			}
			// session_created and complete close their bursts (PROTOCOL §3.3).
			require.Equal(t, []string{"session-state-changed", "session_created", "text", "text", "session-state-changed", "complete"}, kinds)
			require.Equal(t, id, evs[1]["newSessionId"])
			require.Equal(t, "running", evs[0]["state"])
			require.Equal(t, "command-accepted", evs[0]["reason"])
			require.EqualValues(t, acc["startedAt"], evs[0]["startedAt"])
			require.Equal(t, "completed", evs[4]["state"])
			require.Equal(t, true, evs[5]["success"])
			require.EqualValues(t, 0, evs[5]["exitCode"])
			c.expectNothing(100 * time.Millisecond)

			// A second run on the same session continues the seqs, in the
			// session's own project whatever the command says.
			other := g.dir + "/other"
			require.NoError(t, os.Mkdir(other, 0o755))
			c.send(command("again", map[string]any{"sessionId": id, "options": map[string]any{"projectPath": other}}))
			acc = c.next()
			require.Equal(t, "session-accepted", acc["type"])
			require.Equal(t, false, acc["isNewSession"])
			job, ref = w.take()
			require.False(t, job.NewSession)
			require.Equal(t, g.dir, job.ProjectPath)
			require.Equal(t, id, job.ProviderSessionID, "a Claude session resumes the gateway's id")
			w.finish(ref, 3)
			evs = sessionEvents(c.until(func(m map[string]any) bool { return m["kind"] == "complete" }))
			checkSeqs(t, evs, 7)
			require.Equal(t, "failed", evs[1]["state"])
			require.Equal(t, false, evs[2]["success"])
			require.EqualValues(t, 3, evs[2]["exitCode"])
		})
	}
}

func TestCommandRejections(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st)
	c := g.dial("alice")

	// No worker alive yet.
	c.send(command("hi", nil))
	m := c.next()
	require.Equal(t, "error", m["type"])
	require.Contains(t, m["error"], "No worker")
	require.Equal(t, "req-1", m["requestId"])

	newFakeWorker(t, st)
	cases := []struct {
		name string
		msg  map[string]any
		want string
	}{
		{"outside workspaces", command("hi", map[string]any{"options": map[string]any{"projectPath": "/etc"}}), "Invalid project path"},
		{"missing path", command("hi", map[string]any{"options": map[string]any{"projectPath": g.dir + "/nope"}}), "Invalid project path"},
		{"relative path", command("hi", map[string]any{"options": map[string]any{"projectPath": "../x"}}), "Invalid project path"},
		{"symlink escape", command("hi", map[string]any{"options": map[string]any{"projectPath": symlinkOut(t, g.dir)}}), "Invalid project path"},
		{"bad session id", command("hi", map[string]any{"sessionId": "../../etc"}), "Invalid session ID"},
		{"bad model", command("hi", map[string]any{"options": map[string]any{"model": "--dangerously-skip-permissions x"}}), "Invalid model name"},
		{"bad mode", command("hi", map[string]any{"options": map[string]any{"permissionMode": "yolo"}}), "Invalid permissionMode"},
		{"bad tool", command("hi", map[string]any{"options": map[string]any{"toolsSettings": map[string]any{"allowedTools": []string{"--help"}}}}), "Invalid tool name"},
		{"unavailable provider", map[string]any{"type": "codex-command", "command": "hi", "requestId": 7}, "not available"},
		{"empty command", command("  ", nil), "A command (the prompt) is required"},
		{"image not a data url", command("hi", map[string]any{"options": map[string]any{"images": []any{map[string]any{"data": "file:///etc/passwd"}}}}), "Image must be a data URL"},
		{"image of another type", command("hi", map[string]any{"options": map[string]any{"images": []any{map[string]any{"data": "data:text/html;base64,PGI+"}}}}), "Unsupported image type"},
		{"image that lies about its type", command("hi", map[string]any{"options": map[string]any{"images": []any{map[string]any{"data": "data:image/png;base64,PGI+"}}}}), "Image data is not a image/png file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c.send(tc.msg)
			m := c.next()
			require.Equal(t, "error", m["type"], m)
			require.Contains(t, m["error"], tc.want)
			require.Equal(t, tc.msg["requestId"], normalizeNumber(m["requestId"]))
		})
	}
	// Nothing was accepted.
	ids, err := st.RunningSessions(context.Background())
	require.NoError(t, err)
	require.Empty(t, ids)
}

// TestFlagLikeValuesRefused: a session id, model or tool that a CLI could
// read as a flag (the attacks `sessionId:"--continue"`, `model:"--yolo"`)
// is answered with an error and starts no run; the next valid command is
// the first job a worker sees.
func TestFlagLikeValuesRefused(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st, func(c *Config) { c.Providers = []app.Provider{app.Claude, app.Gemini} })
	w := newFakeWorker(t, st)
	c := g.dial("alice")
	opts := func(o map[string]any) map[string]any { return map[string]any{"options": o} }
	gemini := func(extra map[string]any) map[string]any {
		m := command("hi", extra)
		m["type"] = "gemini-command"
		return m
	}
	cases := []struct {
		name string
		msg  map[string]any
		want string
	}{
		{"sessionId --continue", command("hi", map[string]any{"sessionId": "--continue"}), "Invalid session ID"},
		{"sessionId -c", command("hi", map[string]any{"sessionId": "-c"}), "Invalid session ID"},
		{"sessionId --version", command("hi", map[string]any{"sessionId": "--version"}), "Invalid session ID"},
		{"sessionId -", command("hi", map[string]any{"sessionId": "-"}), "Invalid session ID"},
		{"sessionId --", command("hi", map[string]any{"sessionId": "--"}), "Invalid session ID"},
		{"sessionId with a blank first", command("hi", map[string]any{"sessionId": " -x"}), "Invalid session ID"},
		{"sessionId with a tab first", command("hi", map[string]any{"sessionId": "\t--x"}), "Invalid session ID"},
		{"sessionId with an em dash", command("hi", map[string]any{"sessionId": "\u2014continue"}), "Invalid session ID"},
		{"options.sessionId -c", command("hi", opts(map[string]any{"sessionId": "-c"})), "Invalid session ID"},
		{"options.sessionId behind a valid one", command("hi", map[string]any{"sessionId": app.NewID(), "options": map[string]any{"sessionId": "--continue"}}), "Invalid session ID"},
		{"model --version", command("hi", opts(map[string]any{"model": "--version"})), "Invalid model name"},
		{"model -m", command("hi", opts(map[string]any{"model": "-m"})), "Invalid model name"},
		{"model with a minus sign", command("hi", opts(map[string]any{"model": "\u2212c"})), "Invalid model name"},
		{"tool -c", command("hi", opts(map[string]any{"toolsSettings": map[string]any{"disallowedTools": []string{"-c"}}})), `Invalid tool name "-c"`},
		{"gemini model --yolo", gemini(opts(map[string]any{"model": "--yolo"})), "Invalid model name"},
		{"gemini sessionId --yolo", gemini(map[string]any{"sessionId": "--yolo"}), "Invalid session ID"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c.send(tc.msg)
			m := c.next()
			require.Equal(t, "error", m["type"], m)
			require.Equal(t, tc.want, m["error"])
			require.Equal(t, "req-1", m["requestId"])
		})
	}
	ids, err := st.RunningSessions(context.Background())
	require.NoError(t, err)
	require.Empty(t, ids, "no run was started")

	c.send(command("valid", opts(map[string]any{"model": "claude-sonnet-4-5"})))
	require.Equal(t, "session-accepted", c.next()["type"])
	job, _ := w.take()
	require.Equal(t, "valid", job.Command, "the refused commands queued no job")
	require.Equal(t, "claude-sonnet-4-5", job.Options.Model)
}

// TestRememberedToolRulesAccepted: the rules Claude Code UI's frontend
// saves with "Allow & remember" and sends with every later claude-command
// (a home path, a variable, a bracket, a backslash, a non-ASCII name)
// start the run and reach the job as sent; before, each such command was
// refused with "Invalid tool name".
func TestRememberedToolRulesAccepted(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st)
	w := newFakeWorker(t, st)
	c := g.dial("alice")
	allowed := []string{"Read", "Bash(~/bin/deploy.sh:*)", "Read(~/.zshrc)", "Bash($HOME/bin/x:*)", "Bash(./скрипт.sh:*)", "Bash([ -f x ]:*)"}
	disallowed := []string{`Bash(C:\tools\rm.exe:*)`, "Bash(echo a,b:*)"}
	c.send(command("hi", map[string]any{"options": map[string]any{"toolsSettings": map[string]any{"allowedTools": allowed, "disallowedTools": disallowed}}}))
	m := c.next()
	require.Equal(t, "session-accepted", m["type"], m)
	job, _ := w.take()
	require.Equal(t, allowed, job.Options.Tools.AllowedTools)
	require.Equal(t, disallowed, job.Options.Tools.DisallowedTools)
}

// TestCursorPromptTooLong: a Cursor prompt over app.MaxCursorPrompt
// (the Cursor CLI takes the prompt as one argument, which Linux caps at
// 128 KiB) is refused before any run, with a clear error; one within it
// is accepted, and so is a Claude prompt of any length within the frame
// (it goes on the CLI's stdin). Before, it was accepted and failed at
// exec.
func TestCursorPromptTooLong(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st, func(c *Config) { c.Providers = []app.Provider{app.Claude, app.Cursor} })
	w := newFakeWorker(t, st)
	c := g.dial("alice")
	cursor := func(prompt string) map[string]any {
		m := command(prompt, nil)
		m["type"] = "cursor-command"
		return m
	}
	c.send(cursor(strings.Repeat("p", 130<<10)))
	m := c.next()
	require.Equal(t, "error", m["type"], m)
	require.Contains(t, m["error"], "Prompt too long for Cursor")
	require.Less(t, len(m["error"].(string)), 200)
	ids, err := st.RunningSessions(context.Background())
	require.NoError(t, err)
	require.Empty(t, ids, "no run was started")

	c.send(cursor(strings.Repeat("p", app.MaxCursorPrompt)))
	require.Equal(t, "session-accepted", c.next()["type"])
	job, _ := w.take()
	require.Len(t, job.Command, app.MaxCursorPrompt)
	c.send(command(strings.Repeat("p", 300<<10), nil))
	c.until(func(m map[string]any) bool {
		require.NotEqual(t, "error", m["type"], m)
		return m["type"] == "session-accepted"
	})
}

// FuzzValidateOptions: options that pass hold no value a CLI could read as
// a flag: the session id and the model start with a letter or a digit; a
// tool rule (any text: Claude Code UI remembers `Bash(~/bin/x:*)`) never
// starts with '-', a blank or a non-ASCII dash, and holds no control
// character.
func FuzzValidateOptions(f *testing.F) {
	f.Add("6f1c0b4e-1b2a-4c3d-9e8f-001122334455", "claude-sonnet-4-5", "Bash(git log:*)")
	f.Add("--continue", "--yolo", "-c")
	f.Add("a", "\u2014version", " -x")
	f.Add("a", "m", "Bash(~/bin/deploy.sh:*)")
	f.Add("a", "m", "\u2212c")
	f.Add("a", "m", "Read\n--yolo")
	f.Fuzz(func(t *testing.T, sid, model, tool string) {
		o := app.CommandOptions{SessionID: sid, Model: model, ToolsSettings: app.ToolsSettings{AllowedTools: []string{tool}}}
		if validateOptions(&o) != nil {
			return
		}
		for _, v := range []string{sid, model} {
			if v == "" {
				continue
			}
			if c := v[0]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
				t.Fatalf("%q accepted: it starts with %q", v, c)
			}
		}
		first, _ := utf8.DecodeRuneInString(tool)
		if !utf8.ValidString(tool) || first == '-' || unicode.IsSpace(first) || unicode.Is(unicode.Pd, first) || first == '\u2212' ||
			strings.IndexFunc(tool, unicode.IsControl) >= 0 {
			t.Fatalf("tool %q accepted", tool)
		}
		if sid != "" && !app.ValidSessionID(sid) {
			t.Fatalf("session id %q accepted", sid)
		}
		if tool == "" || model != "" && len(model) > 100 {
			t.Fatalf("model %q or tool %q accepted", model, tool)
		}
	})
}

func normalizeNumber(v any) any {
	if f, ok := v.(float64); ok {
		return int(f)
	}
	return v
}

func symlinkOut(t *testing.T, dir string) string {
	t.Helper()
	link := dir + "/escape"
	require.NoError(t, symlink("/etc", link))
	return link
}

func TestBusy(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st)
	w := newFakeWorker(t, st)
	a, b := g.dial("alice"), g.dial("alice")
	a.send(command("first", nil))
	id := a.next()["sessionId"].(string)
	w.take()

	b.send(command("second", map[string]any{"sessionId": id, "requestId": "req-2"}))
	busy := b.next()
	require.Equal(t, "session-busy", busy["type"])
	require.Equal(t, id, busy["sessionId"])
	require.Equal(t, "req-2", busy["requestId"])
	require.Equal(t, true, busy["isProcessing"])
	require.Equal(t, "session-already-active", busy["reason"])
	require.NotEmpty(t, busy["message"])
	require.Equal(t, g.dir, busy["projectPath"])
	require.NotZero(t, busy["startedAt"])
	require.NotZero(t, busy["reportedAt"])
}

func TestAbort(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st)
	w := newFakeWorker(t, st)
	c := g.dial("alice")

	c.send(map[string]any{"type": "abort-session", "sessionId": "no-such-session"})
	m := c.next()
	require.Equal(t, "error", m["type"])
	require.Equal(t, "No active run", m["error"])

	c.send(command("long", nil))
	id := c.next()["sessionId"].(string)
	_, ref := w.take()
	c.send(map[string]any{"type": "abort-session", "sessionId": id, "provider": "claude"})
	evs := sessionEvents(c.until(func(m map[string]any) bool { return m["kind"] == "complete" }))
	var complete map[string]any
	for _, e := range evs {
		if e["kind"] == "complete" {
			require.Nil(t, complete, "one complete")
			complete = e
		}
	}
	require.Equal(t, true, complete["aborted"])
	require.Equal(t, false, complete["success"])
	require.EqualValues(t, 0, complete["exitCode"])

	// The worker was told, and its own completion changes nothing.
	ctrl, err := st.ReadInbox(context.Background(), w.id, "0", 100*time.Millisecond)
	require.NoError(t, err)
	require.Len(t, ctrl, 1)
	require.Equal(t, store.ControlAbort, ctrl[0].Control.Type)
	require.Equal(t, ref.RunID, ctrl[0].Control.RunID)
	_, err = st.Complete(context.Background(), ref, app.Outcome{})
	require.ErrorIs(t, err, app.ErrStaleRun)
	c.expectNothing(100 * time.Millisecond)

	// cursor-abort is the same message.
	c.send(map[string]any{"type": "cursor-abort", "sessionId": id})
	require.Equal(t, "No active run", c.next()["error"])
}

func TestCheckStatusReplay(t *testing.T) {
	for _, b := range storetest.Backends {
		t.Run(string(b), func(t *testing.T) {
			st := newStore(t, b)
			g, w, _, id, ref := startRun(t, st)
			for i := 0; i < 10; i++ {
				w.emit(ref, app.Text("assistant", "x"))
			}
			// Events 1..12 exist; the run is still going. Each case adds a
			// live event, so the last seq is read from the status reply.
			for _, tc := range []struct {
				name    string
				lastSeq int64
			}{{"from the beginning", 0}, {"from the middle", 7}, {"up to date", -1}} {
				t.Run(tc.name, func(t *testing.T) {
					cur, err := st.Session(context.Background(), id)
					require.NoError(t, err)
					from := tc.lastSeq
					if from < 0 {
						from = cur.LastSeq
					}
					r := g.dial("alice")
					r.send(map[string]any{"type": "check-session-status", "sessionId": id, "lastSeq": from})
					status := r.next()
					require.Equal(t, "session-status", status["type"])
					require.Equal(t, true, status["isProcessing"])
					require.Equal(t, "running", status["state"])
					require.EqualValues(t, cur.LastSeq, status["lastSeq"])
					require.Equal(t, true, status["recovered"])
					var got []map[string]any
					for int64(len(got)) < cur.LastSeq-from {
						got = append(got, r.next())
					}
					checkSeqs(t, got, from+1)
					// Live events follow with no gap.
					w.emit(ref, app.Text("assistant", "live"))
					require.EqualValues(t, cur.LastSeq+1, r.next()["seq"])
					r.expectNothing(50 * time.Millisecond)
				})
			}
		})
	}
}

func TestCheckStatusLiveOnlyAndIdle(t *testing.T) {
	st := newStore(t, storetest.Real)
	g, w, _, id, ref := startRun(t, st)
	w.emit(ref, app.Text("assistant", "before"))

	live := g.dial("alice")
	live.send(map[string]any{"type": "check-session-status", "sessionId": id})
	status := live.next()
	require.Nil(t, status["recovered"], "no lastSeq: no replay, no recovered flag")
	require.EqualValues(t, 3, status["lastSeq"])
	w.emit(ref, app.Text("assistant", "after"))
	m := live.next()
	require.EqualValues(t, 4, m["seq"])
	require.Equal(t, "after", m["content"])

	// Unknown sessions and other users' sessions look the same.
	for _, tc := range []struct{ user, id string }{{"alice", "does-not-exist"}, {"bob", id}} {
		other := g.dial(tc.user)
		other.send(map[string]any{"type": "check-session-status", "sessionId": tc.id, "lastSeq": 0})
		s := other.next()
		require.Equal(t, "session-status", s["type"])
		require.Equal(t, false, s["isProcessing"])
		require.Equal(t, "idle", s["state"])
		require.EqualValues(t, 0, s["lastSeq"])
		require.Equal(t, tc.id, s["sessionId"])
		w.emit(ref, app.Text("assistant", "secret"))
		other.expectNothing(200 * time.Millisecond)
	}
}

func TestReplayTrimmedIsNotRecovered(t *testing.T) {
	st := newStore(t, storetest.Mini, store.Config{HistoryLimit: 5})
	g, w, _, id, ref := startRun(t, st)
	// Past the limit and the trimming slack (64), so that seq 4 is gone.
	for i := 0; i < 100; i++ {
		w.emit(ref, app.Text("assistant", "x"))
	}
	r := g.dial("alice")
	r.send(map[string]any{"type": "check-session-status", "sessionId": id, "lastSeq": 3})
	s := r.next()
	require.Equal(t, false, s["recovered"])
	require.EqualValues(t, 102, s["lastSeq"])
	r.expectNothing(100 * time.Millisecond)
	w.emit(ref, app.Text("assistant", "live"))
	require.EqualValues(t, 103, r.next()["seq"], "after recovered:false, only live events")

	// A position past the end (another store's) is not recovered either.
	r.send(map[string]any{"type": "check-session-status", "sessionId": id, "lastSeq": 999})
	s = r.next()
	require.Equal(t, false, s["recovered"])

	r.send(map[string]any{"type": "check-session-status", "sessionId": id, "lastSeq": -1})
	require.Equal(t, "error", r.next()["type"])
}

// TestResumeOnAnotherGateway drops a socket mid-run and resumes on a second
// gateway that shares the Redis: every event exactly once, in order.
func TestResumeOnAnotherGateway(t *testing.T) {
	st := newStore(t, storetest.Real)
	a, b := startGateway(t, st), startGateway(t, st)
	b.srv.cfg.Workspaces = a.srv.cfg.Workspaces
	w := newFakeWorker(t, st)
	c := a.dial("alice")
	c.send(command("go", nil))
	id := c.next()["sessionId"].(string)
	_, ref := w.take()

	var lastSeen int64
	for i := 0; i < 2; i++ {
		lastSeen = int64(c.next()["seq"].(float64))
	}
	c.ws.Close()

	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 200; i++ {
			w.emit(ref, app.Text("assistant", "x"))
		}
		w.finish(ref, 0)
	}()
	r := b.dial("alice")
	r.send(map[string]any{"type": "check-session-status", "sessionId": id, "lastSeq": lastSeen})
	require.Equal(t, "session-status", r.next()["type"])
	evs := sessionEvents(r.until(func(m map[string]any) bool { return m["kind"] == "complete" }))
	<-done
	checkSeqs(t, evs, lastSeen+1)
	n := 0
	for _, e := range evs {
		if e["kind"] == "complete" {
			n++
		}
	}
	require.Equal(t, 1, n)
	r.expectNothing(100 * time.Millisecond)
}

func TestSubscribeSeveralAndUnsubscribe(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st)
	w := newFakeWorker(t, st)
	c := g.dial("alice")
	var ids []string
	refs := map[string]store.RunRef{}
	for i := 0; i < 2; i++ {
		c.send(command("go", nil))
		id := c.next()["sessionId"].(string)
		ids = append(ids, id)
		c.next() // session_created
		c.next() // running
		_, ref := w.take()
		refs[id] = ref
	}
	r := g.dial("alice")
	r.send(map[string]any{"type": "subscribe", "sessions": []map[string]any{{"sessionId": ids[0], "lastSeq": 1}, {"sessionId": ids[1]}}})
	got := map[string][]float64{}
	statuses := 0
	for statuses < 2 || len(got[ids[0]]) < 1 {
		m := r.next()
		if m["type"] == "session-status" {
			statuses++
			continue
		}
		got[m["sessionId"].(string)] = append(got[m["sessionId"].(string)], m["seq"].(float64))
	}
	require.Equal(t, []float64{2}, got[ids[0]])
	r.send(map[string]any{"type": "unsubscribe", "sessionId": ids[0]})
	r.send(map[string]any{"type": "get-active-sessions"}) // a barrier: replies come in order
	active := r.next()
	require.Equal(t, "active-sessions", active["type"])
	require.ElementsMatch(t, ids, active["sessions"].(map[string]any)["claude"])
	require.Empty(t, active["sessions"].(map[string]any)["codex"])
	w.emit(refs[ids[0]], app.Text("assistant", "not for r"))
	w.emit(refs[ids[1]], app.Text("assistant", "for r"))
	m := r.next()
	require.Equal(t, ids[1], m["sessionId"])
	require.Equal(t, "for r", m["content"])
}

// floodClient connects a raw gorilla client (it reads only when told to)
// and starts a run that the fake worker floods with big events.
func floodClient(t *testing.T, g *gateway, w *fakeWorker, n int) (*floodConn, string) {
	t.Helper()
	url := "ws" + strings.TrimPrefix(g.ts.URL, "http") + "/ws?delivery=immediate&token=" + token(t, "alice", false)
	ws, _, err := (&websocket.Dialer{ReadBufferSize: 1024}).Dial(url, nil)
	require.NoError(t, err)
	t.Cleanup(func() { ws.Close() })
	require.NoError(t, ws.WriteJSON(command("flood", nil)))
	var acc map[string]any
	require.NoError(t, ws.ReadJSON(&acc))
	_, ref := w.take()
	big := strings.Repeat("y", 64<<10)
	fc := &floodConn{Conn: ws}
	began := time.Now()
	for i := 0; i < n; i++ {
		_, err := g.st.Append(context.Background(), ref, []app.Event{app.Text("assistant", big)}, nil)
		require.NoError(t, err)
		// One frame read every fourth append: the socket falls far
		// behind (the kernel holds a hundred frames more), yet the
		// gateway's writer is never blocked for longer than a few
		// appends, far from melody's 10 s write timeout.
		if i%4 == 3 && fc.err == nil {
			var m map[string]any
			if fc.err = ws.ReadJSON(&m); fc.err == nil {
				fc.early = append(fc.early, m)
			}
		}
	}
	t.Logf("flood of %d events in %s, %d frames read meanwhile", n, time.Since(began), len(fc.early))
	w.finish(ref, 0)
	return fc, acc["sessionId"].(string)
}

// floodConn is a flood's socket; ReadJSON gives the frames read during
// the flood first.
type floodConn struct {
	*websocket.Conn
	early []map[string]any
	err   error // the read that ended the socket during the flood
}

func (c *floodConn) ReadJSON(v any) error {
	if len(c.early) > 0 {
		*v.(*map[string]any) = c.early[0]
		c.early = c.early[1:]
		return nil
	}
	if c.err != nil {
		return c.err
	}
	return c.Conn.ReadJSON(v)
}

// TestSlowReaderGetsEverything: a socket that reads slower than events come
// fills its queue; it then reads the stream at its own pace, and gets every
// event once, in order, without being closed.
func TestSlowReaderGetsEverything(t *testing.T) {
	st := newStore(t, storetest.Real)
	g := startGateway(t, st, func(c *Config) { c.QueueSize = 4 })
	ws, _ := floodClient(t, g, newFakeWorker(t, st), 300)
	readInOrder(t, ws, 304, func(int64) { time.Sleep(100 * time.Microsecond) })
}

// readInOrder reads ws until it has had the event of seq last, checking
// that every seq comes once, in order; each is passed to after.
func readInOrder(t *testing.T, ws interface{ ReadJSON(any) error }, last int64, after func(seq int64)) {
	t.Helper()
	var seq int64
	for seq < last {
		var m map[string]any
		require.NoError(t, ws.ReadJSON(&m))
		if s, ok := m["seq"].(float64); ok {
			require.EqualValues(t, seq+1, s)
			seq = int64(s)
		}
		after(seq)
	}
}

// TestCheckStatusKeepsAWatchsPlace: a socket behind on a session it
// watches asks for its status again without a lastSeq (as Claude Code UI
// does when it shows the session again): it keeps its place and gets every
// event once, in order.
func TestCheckStatusKeepsAWatchsPlace(t *testing.T) {
	st := newStore(t, storetest.Real)
	g := startGateway(t, st, func(c *Config) { c.QueueSize = 4 })
	ws, id := floodClient(t, g, newFakeWorker(t, st), 300)
	require.NoError(t, ws.SetReadDeadline(time.Now().Add(20*time.Second)))
	asked := false
	readInOrder(t, ws, 304, func(seq int64) {
		if seq == 20 && !asked {
			asked = true
			require.NoError(t, ws.WriteJSON(map[string]any{"type": "check-session-status", "sessionId": id}))
		}
	})
	require.True(t, asked)
}

// TestTrimmedBacklogClosesWith4008: a socket that stopped reading while its
// events were trimmed from the stream cannot be served without a gap: it is
// closed with 4008 and, resuming, told recovered:false.
func TestTrimmedBacklogClosesWith4008(t *testing.T) {
	st := newStore(t, storetest.Real, store.Config{HistoryLimit: 20})
	g := startGateway(t, st, func(c *Config) { c.QueueSize = 4 })
	ws, id := floodClient(t, g, newFakeWorker(t, st), 400)
	var lastSeq int64
	var closeErr error
	for {
		var m map[string]any
		if err := ws.ReadJSON(&m); err != nil {
			closeErr = err
			break
		}
		if s, ok := m["seq"].(float64); ok {
			require.EqualValues(t, lastSeq+1, s, "no event is skipped before the close")
			lastSeq = int64(s)
		}
	}
	var ce *websocket.CloseError
	require.ErrorAs(t, closeErr, &ce)
	require.Equal(t, app.CloseSlowConsumer, ce.Code)
	require.Less(t, lastSeq, int64(404))

	r := g.dial("alice")
	r.send(map[string]any{"type": "check-session-status", "sessionId": id, "lastSeq": lastSeq})
	require.Equal(t, false, r.next()["recovered"])
}

func TestUnknownAndForeignSessionIDs(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st, func(c *Config) { c.Providers = []app.Provider{app.Claude, app.Codex} })
	w := newFakeWorker(t, st)

	// A Codex conversation started outside the gateway (Codex names its
	// conversations itself): resumed by its own id, on a session of the
	// gateway's (TestOutsideConversationKeepsItsID has Claude's).
	c := g.dial("alice")
	c.send(command("continue", map[string]any{"type": "codex-command", "sessionId": "outside-conversation-1"}))
	acc := c.next()
	require.Equal(t, "session-accepted", acc["type"])
	require.Equal(t, true, acc["isNewSession"])
	aliceSession := acc["sessionId"].(string)
	require.Equal(t, "session-state-changed", c.next()["kind"])
	created := c.next()
	require.Equal(t, "session_created", created["kind"])
	require.Equal(t, "outside-conversation-1", created["providerSessionId"])
	job, ref := w.take()
	require.Equal(t, "outside-conversation-1", job.ProviderSessionID)
	require.False(t, job.ResumeDenied)
	require.True(t, job.ResumeUnrecorded, "the worker decides whether an unrecorded id may be resumed")
	w.finish(ref, 0)

	// Its next run carries the id only if a CLI printed it: here none ran,
	// so nothing unchecked is resumed without the flag.
	c.send(command("and again", map[string]any{"type": "codex-command", "sessionId": aliceSession}))
	c.until(isType("session-accepted"))
	job, ref = w.take()
	require.Equal(t, aliceSession, job.SessionID)
	require.NotEqual(t, "outside-conversation-1", job.ProviderSessionID)
	w.finish(ref, 0)

	// Bob names alice's session: he gets a session of his own that cannot
	// resume her conversation, exactly like an id that does not exist.
	bob := g.dial("bob")
	bob.send(command("steal", map[string]any{"sessionId": aliceSession}))
	acc = bob.next()
	require.Equal(t, "session-accepted", acc["type"])
	require.NotEqual(t, aliceSession, acc["sessionId"])
	job, bobRef := w.take()
	require.True(t, job.ResumeDenied)
	require.Equal(t, "bob", job.Owner)

	// Nor can the session he got: its next run resumes nothing of hers,
	// flagged or not (it kept no provider id, since no CLI ran to print one).
	bobSession := job.SessionID
	w.finish(bobRef, 1)
	bob.send(command("steal again", map[string]any{"sessionId": bobSession}))
	bob.until(isType("session-accepted"))
	again, againRef := w.take()
	require.Equal(t, bobSession, again.SessionID)
	require.NotEqual(t, aliceSession, again.ProviderSessionID, "a later run of bob's session resumed alice's conversation")
	w.finish(againRef, 1)

	// Bob cannot abort, list or read alice's session either.
	bob.send(map[string]any{"type": "abort-session", "sessionId": aliceSession})
	frames := bob.until(isType("error"))
	require.Equal(t, "No active run", frames[len(frames)-1]["error"])
	code, _ := httpGet(t, g.ts.URL+"/api/sessions/"+aliceSession, token(t, "bob", false))
	require.Equal(t, http.StatusNotFound, code)
	code, _ = httpGet(t, g.ts.URL+"/api/sessions/"+aliceSession+"/events", token(t, "bob", false))
	require.Equal(t, http.StatusNotFound, code)
	code, body := httpGet(t, g.ts.URL+"/api/sessions/"+aliceSession, token(t, "root", true))
	require.Equal(t, http.StatusOK, code, "admins see every session")
	require.Equal(t, "alice", body["owner"])
}

// TestAbortByTheCLIsID: Stop in a view of a Codex conversation listed
// under the id Codex gave it (Claude Code UI's sidebar lists the CLIs'
// own ids) stops the run of the gateway's session that resumes it, and
// that view gets the complete of the id it named; before, it was told
// "No active run" and the run went on.
func TestAbortByTheCLIsID(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st, func(c *Config) { c.Providers = []app.Provider{app.Claude, app.Codex} })
	w := newFakeWorker(t, st)
	const thread = "019a0000-aaaa-7bbb-8ccc-00000000abcd"
	c := g.dial("alice")
	c.send(command("start", map[string]any{"type": "codex-command"}))
	id := c.next()["sessionId"].(string)
	_, ref := w.take()
	// Its CLI names the conversation.
	_, err := st.Append(context.Background(), ref, nil, map[string]string{"providerSessionId": thread})
	require.NoError(t, err)
	w.finish(ref, 0)
	c.until(func(m map[string]any) bool { return m["kind"] == "complete" })

	// The next prompt, from the conversation's view (a socket of Claude
	// Code UI's frontend), names the thread.
	view := g.dialQuery("token=" + token(t, "alice", false))
	view.send(command("go on", map[string]any{"type": "codex-command", "sessionId": thread}))
	acc := view.until(isType("session-accepted"))
	require.Equal(t, id, acc[len(acc)-1]["sessionId"])
	_, ref = w.take()
	// Bob naming the thread stops nothing.
	bob := g.dial("bob")
	bob.send(map[string]any{"type": "abort-session", "sessionId": thread, "provider": "codex"})
	require.Equal(t, "No active run", bob.until(isType("error"))[0]["error"])

	view.send(map[string]any{"type": "abort-session", "sessionId": thread, "provider": "codex"})
	frames := view.until(func(m map[string]any) bool { return m["kind"] == "complete" && m["sessionId"] == thread })
	done := frames[len(frames)-1]
	require.Equal(t, true, done["aborted"])
	sess, err := st.Session(context.Background(), id)
	require.NoError(t, err)
	require.Equal(t, app.StateAborted, sess.State, "the run was stopped")
	_, err = st.Complete(context.Background(), ref, app.Outcome{})
	require.ErrorIs(t, err, app.ErrStaleRun)
}

// TestOutsideConversationKeepsItsID: a command naming a Claude or Gemini
// conversation started outside the gateway runs on a session of that very
// id (those CLIs keep a conversation's id when they resume it), so that
// Claude Code UI's frontend, which marked that id busy and files events
// under their sessionId, sees the run's events and its complete in the
// conversation it has open, and its abort and status check find the run.
// The session resumes the id as unrecorded (the worker decides) until a
// CLI of the session printed an id; another user naming it gets a session
// of their own that cannot resume it, as before.
func TestOutsideConversationKeepsItsID(t *testing.T) {
	for _, provider := range []app.Provider{app.Claude, app.Gemini} {
		t.Run(string(provider), func(t *testing.T) {
			st := newStore(t, storetest.Mini)
			g := startGateway(t, st, func(c *Config) { c.Providers = []app.Provider{app.Claude, app.Gemini} })
			w := newFakeWorker(t, st)
			const outside = "0b7e6a52-5c1d-4f0e-9a3b-6d2f1e8c4a70"
			cmd := func(text string) map[string]any {
				return command(text, map[string]any{"type": string(provider) + "-command", "sessionId": outside})
			}
			c := g.dial("alice")
			c.send(cmd("continue"))
			acc := c.next()
			require.Equal(t, "session-accepted", acc["type"], "%v", acc)
			require.Equal(t, outside, acc["sessionId"])
			require.Equal(t, true, acc["isNewSession"])
			job, ref := w.take()
			require.Equal(t, outside, job.SessionID)
			require.Equal(t, outside, job.ProviderSessionID)
			require.True(t, job.NewSession)
			require.True(t, job.ResumeUnrecorded, "the worker decides whether an unrecorded id may be resumed")
			require.False(t, job.ResumeDenied)

			// Another socket of hers finds the run under the same id.
			other := g.dial("alice")
			other.send(map[string]any{"type": "check-session-status", "sessionId": outside})
			status := other.next()
			require.Equal(t, "session-status", status["type"])
			require.Equal(t, true, status["isProcessing"], "%v", status)

			w.emit(ref, app.Text("assistant", "hi"))
			w.finish(ref, 0)
			evs := sessionEvents(c.until(func(m map[string]any) bool { return m["kind"] == "complete" }))
			require.Equal(t, "session_created", evs[1]["kind"])
			require.Equal(t, outside, evs[1]["newSessionId"])
			require.Equal(t, outside, evs[1]["providerSessionId"])
			for _, e := range evs {
				require.Equal(t, outside, e["sessionId"], "%v", e)
			}

			// The next command naming the id runs on the same session,
			// and resumes the id as unrecorded: no CLI printed it.
			c.send(cmd("again"))
			acc = c.until(isType("session-accepted"))[0]
			require.Equal(t, outside, acc["sessionId"])
			require.Equal(t, false, acc["isNewSession"])
			job, ref = w.take()
			require.Equal(t, outside, job.SessionID)
			require.Equal(t, outside, job.ProviderSessionID)
			require.True(t, job.ResumeUnrecorded, "a run refused or dead before its CLI ran does not make the id the user's")
			require.False(t, job.NewSession)
			// Its CLI prints the id: the conversation is the session's now.
			_, err := st.Append(context.Background(), ref, nil, map[string]string{"providerSessionId": outside})
			require.NoError(t, err)
			w.finish(ref, 0)
			c.until(func(m map[string]any) bool { return m["kind"] == "complete" })

			c.send(cmd("and again"))
			c.until(isType("session-accepted"))
			job, ref = w.take()
			require.Equal(t, outside, job.SessionID)
			require.Equal(t, outside, job.ProviderSessionID)
			require.False(t, job.ResumeUnrecorded)

			// An abort naming the id stops the run.
			other.send(map[string]any{"type": "abort-session", "sessionId": outside, "provider": string(provider)})
			// (It watches the session since its check: earlier runs'
			// completes come first.)
			done := other.until(func(m map[string]any) bool { return m["kind"] == "complete" && m["runId"] == ref.RunID })
			require.Equal(t, true, done[len(done)-1]["aborted"])
			require.Equal(t, outside, done[len(done)-1]["sessionId"])

			// Bob naming it gets a session of his own that cannot resume it.
			bob := g.dial("bob")
			bob.send(cmd("steal"))
			acc = bob.next()
			require.Equal(t, "session-accepted", acc["type"])
			require.NotEqual(t, outside, acc["sessionId"])
			job, _ = w.take()
			require.True(t, job.ResumeDenied)
			require.Equal(t, "bob", job.Owner)
		})
	}
}

// TestOutsideConversationRace: commands racing to continue one outside
// conversation make one session and one run: the others find it busy
// rather than fail.
func TestOutsideConversationRace(t *testing.T) {
	st := newStore(t, storetest.Real)
	a, b := startGateway(t, st), startGateway(t, st)
	b.srv.cfg.Workspaces = a.srv.cfg.Workspaces
	newFakeWorker(t, st)
	const outside = "5a1d7c3e-2b4f-4e6a-8c9d-0f1e2d3c4b5a"
	clients := []*client{a.dial("alice"), b.dial("alice"), a.dial("alice"), b.dial("alice")}
	var wg sync.WaitGroup
	for _, cl := range clients {
		wg.Add(1)
		go func(cl *client) { defer wg.Done(); cl.send(command("race", map[string]any{"sessionId": outside})) }(cl)
	}
	wg.Wait()
	counts := map[string]int{}
	for _, cl := range clients {
		m := cl.until(func(m map[string]any) bool { return m["type"] != nil })[0]
		require.Equal(t, outside, m["sessionId"], "%v", m)
		counts[m["type"].(string)]++
	}
	require.Equal(t, map[string]int{"session-accepted": 1, "session-busy": 3}, counts)
}

func TestREST(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g, w, c, id, ref := startRun(t, st)
	w.emit(ref, app.Text("assistant", "one"), app.Text("assistant", "two"))
	alice := token(t, "alice", false)

	code, body := httpGet(t, g.ts.URL+"/api/auth/user", alice)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "alice", body["user"].(map[string]any)["username"])

	code, body = httpGet(t, g.ts.URL+"/api/sessions?state=running", alice)
	require.Equal(t, http.StatusOK, code)
	require.Len(t, body["sessions"], 1)

	code, body = httpGet(t, g.ts.URL+"/api/sessions/"+id, alice)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "running", body["state"])
	require.EqualValues(t, 4, body["lastSeq"])

	code, body = httpGet(t, g.ts.URL+"/api/sessions/"+id+"/events?after=2&limit=1", alice)
	require.Equal(t, http.StatusOK, code)
	evs := body["events"].([]any)
	require.Len(t, evs, 1)
	require.EqualValues(t, 3, evs[0].(map[string]any)["seq"])

	for _, bad := range []string{"?after=-1", "?after=x", "?limit=0", "?limit=100000"} {
		code, body = httpGet(t, g.ts.URL+"/api/sessions/"+id+"/events"+bad, alice)
		require.Equal(t, http.StatusBadRequest, code, bad)
		require.NotEmpty(t, body["error"])
	}
	code, _ = httpGet(t, g.ts.URL+"/api/sessions", "")
	require.Equal(t, http.StatusUnauthorized, code)
	code, _ = httpGet(t, g.ts.URL+"/api/sessions/..%2F..", alice)
	require.Equal(t, http.StatusBadRequest, code)

	req, _ := http.NewRequest(http.MethodPost, g.ts.URL+"/api/sessions/"+id+"/abort", nil)
	req.Header.Set("Authorization", "Bearer "+token(t, "bob", false))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode, "another user's session does not exist")

	req.Header.Set("Authorization", "Bearer "+alice)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	// The socket that follows the session sees the one complete, and the
	// worker is told once.
	evs = nil
	for _, e := range sessionEvents(c.until(func(m map[string]any) bool { return m["kind"] == "complete" })) {
		if e["kind"] == "complete" {
			evs = append(evs, e)
		}
	}
	require.Len(t, evs, 1)
	require.Equal(t, true, evs[0].(map[string]any)["aborted"])
	ctrl, err := st.ReadInbox(context.Background(), w.id, "0", 100*time.Millisecond)
	require.NoError(t, err)
	require.Len(t, ctrl, 1)
	require.Equal(t, store.ControlAbort, ctrl[0].Control.Type)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusConflict, resp.StatusCode)
}

// TestReadyOnceSubscribed: a gateway whose subscription Redis has not
// confirmed yet is not ready (a broadcast published then would not reach
// its sockets); once Run has subscribed, it is.
func TestReadyOnceSubscribed(t *testing.T) {
	st := newStore(t, storetest.Mini)
	srv, err := New(Config{Store: st, Auth: &Auth{Mode: AuthJWT, Secret: testSecret},
		Workspaces: app.Workspaces{Roots: []string{t.TempDir()}}})
	require.NoError(t, err)
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	code, body := httpGet(t, ts.URL+"/readyz", "")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "subscribing", body["status"])

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(ctx) }()
	defer func() { cancel(); <-done }()
	require.Eventually(t, func() bool {
		code, _ := httpGet(t, ts.URL+"/readyz", "")
		return code == http.StatusOK
	}, 10*time.Second, 5*time.Millisecond)
}

func TestHealth(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st, func(c *Config) { c.SchemaVersion = 1 })
	code, _ := httpGet(t, g.ts.URL+"/healthz", "")
	require.Equal(t, http.StatusOK, code)
	code, _ = httpGet(t, g.ts.URL+"/readyz", "")
	require.Equal(t, http.StatusServiceUnavailable, code, "schema not migrated")
	require.NoError(t, st.SetSchemaVersion(context.Background(), 1))
	code, _ = httpGet(t, g.ts.URL+"/readyz", "")
	require.Equal(t, http.StatusOK, code)

	c := g.dial("alice")
	g.srv.Drain()
	require.Equal(t, websocket.CloseGoingAway, c.closeCode())
	code, _ = httpGet(t, g.ts.URL+"/readyz", "")
	require.Equal(t, http.StatusServiceUnavailable, code)
}

// TestConcurrentCommandsOneRun races commands for one session from sockets
// on two gateways: one run, the rest busy.
func TestConcurrentCommandsOneRun(t *testing.T) {
	st := newStore(t, storetest.Real)
	a, b := startGateway(t, st), startGateway(t, st)
	b.srv.cfg.Workspaces = a.srv.cfg.Workspaces
	w := newFakeWorker(t, st)
	c := a.dial("alice")
	c.send(command("first", nil))
	id := c.next()["sessionId"].(string)
	_, ref := w.take()
	w.finish(ref, 0)

	clients := []*client{a.dial("alice"), b.dial("alice"), a.dial("alice"), b.dial("alice")}
	var wg sync.WaitGroup
	errs := make([]error, len(clients))
	for i, cl := range clients {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = cl.trySend(command("race", map[string]any{"sessionId": id})) }()
	}
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "client %d", i)
	}
	counts := map[string]int{}
	for _, cl := range clients {
		counts[cl.until(func(m map[string]any) bool { return m["type"] != nil })[0]["type"].(string)]++
	}
	require.Equal(t, map[string]int{"session-accepted": 1, "session-busy": 3}, counts)
}

// TestProjectPathErrorsHideTheHost: on /ws and /shell, a project path
// outside the workspaces is refused with the same words whether it exists
// or not, so that users cannot probe the host's files.
func TestProjectPathErrorsHideTheHost(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st)
	newFakeWorker(t, st)
	outside := t.TempDir()
	require.NoError(t, os.WriteFile(outside+"/shadow", []byte("x"), 0o600))
	require.NoError(t, symlink(outside+"/shadow", g.dir+"/to-shadow"))
	require.NoError(t, symlink(outside+"/nonexistent", g.dir+"/to-nothing"))
	c := g.dial("alice")
	shell, _, err := g.dialPath("/shell", "alice")
	require.NoError(t, err)
	require.NoError(t, shell.SetReadDeadline(time.Now().Add(10*time.Second)))

	cases := []struct {
		name     string
		exists   string // a path that exists
		missing  string // its twin that does not
		wsError  string // the /ws error, PATH for the path
		shellErr string
	}{
		{"outside", outside + "/shadow", outside + "/nonexistent",
			`Invalid project path: "PATH" does not exist or is outside the workspaces`, app.ShellErrInvalidPath},
		{"a system file", "/etc/passwd", "/etc/nonexistent",
			`Invalid project path: "PATH" does not exist or is outside the workspaces`, app.ShellErrInvalidPath},
		{"through symlinks inside", g.dir + "/to-shadow", g.dir + "/to-nothing",
			`Invalid project path: "PATH" does not exist or is outside the workspaces`, app.ShellErrInvalidPath},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, p := range []string{tc.exists, tc.missing} {
				c.send(command("hi", map[string]any{"options": map[string]any{"projectPath": p}}))
				require.Equal(t, strings.Replace(tc.wsError, "PATH", p, 1), c.next()["error"], p)

				require.NoError(t, shell.WriteJSON(map[string]any{"type": "init", "projectPath": p}))
				var m map[string]any
				require.NoError(t, shell.ReadJSON(&m))
				require.Equal(t, map[string]any{"type": "error", "message": tc.shellErr}, m, p)
				m = nil
				require.NoError(t, shell.ReadJSON(&m)) // the same words as a notice
				require.Equal(t, "output", m["type"], p)
				require.Contains(t, m["data"], tc.shellErr, p)
			}
		})
	}
}

// TestCommandCarriesImages: valid images of a command reach the worker's
// job (they were accepted and dropped before).
func TestCommandCarriesImages(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st)
	w := newFakeWorker(t, st)
	c := g.dial("alice")
	png := "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
	c.send(command("look", map[string]any{"options": map[string]any{"images": []any{map[string]any{"data": png}}}}))
	require.Equal(t, "session-accepted", c.next()["type"])
	job, _ := w.take()
	require.Len(t, job.Options.Images, 1)
	require.Equal(t, png, job.Options.Images[0].Data)
}

// TestRESTWhileRedisIsDown: a REST call that meets a store outage gets a
// retryable 503 that says so, never a 404 or a bare 500.
func TestRESTWhileRedisIsDown(t *testing.T) {
	srv := storetest.StartServer(t)
	st := storetest.New(t, srv.URL)
	g := startGateway(t, st)
	alice := token(t, "alice", false)
	srv.Stop()
	for _, path := range []string{"/api/sessions", "/api/sessions/0d9e3c1a-5b7f-4c2e-9a41-6f1e2d3c4b5a"} {
		code, body := httpGet(t, g.ts.URL+path, alice)
		require.Equal(t, http.StatusServiceUnavailable, code, path)
		require.Equal(t, app.StoreUnavailableError, body["error"], path)
	}
}

// TestAbortWhileRedisCannotSave: an abort that Redis refuses (MISCONF, it
// cannot save) is told so, retryable, over REST (503) and on the socket,
// not as an internal error; once Redis saves again the abort goes through.
func TestAbortWhileRedisCannotSave(t *testing.T) {
	srv := storetest.StartServer(t)
	st := storetest.New(t, srv.URL)
	g, _, c, id, _ := startRun(t, st)
	alice := token(t, "alice", false)
	abort := func() (int, map[string]any) {
		return httpDo(t, http.MethodPost, g.ts.URL+"/api/sessions/"+id+"/abort", alice)
	}

	srv.FailSnapshot(t)
	code, body := abort()
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, app.StoreRefusedError, body["error"])
	c.send(map[string]any{"type": "abort-session", "sessionId": id})
	ms := c.until(func(m map[string]any) bool { return m["type"] == "error" })
	m := ms[len(ms)-1]
	require.Equal(t, app.StoreRefusedError, m["error"])
	require.Equal(t, true, m["retryable"])

	srv.FixSnapshot(t)
	code, body = abort()
	require.Equal(t, http.StatusOK, code, "%v", body)
}

// TestDrainClosesSocketsMidUpgrade: a socket whose upgrade passed the
// draining check before Drain, and connects after Drain listed the open
// sockets, closes itself with 1001 rather than stay open on a drained
// gateway. The interleaving is set up by marking the gateway drained
// without the draining check.
func TestDrainClosesSocketsMidUpgrade(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st)
	g.srv.drained.Store(true)
	c := g.dial("alice")
	require.Equal(t, websocket.CloseGoingAway, c.closeCode())

	url := "ws" + strings.TrimPrefix(g.ts.URL, "http") + "/shell?token=" + token(t, "alice", false)
	ws, resp, err := websocket.DefaultDialer.Dial(url, nil)
	require.NoError(t, err)
	resp.Body.Close()
	defer ws.Close()
	require.NoError(t, ws.SetReadDeadline(time.Now().Add(10*time.Second)))
	for err == nil {
		_, _, err = ws.ReadMessage()
	}
	var ce *websocket.CloseError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, websocket.CloseGoingAway, ce.Code)
}

// TestSocketsLetGoOfTheirUpgrade: an open /ws or /shell socket keeps
// neither its upgrade request (headers, URL, context: about 1.7 KiB, a
// sixth of an idle socket's heap) nor the signal of its upgrade.
func TestSocketsLetGoOfTheirUpgrade(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st)
	c := g.dial("alice")
	defer c.ws.Close()
	url := "ws" + strings.TrimPrefix(g.ts.URL, "http") + "/shell?token=" + token(t, "alice", false)
	ws, resp, err := websocket.DefaultDialer.Dial(url, nil)
	require.NoError(t, err)
	resp.Body.Close()
	defer ws.Close()

	var sessions []*melody.Session
	require.Eventually(t, func() bool {
		g.srv.mu.Lock()
		sessions = sessions[:0]
		for conn := range g.srv.conns {
			sessions = append(sessions, conn.s)
		}
		g.srv.mu.Unlock()
		g.srv.shells.mu.Lock()
		for sock := range g.srv.shells.socks {
			sessions = append(sessions, sock.c.s)
		}
		g.srv.shells.mu.Unlock()
		return len(sessions) == 2
	}, 5*time.Second, 5*time.Millisecond)
	for _, ms := range sessions {
		require.Nil(t, ms.Request)
		_, ok := ms.Get("upgraded")
		require.False(t, ok)
	}
}

// TestLargeEventDelivered: an event too large for pub/sub (Redis publishes
// its seq alone) reaches the watching socket from the stream, even when
// nothing follows it.
func TestLargeEventDelivered(t *testing.T) {
	for _, b := range storetest.Backends {
		t.Run(string(b), func(t *testing.T) {
			_, w, c, _, ref := startRun(t, newStore(t, b))
			big := strings.Repeat("<i>x</i>", 200_000) // 1.5 MiB
			w.emit(ref, app.Text("assistant", "small"), app.Text("assistant", big))
			c.until(func(m map[string]any) bool { return m["content"] == "small" })
			require.Equal(t, big, c.next()["content"])
		})
	}
}
