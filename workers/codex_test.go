package workers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/internal/mockopenai"
	"github.com/agentgate/agentgate/internal/npmbin"
)

func TestCodexCommand(t *testing.T) {
	base := []string{"exec", "--json", "--skip-git-repo-check"}
	cases := []struct {
		name string
		job  app.Job
		want []string
	}{
		{name: "new session", job: app.Job{SessionID: "s1"},
			want: append(base, "--sandbox", "workspace-write", "--config", `approval_policy="on-request"`, "--", "-")},
		{name: "resume with model", job: app.Job{SessionID: "s1", ProviderSessionID: "t1", Options: app.RunOptions{Model: "gpt-5"}},
			want: append(base, "--sandbox", "workspace-write", "--config", `approval_policy="on-request"`, "--model=gpt-5", "resume", "--", "t1", "-")},
		{name: "accept edits", job: app.Job{Options: app.RunOptions{PermissionMode: "acceptEdits"}},
			want: append(base, "--sandbox", "workspace-write", "--config", `approval_policy="never"`, "--", "-")},
		{name: "plan is read-only", job: app.Job{Options: app.RunOptions{PermissionMode: "plan", Tools: app.ToolsSettings{SkipPermissions: true}}},
			want: append(base, "--sandbox", "read-only", "--config", `approval_policy="never"`, "--", "-")},
		{name: "bypass", job: app.Job{Options: app.RunOptions{PermissionMode: "bypassPermissions"}},
			want: append(base, "--dangerously-bypass-approvals-and-sandbox", "--", "-")},
		{name: "skip permissions", job: app.Job{Options: app.RunOptions{Tools: app.ToolsSettings{SkipPermissions: true}}},
			want: append(base, "--dangerously-bypass-approvals-and-sandbox", "--", "-")},
		{name: "images", job: app.Job{ProviderSessionID: "t1", ImageFiles: []string{"/tmp/i/image_1.png", "/tmp/i/image_2.jpg"}},
			want: append(base, "--sandbox", "workspace-write", "--config", `approval_policy="on-request"`, "resume", "--image=/tmp/i/image_1.png", "--image=/tmp/i/image_2.jpg", "--", "t1", "-")},
		{name: "images of a new thread", job: app.Job{ImageFiles: []string{"/tmp/i/image_1.png"}},
			want: append(base, "--sandbox", "workspace-write", "--config", `approval_policy="on-request"`, "--image=/tmp/i/image_1.png", "--", "-")},
		// Values no gateway accepts, as a job from the queue could still
		// hold them: the model stays --model's value, the id a positional.
		{name: "flag-like values", job: app.Job{ProviderSessionID: "--last", Options: app.RunOptions{Model: "--version"}},
			want: append(base, "--sandbox", "workspace-write", "--config", `approval_policy="on-request"`, "--model=--version", "resume", "--", "--last", "-")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.job.Command = "the prompt"
			args, stdin := CodexProvider{}.Command(tc.job, nil)
			require.Equal(t, tc.want, args)
			require.Equal(t, "the prompt", string(stdin), "the prompt goes on stdin (`-`)")
		})
	}
}

