package mockanthropic

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/internal/mockscript"
)

// ---------------------------------------------------------------------------
// Tests of the mock alone: they run everywhere, with or without the CLI.
// ---------------------------------------------------------------------------

// postMessages sends a Messages API request the way the CLI does and parses
// the SSE answer, so the wire format is checked without the CLI.
func postMessages(t *testing.T, s *Server, body map[string]any) (*http.Response, []mockscript.SSEEvent) {
	t.Helper()
	b, err := json.Marshal(body)
	require.NoError(t, err)
	resp, err := http.Post(s.URL+"/v1/messages?beta=true", "application/json", bytes.NewReader(b))
	require.NoError(t, err)
	defer resp.Body.Close()
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		return resp, nil
	}
	events, err := mockscript.ReadSSE(resp.Body)
	require.NoError(t, err)
	for _, e := range events {
		require.NotEmpty(t, e.Name, "data without event line")
		require.Equal(t, e.Name, e.Data["type"], "event name and data type must agree")
	}
	return resp, events
}

func userMsg(text string) map[string]any {
	return map[string]any{"role": "user", "content": []any{
		map[string]any{"type": "text", "text": "<system-reminder>\ninjected by the CLI\n</system-reminder>"},
		map[string]any{"type": "text", "text": text},
	}}
}

func TestSSEWireFormat(t *testing.T) {
	s := New(t, Turn{
		Thinking: "hmm",
		Text:     "hello world",
		Chunks:   2,
		ToolUses: []ToolUse{{ID: "toolu_1", Name: "Bash", Input: map[string]any{"command": "echo hi"}}},
	})
	resp, events := postMessages(t, s, map[string]any{
		"model": "claude-test", "stream": true, "max_tokens": 100,
		"messages": []any{userMsg("do it")},
	})
	require.Equal(t, http.StatusOK, resp.StatusCode)

	var names []string
	for _, e := range events {
		names = append(names, e.Name)
	}
	require.Equal(t, []string{
		"message_start",
		"content_block_start", "content_block_delta", "content_block_delta", "content_block_stop", // thinking + signature
		"content_block_start", "content_block_delta", "content_block_delta", "content_block_stop", // text in 2 chunks
		"content_block_start", "content_block_delta", "content_block_stop", // tool_use
		"message_delta", "message_stop",
	}, names)

	msg := events[0].Data["message"].(map[string]any)
	require.Equal(t, "claude-test", msg["model"], "the mock echoes the requested model")
	require.Contains(t, msg["usage"], "input_tokens")
	require.Contains(t, msg["usage"], "output_tokens")

	require.Equal(t, "hello", events[6].Data["delta"].(map[string]any)["text"])
	require.Equal(t, " world", events[7].Data["delta"].(map[string]any)["text"])

	tu := events[9].Data["content_block"].(map[string]any)
	require.Equal(t, "tool_use", tu["type"])
	require.Equal(t, "toolu_1", tu["id"])
	require.Equal(t, `{"command":"echo hi"}`, events[10].Data["delta"].(map[string]any)["partial_json"])

	delta := events[12].Data
	require.Equal(t, "tool_use", delta["delta"].(map[string]any)["stop_reason"])
	require.Contains(t, delta["usage"], "output_tokens")

	reqs := s.Requests()
	require.Len(t, reqs, 1)
	require.Equal(t, "do it", reqs[0].PromptText, "system reminders are not part of the prompt")
	require.Equal(t, 0, reqs[0].TurnIndex)
	require.Zero(t, s.Pending())
}

