package handlers

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestRepliesDoNotGrowWithInput: a client value of 700 KB in any field a
// reply names (a provider, a session id, a project path, a field of the
// wrong type, an unknown type, a tool rule) gets replies of less than 1 KiB
// each, on an immediate socket and on a paced one (which also gets the
// error row and complete that end a refused command): no reply grows with
// the input. A project path of 4000 bytes of U+0085 (within the limit,
// escaped to 6 bytes each by %q) is clipped the same way, and one over
// app.MaxShellPath is refused with a short message.
func TestRepliesDoNotGrowWithInput(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st, func(c *Config) { c.PaceInterval = 2 * time.Millisecond })
	newFakeWorker(t, st)
	big := strings.Repeat("x", 700<<10)
	bigPath := "/" + big
	nel := "/" + strings.Repeat("\u0085", 2000)
	cases := []struct {
		name string
		msg  map[string]any
		want string // in the first reply
	}{
		{"check-session-status provider", map[string]any{"type": "check-session-status", "sessionId": app.NewID(), "provider": big}, `"provider":"claude"`},
		{"check-session-status session id", map[string]any{"type": "check-session-status", "sessionId": big}, "session-status"},
		{"subscribe session id", map[string]any{"type": "subscribe", "sessions": []any{map[string]any{"sessionId": big, "lastSeq": 0}}}, "session-status"},
		{"get-pending-permissions session id", map[string]any{"type": "get-pending-permissions", "sessionId": big}, "pending-permissions-response"},
		{"abort-session with an invalid id", map[string]any{"type": "abort-session", "sessionId": big}, app.ErrTextNoActiveRun},
		{"abort-session provider", map[string]any{"type": "abort-session", "sessionId": "-x", "provider": big}, app.ErrTextNoActiveRun},
		{"a field of the wrong type", map[string]any{"type": "claude-command", "command": "hi", "sessionId": big, "options": map[string]any{"model": 1}}, "Invalid field options.model"},
		{"unknown type", map[string]any{"type": big}, "Unknown message type"},
		{"unknown command type", map[string]any{"type": "x" + big + "-command", "sessionId": "s1"}, "Unknown message type"},
		{"command session id", command("hi", map[string]any{"sessionId": big}), "Invalid session ID"},
		{"command options.sessionId", command("hi", map[string]any{"options": map[string]any{"sessionId": big}}), "Invalid session ID"},
		{"command projectPath", command("hi", map[string]any{"options": map[string]any{"projectPath": bigPath}}), "Invalid project path: longer than 4096 bytes"},
		{"command cwd", command("hi", map[string]any{"options": map[string]any{"cwd": bigPath}}), "Invalid project path: longer than 4096 bytes"},
		{"command relative projectPath", command("hi", map[string]any{"options": map[string]any{"projectPath": strings.Repeat("x", 4000)}}), "is not an absolute path"},
		{"command projectPath of U+0085", command("hi", map[string]any{"options": map[string]any{"projectPath": nel}}), "does not exist or is outside the workspaces"},
		{"command model", command("hi", map[string]any{"options": map[string]any{"model": big}}), "Invalid model name"},
		{"command tool", command("hi", map[string]any{"options": map[string]any{"toolsSettings": map[string]any{"allowedTools": []string{big}}}}), "Invalid tool name"},
		{"command image type", command("hi", map[string]any{"options": map[string]any{"images": []any{map[string]any{"data": "data:" + big + ";base64,AA=="}}}}), "Unsupported image type"},
		{"permission response request id", map[string]any{"type": "claude-permission-response", "requestId": big, "allow": true}, "requestId"},
	}
	for _, paced := range []bool{false, true} {
		query := "token=" + token(t, "alice", false)
		if !paced {
			query += "&delivery=immediate"
		}
		c := g.dialQuery(query)
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				c.send(tc.msg)
				// A get-active-sessions behind it marks the end of its replies.
				c.send(map[string]any{"type": "get-active-sessions"})
				first := true
				for {
					raw := <-c.raw
					m := <-c.msgs
					if m["type"] == "active-sessions" {
						break
					}
					require.Less(t, len(raw), 1024, "paced %v: a reply of %d bytes: %.200s", paced, len(raw), raw)
					if first {
						require.Contains(t, string(raw), tc.want, "paced %v", paced)
						first = false
					}
				}
				require.False(t, first, "paced %v: no reply", paced)
			})
		}
	}
}

// TestStatusProvider: check-session-status's provider is one of the known
// ones, or none (answered as Claude), as the reference reads it; before,
// any text was echoed.
func TestStatusProvider(t *testing.T) {
	for in, want := range map[string]app.Provider{
		"claude": app.Claude, "cursor": app.Cursor, "codex": app.Codex, "gemini": app.Gemini, "opencode": app.OpenCode,
		"": "", "plain-shell": "", "Claude": "", "<script>": "",
	} {
		require.Equal(t, want, statusProvider(in), in)
	}
}
