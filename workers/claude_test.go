package workers

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/internal/mockanthropic"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestClaudeResumesOnlySavedConversations: a session whose first run died
// before the CLI saved the conversation starts it again rather than failing
// every later run with "No conversation found".
func TestClaudeResumesOnlySavedConversations(t *testing.T) {
	home := t.TempDir()
	env := []string{"HOME=/elsewhere", "HOME=" + home}
	job := app.Job{SessionID: "6f1c0b4e-1b2a-4c3d-9e8f-001122334455", ProviderSessionID: "6f1c0b4e-1b2a-4c3d-9e8f-001122334455"}
	args, _ := ClaudeProvider{}.Command(job, env)
	require.Equal(t, "--session-id="+job.SessionID, args[len(claudeBase)])

	dir := filepath.Join(home, ".claude", "projects", "-work-proj")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, job.SessionID+".jsonl"), []byte("{}\n"), 0o600))
	args, _ = ClaudeProvider{}.Command(job, env)
	require.Equal(t, "--resume="+job.SessionID, args[len(claudeBase)])

	// A conversation from outside the gateway is always resumed: the CLI
	// says so itself if it does not exist.
	outside := app.Job{SessionID: job.SessionID, ProviderSessionID: "other"}
	args, _ = ClaudeProvider{}.Command(outside, env)
	require.Equal(t, "--resume=other", args[len(claudeBase)])

	cfg := t.TempDir()
	args, _ = ClaudeProvider{}.Command(job, append(env, "CLAUDE_CONFIG_DIR="+cfg))
	require.Equal(t, "--session-id="+job.SessionID, args[len(claudeBase)], "CLAUDE_CONFIG_DIR replaces ~/.claude")
}

// claudeBase starts every Claude command line: print mode with the
// stream-json control channel.
var claudeBase = []string{"-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose", "--permission-prompt-tool", "stdio"}

func TestClaudeCommand(t *testing.T) {
	cases := []struct {
		name string
		job  app.Job
		want []string
	}{
		{name: "new session", job: app.Job{SessionID: "s1"},
			want: []string{"--session-id=s1"}},
		{name: "resume with model and mode", job: app.Job{SessionID: "s1", ProviderSessionID: "p1", Options: app.RunOptions{Model: "sonnet", PermissionMode: "acceptEdits"}},
			want: []string{"--resume=p1", "--model=sonnet", "--permission-mode=acceptEdits"}},
		{name: "skip permissions", job: app.Job{SessionID: "s1", Options: app.RunOptions{Tools: app.ToolsSettings{SkipPermissions: true}}},
			want: []string{"--session-id=s1", "--permission-mode=bypassPermissions"}},
		{name: "skip permissions keeps plan", job: app.Job{SessionID: "s1", Options: app.RunOptions{PermissionMode: "plan", Tools: app.ToolsSettings{SkipPermissions: true}}},
			want: []string{"--session-id=s1", "--permission-mode=plan"}},
		{name: "default mode is not passed", job: app.Job{SessionID: "s1", Options: app.RunOptions{PermissionMode: "default"}},
			want: []string{"--session-id=s1"}},
		{name: "tools", job: app.Job{SessionID: "s1", Options: app.RunOptions{Tools: app.ToolsSettings{AllowedTools: []string{"Read", "Bash(git log:*)"}, DisallowedTools: []string{"Write"}}}},
			want: []string{"--session-id=s1", "--allowedTools=Read", "--allowedTools=Bash(git log:*)", "--disallowedTools=Write"}},
		// Values no gateway accepts, as a job from the queue could still
		// hold them: each stays the value of its flag.
		{name: "flag-like values", job: app.Job{SessionID: "s1", ProviderSessionID: "--continue", Options: app.RunOptions{Model: "--version", Tools: app.ToolsSettings{AllowedTools: []string{"-c"}}}},
			want: []string{"--resume=--continue", "--model=--version", "--allowedTools=-c"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.job.Command = "the prompt"
			args, stdin := ClaudeProvider{}.Command(tc.job, nil)
			require.Equal(t, append(append([]string{}, claudeBase...), tc.want...), args)
			require.JSONEq(t, `{"type":"user","message":{"role":"user","content":"the prompt"},"parent_tool_use_id":null,"session_id":""}`, string(stdin),
				"the prompt goes on stdin as a user message, never in an argument")
			require.True(t, strings.HasSuffix(string(stdin), "}\n"), "one line")
		})
	}
	args, _ := ClaudeProvider{}.Command(app.Job{SessionID: "s1", Command: "look", ImageFiles: []string{"/tmp/i/image_1.png"}}, nil)
	require.Equal(t, "--add-dir=/tmp/i", args[len(args)-1], "the images' folder is opened to the model")
}