func TestRoutingDefaultsAndSideRequests(t *testing.T) {
	s := New(t,
		Turn{When: "[B]", Text: "for B"},
		Turn{When: "[A]", Text: "for A"},
	)
	s.SetDefault(Turn{Text: "fallback"})

	textOf := func(events []mockscript.SSEEvent) string {
		var sb strings.Builder
		for _, e := range events {
			if d, ok := e.Data["delta"].(map[string]any); ok && d["type"] == "text_delta" {
				sb.WriteString(d["text"].(string))
			}
		}
		return sb.String()
	}

	// A non-streaming side request must not consume a scripted turn.
	resp, _ := postMessages(t, s, map[string]any{"model": "m", "messages": []any{userMsg("[A] title?")}})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, 2, s.Pending())

	_, ev := postMessages(t, s, map[string]any{"model": "m", "stream": true, "messages": []any{userMsg("task [A]")}})
	require.Equal(t, "for A", textOf(ev))

	// The follow-up of a tool loop ends with a tool_result message but is
	// still routed by the prompt that started the loop.
	_, ev = postMessages(t, s, map[string]any{"model": "m", "stream": true, "messages": []any{
		userMsg("task [B]"),
		map[string]any{"role": "assistant", "content": []any{map[string]any{"type": "tool_use", "id": "t1", "name": "Bash", "input": map[string]any{}}}},
		map[string]any{"role": "user", "content": []any{map[string]any{"type": "tool_result", "tool_use_id": "t1", "content": []any{map[string]any{"type": "text", "text": "out"}}}}},
	}})
	require.Equal(t, "for B", textOf(ev))

	_, ev = postMessages(t, s, map[string]any{"model": "m", "stream": true, "messages": []any{userMsg("task [A]")}})
	require.Equal(t, "fallback", textOf(ev), "script exhausted: default turn")

	s.Add(Turn{Status: 529})
	resp, _ = postMessages(t, s, map[string]any{"model": "m", "stream": true, "messages": []any{userMsg("x")}})
	require.Equal(t, 529, resp.StatusCode)
	require.Equal(t, "false", resp.Header.Get("x-should-retry"))

	reqs := s.Requests()
	require.Len(t, reqs, 5)
	require.False(t, reqs[0].Scripted)
	require.True(t, reqs[2].HasToolResult)
	require.Equal(t, "t1", reqs[2].ToolResults[0].ToolUseID)
	require.Equal(t, "out", reqs[2].ToolResults[0].Content)
	require.Equal(t, "task [B]", reqs[2].PromptText)
	require.Equal(t, -1, reqs[3].TurnIndex)
	require.Len(t, s.ScriptedRequests(), 4)
}

func TestHangReleasedByClose(t *testing.T) {
	s := Start(Turn{Hang: true, Text: "partial"})
	errc := make(chan error, 1)
	go func() {
		resp, err := http.Post(s.URL+"/v1/messages", "application/json", strings.NewReader(`{"stream":true,"messages":[]}`))
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		errc <- err
	}()
	require.Eventually(t, func() bool { return s.Hanging() == 1 }, 5*time.Second, 10*time.Millisecond)
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close blocked on a hanging request")
	}
	<-errc
	require.Zero(t, s.Hanging())
}

// ---------------------------------------------------------------------------
// Tests against the real Claude Code CLI.
// ---------------------------------------------------------------------------

