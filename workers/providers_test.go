package workers

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// Helpers shared by the Codex, Gemini and Cursor tests.

// providerWorker starts a worker that runs prov from bin with env added to
// its own environment.
func providerWorker(t *testing.T, prov Provider, bin string, env []string) *harness {
	t.Helper()
	return runWorker(t, storetest.New(t, storetest.Miniredis(t)), Config{
		Providers: map[app.Provider]Provider{prov.Name(): prov},
		Bins:      map[app.Provider]string{prov.Name(): bin},
		Env:       env,
	})
}

// submitAs accepts the first run of a new session of provider p.
func (h *harness) submitAs(p app.Provider, job app.Job) app.Session {
	h.t.Helper()
	if job.SessionID == "" {
		job.SessionID = app.NewID()
	}
	sess := app.Session{ID: job.SessionID, Owner: "alice", Provider: p, ProjectPath: h.dir, ProviderSessionID: job.ProviderSessionID}
	job.Owner, job.Provider, job.ProjectPath, job.NewSession = "alice", p, h.dir, true
	_, err := h.st.Accept(context.Background(), &store.AcceptRequest{Session: sess, New: true, Job: job})
	require.NoError(h.t, err)
	return sess
}

// followUp accepts the next run of a session the way the gateway does: it
// resumes the provider session id recorded by the earlier runs.
func (h *harness) followUp(sess app.Session, command string, opts app.RunOptions) {
	h.t.Helper()
	got, err := h.st.Session(context.Background(), sess.ID)
	require.NoError(h.t, err)
	require.NotEmpty(h.t, got.ProviderSessionID, "the first run recorded no provider session id")
	_, err = h.st.Accept(context.Background(), &store.AcceptRequest{
		Session: app.Session{ID: sess.ID, Owner: "alice", Provider: sess.Provider, ProjectPath: h.dir, ProviderSessionID: got.ProviderSessionID},
		Job: app.Job{SessionID: sess.ID, Owner: "alice", Provider: sess.Provider, Command: command, ProjectPath: h.dir,
			ProviderSessionID: got.ProviderSessionID, Options: opts},
	})
	require.NoError(h.t, err)
}

// providerSessionID reads what the runs of a session recorded.
func (h *harness) providerSessionID(id string) string {
	h.t.Helper()
	got, err := h.st.Session(context.Background(), id)
	require.NoError(h.t, err)
	return got.ProviderSessionID
}

// conversation lists the text, thinking and tool events of a run in order,
// as "kind:detail" strings that read well in a failure.
func conversation(evs []map[string]any) []string {
	var out []string
	for _, e := range evs {
		switch e["kind"] {
		case "text":
			out = append(out, fmt.Sprintf("text:%v", e["content"]))
		case "thinking":
			out = append(out, fmt.Sprintf("thinking:%v", e["content"]))
		case "tool_use":
			out = append(out, fmt.Sprintf("tool_use:%v", e["toolName"]))
		case "tool_result":
			out = append(out, fmt.Sprintf("tool_result:%v:%v", e["content"], e["isError"]))
		}
	}
	return out
}

// tokenBudgets returns the tokenBudget objects of a run's status events.
func tokenBudgets(evs []map[string]any) []map[string]any {
	var out []map[string]any
	for _, e := range evs {
		if e["kind"] == "status" && e["text"] == "token_budget" {
			out = append(out, e["tokenBudget"].(map[string]any))
		}
	}
	return out
}

// parseLines runs lines through p and returns the decoded events and the
// session fields they set.
func parseLines(t *testing.T, p Parser, lines ...string) ([]map[string]any, map[string]string) {
	t.Helper()
	var out []map[string]any
	set := map[string]string{}
	for _, l := range lines {
		o := p.Line([]byte(l))
		for _, ev := range o.Events {
			body, err := ev.Body()
			require.NoError(t, err)
			var m map[string]any
			require.NoError(t, json.Unmarshal(body, &m))
			out = append(out, m)
		}
		for k, v := range o.Set {
			set[k] = v
		}
	}
	return out, set
}

// fuzzParser checks what every parser must survive: any line gives events
// that encode as JSON, nothing that looks like a complete, and no panic.
func fuzzParser(t *testing.T, p Parser, line []byte) {
	out := p.Line(line)
	for _, ev := range out.Events {
		if ev.Kind == app.KindComplete || ev.Kind == app.KindStateChanged {
			t.Fatalf("a parser emitted %s for %q: only the run may end a run", ev.Kind, line)
		}
		body, err := ev.Body()
		if err != nil {
			t.Fatalf("event of %q does not encode: %v", line, err)
		}
		if !json.Valid(body) {
			t.Fatalf("invalid JSON %s", body)
		}
	}
	p.End(0)
}

