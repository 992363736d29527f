package handlers

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestSessionMessages: GET /api/providers/sessions/:id/messages, the
// route on which Claude Code UI's frontend loads a chat's history, gives
// the session's events of the kinds that frontend shows as messages,
// oldest first, paged from the newest as its own server pages them, by
// agentgate's id or by the id the Codex CLI gave the conversation, to
// their owner only.
func TestSessionMessages(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st, func(c *Config) { c.Providers = []app.Provider{app.Claude, app.Codex} })
	w := newFakeWorker(t, st)
	c := g.dial("alice")
	c.send(command("hello", map[string]any{"type": "codex-command"}))
	id := c.next()["sessionId"].(string)
	_, ref := w.take()
	const thread = "019a0000-aaaa-7bbb-8ccc-00000000beef"
	// The CLIs do not print the user's prompt back: the run's start holds it.
	w.emit(ref, app.Text("assistant", "hi"), app.ToolUse("t1", "Bash", map[string]any{"command": "ls"}),
		app.ToolResult("t1", "a b", false), app.Thinking("hmm"), app.ErrorRow("oops"))
	_, err := st.Append(context.Background(), ref, nil, map[string]string{"providerSessionId": thread})
	require.NoError(t, err)
	w.finish(ref, 0)
	c.until(func(m map[string]any) bool { return m["kind"] == "complete" })

	alice := token(t, "alice", false)
	get := func(path, query string) (int, map[string]any) {
		t.Helper()
		return httpGet(t, g.ts.URL+"/api/providers/sessions/"+path+"/messages"+query, alice)
	}
	// kinds returns the kind (and text, for texts) of each message.
	kinds := func(body map[string]any) string {
		var out []string
		for _, m := range body["messages"].([]any) {
			msg := m.(map[string]any)
			require.Equal(t, id, msg["sessionId"])
			if msg["kind"] == "text" {
				out = append(out, fmt.Sprint("text:", msg["content"]))
			} else {
				out = append(out, fmt.Sprint(msg["kind"]))
			}
		}
		return strings.Join(out, " ")
	}
	for _, tc := range []struct {
		path, query, want string
		hasMore           bool
	}{
		{id, "", "text:hello text:hi tool_use tool_result thinking error", false},
		{thread, "", "text:hello text:hi tool_use tool_result thinking error", false},
		{id, "?limit=2", "thinking error", true},
		{id, "?limit=2&offset=2", "tool_use tool_result", true},
		{id, "?limit=2&offset=4", "text:hello text:hi", false},
		{id, "?limit=20&offset=0", "text:hello text:hi tool_use tool_result thinking error", false},
		{id, "?limit=2&offset=10", "", false},
		{id, "?limit=0", "", true},
	} {
		code, body := get(tc.path, tc.query)
		require.Equal(t, http.StatusOK, code, "%s%s", tc.path, tc.query)
		require.Equal(t, tc.want, kinds(body), "%s%s", tc.path, tc.query)
		require.Equal(t, tc.hasMore, body["hasMore"], "%s%s", tc.path, tc.query)
		require.EqualValues(t, 5, body["total"], "tool results are not counted, as the reference counts")
	}
	_, body := get(id, "?limit=1&offset=5")
	prompt := body["messages"].([]any)[0].(map[string]any)
	require.Equal(t, "user", prompt["role"])
	require.Equal(t, "codex", prompt["provider"])
	require.True(t, strings.HasSuffix(prompt["id"].(string), "_prompt"), "an id of its own: %v", prompt["id"])
	require.NotEmpty(t, prompt["timestamp"])

	code, body := get(id, "?limit=2&offset=2")
	require.Equal(t, http.StatusOK, code)
	require.EqualValues(t, 2, body["limit"])
	require.EqualValues(t, 2, body["offset"])
	_, body = get(id, "")
	require.Nil(t, body["limit"])

	for _, bad := range []string{"?limit=-1", "?limit=x", "?offset=-2"} {
		code, _ := get(id, bad)
		require.Equal(t, http.StatusBadRequest, code, bad)
	}
	code, _ = get("not a session id", "")
	require.Equal(t, http.StatusBadRequest, code)
	bob := token(t, "bob", false)
	for _, path := range []string{id, thread} {
		code, _ := httpGet(t, g.ts.URL+"/api/providers/sessions/"+path+"/messages", bob)
		require.Equal(t, http.StatusNotFound, code, "another user's session, by %s", path)
	}
	code, _ = httpGet(t, g.ts.URL+"/api/providers/sessions/"+id+"/messages", "")
	require.Equal(t, http.StatusUnauthorized, code)

	// A prompt is the user's text as sent, whatever it holds.
	tricky := `say "hi",` + "\n" + `"prompt":"x" \ <b>&`
	c.send(command(tricky, map[string]any{"type": "codex-command", "sessionId": id}))
	c.until(isType("session-accepted"))
	_, ref = w.take()
	w.emit(ref, app.Text("assistant", "ok"))
	w.finish(ref, 0)
	c.until(func(m map[string]any) bool { return m["kind"] == "complete" })
	_, body = get(id, "?limit=2")
	require.Equal(t, "text:"+tricky+" text:ok", kinds(body))
	require.EqualValues(t, 7, body["total"])

	// A response holds the whole range, past restEventsBytes too: the
	// frontend reads the whole history on every reconnect, and pages on
	// from the count it got.
	c.send(command("more", map[string]any{"type": "codex-command", "sessionId": id}))
	c.until(isType("session-accepted"))
	_, ref = w.take()
	big := strings.Repeat("x", restEventsBytes*3/4)
	w.emit(ref, app.Text("assistant", "old "+big), app.Text("assistant", "new "+big))
	w.finish(ref, 0)
	_, body = get(id, "?limit=3")
	msgs := body["messages"].([]any)
	require.Len(t, msgs, 3)
	require.Equal(t, "more", msgs[0].(map[string]any)["content"])
	require.True(t, strings.HasPrefix(msgs[2].(map[string]any)["content"].(string), "new "))
	require.Equal(t, true, body["hasMore"])
	_, body = get(id, "")
	require.Equal(t, 11, len(body["messages"].([]any)), "every message of the session")
	require.Equal(t, false, body["hasMore"])
}
