package workers

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/internal/mockanthropic"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// touchTurns scripts a model that runs `touch NAME` with Bash, then says
// "after NAME" once it has the tool's result.
func touchTurns(prompt, name string) []mockanthropic.Turn {
	return []mockanthropic.Turn{
		{When: prompt, ToolUses: []mockanthropic.ToolUse{{ID: "toolu_" + name, Name: "Bash",
			Input: map[string]any{"command": "touch " + name, "description": "Create " + name}}}},
		{When: prompt, Text: "after " + name},
	}
}

// waitKind waits for the n-th event of kind in a session and returns it.
func (h *harness) waitKind(id, kind string, n int) map[string]any {
	h.t.Helper()
	var found map[string]any
	require.Eventually(h.t, func() bool {
		seen := 0
		for _, e := range h.events(id) {
			if e["kind"] == kind {
				if seen++; seen == n {
					found = e
					return true
				}
			}
		}
		return false
	}, 90*time.Second, 20*time.Millisecond, "no %s #%d in session %s", kind, n, id)
	return found
}

// answer sends a user's answer the way a gateway does: to the inbox of the
// worker that runs the session.
func (h *harness) answer(id string, ans app.PermissionAnswer) {
	h.t.Helper()
	ctx := context.Background()
	sess, err := h.st.Session(ctx, id)
	require.NoError(h.t, err)
	data, err := json.Marshal(ans)
	require.NoError(h.t, err)
	require.NoError(h.t, h.st.SendControl(ctx, sess.Worker, store.Control{
		Type: store.ControlPermission, SessionID: id, RunID: sess.RunID, Data: data,
	}))
}

func kindCount(evs []map[string]any, kind string) int {
	n := 0
	for _, e := range evs {
		if e["kind"] == kind {
			n++
		}
	}
	return n
}

// cancelReasons returns the reasons of the permission_cancelled events.
func cancelReasons(evs []map[string]any) []string {
	var reasons []string
	for _, e := range evs {
		if e["kind"] == "permission_cancelled" {
			reasons = append(reasons, fmt.Sprint(e["reason"]))
		}
	}
	return reasons
}