// TestProviderMissingBinary: a CLI that is not installed gives its install
// hint, then one complete{exitCode:127, success:false}.
func TestProviderMissingBinary(t *testing.T) {
	for _, prov := range []Provider{CodexProvider{}, GeminiProvider{}, CursorProvider{}} {
		t.Run(string(prov.Name()), func(t *testing.T) {
			h := providerWorker(t, prov, "/nonexistent/"+string(prov.Name()), nil)
			sess := h.submitAs(prov.Name(), app.Job{Command: "hello"})
			evs := h.waitDone(sess.ID)
			require.Equal(t, []string{prov.InstallHint()}, errorRows(evs))
			c := completes(evs)
			require.Len(t, c, 1)
			require.EqualValues(t, 127, c[0]["exitCode"])
			require.Equal(t, false, c[0]["success"])
		})
	}
}

// FuzzCommandArgs: whatever a job holds (the gateway refuses flag-like
// values, but a job is input), no value of it becomes an argument of its
// own that a CLI could read as a flag: it is the value of a `--flag=value`,
// or follows `--`. Each command line is compared with the one of the same
// job whose values are replaced by plain words: both have as many
// arguments, and where they differ, the argument is the same `--flag=` with
// another value, or comes after `--`.
func FuzzCommandArgs(f *testing.F) {
	f.Add("6f1c0b4e-1b2a-4c3d-9e8f-001122334455", "--continue", "--version", "-c\nBash", "--yolo", "--help", uint8(0))
	f.Add("s1", "s1", "-m", "", "-", "hi", uint8(0xff))
	f.Add("-", "--", "--model", "--allowedTools", "--", "--", uint8(3))
	f.Fuzz(func(t *testing.T, sid, resume, model, allowed, disallowed, prompt string, bits uint8) {
		tools := func(s string) []string {
			if s == "" {
				return nil
			}
			return strings.Split(s, "\n")
		}
		modes := append([]string{""}, app.PermissionModes...)
		job := app.Job{SessionID: sid, ProviderSessionID: resume, Command: prompt, Options: app.RunOptions{
			Model: model, PermissionMode: modes[int(bits&7)%len(modes)],
			Tools: app.ToolsSettings{AllowedTools: tools(allowed), DisallowedTools: tools(disallowed), SkipPermissions: bits&8 != 0},
		}}
		if bits&16 != 0 {
			job.ImageFiles = []string{"/tmp/i/image_1.png", "/tmp/i/image_2.png"}
		}
		word := func(s, w string) string {
			if s == "" {
				return ""
			}
			return w
		}
		plain := job
		plain.SessionID, plain.ProviderSessionID, plain.Command = word(sid, "sid"), word(resume, "resume"), word(prompt, "prompt")
		if resume == sid {
			plain.ProviderSessionID = plain.SessionID
		}
		plain.Options.Model = word(model, "model")
		plain.Options.Tools.AllowedTools, plain.Options.Tools.DisallowedTools = nil, nil
		for _, s := range job.Options.Tools.AllowedTools {
			plain.Options.Tools.AllowedTools = append(plain.Options.Tools.AllowedTools, word(s, "tool"))
		}
		for _, s := range job.Options.Tools.DisallowedTools {
			plain.Options.Tools.DisallowedTools = append(plain.Options.Tools.DisallowedTools, word(s, "tool"))
		}
		for _, prov := range []Provider{ClaudeProvider{}, CodexProvider{}, GeminiProvider{}, CursorProvider{}} {
			got, _ := prov.Command(job, nil)
			want, _ := prov.Command(plain, nil)
			checkArgsOf(t, prov.Name(), got, want)
		}
		retry := func(j app.Job) []string {
			args, _ := (&cursorParser{job: j, trust: true, code: 1}).Retry("")
			return args
		}
		checkArgsOf(t, "cursor retry", retry(job), retry(plain))
	})
}

// checkArgsOf checks a command line got against want, the same command
// line with plain words for the values (see FuzzCommandArgs).
func checkArgsOf(t *testing.T, name app.Provider, got, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: a value changed the number of arguments:\n got %q\nwant %q", name, got, want)
	}
	afterDashes := false
	for i := range got {
		if got[i] != want[i] && !afterDashes {
			flag, _, ok := strings.Cut(want[i], "=")
			if !ok || !strings.HasPrefix(flag, "--") || !strings.HasPrefix(got[i], flag+"=") {
				t.Fatalf("%s: argument %d %q is a value of its own before --:\n got %q\nwant %q", name, i, got[i], got, want)
			}
		}
		if want[i] == "--" && got[i] == "--" {
			afterDashes = true
		}
	}
}

