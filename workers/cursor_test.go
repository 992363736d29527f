package workers

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
)

func TestCursorCommand(t *testing.T) {
	cases := []struct {
		name string
		job  app.Job
		want []string
	}{
		{name: "new session", job: app.Job{}, want: []string{"-p", "--output-format", "stream-json", "--", "the prompt"}},
		{name: "resume with model", job: app.Job{ProviderSessionID: "c1", Options: app.RunOptions{Model: "sonnet-4"}},
			want: []string{"-p", "--output-format", "stream-json", "--model=sonnet-4", "--resume=c1", "--", "the prompt"}},
		// Values no gateway accepts, as a job from the queue could still
		// hold them: each stays the value of its flag.
		{name: "flag-like values", job: app.Job{ProviderSessionID: "--yolo", Options: app.RunOptions{Model: "-f"}},
			want: []string{"-p", "--output-format", "stream-json", "--model=-f", "--resume=--yolo", "--", "the prompt"}},
		{name: "bypass", job: app.Job{Options: app.RunOptions{PermissionMode: "bypassPermissions"}},
			want: []string{"-p", "--output-format", "stream-json", "-f", "--", "the prompt"}},
		{name: "skip permissions", job: app.Job{Options: app.RunOptions{Tools: app.ToolsSettings{SkipPermissions: true}}},
			want: []string{"-p", "--output-format", "stream-json", "-f", "--", "the prompt"}},
		{name: "plan", job: app.Job{Options: app.RunOptions{PermissionMode: "plan", Tools: app.ToolsSettings{SkipPermissions: true}}},
			want: []string{"-p", "--output-format", "stream-json", "--mode", "plan", "--", "the prompt"}},
		{name: "accept edits adds nothing", job: app.Job{Options: app.RunOptions{PermissionMode: "acceptEdits"}},
			want: []string{"-p", "--output-format", "stream-json", "--", "the prompt"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.job.Command = "the prompt"
			args, stdin := CursorProvider{}.Command(tc.job, nil)
			require.Equal(t, tc.want, args)
			require.Nil(t, stdin, "the CLI takes the prompt as an argument")
		})
	}
	args, _ := CursorProvider{}.Command(app.Job{Command: "look", ImageFiles: []string{"/tmp/i/image_1.png"}}, nil)
	require.Equal(t, "look\n\n[Images provided at the following paths:]\n1. /tmp/i/image_1.png\n", args[len(args)-1], "image paths follow the prompt")
}