func toolResults(evs []map[string]any) []map[string]any {
	var out []map[string]any
	for _, e := range evs {
		if e["kind"] == "tool_result" {
			out = append(out, e)
		}
	}
	return out
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func TestClaudePermissions(t *testing.T) {
	api := mockanthropic.New(t)
	st := storetest.New(t, storetest.Redis(t))
	h := runWorker(t, st, Config{
		Providers: map[app.Provider]Provider{app.Claude: ClaudeProvider{}},
		Bins:      map[app.Provider]string{app.Claude: mockanthropic.ClaudeBin(t)},
		// As root (CI containers) the CLI refuses bypassPermissions without
		// IS_SANDBOX=1.
		Env:               append(api.CLIEnv(t), "CLAUDE_CODE_MAX_RETRIES=0", "IS_SANDBOX=1"),
		PermissionTimeout: 500 * time.Millisecond,
	})
	ctx := context.Background()
	start := func(prompt string, opts app.RunOptions) app.Session {
		return h.submitJob(app.Job{SessionID: app.NewID(), Command: prompt, NewSession: true, Options: opts})
	}

	t.Run("asked and allowed", func(t *testing.T) {
		api.Add(touchTurns("allow me", "allowed")...)
		sess := start("allow me", app.RunOptions{})
		req := h.waitKind(sess.ID, "permission_request", 1)
		require.Equal(t, "Bash", req["toolName"])
		require.Equal(t, "touch allowed", req["input"].(map[string]any)["command"])

		pending, err := st.PendingPermissions(ctx, sess.ID)
		require.NoError(t, err)
		require.Len(t, pending, 1, "the request waits in Redis for any gateway to show it")
		var p app.PendingPermission
		require.NoError(t, json.Unmarshal(pending[0], &p))
		require.Equal(t, req["requestId"], p.RequestID)
		require.Equal(t, sess.ID, p.SessionID)

		// Answered without updatedInput, as clients do: the CLI needs the
		// original input back.
		h.answer(sess.ID, app.PermissionAnswer{RequestID: p.RequestID, Allow: true})
		evs := h.waitDone(sess.ID)
		require.True(t, exists(filepath.Join(h.dir, "allowed")), "the tool ran")
		require.Equal(t, []string{"after allowed"}, texts(evs))
		require.Equal(t, false, toolResults(evs)[0]["isError"])
		require.Equal(t, true, completes(evs)[0]["success"])
		// The other tabs that show it are told it was answered.
		require.Equal(t, []string{app.PermissionAnswered}, cancelReasons(evs))
		pending, err = st.PendingPermissions(ctx, sess.ID)
		require.NoError(t, err)
		require.Empty(t, pending)
	})

	t.Run("denied with a message", func(t *testing.T) {
		api.Add(touchTurns("deny me", "denied")...)
		sess := start("deny me", app.RunOptions{})
		req := h.waitKind(sess.ID, "permission_request", 1)
		h.answer(sess.ID, app.PermissionAnswer{RequestID: req["requestId"].(string), Message: "not today"})
		evs := h.waitDone(sess.ID)
		require.False(t, exists(filepath.Join(h.dir, "denied")))
		res := toolResults(evs)[0]
		require.Equal(t, true, res["isError"])
		require.Equal(t, "not today", res["content"])
		require.Equal(t, true, completes(evs)[0]["success"], "a denied tool does not fail the run")
	})

	t.Run("an answer for another run changes nothing", func(t *testing.T) {
		api.Add(touchTurns("stranger", "stranger")...)
		sess := start("stranger", app.RunOptions{})
		req := h.waitKind(sess.ID, "permission_request", 1)
		h.answer(sess.ID, app.PermissionAnswer{RequestID: "not-" + req["requestId"].(string), Allow: true})
		// The timeout, not the stray answer, settles it.
		cancelled := h.waitKind(sess.ID, "permission_cancelled", 1)
		require.Equal(t, "timeout", cancelled["reason"])
		require.Equal(t, req["requestId"], cancelled["requestId"])
		evs := h.waitDone(sess.ID)
		require.False(t, exists(filepath.Join(h.dir, "stranger")))
		require.Equal(t, "Permission request timed out", toolResults(evs)[0]["content"])
	})

	t.Run("an answer to a prompt the worker does not hold cancels it", func(t *testing.T) {
		api.Add(touchTurns("ghost", "ghost")...)
		sess := start("ghost", app.RunOptions{})
		req := h.waitKind(sess.ID, "permission_request", 1)
		// Recorded as a stalled Redis would after the worker gave up on
		// the call: every tab shows it, and no answer reached anyone.
		got, err := st.Session(ctx, sess.ID)
		require.NoError(t, err)
		ref := store.RunRef{SessionID: sess.ID, RunID: got.RunID, Provider: app.Claude}
		require.NoError(t, st.AskPermission(ctx, ref, app.PendingPermission{RequestID: "ghost-1", ToolName: "Bash", Input: json.RawMessage(`{}`)}))
		h.answer(sess.ID, app.PermissionAnswer{RequestID: "ghost-1", Allow: true})
		// Taken back at once, not only when the run ends (after the real
		// request's timeout).
		cancelledAt := map[string]float64{}
		for _, e := range h.waitDone(sess.ID) {
			if e["kind"] == "permission_cancelled" {
				cancelledAt[e["requestId"].(string)] = e["seq"].(float64)
			}
		}
		require.Contains(t, cancelledAt, "ghost-1")
		require.Contains(t, cancelledAt, req["requestId"])
		require.Less(t, cancelledAt["ghost-1"], cancelledAt[req["requestId"].(string)], "%v", cancelledAt)
	})

	t.Run("rules decide without asking", func(t *testing.T) {
		api.Add(touchTurns("by prefix", "prefixed")...)
		sess := start("by prefix", app.RunOptions{Tools: app.ToolsSettings{AllowedTools: []string{"Bash(touch:*)"}}})
		evs := h.waitDone(sess.ID)
		require.Zero(t, kindCount(evs, "permission_request"))
		require.True(t, exists(filepath.Join(h.dir, "prefixed")))

		api.Add(touchTurns("bypass", "bypassed")...)
		// In bypass mode the CLI does not even ask.
		sess = start("bypass", app.RunOptions{Tools: app.ToolsSettings{SkipPermissions: true}})
		evs = h.waitDone(sess.ID)
		require.Zero(t, kindCount(evs, "permission_request"))
		require.True(t, exists(filepath.Join(h.dir, "bypassed")))
	})

	t.Run("rememberEntry allows the tool for the rest of the run", func(t *testing.T) {
		api.Add(
			mockanthropic.Turn{When: "twice", ToolUses: []mockanthropic.ToolUse{{ID: "toolu_one", Name: "Bash", Input: map[string]any{"command": "touch one", "description": "one"}}}},
			mockanthropic.Turn{When: "twice", ToolUses: []mockanthropic.ToolUse{{ID: "toolu_two", Name: "Bash", Input: map[string]any{"command": "touch two", "description": "two"}}}},
			mockanthropic.Turn{When: "twice", Text: "both"},
		)
		sess := start("twice", app.RunOptions{})
		req := h.waitKind(sess.ID, "permission_request", 1)
		h.answer(sess.ID, app.PermissionAnswer{RequestID: req["requestId"].(string), Allow: true, RememberEntry: "Bash"})
		evs := h.waitDone(sess.ID)
		require.Equal(t, 1, kindCount(evs, "permission_request"))
		require.True(t, exists(filepath.Join(h.dir, "one")))
		require.True(t, exists(filepath.Join(h.dir, "two")))
		require.Equal(t, []string{"both"}, texts(evs))
	})

	t.Run("questions to the user never time out", func(t *testing.T) {
		question := map[string]any{"questions": []any{map[string]any{
			"question": "Which one?", "header": "Pick", "multiSelect": false,
			"options": []any{map[string]any{"label": "A", "description": "first"}, map[string]any{"label": "B", "description": "second"}},
		}}}
		api.Add(
			mockanthropic.Turn{When: "ask me", ToolUses: []mockanthropic.ToolUse{{ID: "toolu_q", Name: "AskUserQuestion", Input: question}}},
			mockanthropic.Turn{When: "ask me", Text: "thanks"},
		)
		sess := start("ask me", app.RunOptions{Tools: app.ToolsSettings{SkipPermissions: true}})
		req := h.waitKind(sess.ID, "permission_request", 1)
		require.Equal(t, "AskUserQuestion", req["toolName"], "asked even in bypass mode")
		time.Sleep(time.Second) // twice the timeout
		require.Zero(t, kindCount(h.events(sess.ID), "permission_cancelled"))
		answered := map[string]any{"questions": question["questions"], "answers": map[string]any{"Which one?": "B"}}
		input, err := json.Marshal(answered)
		require.NoError(t, err)
		h.answer(sess.ID, app.PermissionAnswer{RequestID: req["requestId"].(string), Allow: true, UpdatedInput: input})
		evs := h.waitDone(sess.ID)
		require.Equal(t, []string{"thanks"}, texts(evs))
		reqs := api.ScriptedRequests()
		require.Contains(t, reqs[len(reqs)-1].ToolResults[0].Content, "B", "the answer reached the model")
	})

	t.Run("abort cancels a pending request and interrupts the CLI", func(t *testing.T) {
		api.Add(touchTurns("abort me", "aborted")...)
		sess := start("abort me", app.RunOptions{})
		req := h.waitKind(sess.ID, "permission_request", 1)
		_, err := st.Abort(ctx, sess.ID, app.Claude)
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			h.w.mu.Lock()
			defer h.w.mu.Unlock()
			return len(h.w.runs) == 0
		}, 10*time.Second, 20*time.Millisecond)
		evs := h.events(sess.ID)
		var tail []string
		for _, e := range evs[len(evs)-3:] {
			tail = append(tail, e["kind"].(string))
		}
		require.Equal(t, []string{"permission_cancelled", "session-state-changed", "complete"}, tail)
		require.Equal(t, req["requestId"], evs[len(evs)-3]["requestId"])
		require.Equal(t, "cancelled", evs[len(evs)-3]["reason"])
		require.Len(t, completes(evs), 1)
		require.False(t, exists(filepath.Join(h.dir, "aborted")))
	})
}