// The lines are the CLI's own output (see internal/mockopenai/CLI_FACTS.md).
func TestCodexParser(t *testing.T) {
	parse := func(lines ...string) ([]map[string]any, map[string]string, Parser) {
		p := CodexProvider{}.NewParser(app.Job{SessionID: "s", RunID: "r1"})
		evs, set := parseLines(t, p, lines...)
		return evs, set, p
	}
	t.Run("thread id, reasoning, message, usage", func(t *testing.T) {
		evs, set, p := parse(
			`{"type":"thread.started","thread_id":"01a20141-9119-7e63-9ff3-811c31a89a67"}`,
			`{"type":"turn.started"}`,
			`{"type":"item.completed","item":{"id":"item_1","type":"reasoning","text":"thinking hard"}}`,
			`{"type":"item.completed","item":{"id":"item_2","type":"agent_message","text":"Hello from mock"}}`,
			`{"type":"turn.completed","usage":{"input_tokens":10,"cached_input_tokens":4,"cache_write_input_tokens":0,"output_tokens":8,"reasoning_output_tokens":0}}`,
		)
		require.Equal(t, "01a20141-9119-7e63-9ff3-811c31a89a67", set["providerSessionId"])
		require.Equal(t, []string{"thinking:thinking hard", "text:Hello from mock"}, conversation(evs))
		budgets := tokenBudgets(evs)
		require.Len(t, budgets, 1)
		require.EqualValues(t, 18, budgets[0]["used"])
		require.EqualValues(t, 200000, budgets[0]["total"])
		require.EqualValues(t, 4, budgets[0]["cacheReadTokens"])
		_, code := p.End(0)
		require.Equal(t, 0, code)
	})
	t.Run("command execution", func(t *testing.T) {
		evs, _, _ := parse(
			`{"type":"item.started","item":{"id":"item_2","type":"command_execution","command":"/bin/bash -lc 'echo hi'","aggregated_output":"","exit_code":null,"status":"in_progress"}}`,
			`{"type":"item.completed","item":{"id":"item_2","type":"command_execution","command":"/bin/bash -lc 'echo hi'","aggregated_output":"hi\n","exit_code":0,"status":"completed"}}`,
			`{"type":"item.completed","item":{"id":"item_3","type":"command_execution","command":"false","aggregated_output":"","exit_code":1,"status":"failed"}}`,
			`{"type":"item.completed","item":{"id":"item_4","type":"command_execution","command":"rm -rf x","aggregated_output":"","exit_code":null,"status":"declined"}}`,
		)
		require.Equal(t, []string{"tool_use:Bash", "tool_result:hi\n:false", "tool_use:Bash", "tool_result::true",
			"tool_use:Bash", "tool_result:The command was declined: it needed an approval nobody is asked for here (permission mode bypassPermissions runs it).:true"}, conversation(evs))
		require.Equal(t, map[string]any{"command": "/bin/bash -lc 'echo hi'"}, evs[0]["toolInput"])
		require.Equal(t, "r1:item_2", evs[0]["toolId"])
		require.Equal(t, evs[0]["toolId"], evs[1]["toolId"])
	})
	t.Run("other tools", func(t *testing.T) {
		evs, _, _ := parse(
			`{"type":"item.completed","item":{"id":"i1","type":"file_change","changes":[{"path":"a.txt","kind":"add"}],"status":"completed"}}`,
			`{"type":"item.started","item":{"id":"i2","type":"mcp_tool_call","server":"docs","tool":"search","arguments":{"q":"x"},"status":"in_progress"}}`,
			`{"type":"item.completed","item":{"id":"i2","type":"mcp_tool_call","server":"docs","tool":"search","arguments":{"q":"x"},"result":{"content":[]},"error":null,"status":"completed"}}`,
			`{"type":"item.completed","item":{"id":"i3","type":"mcp_tool_call","server":"docs","tool":"fetch","arguments":{},"error":{"message":"boom"},"status":"failed"}}`,
			`{"type":"item.started","item":{"id":"i4","type":"web_search","query":""}}`,
			`{"type":"item.completed","item":{"id":"i4","type":"web_search","query":"golang"}}`,
			`{"type":"item.updated","item":{"id":"i5","type":"todo_list","items":[{"text":"a","completed":false}]}}`,
			`{"type":"item.completed","item":{"id":"i5","type":"todo_list","items":[{"text":"a","completed":true}]}}`,
			`{"type":"item.completed","item":{"id":"i6","type":"collab_tool_call"}}`,
		)
		require.Equal(t, []string{
			"tool_use:FileChanges", `tool_result:[map[kind:add path:a.txt]]:false`,
			"tool_use:search", "tool_result:map[content:[]]:false",
			"tool_use:fetch", "tool_result:boom:true",
			"tool_use:WebSearch", "tool_result:golang:false",
			"tool_use:TodoList", "tool_result:[map[completed:true text:a]]:false",
			"tool_use:collab_tool_call", "tool_result::false",
		}, conversation(evs))
		require.Equal(t, "docs", evs[2]["server"])
		require.Equal(t, map[string]any{"query": "golang"}, evs[6]["toolInput"], "the query, known once the search completed")
	})
	t.Run("api error is one error row and fails the run", func(t *testing.T) {
		evs, _, p := parse(
			`{"type":"thread.started","thread_id":"t"}`,
			`{"type":"item.completed","item":{"id":"item_0","type":"error","message":"Model metadata for `+"`mock-model`"+` not found."}}`,
			`{"type":"error","message":"Reconnecting... 1/5 (stream disconnected before completion)"}`,
			`{"type":"error","message":"{\"error\":{\"code\":null,\"message\":\"bad thing\",\"param\":null,\"type\":\"invalid_request_error\"}}"}`,
			`{"type":"turn.failed","error":{"message":"{\"error\":{\"code\":null,\"message\":\"bad thing\",\"param\":null,\"type\":\"invalid_request_error\"}}"}}`,
		)
		require.Equal(t, []string{"Model metadata for `mock-model` not found.", "bad thing"}, errorRows(evs))
		require.Equal(t, "status", evs[1]["kind"])
		require.Equal(t, "Reconnecting... 1/5 (stream disconnected before completion)", evs[1]["text"])
		_, code := p.End(0)
		require.Equal(t, 1, code, "turn.failed fails the run whatever the exit code")
	})
	t.Run("a retry's notice gives way once the run goes on", func(t *testing.T) {
		// Claude Code UI's frontend keeps a status text until another one
		// replaces it: the notice stayed on its indicator to the run's end.
		evs, _, _ := parse(
			`{"type":"thread.started","thread_id":"t"}`,
			`{"type":"error","message":"Reconnecting... 1/5 (stream disconnected before completion)"}`,
			`{"type":"error","message":"Reconnecting... 2/5 (stream disconnected before completion)"}`,
			`{"type":"item.completed","item":{"id":"item_0","type":"agent_message","text":"Hi"}}`,
			`{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"Again"}}`,
		)
		var got []string
		for _, e := range evs {
			if e["kind"] == "status" {
				got = append(got, "status:"+e["text"].(string))
			} else {
				got = append(got, fmt.Sprint(e["kind"], ":", e["content"]))
			}
		}
		require.Equal(t, []string{
			"status:Reconnecting... 1/5 (stream disconnected before completion)",
			"status:Reconnecting... 2/5 (stream disconnected before completion)",
			"status:" + codexWorking, "text:Hi", "text:Again",
		}, got)
	})
	t.Run("not json is shown, unknown types are not", func(t *testing.T) {
		evs, set, _ := parse(`Warning: odd`, ``, `{"type":"turn.started"}`, `{"type":"item.updated","item":{"id":"x","type":"agent_message"}}`, `{"type":"x"}`, `[1]`, `{"type":"item.completed","item":null}`)
		require.Equal(t, []string{"Warning: odd", "[1]"}, errorRows(evs))
		require.Empty(t, set)
	})
}

