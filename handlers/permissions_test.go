package handlers

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// inbox returns the control messages waiting for the fake worker.
func (w *fakeWorker) inbox(block time.Duration) []store.Control {
	w.t.Helper()
	entries, err := w.st.ReadInbox(context.Background(), w.id, "0", block)
	require.NoError(w.t, err)
	var out []store.Control
	for _, e := range entries {
		require.NoError(w.t, e.Err)
		out = append(out, e.Control)
	}
	return out
}

func TestPermissionAnsweredFromAnotherGateway(t *testing.T) {
	st := newStore(t, storetest.Real)
	a, w, c, id, ref := startRun(t, st)
	b := startGateway(t, st)
	b.srv.cfg.Workspaces = a.srv.cfg.Workspaces
	ctx := context.Background()

	require.NoError(t, st.AskPermission(ctx, ref, app.PendingPermission{
		RequestID: "req-1", ToolName: "Bash", Input: json.RawMessage(`{"command":"touch x"}`), ReceivedAt: time.Now().UnixMilli(),
	}))
	ev := c.until(func(m map[string]any) bool { return m["kind"] == "permission_request" })
	last := ev[len(ev)-1]
	require.Equal(t, "req-1", last["requestId"])
	require.Equal(t, "Bash", last["toolName"])

	// Another tab, on another gateway, sees the request on reconnect.
	r := b.dial("alice")
	r.send(map[string]any{"type": "check-session-status", "sessionId": id})
	status := r.next()
	require.Equal(t, "session-status", status["type"])
	pending := status["pendingPermissions"].([]any)
	require.Len(t, pending, 1)
	require.Equal(t, "req-1", pending[0].(map[string]any)["requestId"])
	r.send(map[string]any{"type": "get-pending-permissions", "sessionId": id})
	reply := r.next()
	require.Equal(t, "pending-permissions-response", reply["type"])
	require.Len(t, reply["data"], 1)

	// A socket of Claude Code UI's frontend, which reads no
	// pendingPermissions in a status reply, gets them in the form it does
	// read (it asks for them before it checks the session, and a request
	// made in between was in neither answer).
	front := b.dialQuery("token=" + token(t, "alice", false))
	front.send(map[string]any{"type": "check-session-status", "sessionId": id})
	require.Equal(t, "session-status", front.next()["type"])
	reply = front.next()
	require.Equal(t, "pending-permissions-response", reply["type"])
	require.Equal(t, id, reply["sessionId"])
	require.Equal(t, "req-1", reply["data"].([]any)[0].(map[string]any)["requestId"])

	// Bob cannot answer it, and hears nothing back.
	bob := b.dial("bob")
	bob.send(map[string]any{"type": "claude-permission-response", "requestId": "req-1", "allow": true})
	bob.expectNothing(100 * time.Millisecond)
	require.Empty(t, w.inbox(50*time.Millisecond), "another user's answer reaches no worker")

	// Alice answers from the other gateway; the worker gets it in its inbox.
	r.send(map[string]any{"type": "claude-permission-response", "requestId": "req-1", "allow": true,
		"updatedInput": map[string]any{"command": "touch y"}, "rememberEntry": "Bash"})
	var got []store.Control
	require.Eventually(t, func() bool { got = append(got, w.inbox(50*time.Millisecond)...); return len(got) > 0 }, 5*time.Second, 10*time.Millisecond)
	require.Len(t, got, 1)
	require.Equal(t, store.ControlPermission, got[0].Type)
	require.Equal(t, id, got[0].SessionID)
	require.Equal(t, ref.RunID, got[0].RunID)
	var ans app.PermissionAnswer
	require.NoError(t, json.Unmarshal(got[0].Data, &ans))
	require.Equal(t, app.PermissionAnswer{RequestID: "req-1", Allow: true, UpdatedInput: json.RawMessage(`{"command":"touch y"}`), RememberEntry: "Bash"}, ans)
	r.expectNothing(100 * time.Millisecond)
}

func TestPermissionResponseValidation(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st)
	c := g.dial("alice")
	cases := []struct {
		name string
		msg  map[string]any
		want string // the error text, or "" for silence
	}{
		{"no request id", map[string]any{"allow": true}, "claude-permission-response needs a requestId: letters, digits and \"_.-:\", at most 128"},
		{"number request id", map[string]any{"requestId": 7, "allow": true}, "claude-permission-response needs a requestId: letters, digits and \"_.-:\", at most 128"},
		{"request id with a space", map[string]any{"requestId": "a b"}, "claude-permission-response needs a requestId: letters, digits and \"_.-:\", at most 128"},
		{"input not an object", map[string]any{"requestId": "r", "allow": true, "updatedInput": "rm -rf /"}, "updatedInput must be an object"},
		{"remember entry not a string", map[string]any{"requestId": "r", "rememberEntry": true}, "rememberEntry must be a tool name string"},
		{"unknown request is ignored", map[string]any{"requestId": "nobody-asked", "allow": true}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.msg["type"] = "claude-permission-response"
			c.send(tc.msg)
			if tc.want == "" {
				c.expectNothing(100 * time.Millisecond)
				return
			}
			reply := c.next()
			require.Equal(t, "error", reply["type"])
			require.Equal(t, tc.want, reply["error"])
		})
	}
}
