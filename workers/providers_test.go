package workers

import (
	"context"
	"encoding/json"
	"fmt"
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
	_, err := h.st.Accept(context.Background(), store.AcceptRequest{Session: sess, New: true, Job: job})
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
	_, err = h.st.Accept(context.Background(), store.AcceptRequest{
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