func TestCodexStderr(t *testing.T) {
	p := CodexProvider{}.NewParser(app.Job{}).(StderrFilter)
	require.Equal(t, "thread/resume: no rollout found", p.Stderr("WARNING: proceeding, even though …\nError: thread/resume: no rollout found\n\nStack backtrace:\n   0: <unknown>"))
	require.Equal(t, "panicked somewhere", p.Stderr("Reading additional input from stdin...\npanicked somewhere\nStack backtrace:\n  0: x"))
	require.Equal(t, "", p.Stderr("WARNING: proceeding, even though …"))
}

func FuzzCodexParser(f *testing.F) {
	for _, seed := range []string{
		`{"type":"thread.started","thread_id":"t"}`,
		`{"type":"item.started","item":{"id":"i","type":"command_execution","command":"ls"}}`,
		`{"type":"item.completed","item":{"id":"i","type":"command_execution","exit_code":2,"aggregated_output":"x"}}`,
		`{"type":"item.completed","item":{"id":"i","type":"mcp_tool_call","arguments":[1],"error":"e"}}`,
		`{"type":"item.completed","item":{"id":"i","type":"file_change","changes":"x"}}`,
		`{"type":"turn.completed","usage":{"input_tokens":-1}}`,
		`{"type":"turn.failed","error":"plain"}`,
		`{"type":"error","message":"{\"error\":{}}"}`,
		`not json`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		fuzzParser(t, CodexProvider{}.NewParser(app.Job{SessionID: "s", RunID: "r"}), line)
	})
}