// newUUID returns a random version-4 UUID for --session-id.
func newUUID(t *testing.T) string {
	var b [16]byte
	_, err := rand.Read(b[:])
	require.NoError(t, err)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// cliRun is the outcome of one CLI process.
type cliRun struct {
	Lines    []map[string]any // stdout, one decoded JSON object per line
	Stderr   string
	ExitCode int
	Elapsed  time.Duration
}

// ofType returns the stdout lines with the given "type" (and "subtype" if set).
func (r cliRun) ofType(typ, subtype string) []map[string]any {
	var out []map[string]any
	for _, l := range r.Lines {
		if l["type"] == typ && (subtype == "" || l["subtype"] == subtype) {
			out = append(out, l)
		}
	}
	return out
}

// result returns the final "result" line, failing the test if there is none.
func (r cliRun) result(t *testing.T) map[string]any {
	t.Helper()
	res := r.ofType("result", "")
	require.Len(t, res, 1, "exactly one result line; stderr: %s", r.Stderr)
	return res[0]
}

// cliCmd prepares `claude -p <prompt> --output-format stream-json --verbose`
// with its own HOME and working directory and the mock's environment. The
// caller's CLAUDE_*/ANTHROPIC_* variables are dropped so a developer's own
// setup cannot leak into the test.
func cliCmd(t *testing.T, ctx context.Context, s *Server, prompt string, extraEnv []string, args ...string) *exec.Cmd {
	t.Helper()
	bin := ClaudeBin(t)
	argv := append([]string{"-p", prompt, "--output-format", "stream-json", "--verbose", "--model", "claude-sonnet-4-5"}, args...)
	cmd := exec.CommandContext(ctx, bin, argv...)
	cmd.Dir = t.TempDir()
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "HOME" || strings.HasPrefix(k, "CLAUDE") || strings.HasPrefix(k, "ANTHROPIC") {
			continue
		}
		env = append(env, kv)
	}
	// The CLI keeps per-project scratch folders (and a cwd file for Bash)
	// under $CLAUDE_CODE_TMPDIR, default os.tmpdir(); keep them in the test.
	env = append(env, "HOME="+t.TempDir(), "CLAUDE_CODE_TMPDIR="+t.TempDir())
	env = append(env, s.Env()...)
	cmd.Env = append(env, extraEnv...)
	// Own process group, so a timeout kills the CLI and anything it started
	// in its group rather than leaving orphans behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// runCLI runs the CLI to completion (at most a minute) and parses its output.
func runCLI(t *testing.T, s *Server, prompt string, extraEnv []string, args ...string) cliRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := cliCmd(t, ctx, s, prompt, extraEnv, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	run := cliRun{Stderr: stderr.String(), Elapsed: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		run.ExitCode = ee.ExitCode()
	default:
		require.NoError(t, err)
	}
	require.NoError(t, ctx.Err(), "CLI timed out; stderr: %s", run.Stderr)
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &m), "stdout line is not JSON: %s", line)
		run.Lines = append(run.Lines, m)
	}
	t.Logf("claude exited %d after %v with %d lines", run.ExitCode, run.Elapsed.Round(time.Millisecond), len(run.Lines))
	return run
}

// content returns message.content of an assistant or user line.
func content(t *testing.T, line map[string]any) []any {
	t.Helper()
	msg, ok := line["message"].(map[string]any)
	require.True(t, ok, "line without message: %v", line)
	c, ok := msg["content"].([]any)
	require.True(t, ok, "message without content list: %v", msg)
	return c
}

func TestCLIPlainText(t *testing.T) {
	t.Parallel()
	s := New(t, Turn{Text: "Hello from the mock", Chunks: 3})
	id := newUUID(t)
	run := runCLI(t, s, "say hello", nil, "--session-id", id)

	require.Equal(t, 0, run.ExitCode, "stderr: %s", run.Stderr)
	require.Empty(t, run.Stderr)
	require.GreaterOrEqual(t, len(run.Lines), 3)

	initLine := run.Lines[0]
	require.Equal(t, "system", initLine["type"])
	require.Equal(t, "init", initLine["subtype"])
	require.Equal(t, id, initLine["session_id"])
	require.Equal(t, "claude-sonnet-4-5", initLine["model"])
	require.Equal(t, "ANTHROPIC_API_KEY", initLine["apiKeySource"])

	asst := run.ofType("assistant", "")
	require.Len(t, asst, 1)
	block := content(t, asst[0])[0].(map[string]any)
	require.Equal(t, "text", block["type"])
	require.Equal(t, "Hello from the mock", block["text"])

	res := run.result(t)
	require.Equal(t, "success", res["subtype"])
	require.Equal(t, false, res["is_error"])
	require.Equal(t, "Hello from the mock", res["result"])
	require.Equal(t, id, res["session_id"])
	require.Equal(t, float64(1), res["num_turns"])
	require.Equal(t, "result", run.Lines[len(run.Lines)-1]["type"], "result is the last line")

	reqs := s.ScriptedRequests()
	require.Len(t, reqs, 1)
	require.Equal(t, "POST", reqs[0].Method)
	require.Equal(t, "/v1/messages", reqs[0].Path)
	require.Equal(t, "claude-sonnet-4-5", reqs[0].Model)
	require.Equal(t, "say hello", reqs[0].PromptText)
	require.False(t, reqs[0].HasToolResult)
	require.Equal(t, "test", reqs[0].Header.Get("x-api-key"))
	require.Equal(t, id, reqs[0].Header.Get("X-Claude-Code-Session-Id"))
	require.Contains(t, reqs[0].Tools, "Bash")
}