// The lines follow Cursor's documented stream-json (see
// internal/fakecursor/FACTS.md).
func TestCursorParser(t *testing.T) {
	parse := func(lines ...string) ([]map[string]any, map[string]string, *cursorParser) {
		p := CursorProvider{}.NewParser(app.Job{SessionID: "s", Command: "hi"}).(*cursorParser)
		evs, set := parseLines(t, p, lines...)
		return evs, set, p
	}
	t.Run("a run with thinking, a shell call and usage", func(t *testing.T) {
		evs, set, p := parse(
			`{"type":"system","subtype":"init","apiKeySource":"login","cwd":"/w","session_id":"c0ffee00-0000-4000-8000-000000000001","model":"Claude 4 Sonnet","permissionMode":"default"}`,
			`{"type":"user","message":{"role":"user","content":[{"type":"text","text":"run: echo hi"}]},"session_id":"c0ffee00-0000-4000-8000-000000000001"}`,
			`{"type":"thinking","subtype":"delta","text":"Let me ","session_id":"x","timestamp_ms":1}`,
			`{"type":"thinking","subtype":"delta","text":"see.","session_id":"x","timestamp_ms":2}`,
			`{"type":"thinking","subtype":"completed","session_id":"x","timestamp_ms":3}`,
			`{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"Running it."}]},"session_id":"x"}`,
			`{"type":"tool_call","subtype":"started","call_id":"toolu_1","tool_call":{"shellToolCall":{"args":{"command":"echo hi","workingDirectory":"","timeout":30000}}},"session_id":"x"}`,
			`{"type":"tool_call","subtype":"completed","call_id":"toolu_1","tool_call":{"shellToolCall":{"args":{"command":"echo hi"},"result":{"success":{"command":"echo hi","exitCode":0,"stdout":"hi\n","stderr":""}}}},"session_id":"x"}`,
			`{"type":"result","subtype":"success","duration_ms":1234,"duration_api_ms":1234,"is_error":false,"result":"Running it.","session_id":"x","request_id":"r","usage":{"inputTokens":100,"outputTokens":20,"cacheReadTokens":50,"cacheWriteTokens":5}}`,
		)
		require.Equal(t, "c0ffee00-0000-4000-8000-000000000001", set["providerSessionId"])
		require.Equal(t, []string{"thinking:Let me see.", "text:Running it.", "tool_use:Bash", "tool_result:hi\n:false"}, conversation(evs))
		require.Equal(t, "toolu_1", evs[2]["toolId"])
		require.Equal(t, map[string]any{"command": "echo hi", "workingDirectory": "", "timeout": float64(30000)}, evs[2]["toolInput"])
		budgets := tokenBudgets(evs)
		require.Len(t, budgets, 1)
		require.EqualValues(t, 175, budgets[0]["used"])
		require.EqualValues(t, 155, budgets[0]["inputTokens"])
		_, code := p.End(0)
		require.Equal(t, 0, code)
	})
	t.Run("tool outcomes", func(t *testing.T) {
		evs, _, _ := parse(
			`{"type":"tool_call","subtype":"completed","call_id":"a","tool_call":{"readToolCall":{"args":{"path":"x.go"},"result":{"success":{"content":"package x","isEmpty":false,"totalLines":1}}}}}`,
			`{"type":"tool_call","subtype":"started","call_id":"b","tool_call":{"shellToolCall":{"args":{"command":"touch x"}}}}`,
			`{"type":"tool_call","subtype":"completed","call_id":"b","tool_call":{"shellToolCall":{"args":{"command":"touch x"},"result":{"rejected":{"command":"touch x","workingDirectory":"/w","reason":"","isReadonly":false}}}}}`,
			`{"type":"tool_call","subtype":"completed","call_id":"c","tool_call":{"shellToolCall":{"args":{"command":"false"},"result":{"failure":{"command":"false","exitCode":1,"stdout":"","stderr":"boom"}}}}}`,
			`{"type":"tool_call","subtype":"completed","call_id":"d","tool_call":{"writeToolCall":{"args":{"path":"a.txt","fileText":"x"},"result":{"success":{"path":"a.txt","linesCreated":1,"fileSize":1}}}}}`,
			`{"type":"tool_call","subtype":"started","call_id":"e","tool_call":{"mcpToolCall":{"args":{"serverIdentifier":"docs","toolName":"search","args":{}}}}}`,
			`{"type":"tool_call","subtype":"started","call_id":"f","tool_call":{"function":{"name":"custom","arguments":"{}"}}}`,
			`{"type":"tool_call","subtype":"started","call_id":"g","tool_call":{"semSearchToolCall":{"args":{"query":"q"}}}}`,
		)
		require.Equal(t, []string{
			"tool_use:Read", "tool_result:package x:false",
			"tool_use:Bash", "tool_result:The command was rejected (run with bypassPermissions to allow shell commands).:true",
			"tool_use:Bash", "tool_result:\nboom:true",
			"tool_use:Write", "tool_result:map[fileSize:1 linesCreated:1 path:a.txt]:false",
			"tool_use:search", "tool_use:custom", "tool_use:semSearch",
		}, conversation(evs))
		// Claude's field names beside the CLI's, which Claude Code UI's
		// frontend renders Read and Write from.
		require.Equal(t, map[string]any{"path": "x.go", "file_path": "x.go"}, evs[0]["toolInput"])
		require.Equal(t, map[string]any{"path": "a.txt", "fileText": "x", "file_path": "a.txt", "content": "x"}, evs[6]["toolInput"])
	})
	t.Run("a success result is the outcome, whatever the exit", func(t *testing.T) {
		evs, _, p := parse(`{"type":"result","subtype":"success","is_error":false,"result":"done","session_id":"x"}`)
		require.Empty(t, errorRows(evs))
		_, code := p.End(-1) // stopped after lingering (Output.Finished)
		require.Equal(t, 0, code)
	})
	t.Run("error result fails the run", func(t *testing.T) {
		evs, _, p := parse(`{"type":"result","subtype":"error","is_error":true,"result":"Usage limit reached","session_id":"x"}`)
		require.Equal(t, []string{"Usage limit reached"}, errorRows(evs))
		_, code := p.End(0)
		require.Equal(t, 1, code)
	})
	t.Run("trust prompt on stdout asks for a retry with --trust", func(t *testing.T) {
		evs, _, p := parse("⚠ Workspace Trust Required", "  Pass --trust, --yolo, or -f if you trust this directory")
		require.Empty(t, evs)
		p.End(1)
		args, ok := p.Retry("")
		require.True(t, ok)
		require.Equal(t, []string{"-p", "--output-format", "stream-json", "--trust", "--", "hi"}, args)
	})
	t.Run("trust prompt on stderr asks for a retry too, a plain failure does not", func(t *testing.T) {
		_, _, p := parse()
		p.End(1)
		_, ok := p.Retry("⚠ Workspace Trust Required\n\n  Cursor Agent can execute code and access files in this directory.")
		require.True(t, ok)
		_, _, p = parse()
		p.End(1)
		_, ok = p.Retry("Error: something else")
		require.False(t, ok)
		_, _, p = parse()
		p.End(0)
		_, ok = p.Retry("Workspace Trust Required")
		require.False(t, ok, "a run that succeeded is not retried")
	})
	t.Run("not json is shown, unknown types are not", func(t *testing.T) {
		evs, _, _ := parse(`plain text`, ``, `{"type":"x"}`, `[1]`, `{"type":"tool_call","call_id":"z","tool_call":[]}`, `{"type":"assistant","message":{"content":"s"}}`)
		require.Equal(t, []string{"plain text", "[1]"}, errorRows(evs))
		require.Empty(t, conversation(evs))
	})
}