// TestPermissionLostByRedisAskedAgain: a request Redis lost while the CLI
// waits on it (a restart without its last writes) is recorded again within
// a confirmation, so a tab shows it and its answer reaches the CLI; before,
// a question to the user waited for good. An index entry lost alone (a
// failover of its slot) is written again.
func TestPermissionLostByRedisAskedAgain(t *testing.T) {
	api := mockanthropic.New(t)
	url := storetest.Redis(t)
	st := storetest.New(t, url)
	h := runWorkerTuned(t, st, Config{
		Providers: map[app.Provider]Provider{app.Claude: ClaudeProvider{}},
		Bins:      map[app.Provider]string{app.Claude: mockanthropic.ClaudeBin(t)},
		Env:       append(api.CLIEnv(t), "CLAUDE_CODE_MAX_RETRIES=0", "IS_SANDBOX=1"),
	}, func(w *Worker) { w.confirmEvery = 100 * time.Millisecond })
	ctx := context.Background()
	question := map[string]any{"questions": []any{map[string]any{
		"question": "Which one?", "header": "Pick", "multiSelect": false,
		"options": []any{map[string]any{"label": "A", "description": "first"}, map[string]any{"label": "B", "description": "second"}},
	}}}
	api.Add(
		mockanthropic.Turn{When: "lost", ToolUses: []mockanthropic.ToolUse{{ID: "toolu_lost", Name: "AskUserQuestion", Input: question}}},
		mockanthropic.Turn{When: "lost", Text: "found"},
	)
	sess := h.submitJob(app.Job{SessionID: app.NewID(), Command: "lost", NewSession: true,
		Options: app.RunOptions{Tools: app.ToolsSettings{SkipPermissions: true}}})
	req := h.waitKind(sess.ID, "permission_request", 1)
	id := req["requestId"].(string)

	rdb := storetest.Client(t, url)
	// The index entry alone lost (on a cluster it lies in another slot):
	// written again, the request not asked twice.
	require.NoError(t, rdb.HDel(ctx, st.Prefix()+":permissions", id).Err())
	require.Eventually(t, func() bool {
		owner, err := st.PermissionSession(ctx, id)
		return err == nil && owner == sess.ID
	}, 10*time.Second, 10*time.Millisecond, "the index entry is written again")
	require.Equal(t, 1, kindCount(h.events(sess.ID), "permission_request"))

	require.NoError(t, rdb.Del(ctx, st.Prefix()+":session:{"+sess.ID+"}:perms").Err())
	require.NoError(t, rdb.HDel(ctx, st.Prefix()+":permissions", id).Err())
	_, err := st.PermissionSession(ctx, id)
	require.ErrorIs(t, err, app.ErrNotFound, "lost")

	again := h.waitKind(sess.ID, "permission_request", 2)
	require.Equal(t, id, again["requestId"])
	require.Equal(t, "AskUserQuestion", again["toolName"])
	owner, err := st.PermissionSession(ctx, id)
	require.NoError(t, err, "an answer is routed again")
	require.Equal(t, sess.ID, owner)

	answered := map[string]any{"questions": question["questions"], "answers": map[string]any{"Which one?": "A"}}
	input, err := json.Marshal(answered)
	require.NoError(t, err)
	h.answer(sess.ID, app.PermissionAnswer{RequestID: id, Allow: true, UpdatedInput: input})
	evs := h.waitDone(sess.ID)
	require.Equal(t, []string{"found"}, texts(evs))
	require.Equal(t, 2, kindCount(evs, "permission_request"), "recorded again once")
	require.Equal(t, []string{app.PermissionAnswered}, cancelReasons(evs))
	pending, err := st.PendingPermissions(ctx, sess.ID)
	require.NoError(t, err)
	require.Empty(t, pending)
}