// TestProviderSessionIDsAreChecked: a provider session id printed by a CLI
// is recorded only if a client could have sent it, as it reaches the next
// run's command line.
func TestProviderSessionIDsAreChecked(t *testing.T) {
	lines := map[Provider]string{
		ClaudeProvider{}: `{"type":"system","subtype":"init","session_id":"%s"}`,
		CodexProvider{}:  `{"type":"thread.started","thread_id":"%s"}`,
		GeminiProvider{}: `{"type":"init","session_id":"%s"}`,
		CursorProvider{}: `{"type":"system","subtype":"init","session_id":"%s"}`,
	}
	for prov, line := range lines {
		_, set := parseLines(t, prov.NewParser(app.Job{}), fmt.Sprintf(line, "3300763d-ebec-4148-9370-44f315111828"))
		require.Equal(t, "3300763d-ebec-4148-9370-44f315111828", set["providerSessionId"], prov.Name())
		for _, bad := range []string{"--continue", "-c", "a b"} {
			_, set := parseLines(t, prov.NewParser(app.Job{}), fmt.Sprintf(line, bad))
			require.NotContains(t, set, "providerSessionId", "%s: %q", prov.Name(), bad)
		}
	}
}

// TestParsersCopyTheirLine: a run hands its parser each line in one reused
// buffer (readLine), and keeps the events of several lines before it
// appends them. Every parser's events, fields, asks and replies, read
// after the buffer went on to later lines, must be what a parser given a
// line of its own produced.
func TestParsersCopyTheirLine(t *testing.T) {
	sessions := map[Provider][]string{
		ClaudeProvider{}: {
			`{"type":"system","subtype":"init","session_id":"3300763d-ebec-4148-9370-44f315111828"}`,
			`{"type":"assistant","message":{"content":[{"type":"thinking","thinking":"hmm","signature":"x"}],"usage":{"input_tokens":10,"output_tokens":2}},"parent_tool_use_id":null,"session_id":"abc"}`,
			`{"type":"assistant","message":{"content":[{"type":"text","text":"Running it."}]},"parent_tool_use_id":null}`,
			`{"type":"assistant","message":{"content":[{"id":"toolu_01","input":{"command":"echo hi"},"name":"Bash","type":"tool_use"}]},"parent_tool_use_id":"toolu_parent"}`,
			`{"type":"control_request","request_id":"424e9696-7cc9","request":{"subtype":"can_use_tool","tool_name":"Bash","input":{"command":"touch x"},"tool_use_id":"toolu_touch"}}`,
			`{"type":"control_request","request_id":"r2","request":{"subtype":"hook_callback","callback_id":"c"}}`,
			`{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_01","type":"tool_result","content":"hi","is_error":false}]},"tool_use_result":{"stdout":"hi"}}`,
			`{"type":"result","subtype":"success","is_error":true,"api_error_status":500,"result":"API Error: 500 Internal server error.","usage":{"input_tokens":0,"output_tokens":0}}`,
			`not json at all`,
		},
		CodexProvider{}: {
			`{"type":"thread.started","thread_id":"3300763d-ebec-4148-9370-44f315111828"}`,
			`{"type":"item.completed","item":{"id":"item_1","type":"reasoning","text":"thinking hard"}}`,
			`{"type":"item.completed","item":{"id":"item_2","type":"agent_message","text":"Hello from mock"}}`,
			`{"type":"item.completed","item":{"id":"item_3","type":"command_execution","command":"/bin/bash -lc 'echo hi'","aggregated_output":"hi\n","exit_code":0,"status":"completed"}}`,
			`not json at all`,
		},
		GeminiProvider{}: {
			`{"type":"init","session_id":"3300763d-ebec-4148-9370-44f315111828"}`,
			`{"type":"message","timestamp":"2026-11-22T03:23:46.287Z","role":"assistant","content":"Running","delta":true}`,
			`{"type":"message","timestamp":"2026-11-22T03:23:46.289Z","role":"assistant","content":" it.","delta":true}`,
			`{"type":"tool_use","timestamp":"2026-11-22T03:24:09.164Z","tool_name":"run_shell_command","tool_id":"t1","parameters":{"command":"echo hi"}}`,
			`{"type":"tool_result","timestamp":"2026-11-22T03:24:09.426Z","tool_id":"t1","status":"success","output":"hi"}`,
			`{"type":"tool_result","tool_id":"t2","status":"error","error":{"type":"TOOL_EXECUTION_ERROR","message":"no such file"}}`,
			`not json at all`,
		},
		CursorProvider{}: {
			`{"type":"system","subtype":"init","session_id":"3300763d-ebec-4148-9370-44f315111828"}`,
			`{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"Running it."}]},"session_id":"x"}`,
			`{"type":"tool_call","subtype":"started","call_id":"toolu_1","tool_call":{"shellToolCall":{"args":{"command":"echo hi","workingDirectory":"","timeout":30000}}},"session_id":"x"}`,
			`{"type":"tool_call","subtype":"completed","call_id":"toolu_1","tool_call":{"shellToolCall":{"args":{"command":"echo hi"},"result":{"success":{"command":"echo hi","exitCode":0,"stdout":"hi\n","stderr":""}}}},"session_id":"x"}`,
			`not json at all`,
		},
	}
	// seen describes what a parser produced, read when it is called.
	seen := func(outs []Output, end []app.Event) string {
		var b strings.Builder
		for _, o := range append(outs, Output{Events: end}) {
			for _, ev := range o.Events {
				body, err := ev.Body()
				require.NoError(t, err)
				var m map[string]any
				require.NoError(t, json.Unmarshal(body, &m))
				delete(m, "id") // made at random, with the time
				delete(m, "timestamp")
				norm, err := json.Marshal(m)
				require.NoError(t, err)
				fmt.Fprintf(&b, "event %s %s\n", ev.Kind, norm)
			}
			for _, k := range slices.Sorted(maps.Keys(o.Set)) {
				fmt.Fprintf(&b, "set %s=%s\n", k, o.Set[k])
			}
			if o.Ask != nil {
				fmt.Fprintf(&b, "ask %s %s %s\n", o.Ask.ID, o.Ask.Tool, o.Ask.Input)
			}
			fmt.Fprintf(&b, "withdrawn %q reply %q end %v\n", o.Withdrawn, o.Reply, o.EndInput)
		}
		return b.String()
	}
	for prov, lines := range sessions {
		t.Run(string(prov.Name()), func(t *testing.T) {
			job := app.Job{SessionID: "s", RunID: "r"}
			own, shared := prov.NewParser(job), prov.NewParser(job)
			var want, got []Output
			buf := make([]byte, 0, 4096)
			for _, l := range lines {
				want = append(want, own.Line([]byte(l)))
				buf = append(buf[:0], l...)
				got = append(got, shared.Line(buf))
				// What a later read leaves in the buffer.
				for i := range buf[:cap(buf)] {
					buf[:cap(buf)][i] = '#'
				}
			}
			wantEnd, _ := own.End(0)
			gotEnd, _ := shared.End(0)
			require.Equal(t, seen(want, wantEnd), seen(got, gotEnd))
		})
	}
}

