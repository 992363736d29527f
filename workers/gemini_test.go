package workers

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/internal/mockgemini"
	"github.com/agentgate/agentgate/internal/npmbin"
)

func TestGeminiCommand(t *testing.T) {
	base := []string{"-p", "", "--output-format", "stream-json", "--skip-trust"}
	cases := []struct {
		name string
		job  app.Job
		want []string
	}{
		{name: "new session", job: app.Job{}, want: base},
		{name: "new session named by the gateway", job: app.Job{SessionID: "3300763d-ebec-4148-9370-44f315111828"},
			want: append(base, "--session-id=3300763d-ebec-4148-9370-44f315111828")},
		{name: "an id that is not a UUID is not handed over", job: app.Job{SessionID: "s-1"}, want: base},
		{name: "resume with model", job: app.Job{ProviderSessionID: "g1", Options: app.RunOptions{Model: "gemini-2.5-flash"}},
			want: append(base, "--model=gemini-2.5-flash", "--resume=g1")},
		{name: "accept edits", job: app.Job{Options: app.RunOptions{PermissionMode: "acceptEdits"}}, want: append(base, "--approval-mode", "auto_edit")},
		{name: "plan", job: app.Job{Options: app.RunOptions{PermissionMode: "plan", Tools: app.ToolsSettings{SkipPermissions: true}}}, want: append(base, "--approval-mode", "plan")},
		{name: "bypass", job: app.Job{Options: app.RunOptions{PermissionMode: "bypassPermissions"}}, want: append(base, "--yolo")},
		{name: "skip permissions and allowed tools", job: app.Job{Options: app.RunOptions{Tools: app.ToolsSettings{SkipPermissions: true, AllowedTools: []string{"read_file", "glob"}}}},
			want: append(base, "--yolo", "--allowed-tools=read_file,glob")},
		// A ',' may stand inside a rule's parentheses only (app.RunOptions.Check
		// refuses one outside): the join adds the only ones between rules.
		{name: "rules with commas in their parentheses", job: app.Job{Options: app.RunOptions{Tools: app.ToolsSettings{AllowedTools: []string{"Bash(echo a,b:*)", "Read(~/.zshrc)"}}}},
			want: append(base, "--allowed-tools=Bash(echo a,b:*),Read(~/.zshrc)")},
		// Values no gateway accepts, as a job from the queue could still
		// hold them: each stays the value of its flag.
		{name: "flag-like values", job: app.Job{ProviderSessionID: "--yolo", Options: app.RunOptions{Model: "--version", Tools: app.ToolsSettings{AllowedTools: []string{"--yolo"}}}},
			want: append(base, "--model=--version", "--resume=--yolo", "--allowed-tools=--yolo")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.job.Command = "the prompt"
			args, stdin := GeminiProvider{}.Command(tc.job, nil)
			require.Equal(t, tc.want, args)
			require.Equal(t, "the prompt", string(stdin), "the prompt goes on stdin")
		})
	}
	_, stdin := GeminiProvider{}.Command(app.Job{Command: "look", ImageFiles: []string{"/tmp/i/image_1.png"}}, nil)
	require.Equal(t, "look\n\n[Images provided at the following paths:]\n1. /tmp/i/image_1.png\n", string(stdin), "image paths follow the prompt")
}

