package e2e

import (
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/internal/mockanthropic"
)

var loginURL = regexp.MustCompile(`^agentgate is running\. Open (http://\S+)$`)

// TestServeOneCommand: `agentgate serve` with the embedded store and nothing
// but HOME, AGENTGATE_LISTEN, AGENTGATE_WORKSPACES, AGENTGATE_CLAUDE_BIN and
// the mock's variables; the printed login URL's token opens a socket and a
// claude-command runs to its single complete.
func TestServeOneCommand(t *testing.T) {
	t.Parallel()
	claude := mockanthropic.ClaudeBin(t)
	mock := mockanthropic.New(t, mockanthropic.Turn{When: "serve-e2e", Text: "Hello from the e2e mock", Chunks: 3})
	root := t.TempDir()
	project := filepath.Join(root, "proj")
	require.NoError(t, os.MkdirAll(project, 0o755))
	addr := freeAddr(t)
	env := append(mock.CLIEnv(t), // HOME, CLAUDE_CODE_TMPDIR and the mock's variables
		"AGENTGATE_LISTEN="+addr,
		"AGENTGATE_WORKSPACES="+root,
		"AGENTGATE_CLAUDE_BIN="+claude,
		"PATH="+os.Getenv("PATH"), // bash, for the terminal
	)
	srv := startProc(t, "serve", env, "serve")

	m := srv.waitStdout(loginURL, 20*time.Second)
	u, err := url.Parse(m[1])
	require.NoError(t, err)
	require.Equal(t, addr, u.Host, "the login URL names the listen address")
	tok := u.Query().Get("token")
	require.NotEmpty(t, tok, "the login URL carries a token")

	for _, path := range []string{"/healthz", "/readyz"} {
		code, body := restDo(t, http.MethodGet, addr, path, "")
		require.Equal(t, http.StatusOK, code, "%s: %s", path, body)
	}
	c := dialWS(t, "serve", "ws://"+u.Host+"/ws?token="+url.QueryEscape(tok))
	c.send(map[string]any{
		"type": "claude-command", "command": "say hello serve-e2e", "requestId": "r1",
		"options": map[string]any{"projectPath": project},
	})
	acc := c.waitReply("session-accepted", nil)
	require.Equal(t, "r1", acc.str("requestId"))
	for _, f := range []string{"provider", "sessionId", "requestType", "acceptedAt", "startedAt", "isNewSession"} {
		require.Contains(t, acc.m, f, "session-accepted field %s: %s", f, acc.raw)
	}
	require.Equal(t, "claude-command", acc.str("requestType"))
	require.Equal(t, true, acc.m["isNewSession"])
	sid := acc.str("sessionId")
	require.Regexp(t, `^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`, sid, "a new session id is a UUID")

	evs := c.waitEnd(sid, 1, 60*time.Second)
	sum := checkRun(t, evs, 1)
	require.Equal(t, "session-state-changed", evs[0].Kind)
	require.Equal(t, "running", evs[0].str("state"))
	require.Equal(t, "session_created", evs[1].Kind)
	require.Equal(t, sid, evs[1].str("newSessionId"))
	requireComplete(t, sum.completes[0], 0, true, false)
	require.Equal(t, "completed", sum.terminals[0].str("state"))

	var texts []string
	for _, e := range evs {
		if e.Kind == "text" {
			texts = append(texts, e.str("content"))
			require.Equal(t, "assistant", e.str("role"))
		}
	}
	require.Equal(t, []string{"Hello from the e2e mock"}, texts, "the assistant text is the mock's answer; kinds: %s", kinds(evs))
	require.Len(t, mock.ScriptedRequests(), 1)

	// A terminal on the same embedded default.
	sh := &shellClient{dialWS(t, "serve/shell", "ws://"+u.Host+"/shell?token="+url.QueryEscape(tok))}
	sh.send(map[string]any{"type": "init", "projectPath": project, "provider": "plain-shell", "isPlainShell": true,
		"initialCommand": "bash --norc --noprofile -i", "shellId": "serve-tab", "cols": 80, "rows": 24})
	sh.typeLine("echo serve-$((20+3))")
	sh.waitText(0, "serve-23", 20*time.Second)
	requireConsecutive(t, sh.seqs(0), 1)
}