func FuzzCursorParser(f *testing.F) {
	for _, seed := range []string{
		`{"type":"system","subtype":"init","session_id":"s"}`,
		`{"type":"assistant","message":{"content":[{"type":"text","text":"x"}]}}`,
		`{"type":"thinking","subtype":"completed","text":"t"}`,
		`{"type":"tool_call","subtype":"completed","call_id":"c","tool_call":{"xToolCall":{"result":{"a":1,"b":2}}}}`,
		`{"type":"tool_call","subtype":"completed","call_id":"c","tool_call":{"shellToolCall":{"result":{"success":{"stdout":null,"exitCode":"x"}}}}}`,
		`{"type":"result","is_error":true,"result":{"x":1},"usage":{"inputTokens":-5}}`,
		`Workspace Trust Required`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		p := CursorProvider{}.NewParser(app.Job{SessionID: "s"})
		fuzzParser(t, p, line)
		p.(Retrier).Retry(string(line))
	})
}

// buildFakeCursor builds the cursor-agent stand-in into a folder of the
// test's own.
func buildFakeCursor(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "cursor-agent")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/agentgate/agentgate/internal/fakecursor").CombinedOutput()
	require.NoError(t, err, "go build the cursor-agent stand-in: %s", out)
	return bin
}

// TestCursorStandInRuns runs the adapter through a worker against the
// cursor-agent stand-in (the real CLI is not on npm).
func TestCursorStandInRuns(t *testing.T) {
	home := t.TempDir()
	h := providerWorker(t, CursorProvider{}, buildFakeCursor(t), []string{"HOME=" + home})

	t.Run("untrusted folder: one retry with --trust, then resume", func(t *testing.T) {
		sess := h.submitAs(app.Cursor, app.Job{Command: "say hello"})
		evs := h.waitDone(sess.ID)
		require.Empty(t, errorRows(evs), "the trust refusal is retried, not shown")
		require.Equal(t, []string{"text:Echo: say hello (prompt 1 of this chat)"}, conversation(evs))
		c := completes(evs)
		require.Len(t, c, 1)
		require.Equal(t, true, c[0]["success"])
		require.NotEmpty(t, tokenBudgets(evs))
		trusted, err := os.ReadFile(filepath.Join(home, ".cursor", "trusted-folders"))
		require.NoError(t, err)
		require.Contains(t, string(trusted), h.dir, "the retry ran with --trust")
		id := h.providerSessionID(sess.ID)
		require.NotEmpty(t, id)

		h.followUp(sess, "again", app.RunOptions{})
		evs = h.waitDone(sess.ID)
		require.Equal(t, []string{"text:Echo: say hello (prompt 1 of this chat)", "text:Echo: again (prompt 2 of this chat)"}, conversation(evs))
		require.Len(t, completes(evs), 2)
		require.Equal(t, id, h.providerSessionID(sess.ID))
	})

	t.Run("tool use needs bypassPermissions", func(t *testing.T) {
		sess := h.submitAs(app.Cursor, app.Job{Command: "think, then run: echo hi", Options: app.RunOptions{PermissionMode: "bypassPermissions"}})
		evs := h.waitDone(sess.ID)
		require.Equal(t, []string{"thinking:Thinking it over.", "text:Running it.", "tool_use:Bash", "tool_result:hi\n:false", "text:Done."}, conversation(evs))
		require.Equal(t, true, completes(evs)[0]["success"])

		sess = h.submitAs(app.Cursor, app.Job{Command: "run: touch x"})
		evs = h.waitDone(sess.ID)
		require.Equal(t, []string{"text:Running it.", "tool_use:Bash", "tool_result:The command was rejected (run with bypassPermissions to allow shell commands).:true", "text:Done."}, conversation(evs))
		require.NoFileExists(t, filepath.Join(h.dir, "x"))
	})

	t.Run("failure shows stderr", func(t *testing.T) {
		sess := h.submitAs(app.Cursor, app.Job{Command: "fail please"})
		evs := h.waitDone(sess.ID)
		require.Equal(t, []string{"Error: the stand-in was asked to fail"}, errorRows(evs))
		c := completes(evs)
		require.Len(t, c, 1)
		require.Equal(t, false, c[0]["success"])
		require.EqualValues(t, 1, c[0]["exitCode"])
	})

	// The gateway refuses values that look like flags; a job that holds
	// them anyway (a job is input) still cannot turn them into flags.
	t.Run("an id that looks like a flag stays a value; such a model is refused", func(t *testing.T) {
		// A model "-f" is refused by the gateway, and by the worker in a
		// job that holds it anyway: no CLI starts.
		sess := h.submitAs(app.Cursor, app.Job{Command: "run: touch x", Options: app.RunOptions{Model: "-f"}})
		requireRefused(t, h.waitDone(sess.ID), "Invalid model name")
		require.NoFileExists(t, filepath.Join(h.dir, "x"))

		// Chats exist in this folder (above): a bare `--resume` resumes the
		// newest, and `--resume --yolo` would also allow shell commands.
		sess = h.submitAs(app.Cursor, app.Job{Command: "run: touch y", ProviderSessionID: "--yolo"})
		evs := h.waitDone(sess.ID)
		require.Equal(t, []string{"Error: chat --yolo not found"}, errorRows(evs))
		require.Empty(t, conversation(evs))
		require.NoFileExists(t, filepath.Join(h.dir, "y"))
	})

	t.Run("a prompt that looks like an option stays a prompt", func(t *testing.T) {
		sess := h.submitAs(app.Cursor, app.Job{Command: "--help me"})
		evs := h.waitDone(sess.ID)
		require.Equal(t, []string{"text:Echo: --help me (prompt 1 of this chat)"}, conversation(evs))
	})

	t.Run("abort kills the CLI", func(t *testing.T) {
		sess := h.submitAs(app.Cursor, app.Job{Command: "hang"})
		require.Eventually(t, func() bool { return h.providerSessionID(sess.ID) != "" }, 10*time.Second, 10*time.Millisecond)
		_, err := h.st.Abort(context.Background(), sess.ID, app.Cursor)
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			h.w.mu.Lock()
			defer h.w.mu.Unlock()
			return len(h.w.runs) == 0
		}, 10*time.Second, 20*time.Millisecond)
		c := completes(h.events(sess.ID))
		require.Len(t, c, 1)
		require.Equal(t, true, c[0]["aborted"])
	})
}

