package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/internal/mockgemini"
	"github.com/agentgate/agentgate/internal/mockopenai"
	"github.com/agentgate/agentgate/internal/npmbin"
	"github.com/agentgate/agentgate/workers"
)

// TestOtherProviders runs a Codex, a Gemini and a Cursor conversation
// through a gateway process and a worker process: the real Codex and
// Gemini CLIs against their mock APIs, the cursor-agent stand-in for
// Cursor. Each run is accepted, streams its events with seq from 1, and
// ends with exactly one complete; the second run of each session resumes
// the provider's own session.
func TestOtherProviders(t *testing.T) {
	codexBin := npmbin.Find(t, "codex", "AGENTGATE_CODEX_BIN")
	geminiBin := npmbin.Find(t, "gemini", "AGENTGATE_GEMINI_BIN")
	cursorBin := filepath.Join(t.TempDir(), "cursor-agent")
	build := exec.Command("go", "build", "-o", cursorBin, "./internal/fakecursor")
	build.Dir = moduleRoot
	out, err := build.CombinedOutput()
	require.NoError(t, err, "go build the cursor-agent stand-in: %s", out)

	// No Claude run here: a missing Claude CLI must not skip these.
	cl := newCluster(t, "/nonexistent/claude")
	openai := mockopenai.New(t,
		mockopenai.Turn{When: "codex hello", Text: "Hello from Codex"},
		mockopenai.Turn{When: "codex again", Text: "Codex again"},
	)
	gemini := mockgemini.New(t,
		mockgemini.Turn{When: "gemini hello", Text: "Hello from Gemini", Chunks: 2},
		mockgemini.Turn{When: "gemini again", Text: "Gemini again"},
	)
	codexHome := filepath.Join(cl.home, ".codex")
	require.NoError(t, openai.WriteConfig(codexHome))
	require.NoError(t, mockgemini.WriteSettings(cl.home))
	env := append(cl.workerEnv(),
		"AGENTGATE_CODEX_BIN="+codexBin, "CODEX_HOME="+codexHome, mockopenai.APIKeyEnv+"=test",
		"AGENTGATE_GEMINI_BIN="+geminiBin, "TMPDIR="+t.TempDir(),
		"AGENTGATE_CURSOR_BIN="+cursorBin,
		// The mock's key variable is not one the CLIs' defaults pass.
		"AGENTGATE_PROVIDER_ENV="+strings.Join(workers.DefaultPassEnv, ",")+","+mockopenai.APIKeyEnv,
	)
	env = append(env, gemini.Env()...)
	worker := startProc(t, "worker", env, "worker")
	cl.waitWorker(worker)
	gw := cl.startGateway("gw")
	c := cl.dial(gw, "alice")

	cases := []struct {
		provider, model string
		prompts, texts  [2]string
	}{
		{provider: "codex", prompts: [2]string{"codex hello", "codex again"}, texts: [2]string{"Hello from Codex", "Codex again"}},
		{provider: "gemini", model: "gemini-2.5-flash", prompts: [2]string{"gemini hello", "gemini again"}, texts: [2]string{"Hello from Gemini", "Gemini again"}},
		// The project folder is new to cursor-agent: the first run is
		// refused for workspace trust and retried once with --trust.
		{provider: "cursor", prompts: [2]string{"cursor hello", "cursor again"},
			texts: [2]string{"Echo: cursor hello (prompt 1 of this chat)", "Echo: cursor again (prompt 2 of this chat)"}},
	}
	for _, tc := range cases {
		t.Run(tc.provider, func(t *testing.T) {
			send := func(prompt, sessionID, requestID string) string {
				opts := map[string]any{"projectPath": cl.project}
				if tc.model != "" {
					opts["model"] = tc.model
				}
				msg := map[string]any{"type": tc.provider + "-command", "command": prompt, "requestId": requestID, "options": opts}
				if sessionID != "" {
					msg["sessionId"] = sessionID
				}
				mark := c.mark()
				c.send(msg)
				reply := c.waitReplyFrom(mark, "session-accepted", func(f frame) bool { return f.str("requestId") == requestID })
				require.Equal(t, tc.provider, reply.str("provider"), reply.raw)
				return reply.str("sessionId")
			}

			sid := send(tc.prompts[0], "", tc.provider+"-1")
			evs := c.waitEnd(sid, 1, 60*time.Second)
			sum := checkRun(t, evs, 1)
			require.Len(t, sum.completes, 1)
			requireComplete(t, sum.completes[0], 0, true, false)
			require.Equal(t, "session_created", evs[1].Kind, kinds(evs))
			require.Equal(t, []string{tc.texts[0]}, assistantTexts(evs), kinds(evs))
			for _, e := range evs {
				// Codex warns on every run against a provider of its own
				// that it has no metadata for the model.
				if e.Kind == "error" && !(tc.provider == "codex" && strings.HasPrefix(e.str("content"), "Model metadata for `mock-model` not found")) {
					t.Errorf("unexpected error row: %s", e.Raw)
				}
			}
			for _, e := range evs {
				require.Equal(t, tc.provider, e.str("provider"), e.Raw)
			}

			// The second run resumes the provider's session.
			require.Equal(t, sid, send(tc.prompts[1], sid, tc.provider+"-2"))
			evs = c.waitEnd(sid, 2, 60*time.Second)
			sum = checkRun(t, evs, 1)
			require.Len(t, sum.completes, 2)
			requireComplete(t, sum.completes[1], 0, true, false)
			require.Equal(t, tc.texts[:], assistantTexts(evs), kinds(evs))
		})
	}
	require.Len(t, gemini.ScriptedRequests(), 2, "one model turn a run")
	reqs := openai.ScriptedRequests()
	require.Len(t, reqs, 2)
	require.Equal(t, 3, reqs[1].Messages, "the resumed Codex thread carries its history")
}

// assistantTexts are the contents of the assistant text events.
func assistantTexts(evs []event) []string {
	var out []string
	for _, e := range evs {
		if e.Kind == "text" && e.str("role") == "assistant" {
			out = append(out, e.str("content"))
		}
	}
	return out
}