// TestParsersBoundWhatTheyHold: a stream of message or thinking deltas
// with no other line between them goes out as an event each maxHeldText
// (Gemini once held 512 MiB of them, a Cursor run 128 MiB), and a run
// remembers at most maxToolsStarted started tool calls, none of an id over
// maxToolID (ids of megabytes each were held for the run's life).
func TestParsersBoundWhatTheyHold(t *testing.T) {
	half := strings.Repeat("x", maxHeldText/2+1)
	deltas := map[Provider]string{
		GeminiProvider{}: `{"type":"message","role":"assistant","content":"` + half + `","delta":true}`,
		CursorProvider{}: `{"type":"thinking","subtype":"delta","text":"` + half + `"}`,
	}
	for prov, line := range deltas {
		p := prov.NewParser(app.Job{SessionID: "s"})
		var events []app.Event
		for range 5 {
			events = append(events, p.Line([]byte(line)).Events...)
		}
		require.Len(t, events, 2, "%T: two events of two deltas each", prov)
		for _, e := range events {
			require.Len(t, e.Fields["content"], 2*len(half), "%T", prov)
		}
	}

	started := toolsStarted{}
	started.add(strings.Repeat("i", maxToolID+1))
	require.Empty(t, started, "an id over maxToolID")
	for i := range maxToolsStarted + 10 {
		started.add(fmt.Sprint("call-", i))
	}
	require.Len(t, started, maxToolsStarted)
}