// TestClaudeAbortDuringToolLeavesNothing: an abort while the CLI runs a
// Bash tool (in a session of its own) interrupts the CLI and leaves no
// process behind, whether the CLI stops the tool itself or not.
func TestClaudeAbortDuringToolLeavesNothing(t *testing.T) {
	api := mockanthropic.New(t)
	st := storetest.New(t, storetest.Miniredis(t))
	h := claudeWorker(t, st, append(api.CLIEnv(t), "CLAUDE_CODE_MAX_RETRIES=0"))
	pidFile := filepath.Join(h.dir, "tool.pid")
	api.Add(mockanthropic.Turn{When: "long tool", ToolUses: []mockanthropic.ToolUse{{ID: "toolu_sleep", Name: "Bash",
		Input: map[string]any{"command": "sh -c 'echo $$ > " + pidFile + "; exec sleep 300'", "description": "wait"}}}})
	sess := h.submitJob(app.Job{SessionID: app.NewID(), Command: "long tool", NewSession: true,
		Options: app.RunOptions{Tools: app.ToolsSettings{AllowedTools: []string{"Bash"}}}})
	require.Eventually(t, func() bool { return exists(pidFile) }, time.Minute, 20*time.Millisecond)
	pid := readPID(t, pidFile)
	require.True(t, processAlive(pid))

	ctx := context.Background()
	_, err := st.Abort(ctx, sess.ID, app.Claude)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return !processAlive(pid) }, 10*time.Second, 20*time.Millisecond, "the tool outlived the abort")
	require.Eventually(t, func() bool {
		h.w.mu.Lock()
		defer h.w.mu.Unlock()
		return len(h.w.runs) == 0
	}, 10*time.Second, 20*time.Millisecond)
	require.Len(t, completes(h.events(sess.ID)), 1)
}