// parsed runs lines through a Claude parser and returns what it produced.
func parsed(lines ...string) ([]map[string]any, map[string]string, *claudeParser) {
	p := ClaudeProvider{}.NewParser(app.Job{SessionID: "s"}).(*claudeParser)
	var out []map[string]any
	set := map[string]string{}
	for _, l := range lines {
		o := p.Line([]byte(l))
		for _, ev := range o.Events {
			body, err := ev.Body()
			if err != nil {
				panic(err)
			}
			var m map[string]any
			if err := json.Unmarshal(body, &m); err != nil {
				panic(err)
			}
			out = append(out, m)
		}
		for k, v := range o.Set {
			set[k] = v
		}
	}
	return out, set, p
}

// The lines below are the CLI's own output shapes, trimmed (see
// internal/mockanthropic/CLI_FACTS.md).
func TestClaudeParser(t *testing.T) {
	t.Run("init records the provider session id", func(t *testing.T) {
		evs, set, _ := parsed(`{"type":"system","subtype":"init","cwd":"/w","session_id":"abc","model":"m"}`)
		require.Empty(t, evs)
		require.Equal(t, "abc", set["providerSessionId"])
	})
	t.Run("assistant blocks", func(t *testing.T) {
		evs, _, _ := parsed(
			`{"type":"assistant","message":{"content":[{"type":"thinking","thinking":"hmm","signature":"x"}],"usage":{"input_tokens":10,"output_tokens":2,"cache_read_input_tokens":5,"cache_creation_input_tokens":1}},"parent_tool_use_id":null,"session_id":"abc"}`,
			`{"type":"assistant","message":{"content":[{"type":"text","text":"Running it."}]},"parent_tool_use_id":null}`,
			`{"type":"assistant","message":{"content":[{"id":"toolu_01","input":{"command":"echo hi"},"name":"Bash","type":"tool_use"}]},"parent_tool_use_id":"toolu_parent"}`,
		)
		require.Len(t, evs, 4)
		require.Equal(t, "thinking", evs[0]["kind"])
		require.Equal(t, "hmm", evs[0]["content"])
		require.Equal(t, "status", evs[1]["kind"])
		require.Equal(t, "token_budget", evs[1]["text"])
		budget := evs[1]["tokenBudget"].(map[string]any)
		require.EqualValues(t, 18, budget["used"])
		require.EqualValues(t, 16, budget["inputTokens"])
		require.EqualValues(t, 160000, budget["total"])
		require.Equal(t, map[string]any{"kind": "text", "role": "assistant", "content": "Running it."}, pick(evs[2], "kind", "role", "content"))
		require.Equal(t, "tool_use", evs[3]["kind"])
		require.Equal(t, "Bash", evs[3]["toolName"])
		require.Equal(t, "toolu_01", evs[3]["toolId"])
		require.Equal(t, map[string]any{"command": "echo hi"}, evs[3]["toolInput"])
		require.Equal(t, "toolu_parent", evs[3]["parentToolUseId"])
	})
	t.Run("tool results", func(t *testing.T) {
		evs, _, _ := parsed(
			`{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_01","type":"tool_result","content":"hi","is_error":false}]},"tool_use_result":{"stdout":"hi"}}`,
			`{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_02","type":"tool_result","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}],"is_error":true}]}}`,
		)
		require.Len(t, evs, 2)
		require.Equal(t, map[string]any{"kind": "tool_result", "toolId": "toolu_01", "content": "hi", "isError": false}, pick(evs[0], "kind", "toolId", "content", "isError"))
		require.Equal(t, "a\nb", evs[1]["content"])
		require.Equal(t, true, evs[1]["isError"])
		require.NotContains(t, evs[0], "toolUseResult", "a Bash result's account repeats its content")
	})
	t.Run("a Grep or Glob result keeps its count and files", func(t *testing.T) {
		// Claude Code UI's frontend titles these cards "Found N files" from
		// toolUseResult alone, and lists its filenames.
		many := make([]string, maxResultFiles+5)
		for i := range many {
			many[i] = fmt.Sprintf("f%d.go", i)
		}
		manyJSON, err := json.Marshal(many)
		require.NoError(t, err)
		evs, _, _ := parsed(
			`{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_g","type":"tool_result","content":"Found 2 files\na.go\nb.go"}]},"tool_use_result":{"mode":"files_with_matches","filenames":["a.go","b.go"],"numFiles":2}}`,
			`{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_m","type":"tool_result","content":"many"}]},"tool_use_result":{"filenames":`+string(manyJSON)+`,"durationMs":3}}`,
			`{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_e","type":"tool_result","content":"Error: no","is_error":true}]},"tool_use_result":"Error: no"}`,
			`{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_r","type":"tool_result","content":"text"}]},"tool_use_result":{"type":"text","file":{"filePath":"/w/a","content":"text"}}}`,
		)
		require.Len(t, evs, 4)
		require.Equal(t, map[string]any{"filenames": []any{"a.go", "b.go"}, "numFiles": float64(2)}, evs[0]["toolUseResult"])
		two, _, _ := parsed(`{"type":"user","message":{"role":"user","content":[{"tool_use_id":"a","type":"tool_result","content":"x"},{"tool_use_id":"b","type":"tool_result","content":"y"}]},"tool_use_result":{"numFiles":1,"filenames":["x"]}}`)
		require.Len(t, two, 2)
		for _, e := range two {
			require.NotContains(t, e, "toolUseResult", "whose result the account is of is unknown")
		}
		got := evs[1]["toolUseResult"].(map[string]any)
		require.EqualValues(t, maxResultFiles+5, got["numFiles"], "the count stays whole")
		require.Len(t, got["filenames"], maxResultFiles)
		require.NotContains(t, evs[2], "toolUseResult")
		require.NotContains(t, evs[3], "toolUseResult", "a Read's file is in the content already")
	})
	t.Run("api error is an error row, once", func(t *testing.T) {
		evs, _, p := parsed(
			`{"type":"system","subtype":"init","session_id":"abc"}`,
			`{"type":"assistant","message":{"model":"<synthetic>","content":[{"type":"text","text":"API Error: 500 Internal server error."}]},"error":"server_error"}`,
			`{"type":"result","subtype":"success","is_error":true,"api_error_status":500,"result":"API Error: 500 Internal server error.","usage":{"input_tokens":0,"output_tokens":0}}`,
		)
		require.Equal(t, []string{"error", "status"}, kindsOf(evs))
		require.Equal(t, "API Error: 500 Internal server error.", evs[0]["content"])
		_, code := p.End(0)
		require.Equal(t, 1, code, "is_error fails the run even if the CLI exited 0")
	})
	t.Run("not logged in", func(t *testing.T) {
		evs, _, p := parsed(
			`{"type":"assistant","message":{"content":[{"type":"text","text":"Not logged in · Please run /login"}]},"error":"authentication_failed"}`,
			`{"type":"result","subtype":"success","is_error":true,"result":"Not logged in · Please run /login"}`,
		)
		require.Equal(t, []string{"error"}, kindsOf(evs))
		require.Equal(t, "Not logged in · Please run /login", evs[0]["content"])
		_, code := p.End(1)
		require.Equal(t, 1, code)
	})
	t.Run("missing conversation", func(t *testing.T) {
		evs, _, _ := parsed(`{"type":"result","subtype":"error_during_execution","is_error":true,"num_turns":0,"session_id":"x","errors":["No conversation found with session ID: x"]}`)
		require.Equal(t, []string{"error"}, kindsOf(evs))
		require.Equal(t, "No conversation found with session ID: x", evs[0]["content"])
	})
	t.Run("success keeps exit code", func(t *testing.T) {
		evs, _, p := parsed(`{"type":"result","subtype":"success","is_error":false,"result":"done"}`)
		require.Empty(t, evs)
		_, code := p.End(0)
		require.Equal(t, 0, code)
	})
	t.Run("not json is shown", func(t *testing.T) {
		evs, _, _ := parsed(`Warning: something odd`, ``, `{"type":"stream_event","event":{}}`, `{"type":"unknown"}`, `[1,2]`)
		require.Equal(t, []string{"error", "error"}, kindsOf(evs))
	})
	t.Run("control channel", func(t *testing.T) {
		p := ClaudeProvider{}.NewParser(app.Job{SessionID: "s"})
		o := p.Line([]byte(`{"type":"control_request","request_id":"424e9696-7cc9","request":{"subtype":"can_use_tool","tool_name":"Bash","display_name":"Bash","input":{"command":"touch x"},"permission_suggestions":[],"tool_use_id":"toolu_touch"}}`))
		require.Empty(t, o.Events)
		require.Equal(t, &ToolAsk{ID: "424e9696-7cc9", Tool: "Bash", Input: json.RawMessage(`{"command":"touch x"}`)}, o.Ask)

		o = p.Line([]byte(`{"type":"control_cancel_request","request_id":"424e9696-7cc9"}`))
		require.Equal(t, "424e9696-7cc9", o.Withdrawn)

		o = p.Line([]byte(`{"type":"control_request","request_id":"r2","request":{"subtype":"hook_callback","callback_id":"c"}}`))
		require.Nil(t, o.Ask)
		require.JSONEq(t, `{"type":"control_response","response":{"subtype":"error","request_id":"r2","error":"agentgate does not serve control requests of subtype \"hook_callback\""}}`, string(o.Reply),
			"a request nobody serves is refused, so the CLI does not wait for it")

		o = p.Line([]byte(`{"type":"control_response","response":{"subtype":"success","request_id":"int1"}}`))
		require.Equal(t, Output{}, o)

		o = p.Line([]byte(`{"type":"result","subtype":"success","is_error":false,"result":"done"}`))
		require.True(t, o.EndInput, "stdin is closed after the result, or the CLI never exits")
	})
	t.Run("answers", func(t *testing.T) {
		ask := ToolAsk{ID: "r1", Tool: "Bash", Input: json.RawMessage(`{"command":"touch x"}`)}
		require.JSONEq(t, `{"type":"control_response","response":{"subtype":"success","request_id":"r1","response":{"behavior":"allow","updatedInput":{"command":"touch x"}}}}`,
			string(ClaudeProvider{}.Answer(ask, true, nil, "")), "allow without input sends the original back")
		require.JSONEq(t, `{"type":"control_response","response":{"subtype":"success","request_id":"r1","response":{"behavior":"allow","updatedInput":{"command":"touch y"}}}}`,
			string(ClaudeProvider{}.Answer(ask, true, json.RawMessage(`{"command":"touch y"}`), "")))
		require.JSONEq(t, `{"type":"control_response","response":{"subtype":"success","request_id":"r1","response":{"behavior":"deny","message":"no"}}}`,
			string(ClaudeProvider{}.Answer(ask, false, nil, "no")))
		var interrupt struct {
			Type    string
			Request struct{ Subtype string }
		}
		require.NoError(t, json.Unmarshal(ClaudeProvider{}.Interrupt(), &interrupt))
		require.Equal(t, "control_request", interrupt.Type)
		require.Equal(t, "interrupt", interrupt.Request.Subtype)
	})
	t.Run("lines decode as encoding/json decoded them", func(t *testing.T) {
		// encoding/json/v2 refuses these by default; encoding/json, which
		// the parser used before, took the last name and replaced bytes.
		evs, _, _ := parsed(
			`{"type":"assistant","message":{"content":[{"type":"text","text":"first","text":"last"}]}}`,
			"{\"type\":\"assistant\",\"message\":{\"content\":[{\"type\":\"text\",\"text\":\"bad \xff byte\"}]}}",
			`{"type":"user","message":{"content":"typed"},"type":"user"}`,
		)
		require.Equal(t, []string{"last", "bad \ufffd byte", "typed"}, []string{evs[0]["content"].(string), evs[1]["content"].(string), evs[2]["content"].(string)})
		// A block of the wrong shape makes the line an error row that shows it.
		evs, _, _ = parsed(`{"type":"assistant","message":{"content":[{"type":"text","text":7}]}}`)
		require.Equal(t, []string{"error"}, kindsOf(evs))
		require.Contains(t, evs[0]["content"], `"text":7`)
	})
	t.Run("provider fields cannot forge the envelope", func(t *testing.T) {
		evs, _, _ := parsed(`{"type":"assistant","message":{"content":[{"type":"tool_use","id":"t","name":"X","input":{"seq":1,"kind":"complete"}}]}}`)
		require.Len(t, evs, 1)
		require.Equal(t, "tool_use", evs[0]["kind"])
		require.Nil(t, evs[0]["seq"])
	})
}