// TestCodexCLIRuns runs the real Codex CLI against the mock Responses API
// through a worker.
func TestCodexCLIRuns(t *testing.T) {
	api := mockopenai.New(t)
	h := providerWorker(t, CodexProvider{}, npmbin.Find(t, "codex", "AGENTGATE_CODEX_BIN"), api.CLIEnv(t))

	t.Run("text answer, then resume", func(t *testing.T) {
		api.Add(mockopenai.Turn{When: "say hello", Reasoning: "A greeting is due.", Text: "Hello from the mock"})
		sess := h.submitAs(app.Codex, app.Job{Command: "say hello"})
		evs := h.waitDone(sess.ID)
		require.Equal(t, []string{"thinking:A greeting is due.", "text:Hello from the mock"}, conversation(evs))
		require.Len(t, completes(evs), 1)
		require.Equal(t, true, completes(evs)[0]["success"])
		require.NotEmpty(t, tokenBudgets(evs))
		thread := h.providerSessionID(sess.ID)
		require.NotEmpty(t, thread, "thread.started gives the provider session id")

		api.Add(mockopenai.Turn{When: "again", Text: "Second answer"})
		h.followUp(sess, "again", app.RunOptions{})
		evs = h.waitDone(sess.ID)
		require.Equal(t, []string{"thinking:A greeting is due.", "text:Hello from the mock", "text:Second answer"}, conversation(evs))
		require.Len(t, completes(evs), 2)
		require.Equal(t, thread, h.providerSessionID(sess.ID), "a resumed thread keeps its id")
		reqs := api.ScriptedRequests()
		require.Equal(t, 3, reqs[len(reqs)-1].Messages, "the resumed run sends the conversation so far")
	})

	t.Run("tool use", func(t *testing.T) {
		api.Add(
			mockopenai.Turn{When: "run echo", Text: "Running it.", ToolCalls: []mockopenai.ToolCall{{Arguments: map[string]any{"cmd": "echo hi"}}}},
			mockopenai.Turn{When: "run echo", Text: "Done: hi"},
		)
		sess := h.submitAs(app.Codex, app.Job{Command: "run echo", Options: app.RunOptions{PermissionMode: "acceptEdits"}})
		evs := h.waitDone(sess.ID)
		require.Equal(t, []string{"text:Running it.", "tool_use:Bash", "tool_result:hi\n:false", "text:Done: hi"}, conversation(evs))
		require.Equal(t, true, completes(evs)[0]["success"])
	})

	t.Run("images reach the model", func(t *testing.T) {
		api.Add(mockopenai.Turn{When: "what is this", Text: "a pixel"})
		sess := h.submitAs(app.Codex, app.Job{Command: "what is this", Options: app.RunOptions{Images: []app.Image{{Data: onePixelPNG}}}})
		evs := h.waitDone(sess.ID)
		require.Equal(t, []string{"text:a pixel"}, conversation(evs))
		reqs := api.ScriptedRequests()
		require.Contains(t, string(reqs[len(reqs)-1].Body), `"type":"input_image"`, "the CLI attached the image file")

		// After resume too.
		api.Add(mockopenai.Turn{When: "and this", Text: "another pixel"})
		h.followUp(sess, "and this", app.RunOptions{Images: []app.Image{{Data: onePixelPNG}}})
		evs = h.waitDone(sess.ID)
		require.Equal(t, "text:another pixel", conversation(evs)[len(conversation(evs))-1])
		reqs = api.ScriptedRequests()
		require.Equal(t, 2, strings.Count(string(reqs[len(reqs)-1].Body), `"type":"input_image"`), "both images are in the resumed conversation")
	})

	t.Run("api error", func(t *testing.T) {
		api.Add(mockopenai.Turn{When: "fail please", Status: 400, ErrorMessage: "The mock refuses this request"})
		sess := h.submitAs(app.Codex, app.Job{Command: "fail please"})
		evs := h.waitDone(sess.ID)
		c := completes(evs)
		require.Len(t, c, 1)
		require.Equal(t, false, c[0]["success"])
		require.EqualValues(t, 1, c[0]["exitCode"])
		require.Contains(t, errorRows(evs), "The mock refuses this request")
		require.Empty(t, texts(evs))
	})

	t.Run("resume of a thread that does not exist", func(t *testing.T) {
		sess := h.submitAs(app.Codex, app.Job{Command: "hello", ProviderSessionID: "01a20141-0000-7000-8000-000000000000"})
		evs := h.waitDone(sess.ID)
		require.Equal(t, []string{"thread/resume: thread/resume failed: no rollout found for thread id 01a20141-0000-7000-8000-000000000000 (code -32600)"}, errorRows(evs),
			"the CLI's error line, without its warnings and backtrace")
		require.Equal(t, false, completes(evs)[0]["success"])
	})

	// The gateway refuses values that look like flags; a job that holds
	// them anyway (a job is input) still cannot turn them into flags.
	t.Run("a thread id that looks like a flag stays a value; such a model is refused", func(t *testing.T) {
		// Threads exist in this folder (above): `resume --last` would
		// continue the newest. After `--` it is a thread name, and a name
		// that names no thread starts a new one.
		api.Add(mockopenai.Turn{When: "fresh start", Text: "Fresh answer"})
		sess := h.submitAs(app.Codex, app.Job{Command: "fresh start", ProviderSessionID: "--last"})
		evs := h.waitDone(sess.ID)
		require.Equal(t, []string{"text:Fresh answer"}, conversation(evs))
		reqs := api.ScriptedRequests()
		require.Equal(t, 1, reqs[len(reqs)-1].Messages, "a new thread: the newest one was not resumed")
		require.NotEqual(t, "--last", h.providerSessionID(sess.ID))

		sess = h.submitAs(app.Codex, app.Job{Command: "fresh start", Options: app.RunOptions{Model: "--version"}})
		requireRefused(t, h.waitDone(sess.ID), "Invalid model name")
		require.Len(t, api.ScriptedRequests(), len(reqs), "nothing reached the model")
	})

	t.Run("abort kills the CLI", func(t *testing.T) {
		api.Add(mockopenai.Turn{When: "hang", Hang: true, Text: "partial"})
		sess := h.submitAs(app.Codex, app.Job{Command: "hang forever"})
		require.Eventually(t, func() bool { return api.Hanging() == 1 }, time.Minute, 20*time.Millisecond)
		_, err := h.st.Abort(context.Background(), sess.ID, app.Codex)
		require.NoError(t, err)
		require.Eventually(t, func() bool { return api.Hanging() == 0 }, 30*time.Second, 20*time.Millisecond, "the CLI's request ends when it dies")
		c := completes(h.events(sess.ID))
		require.Len(t, c, 1)
		require.Equal(t, true, c[0]["aborted"])
	})
}