// recorder is a stdin that records what it is given; block holds writes.
type recorder struct {
	mu     sync.Mutex
	lines  []string
	closed bool
	block  chan struct{}
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.block != nil {
		<-r.block
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, string(p))
	return len(p), nil
}

func (r *recorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	return nil
}

func (r *recorder) state() ([]string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.lines...), r.closed
}

func TestProviderInput(t *testing.T) {
	t.Run("queued before start, written in order, closed after", func(t *testing.T) {
		in := newProviderInput()
		in.write([]byte("prompt"))
		in.write([]byte("answer"))
		rec := &recorder{}
		in.start(rec)
		in.write([]byte("later"))
		in.close()
		in.write([]byte("dropped"))
		require.Eventually(t, func() bool { _, closed := rec.state(); return closed }, 5*time.Second, time.Millisecond)
		lines, _ := rec.state()
		require.Equal(t, []string{"prompt", "answer", "later"}, lines)
	})
	t.Run("a provider that stops reading never blocks the caller", func(t *testing.T) {
		in := newProviderInput()
		rec := &recorder{block: make(chan struct{})}
		in.start(rec)
		done := make(chan struct{})
		go func() {
			for range inputQueue * 3 {
				in.write([]byte("x"))
			}
			in.close()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("write blocked")
		}
		close(rec.block)
		require.Eventually(t, func() bool { _, closed := rec.state(); return closed }, 5*time.Second, time.Millisecond)
		lines, _ := rec.state()
		require.LessOrEqual(t, len(lines), inputQueue+1, "the queue is bounded")
	})
}