// TestCursorTrustRetryIsOnce: a folder that stays untrusted fails after
// one retry, with the CLI's message.
func TestCursorTrustRetryIsOnce(t *testing.T) {
	dir := t.TempDir()
	counter := filepath.Join(dir, "count")
	script := filepath.Join(dir, "cursor-agent")
	require.NoError(t, os.WriteFile(script, []byte("#!/bin/sh\necho run >> "+counter+"\n"+
		"echo '⚠ Workspace Trust Required' >&2\necho '    • Pass --trust, --yolo, or -f if you trust this directory' >&2\nexit 1\n"), 0o755))
	h := providerWorker(t, CursorProvider{}, script, nil)
	sess := h.submitAs(app.Cursor, app.Job{Command: "hello"})
	evs := h.waitDone(sess.ID)
	b, err := os.ReadFile(counter)
	require.NoError(t, err)
	require.Equal(t, 2, strings.Count(string(b), "run"), "one run and one retry")
	require.Contains(t, strings.Join(errorRows(evs), "\n"), "Workspace Trust Required")
	c := completes(evs)
	require.Len(t, c, 1)
	require.Equal(t, false, c[0]["success"])
}

// TestCursorPromptTooLongRefused: a Cursor prompt the kernel would not
// pass as one argument (over 128 KiB; a job the gateway did not check, or
// one its images' paths made longer) fails the run with a clear error
// before anything is started, where it failed at exec with E2BIG.
func TestCursorPromptTooLongRefused(t *testing.T) {
	h := providerWorker(t, CursorProvider{}, "/bin/true", nil)
	sess := h.submitAs(app.Cursor, app.Job{Command: strings.Repeat("p", app.MaxArgLen+1)})
	evs := h.waitDone(sess.ID)
	requireRefused(t, evs, "Prompt too long for cursor")
	require.Less(t, len(strings.Join(errorRows(evs), "")), 1024, "the error does not echo the prompt")
}