// The lines are the CLI's own output (see internal/mockgemini/CLI_FACTS.md).
func TestGeminiParser(t *testing.T) {
	parse := func(lines ...string) ([]map[string]any, map[string]string, Parser) {
		p := GeminiProvider{}.NewParser(app.Job{SessionID: "s"})
		evs, set := parseLines(t, p, lines...)
		return evs, set, p
	}
	t.Run("session id, joined deltas, tools, usage", func(t *testing.T) {
		evs, set, p := parse(
			`{"type":"init","timestamp":"2026-11-22T03:23:46.237Z","session_id":"3300763d-ebec-4148-9370-44f315111828","model":"gemini-2.5-flash"}`,
			`{"type":"message","timestamp":"2026-11-22T03:23:46.241Z","role":"user","content":"say hello"}`,
			`{"type":"message","timestamp":"2026-11-22T03:23:46.287Z","role":"assistant","content":"Running","delta":true}`,
			`{"type":"message","timestamp":"2026-11-22T03:23:46.289Z","role":"assistant","content":" it.","delta":true}`,
			`{"type":"tool_use","timestamp":"2026-11-22T03:24:09.164Z","tool_name":"run_shell_command","tool_id":"run_shell_command__run_shell_command_1795317849115_0","parameters":{"command":"echo hi"}}`,
			`{"type":"tool_result","timestamp":"2026-11-22T03:24:09.426Z","tool_id":"run_shell_command__run_shell_command_1795317849115_0","status":"success","output":"hi"}`,
			`{"type":"tool_result","tool_id":"t2","status":"error","error":{"type":"TOOL_EXECUTION_ERROR","message":"no such file"}}`,
			`{"type":"message","role":"assistant","content":"Done","delta":true}`,
			`{"type":"result","timestamp":"2026-11-22T03:23:46.326Z","status":"success","stats":{"total_tokens":16,"input_tokens":10,"output_tokens":6,"cached":2,"input":10,"duration_ms":89,"tool_calls":1}}`,
		)
		require.Equal(t, "3300763d-ebec-4148-9370-44f315111828", set["providerSessionId"])
		require.Equal(t, []string{"text:Running it.", "tool_use:run_shell_command", "tool_result:hi:false", "tool_result:no such file:true", "text:Done"}, conversation(evs))
		require.Equal(t, map[string]any{"command": "echo hi"}, evs[1]["toolInput"])
		require.Equal(t, evs[1]["toolId"], evs[2]["toolId"])
		budgets := tokenBudgets(evs)
		require.Len(t, budgets, 1)
		require.EqualValues(t, 16, budgets[0]["used"])
		require.Nil(t, budgets[0]["total"], "the CLI reports no context window")
		final, code := p.End(0)
		require.Empty(t, final)
		require.Equal(t, 0, code)
	})
	t.Run("text still pending at the end is not lost", func(t *testing.T) {
		_, _, p := parse(`{"type":"message","role":"assistant","content":"cut short","delta":true}`)
		final, code := p.End(143)
		require.Len(t, final, 1)
		require.Equal(t, "cut short", final[0].Fields["content"])
		require.Equal(t, 143, code)
	})
	t.Run("api error", func(t *testing.T) {
		evs, _, p := parse(
			`{"type":"init","session_id":"x","model":"m"}`,
			`{"type":"result","status":"error","error":{"type":"unknown","message":"[API Error: {\"error\":{\"code\":400,\"message\":\"bad request from mock\",\"status\":\"INVALID_ARGUMENT\"}}]"},"stats":{"total_tokens":0}}`,
		)
		require.Equal(t, []string{"API Error 400: bad request from mock"}, errorRows(evs))
		require.Empty(t, tokenBudgets(evs))
		_, code := p.End(144)
		require.Equal(t, 144, code, "the CLI exits with the HTTP status modulo 256")
	})
	t.Run("warnings are rows, once", func(t *testing.T) {
		evs, _, p := parse(
			`{"type":"error","severity":"warning","message":"Loop detected"}`,
			`{"type":"error","severity":"error","message":"Maximum session turns exceeded"}`,
			`{"type":"result","status":"error","error":{"type":"FatalTurnLimitedError","message":"Maximum session turns exceeded"}}`,
		)
		require.Equal(t, []string{"Loop detected", "Maximum session turns exceeded"}, errorRows(evs))
		_, code := p.End(0)
		require.Equal(t, 1, code)
	})
	t.Run("not json is shown, unknown types are not", func(t *testing.T) {
		evs, _, _ := parse(`Loaded cached credentials.`, ``, `{"type":"x"}`, `[1]`, `{"type":"tool_use","parameters":"s"}`)
		require.Equal(t, []string{"Loaded cached credentials.", "[1]"}, errorRows(evs))
		require.Equal(t, []string{"tool_use:"}, conversation(evs))
	})
}