func TestCLIToolUse(t *testing.T) {
	t.Parallel()
	s := New(t,
		Turn{Text: "Running it.", ToolUses: []ToolUse{{ID: "toolu_echo", Name: "Bash",
			Input: map[string]any{"command": "echo hi", "description": "Print hi"}}}},
		Turn{Text: "Done: hi"},
	)
	// --allowedTools rather than bypassPermissions: the latter is refused
	// when running as root (common in CI containers) unless IS_SANDBOX=1.
	run := runCLI(t, s, "run echo hi", nil, "--session-id", newUUID(t), "--allowedTools", "Bash")
	require.Equal(t, 0, run.ExitCode, "stderr: %s", run.Stderr)

	var toolUse map[string]any
	for _, l := range run.ofType("assistant", "") {
		for _, b := range content(t, l) {
			if bm := b.(map[string]any); bm["type"] == "tool_use" {
				toolUse = bm
			}
		}
	}
	require.NotNil(t, toolUse, "no tool_use block on stdout")
	require.Equal(t, "toolu_echo", toolUse["id"])
	require.Equal(t, "Bash", toolUse["name"])
	require.Equal(t, "echo hi", toolUse["input"].(map[string]any)["command"])

	users := run.ofType("user", "")
	require.Len(t, users, 1)
	tr := content(t, users[0])[0].(map[string]any)
	require.Equal(t, "tool_result", tr["type"])
	require.Equal(t, "toolu_echo", tr["tool_use_id"])
	require.Equal(t, "hi", tr["content"])
	require.Equal(t, false, tr["is_error"])
	require.Equal(t, "hi", users[0]["tool_use_result"].(map[string]any)["stdout"])

	res := run.result(t)
	require.Equal(t, "Done: hi", res["result"])
	require.Equal(t, float64(2), res["num_turns"])

	reqs := s.ScriptedRequests()
	require.Len(t, reqs, 2, "one request per model turn")
	require.False(t, reqs[0].HasToolResult)
	require.True(t, reqs[1].HasToolResult)
	require.Equal(t, "toolu_echo", reqs[1].ToolResults[0].ToolUseID)
	require.Equal(t, "hi", reqs[1].ToolResults[0].Content)
	require.Zero(t, s.Pending())
}

func TestCLIThinking(t *testing.T) {
	t.Parallel()
	s := New(t, Turn{Thinking: "Let me think.", Text: "Thought about it."})
	run := runCLI(t, s, "think", nil)
	require.Equal(t, 0, run.ExitCode, "stderr: %s", run.Stderr)
	// Every content block is printed as its own assistant line.
	asst := run.ofType("assistant", "")
	require.Len(t, asst, 2)
	th := content(t, asst[0])[0].(map[string]any)
	require.Equal(t, "thinking", th["type"])
	require.Equal(t, "Let me think.", th["thinking"])
	require.Equal(t, "Thought about it.", run.result(t)["result"])
}

func TestCLIAPIErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		turn     Turn
		env      []string
		wantText string
	}{
		{name: "401", turn: Turn{Status: 401}, wantText: "Invalid API key"},
		{name: "500", turn: Turn{Status: 500}, wantText: "API Error: 500"},
		// 529 is retried even with x-should-retry: false; only the env var
		// makes it fail at once.
		{name: "529", turn: Turn{Status: 529}, env: []string{"CLAUDE_CODE_MAX_RETRIES=0"}, wantText: "API Error: 529"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := New(t, tc.turn)
			run := runCLI(t, s, "hi", tc.env)
			require.Equal(t, 1, run.ExitCode)
			require.Less(t, run.Elapsed, 30*time.Second, "error path must not back off")
			res := run.result(t)
			require.Equal(t, true, res["is_error"])
			require.Equal(t, float64(tc.turn.Status), res["api_error_status"])
			require.Contains(t, res["result"], tc.wantText)
			require.Empty(t, run.ofType("system", "api_retry"))
			require.Len(t, s.ScriptedRequests(), 1, "no retries")
		})
	}
}

func TestCLIRetriesThenSucceeds(t *testing.T) {
	t.Parallel()
	s := New(t, Turn{Status: 500, Retryable: true}, Turn{Text: "recovered"})
	run := runCLI(t, s, "hi", []string{"CLAUDE_CODE_MAX_RETRIES=2"})
	require.Equal(t, 0, run.ExitCode, "stderr: %s", run.Stderr)
	retries := run.ofType("system", "api_retry")
	require.Len(t, retries, 1)
	require.Equal(t, float64(500), retries[0]["error_status"])
	require.Equal(t, "recovered", run.result(t)["result"])
	require.Len(t, s.ScriptedRequests(), 2)
}

func TestCLIConcurrentRouting(t *testing.T) {
	t.Parallel()
	ClaudeBin(t) // skip here, not only in the subtests, or Pending fails below
	const n = 4
	s := New(t)
	for i := range n {
		// Added in reverse so that arrival order alone could not pass.
		marker := fmt.Sprintf("[job-%d]", n-1-i)
		s.Add(Turn{When: marker, Text: "answer for " + marker, Chunks: 2, Delay: 5 * time.Millisecond})
	}
	// Parallel subtests inside a group: the group returns once all CLI
	// processes, running at the same time against one mock, are done.
	t.Run("group", func(t *testing.T) {
		for i := range n {
			marker := fmt.Sprintf("[job-%d]", i)
			t.Run(marker, func(t *testing.T) {
				t.Parallel()
				run := runCLI(t, s, "work on "+marker, nil)
				require.Equal(t, 0, run.ExitCode, "stderr: %s", run.Stderr)
				require.Equal(t, "answer for "+marker, run.result(t)["result"])
			})
		}
	})
	require.Zero(t, s.Pending())
}

func TestCLISIGTERMWhileStreaming(t *testing.T) {
	t.Parallel()
	s := New(t, Turn{Hang: true, Text: "partial"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := cliCmd(t, ctx, s, "hang", nil, "--include-partial-messages")
	var stdout lockedBuffer
	cmd.Stdout = &stdout
	require.NoError(t, cmd.Start())
	require.Eventually(t, func() bool { return s.Hanging() == 1 }, 30*time.Second, 20*time.Millisecond,
		"CLI never reached the hanging turn")
	// The partial text has been streamed (and printed: the mock hangs once
	// it has sent it, the CLI prints it a moment later) but no result
	// exists yet.
	require.Eventually(t, func() bool { return strings.Contains(stdout.String(), `"text":"partial"`) }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	start := time.Now()
	err := cmd.Wait()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	// The CLI catches SIGTERM and exits 143 (128+15) by itself, quickly.
	require.Equal(t, 143, ee.ExitCode())
	require.Less(t, time.Since(start), 5*time.Second)
	require.NotContains(t, stdout.String(), `"type":"result"`)
	require.Contains(t, stdout.String(), `"text":"partial"`)
	require.Eventually(t, func() bool { return s.Hanging() == 0 }, 5*time.Second, 10*time.Millisecond,
		"the mock must notice the client went away")
}

// lockedBuffer is a bytes.Buffer that a process writes while a test reads.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