// TestPendingAsksAreBounded: with maxPendingAsks requests of a run waiting
// for the user, its next request is denied at once and kept nowhere.
func TestPendingAsksAreBounded(t *testing.T) {
	in := newProviderInput()
	p := &permissions{prov: ClaudeProvider{}, in: in, pending: map[string]*pendingAsk{}, byProvider: map[string]string{}}
	for i := range maxPendingAsks {
		id := fmt.Sprint("waiting-", i)
		p.pending[id] = &pendingAsk{id: id}
		p.byProvider[id] = id
	}
	p.ask(ToolAsk{ID: "one-more", Tool: "Bash", Input: json.RawMessage(`{"command":"ls"}`)})
	require.Len(t, p.pending, maxPendingAsks)
	lines := written(t, in)
	require.Len(t, lines, 1)
	require.Contains(t, lines[0], app.DenyTooMany)
}

// TestPendingAsksAreBoundedInBytes: a request whose tool input is over
// maxAskInput is denied at once, and so is one that would take the run's
// pending inputs over maxPendingInput; an answered request gives its bytes
// back.
func TestPendingAsksAreBoundedInBytes(t *testing.T) {
	in := newProviderInput()
	p := &permissions{prov: ClaudeProvider{}, in: in, pending: map[string]*pendingAsk{}, byProvider: map[string]string{}}
	input := func(n int) json.RawMessage {
		return json.RawMessage(`{"content":"` + strings.Repeat("x", n) + `"}`)
	}
	big := input(maxAskInput) // its quotes and name take it over
	// Held as if recorded: requests of just under maxAskInput each.
	held := (maxPendingInput - 1) / (maxAskInput - 64)
	for i := range held {
		id := fmt.Sprint("waiting-", i)
		pa := &pendingAsk{id: id, ask: ToolAsk{ID: id, Tool: "Write", Input: input(maxAskInput - 64 - 20)}}
		p.pending[id] = pa
		p.byProvider[id] = id
		p.inputBytes += len(pa.ask.Input)
	}
	p.ask(ToolAsk{ID: "too-large", Tool: "Write", Input: big})
	p.ask(ToolAsk{ID: "over-budget", Tool: "Write", Input: input(maxAskInput - 64)})
	require.Len(t, p.pending, held)
	require.NotNil(t, p.take("waiting-0"))
	require.Less(t, p.inputBytes, (held-1)*maxAskInput, "an answered request gives its bytes back")

	lines := written(t, in)
	require.Len(t, lines, 2)
	require.Contains(t, lines[0], app.DenyTooLarge)
	require.Contains(t, lines[1], app.DenyTooMany)
}

// TestLongToolNamesAndIDsAreRefused: a request whose tool name or
// provider id is over maxAskName (a line forged into the CLI's output by a
// process of the user's, megabytes each, once took a gigabyte of Redis in
// 64 pending requests) is held nowhere: a long name is denied, a long id
// dropped without an answer, which would carry it back.
func TestLongToolNamesAndIDsAreRefused(t *testing.T) {
	in := newProviderInput()
	p := &permissions{prov: ClaudeProvider{}, in: in, pending: map[string]*pendingAsk{}, byProvider: map[string]string{}}
	long := strings.Repeat("x", maxAskName+1)
	p.ask(ToolAsk{ID: "r1", Tool: long, Input: json.RawMessage(`{}`)})
	p.ask(ToolAsk{ID: long, Tool: "Bash", Input: json.RawMessage(`{"command":"ls"}`)})
	require.Empty(t, p.pending)
	require.Zero(t, p.inputBytes)
	lines := written(t, in)
	require.Len(t, lines, 1)
	require.Contains(t, lines[0], app.DenyNameTooLong)
	require.Contains(t, lines[0], `"r1"`)
}

// written closes in and returns the lines it wrote to the provider.
func written(t *testing.T, in *providerInput) []string {
	t.Helper()
	rec := &recorder{}
	in.start(rec)
	in.close()
	require.Eventually(t, func() bool { _, closed := rec.state(); return closed }, 5*time.Second, time.Millisecond)
	lines, _ := rec.state()
	return lines
}