func TestGeminiExitCodes(t *testing.T) {
	for code, want := range map[int]string{
		41:  "Gemini CLI could not authenticate: set GEMINI_API_KEY (or log in with `gemini` once) on the worker.\nInvalid auth method selected.",
		42:  "Gemini CLI rejected its input (the prompt or the arguments).\nError resuming session: Invalid session identifier \"x\".",
		44:  "Gemini CLI could not start its sandbox.",
		52:  "Gemini CLI configuration error: check settings.json in ~/.gemini and in the project.",
		53:  "The conversation reached the maximum number of turns.",
		1:   "Gemini CLI exited with code 1.",
		144: "boom",
	} {
		p := GeminiProvider{}.NewParser(app.Job{})
		p.End(code)
		stderr := map[int]string{
			41:  "Warning: 256-color support not detected.\nInvalid auth method selected.",
			42:  "Ripgrep is not available. Falling back to GrepTool.\nError resuming session: Invalid session identifier \"x\".\n",
			144: "boom\n    at throwErrorIfNotOK (file:///x.js:1:1)",
		}[code]
		require.Equal(t, want, p.(StderrFilter).Stderr(stderr), "exit %d", code)
	}
}

func FuzzGeminiParser(f *testing.F) {
	for _, seed := range []string{
		`{"type":"init","session_id":"s","model":"m"}`,
		`{"type":"message","role":"assistant","content":"x","delta":true}`,
		`{"type":"tool_use","tool_name":"t","tool_id":"i","parameters":{"a":[1]}}`,
		`{"type":"tool_result","tool_id":"i","status":"error","output":null,"error":"e"}`,
		`{"type":"result","status":"error","error":{"message":"[API Error: {]"}}`,
		`{"type":"result","status":"success","stats":{"total_tokens":1e3}}`,
		`not json`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		fuzzParser(t, GeminiProvider{}.NewParser(app.Job{SessionID: "s"}), line)
	})
}