func FuzzClaudeParser(f *testing.F) {
	for _, seed := range []string{
		`{"type":"system","subtype":"init","session_id":"abc"}`,
		`{"type":"assistant","message":{"content":[{"type":"text","text":"x"},{"type":"tool_use","id":"t","name":"n","input":{}}],"usage":{"input_tokens":1}}}`,
		`{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"image"}]}]}}`,
		`{"type":"user","message":{"content":"plain"}}`,
		`{"type":"result","is_error":true,"errors":["e"]}`,
		`{"type":"assistant","message":{"content":null},"error":"x"}`,
		`{"type":"control_request","request_id":"r","request":{"subtype":"can_use_tool","tool_name":"Bash","input":{"command":"ls"}}}`,
		`{"type":"control_request","request_id":"r","request":null}`,
		`{"type":"control_cancel_request","request_id":"r"}`,
		`not json`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		p := ClaudeProvider{}.NewParser(app.Job{SessionID: "s"})
		out := p.Line(line)
		for _, ev := range out.Events {
			body, err := ev.Body()
			if err != nil {
				t.Fatalf("event of %q does not encode: %v", line, err)
			}
			if !json.Valid(body) {
				t.Fatalf("invalid JSON %s", body)
			}
		}
		p.End(0)
	})
}

func pick(m map[string]any, keys ...string) map[string]any {
	out := map[string]any{}
	for _, k := range keys {
		out[k] = m[k]
	}
	return out
}