// TestGeminiCLIRuns runs the real Gemini CLI against the mock Gemini API
// through a worker. Each CLI start costs about two seconds of Node start-up,
// so the cases are few.
func TestGeminiCLIRuns(t *testing.T) {
	api := mockgemini.New(t)
	h := providerWorker(t, GeminiProvider{}, npmbin.Find(t, "gemini", "AGENTGATE_GEMINI_BIN"), api.CLIEnv(t))
	model := app.RunOptions{Model: "gemini-2.5-flash"}

	t.Run("text answer, then resume", func(t *testing.T) {
		api.Add(mockgemini.Turn{When: "say hello", Text: "Hello from the mock", Chunks: 3})
		sess := h.submitAs(app.Gemini, app.Job{Command: "say hello", Options: model})
		evs := h.waitDone(sess.ID)
		require.Equal(t, []string{"text:Hello from the mock"}, conversation(evs))
		require.Len(t, completes(evs), 1)
		require.Equal(t, true, completes(evs)[0]["success"])
		require.NotEmpty(t, tokenBudgets(evs))
		id := h.providerSessionID(sess.ID)
		require.Equal(t, sess.ID, id, "--session-id= makes the CLI use the gateway's id")

		api.Add(mockgemini.Turn{When: "again", Text: "Second answer"})
		h.followUp(sess, "again", model)
		evs = h.waitDone(sess.ID)
		require.Equal(t, []string{"text:Hello from the mock", "text:Second answer"}, conversation(evs))
		require.Len(t, completes(evs), 2)
		require.Equal(t, true, completes(evs)[1]["success"])
		require.Equal(t, id, h.providerSessionID(sess.ID))
		reqs := api.ScriptedRequests()
		require.Equal(t, 3, reqs[len(reqs)-1].Contents, "the resumed run sends the conversation so far (--resume=)")
		require.Equal(t, "gemini-2.5-flash", reqs[len(reqs)-1].Model, "--model=")
	})

	// The gateway refuses values that look like flags; a job that holds
	// them anyway (a job is input) still cannot turn them into flags.
	t.Run("an id that looks like a flag stays a value; such a model is refused", func(t *testing.T) {
		// The gateway refuses these; a job that holds them anyway is
		// refused by the worker too, before the CLI starts.
		before := len(api.ScriptedRequests())
		sess := h.submitAs(app.Gemini, app.Job{Command: "which tools", Options: app.RunOptions{Model: "--yolo",
			Tools: app.ToolsSettings{AllowedTools: []string{"write_file"}}}})
		requireRefused(t, h.waitDone(sess.ID), "Invalid model name")
		sess = h.submitAs(app.Gemini, app.Job{Command: "which tools", Options: app.RunOptions{
			Tools: app.ToolsSettings{AllowedTools: []string{"write_file", "--yolo"}}}})
		requireRefused(t, h.waitDone(sess.ID), `Invalid tool name "--yolo"`)
		require.Len(t, api.ScriptedRequests(), before, "nothing reached the model")

		// A session exists in this folder (above): `--resume --yolo` would
		// resume the latest in YOLO mode.
		sess = h.submitAs(app.Gemini, app.Job{Command: "hello", ProviderSessionID: "--yolo", Options: model})
		evs := h.waitDone(sess.ID)
		require.Contains(t, strings.Join(errorRows(evs), "\n"), `Invalid session identifier "--yolo"`)
		require.EqualValues(t, 42, completes(evs)[0]["exitCode"])
		require.Len(t, api.ScriptedRequests(), before, "nothing reached the model")
	})

	t.Run("tool use", func(t *testing.T) {
		api.Add(
			mockgemini.Turn{When: "run echo", Text: "Running it.", FunctionCalls: []mockgemini.FunctionCall{{Name: "run_shell_command", Args: map[string]any{"command": "echo hi"}}}},
			mockgemini.Turn{When: "run echo", Text: "Done: hi"},
		)
		sess := h.submitAs(app.Gemini, app.Job{Command: "run echo", Options: app.RunOptions{Model: "gemini-2.5-flash", PermissionMode: "bypassPermissions"}})
		evs := h.waitDone(sess.ID)
		require.Equal(t, []string{"text:Running it.", "tool_use:run_shell_command", "tool_result:hi:false", "text:Done: hi"}, conversation(evs))
		require.Equal(t, true, completes(evs)[0]["success"])
	})

	t.Run("api error", func(t *testing.T) {
		api.Add(mockgemini.Turn{When: "fail please", Status: 400, ErrorMessage: "The mock refuses this request"})
		sess := h.submitAs(app.Gemini, app.Job{Command: "fail please", Options: model})
		evs := h.waitDone(sess.ID)
		c := completes(evs)
		require.Len(t, c, 1)
		require.Equal(t, false, c[0]["success"])
		require.EqualValues(t, 400%256, c[0]["exitCode"])
		require.Equal(t, []string{"API Error 400: The mock refuses this request"}, errorRows(evs))
		require.Empty(t, texts(evs))
	})

	t.Run("resume of a session that does not exist", func(t *testing.T) {
		sess := h.submitAs(app.Gemini, app.Job{Command: "hello", ProviderSessionID: "3300763d-ebec-4148-9370-44f315111828", Options: model})
		evs := h.waitDone(sess.ID)
		rows := errorRows(evs)
		require.Len(t, rows, 1)
		require.Contains(t, rows[0], "Gemini CLI rejected its input")
		require.Contains(t, rows[0], `Invalid session identifier "3300763d-ebec-4148-9370-44f315111828"`)
		c := completes(evs)
		require.EqualValues(t, 42, c[0]["exitCode"])
	})

	t.Run("abort kills the CLI", func(t *testing.T) {
		api.Add(mockgemini.Turn{When: "hang", Hang: true, Text: "partial"})
		sess := h.submitAs(app.Gemini, app.Job{Command: "hang forever", Options: model})
		require.Eventually(t, func() bool { return api.Hanging() == 1 }, time.Minute, 20*time.Millisecond)
		_, err := h.st.Abort(context.Background(), sess.ID, app.Gemini)
		require.NoError(t, err)
		require.Eventually(t, func() bool { return api.Hanging() == 0 }, 30*time.Second, 20*time.Millisecond, "the CLI's request ends when it dies")
		c := completes(h.events(sess.ID))
		require.Len(t, c, 1)
		require.Equal(t, true, c[0]["aborted"])
	})
}