func kindsOf(evs []map[string]any) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e["kind"].(string))
	}
	return out
}

// claudeWorker starts a worker that runs the real Claude CLI with env.
func claudeWorker(t *testing.T, st *store.Store, env []string) *harness {
	t.Helper()
	return runWorker(t, st, Config{
		Providers: map[app.Provider]Provider{app.Claude: ClaudeProvider{}},
		Bins:      map[app.Provider]string{app.Claude: mockanthropic.ClaudeBin(t)},
		Env:       env,
	})
}

func (h *harness) submitJob(job app.Job) app.Session {
	h.t.Helper()
	sess := app.Session{ID: job.SessionID, Owner: "alice", Provider: app.Claude, ProjectPath: h.dir}
	job.Owner, job.Provider, job.ProjectPath = "alice", app.Claude, h.dir
	_, err := h.st.Accept(context.Background(), &store.AcceptRequest{Session: sess, New: job.NewSession, Job: job})
	require.NoError(h.t, err)
	return sess
}

func TestClaudeCLIRuns(t *testing.T) {
	api := mockanthropic.New(t)
	env := api.CLIEnv(t)
	h := claudeWorker(t, storetest.New(t, storetest.Redis(t)), append(env, "CLAUDE_CODE_MAX_RETRIES=0"))

	t.Run("text answer", func(t *testing.T) {
		api.Add(mockanthropic.Turn{When: "say hello", Text: "Hello from the mock"})
		sess := h.submitJob(app.Job{SessionID: app.NewID(), Command: "say hello", NewSession: true, Options: app.RunOptions{Model: "claude-sonnet-4-5"}})
		evs := h.waitDone(sess.ID)
		require.Equal(t, []string{"Hello from the mock"}, texts(evs))
		c := completes(evs)
		require.Len(t, c, 1)
		require.Equal(t, true, c[0]["success"])
		got, err := h.st.Session(context.Background(), sess.ID)
		require.NoError(t, err)
		require.Equal(t, sess.ID, got.ProviderSessionID, "--session-id= makes the CLI use the gateway's id")
		reqs := api.ScriptedRequests()
		require.Equal(t, "claude-sonnet-4-5", reqs[len(reqs)-1].Model, "--model=")

		// A second run resumes the same conversation.
		api.Add(mockanthropic.Turn{When: "again", Text: "Second answer"})
		_, err = h.st.Accept(context.Background(), &store.AcceptRequest{Session: app.Session{ID: sess.ID, Owner: "alice", Provider: app.Claude, ProjectPath: h.dir},
			Job: app.Job{SessionID: sess.ID, Owner: "alice", Provider: app.Claude, Command: "again", ProjectPath: h.dir, ProviderSessionID: sess.ID}})
		require.NoError(t, err)
		evs = h.waitDone(sess.ID)
		require.Equal(t, []string{"Hello from the mock", "Second answer"}, texts(evs))
		require.Len(t, completes(evs), 2)
		reqs = api.ScriptedRequests()
		last := reqs[len(reqs)-1]
		require.Len(t, last.Messages, 3, "the resumed run sends the conversation so far")
	})

	// The gateway refuses values that look like flags; a job that holds
	// them anyway (a job is input) still cannot turn them into flags.
	t.Run("an id that looks like a flag stays an id", func(t *testing.T) {
		// A conversation exists in this folder (above): `--resume
		// --continue` would continue it.
		before := len(api.ScriptedRequests())
		sess := h.submitJob(app.Job{SessionID: app.NewID(), Command: "hello", NewSession: true, ProviderSessionID: "--continue"})
		evs := h.waitDone(sess.ID)
		require.Contains(t, strings.Join(errorRows(evs), "\n"), `Provided value "--continue" is not a UUID`)
		require.Equal(t, false, completes(evs)[0]["success"])
		require.Len(t, api.ScriptedRequests(), before, "nothing reached the model")
	})

	t.Run("a model and tools that look like flags are refused", func(t *testing.T) {
		// The gateway refuses them; a job that holds them anyway (a job is
		// input) is refused by the worker too, before any CLI starts (the
		// argument forms that keep such values values: TestClaudeCommand).
		before := len(api.ScriptedRequests())
		sess := h.submitJob(app.Job{SessionID: app.NewID(), Command: "which tools", NewSession: true,
			Options: app.RunOptions{Model: "--version", Tools: app.ToolsSettings{DisallowedTools: []string{"Bash", "-c", "Read"}}}})
		requireRefused(t, h.waitDone(sess.ID), "Invalid model name")
		sess = h.submitJob(app.Job{SessionID: app.NewID(), Command: "which tools", NewSession: true,
			Options: app.RunOptions{Tools: app.ToolsSettings{DisallowedTools: []string{"Bash", "-c", "Read"}}}})
		requireRefused(t, h.waitDone(sess.ID), `Invalid tool name "-c"`)
		require.Len(t, api.ScriptedRequests(), before, "nothing reached the model")
	})

	t.Run("disallowed tools each add to the list", func(t *testing.T) {
		api.Add(mockanthropic.Turn{When: "which tools", Text: "These"})
		sess := h.submitJob(app.Job{SessionID: app.NewID(), Command: "which tools", NewSession: true,
			Options: app.RunOptions{Tools: app.ToolsSettings{DisallowedTools: []string{"Bash", "Read"}}}})
		evs := h.waitDone(sess.ID)
		require.Equal(t, []string{"These"}, texts(evs))
		reqs := api.ScriptedRequests()
		last := reqs[len(reqs)-1]
		require.Contains(t, last.Tools, "Write")
		require.NotContains(t, last.Tools, "Bash", "each --disallowedTools= adds to the list")
		require.NotContains(t, last.Tools, "Read")
	})

	t.Run("tool use", func(t *testing.T) {
		api.Add(
			mockanthropic.Turn{When: "run echo", Text: "Running it.", ToolUses: []mockanthropic.ToolUse{{ID: "toolu_1", Name: "Bash", Input: map[string]any{"command": "echo hi", "description": "say hi"}}}},
			mockanthropic.Turn{When: "run echo", Text: "Done: hi"},
		)
		// Bash first: only if every --allowedTools= adds to the list is it
		// allowed without asking.
		sess := h.submitJob(app.Job{SessionID: app.NewID(), Command: "run echo", NewSession: true,
			Options: app.RunOptions{Tools: app.ToolsSettings{AllowedTools: []string{"Bash", "Read"}}}})
		evs := h.waitDone(sess.ID)
		var seen []string
		for _, e := range evs {
			switch e["kind"] {
			case "permission_request":
				seen = append(seen, "permission_request")
			case "tool_use":
				seen = append(seen, "tool_use:"+e["toolName"].(string))
			case "tool_result":
				seen = append(seen, "tool_result:"+e["content"].(string))
			case "text":
				seen = append(seen, "text:"+e["content"].(string))
			}
		}
		require.Equal(t, []string{"text:Running it.", "tool_use:Bash", "tool_result:hi", "text:Done: hi"}, seen)
		require.Equal(t, true, completes(evs)[0]["success"])

		// Each message carries the id Claude Code UI's server gives it
		// when it reads the conversation's transcript, which its frontend
		// merges with the live messages by id.
		ids := transcriptIDs(t, lookupEnv(env, "HOME"), sess.ID)
		for _, e := range evs {
			switch e["kind"] {
			case "text", "tool_use", "tool_result":
				require.Contains(t, ids, e["id"], "%v", e)
			}
		}
	})

	t.Run("a Glob card's files", func(t *testing.T) {
		// The real CLI's account of a Glob (tool_use_result) is what
		// Claude Code UI's frontend counts and lists the files from.
		for _, name := range []string{"one.globbed", "two.globbed"} {
			require.NoError(t, os.WriteFile(filepath.Join(h.dir, name), nil, 0o644))
		}
		api.Add(
			mockanthropic.Turn{When: "glob it", Text: "Looking.", ToolUses: []mockanthropic.ToolUse{{ID: "toolu_glob", Name: "Glob", Input: map[string]any{"pattern": "*.globbed"}}}},
			mockanthropic.Turn{When: "glob it", Text: "Two."},
		)
		sess := h.submitJob(app.Job{SessionID: app.NewID(), Command: "glob it", NewSession: true,
			Options: app.RunOptions{Tools: app.ToolsSettings{AllowedTools: []string{"Glob"}}}})
		evs := h.waitDone(sess.ID)
		var result map[string]any
		for _, e := range evs {
			if e["kind"] == "tool_result" {
				result = e
			}
		}
		require.NotNil(t, result, "%v", evs)
		tur, ok := result["toolUseResult"].(map[string]any)
		require.True(t, ok, "%v", result)
		require.EqualValues(t, 2, tur["numFiles"])
		require.Len(t, tur["filenames"], 2)
	})

	t.Run("api error", func(t *testing.T) {
		api.Add(mockanthropic.Turn{When: "fail please", Status: 500, ErrorMessage: "Internal server error"})
		sess := h.submitJob(app.Job{SessionID: app.NewID(), Command: "fail please", NewSession: true})
		evs := h.waitDone(sess.ID)
		c := completes(evs)
		require.Len(t, c, 1)
		require.Equal(t, false, c[0]["success"])
		require.EqualValues(t, 1, c[0]["exitCode"])
		require.Contains(t, strings.Join(errorRows(evs), "\n"), "API Error: 500")
		require.Empty(t, texts(evs))
	})

	t.Run("resume of a conversation that does not exist", func(t *testing.T) {
		missing := app.NewID()
		sess := h.submitJob(app.Job{SessionID: app.NewID(), Command: "hello", NewSession: true, ProviderSessionID: missing})
		evs := h.waitDone(sess.ID)
		require.Equal(t, []string{"No conversation found with session ID: " + missing}, errorRows(evs))
		require.Equal(t, false, completes(evs)[0]["success"])
	})

	t.Run("abort kills the CLI", func(t *testing.T) {
		api.Add(mockanthropic.Turn{When: "hang", Hang: true})
		sess := h.submitJob(app.Job{SessionID: app.NewID(), Command: "hang forever", NewSession: true})
		require.Eventually(t, func() bool { return api.Hanging() == 1 }, time.Minute, 20*time.Millisecond)
		_, err := h.st.Abort(context.Background(), sess.ID, app.Claude)
		require.NoError(t, err)
		require.Eventually(t, func() bool { return api.Hanging() == 0 }, 30*time.Second, 20*time.Millisecond, "the CLI's request ends when it dies")
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

func TestClaudeNotLoggedIn(t *testing.T) {
	// No API key at all, and an empty HOME.
	h := claudeWorker(t, storetest.New(t, storetest.Miniredis(t)), []string{
		"HOME=" + t.TempDir(), "CLAUDE_CODE_TMPDIR=" + t.TempDir(), "ANTHROPIC_API_KEY=", "ANTHROPIC_BASE_URL=http://127.0.0.1:9",
	})
	sess := h.submitJob(app.Job{SessionID: app.NewID(), Command: "hello", NewSession: true})
	evs := h.waitDone(sess.ID)
	require.Contains(t, strings.Join(errorRows(evs), "\n"), "Not logged in")
	c := completes(evs)
	require.Len(t, c, 1)
	require.Equal(t, false, c[0]["success"])
}

// transcriptIDs reads the transcript the Claude CLI saved of a
// conversation and returns the ids Claude Code UI's server gives its
// messages (claude-sessions.provider.ts at afc717e6).
func transcriptIDs(t *testing.T, home, id string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(home, ".claude", "projects", "*", id+".jsonl"))
	require.NoError(t, err)
	require.Len(t, files, 1)
	b, err := os.ReadFile(files[0])
	require.NoError(t, err)
	var ids []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var l struct {
			UUID    string `json:"uuid"`
			Message struct {
				Role    string          `json:"role"`
				Content json.RawMessage `json:"content"`
			} `json:"message"`
		}
		require.NoError(t, json.Unmarshal([]byte(line), &l))
		var parts []struct {
			Type      string `json:"type"`
			ToolUseID string `json:"tool_use_id"`
		}
		if json.Unmarshal(l.Message.Content, &parts) != nil {
			ids = append(ids, l.UUID)
			continue
		}
		for i, p := range parts {
			switch {
			case l.Message.Role == "assistant":
				ids = append(ids, l.UUID+"_"+strconv.Itoa(i))
			case p.Type == "tool_result":
				ids = append(ids, l.UUID+"_tr_"+p.ToolUseID)
			case p.Type == "text":
				ids = append(ids, l.UUID+"_text_"+strconv.Itoa(i))
			}
		}
	}
	return ids
}

// TestConversationSaved: the check that a gateway-minted Claude session was
// saved by an earlier run looks in the user's projects folder without
// opening what the user put there: a FIFO, a folder swapped for one, or
// links in a loop never hold the run up.
func TestConversationSaved(t *testing.T) {
	const id = "0b6c4f0e-8a4e-4f8e-9d5e-2f1a3c5b7d90"
	setup := map[string]func(t *testing.T, projects string){
		"saved": func(t *testing.T, projects string) {
			mkdirs(t, filepath.Join(projects, "-tmp-p"))
			writeFile(t, filepath.Join(projects, "-tmp-p", id+".jsonl"), "{}\n")
		},
		"saved through a linked project folder": func(t *testing.T, projects string) {
			other := t.TempDir()
			writeFile(t, filepath.Join(other, id+".jsonl"), "{}\n")
			require.NoError(t, os.Symlink(other, filepath.Join(projects, "-tmp-p")))
		},
		"another conversation": func(t *testing.T, projects string) {
			mkdirs(t, filepath.Join(projects, "-tmp-p"))
			writeFile(t, filepath.Join(projects, "-tmp-p", "other.jsonl"), "{}\n")
		},
		"a FIFO where the conversation would be": func(t *testing.T, projects string) {
			mkdirs(t, filepath.Join(projects, "-tmp-p"))
			require.NoError(t, unix.Mkfifo(filepath.Join(projects, "-tmp-p", id+".jsonl"), 0o600))
		},
		"FIFOs and links in a loop among the project folders": func(t *testing.T, projects string) {
			require.NoError(t, unix.Mkfifo(filepath.Join(projects, "fifo"), 0o600))
			for i := range 2000 {
				require.NoError(t, os.Symlink(".", filepath.Join(projects, fmt.Sprintf("l%d", i))))
				require.NoError(t, os.Symlink("fifo", filepath.Join(projects, fmt.Sprintf("f%d", i))))
			}
		},
	}
	want := map[string]bool{"saved": true, "saved through a linked project folder": true}
	for name, prepare := range setup {
		t.Run(name, func(t *testing.T) {
			home := t.TempDir()
			projects := filepath.Join(home, ".claude", "projects")
			mkdirs(t, projects)
			prepare(t, projects)
			require.Equal(t, want[name], savedWithin(t, []string{"HOME=" + home}, id))
		})
	}
	t.Run("a project folder swapped for a FIFO meanwhile", func(t *testing.T) {
		home := t.TempDir()
		projects := filepath.Join(home, ".claude", "projects")
		mkdirs(t, filepath.Join(projects, "flip"))
		for i := range 500 {
			require.NoError(t, os.Symlink("flip", filepath.Join(projects, fmt.Sprintf("l%d", i))))
		}
		aside := t.TempDir()
		require.NoError(t, unix.Mkfifo(filepath.Join(aside, "fifo"), 0o600))
		mkdirs(t, filepath.Join(aside, "dir"))
		stop := make(chan struct{})
		flipped := make(chan struct{})
		go func() {
			defer close(flipped)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				// rename(2) swaps flip between a folder and a FIFO.
				from := filepath.Join(aside, []string{"fifo", "dir"}[i%2])
				_ = os.Rename(filepath.Join(projects, "flip"), filepath.Join(aside, "was"))
				_ = os.Rename(from, filepath.Join(projects, "flip"))
				_ = os.Rename(filepath.Join(aside, "was"), from)
			}
		}()
		defer func() { close(stop); <-flipped }()
		for range 100 {
			require.False(t, savedWithin(t, []string{"HOME=" + home}, id))
		}
	})
	t.Run("links into another owner's folders", func(t *testing.T) {
		// What root can see through a link the user made: another user's
		// conversation (uid 54321 here) is not the user's, however linked.
		if os.Geteuid() != 0 {
			t.Skip("needs root to give a file to another uid")
		}
		other := t.TempDir()
		mkdirs(t, filepath.Join(other, "-srv-p"))
		writeFile(t, filepath.Join(other, "-srv-p", id+".jsonl"), "{}\n")
		for _, p := range []string{other, filepath.Join(other, "-srv-p"), filepath.Join(other, "-srv-p", id+".jsonl")} {
			require.NoError(t, os.Chown(p, 54321, 54321))
		}
		home := t.TempDir()
		projects := filepath.Join(home, ".claude", "projects")
		mkdirs(t, projects)
		require.NoError(t, os.Symlink(filepath.Join(other, "-srv-p"), filepath.Join(projects, "-tmp-p")))
		require.False(t, savedWithin(t, []string{"HOME=" + home}, id), "a project folder linked to another's")
		home = t.TempDir()
		mkdirs(t, filepath.Join(home, ".claude"))
		require.NoError(t, os.Symlink(other, filepath.Join(home, ".claude", "projects")))
		require.False(t, savedWithin(t, []string{"HOME=" + home}, id), "a projects folder linked to another's")

		// Without accounts the CLI runs as the worker, whoever owns the
		// home it is given: its own conversations count.
		home = t.TempDir()
		projects = filepath.Join(home, ".claude", "projects")
		mkdirs(t, filepath.Join(projects, "-tmp-p"))
		writeFile(t, filepath.Join(projects, "-tmp-p", id+".jsonl"), "{}\n")
		require.NoError(t, os.Chown(home, 54321, 54321))
		require.True(t, savedWithin(t, []string{"HOME=" + home}, id), "the worker's own conversation in a home of another owner")
	})
	t.Run("the projects folder is a FIFO", func(t *testing.T) {
		home := t.TempDir()
		mkdirs(t, filepath.Join(home, ".claude"))
		require.NoError(t, unix.Mkfifo(filepath.Join(home, ".claude", "projects"), 0o600))
		require.False(t, savedWithin(t, []string{"HOME=" + home}, id))
	})
	t.Run("no home: the CLI decides", func(t *testing.T) {
		require.True(t, savedWithin(t, nil, id))
	})
}

// savedWithin is conversationSaved, failed if it has not answered within
// 10 s (a hang, not a slow answer: it takes microseconds).
func savedWithin(t *testing.T, env []string, id string) bool {
	t.Helper()
	done := make(chan bool, 1)
	go func() { done <- conversationSaved(env, id) }()
	select {
	case saved := <-done:
		return saved
	case <-time.After(10 * time.Second):
		t.Fatal("conversationSaved hangs")
		return false
	}
}

func mkdirs(t *testing.T, dir string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, []byte(data), 0o644))
}
