package workers

import (
	"encoding/json"
	"strings"

	"github.com/agentgate/agentgate/app"
)

// CodexProvider runs the OpenAI Codex CLI non-interactively with JSON
// events: `codex exec --json --skip-git-repo-check [sandbox flags]
// [--model=M] [resume] [--image=P…] -- [ID] -`, the prompt on stdin (`-`).
type CodexProvider struct{}

var _ Provider = CodexProvider{}

// codexContextWindow is the token budget total reported for Codex runs; the
// CLI's events do not carry the model's window.
const codexContextWindow = 200000

// Name implements Provider.
func (CodexProvider) Name() app.Provider { return app.Codex }

// InstallHint implements Provider.
func (CodexProvider) InstallHint() string {
	return "Codex CLI not found. Install it with `npm install -g @openai/codex`, or set AGENTGATE_CODEX_BIN to its path."
}

// Command implements Provider. Options go before `resume`: the resume
// subcommand does not take --sandbox. Values from a job go in the
// `--flag=value` form, and the thread id, a positional argument of
// `resume`, after `--`: the CLI's parser would read an id like `--last` (the
// newest thread in the folder) as a flag, and has no `=` form for a
// positional. "-" after `--` is still the prompt read from stdin.
func (CodexProvider) Command(job app.Job, _ []string) ([]string, []byte) {
	args := []string{"exec", "--json", "--skip-git-repo-check"}
	args = append(args, codexPermissionArgs(job.Options)...)
	if job.Options.Model != "" {
		args = append(args, "--model="+job.Options.Model)
	}
	if job.ProviderSessionID != "" {
		args = append(args, "resume")
	}
	for _, img := range job.ImageFiles {
		// "=": --image takes several values, and would take "-" too.
		args = append(args, "--image="+img)
	}
	args = append(args, "--")
	if job.ProviderSessionID != "" {
		args = append(args, job.ProviderSessionID)
	}
	return append(args, "-"), []byte(job.Command)
}

// codexPermissionArgs maps permissionMode to the CLI's sandbox and approval
// policy. `codex exec` has nobody to ask, so "on-request" lets the model
// request an escalation that is then refused, and "never" keeps it inside the
// sandbox. The CLI no longer accepts approval_policy "untrusted".
//
//	default, auto        workspace-write, on-request
//	acceptEdits, dontAsk workspace-write, never
//	plan                 read-only, never
//	bypassPermissions    no sandbox, no approvals (also skipPermissions)
func codexPermissionArgs(o app.RunOptions) []string {
	switch o.Mode() {
	case "bypassPermissions":
		return []string{"--dangerously-bypass-approvals-and-sandbox"}
	case "acceptEdits", "dontAsk":
		return []string{"--sandbox", "workspace-write", "--config", `approval_policy="never"`}
	case "plan":
		return []string{"--sandbox", "read-only", "--config", `approval_policy="never"`}
	default:
		return []string{"--sandbox", "workspace-write", "--config", `approval_policy="on-request"`}
	}
}

// NewParser implements Provider.
func (CodexProvider) NewParser(job app.Job) Parser {
	return &codexParser{job: job, started: toolsStarted{}}
}

// codexParser maps `codex exec --json` lines (see
// internal/mockopenai/CLI_FACTS.md) to session events.
type codexParser struct {
	job app.Job
	// started holds the items whose tool_use was sent at item.started.
	started toolsStarted
	// failed is set by turn.failed: the run fails even if the CLI exits 0.
	failed bool
	// lastError is the last error row's text: turn.failed repeats the
	// error event before it.
	lastError string
	// reconnecting is set by a "Reconnecting..." notice, shown as the
	// run's status, until the run's next event says the retry worked.
	reconnecting bool
}

// codexWorking is the status that replaces a retry's notice once the run
// goes on: Claude Code UI's frontend keeps a status text until another
// replaces it (an empty one is ignored), so "Reconnecting... 1/5" stayed
// on its activity indicator until the run ended.
const codexWorking = "Working"

type codexLine struct {
	Type     string          `json:"type"`
	ThreadID string          `json:"thread_id"`
	Item     *codexItem      `json:"item"`
	Usage    *codexUsage     `json:"usage"`
	Message  string          `json:"message"`
	Error    json.RawMessage `json:"error"`
}

type codexItem struct {
	ID               string          `json:"id"`
	Type             string          `json:"type"`
	Text             string          `json:"text"`
	Message          string          `json:"message"`
	Command          string          `json:"command"`
	AggregatedOutput string          `json:"aggregated_output"`
	ExitCode         *int            `json:"exit_code"`
	Status           string          `json:"status"`
	Changes          json.RawMessage `json:"changes"`
	Server           string          `json:"server"`
	Tool             string          `json:"tool"`
	Arguments        json.RawMessage `json:"arguments"`
	Result           json.RawMessage `json:"result"`
	Error            json.RawMessage `json:"error"`
	Query            string          `json:"query"`
	Items            json.RawMessage `json:"items"`
}

type codexUsage struct {
	InputTokens           int `json:"input_tokens"`
	CachedInputTokens     int `json:"cached_input_tokens"`
	OutputTokens          int `json:"output_tokens"`
	ReasoningOutputTokens int `json:"reasoning_output_tokens"`
}

// Line implements Parser.
func (p *codexParser) Line(line []byte) Output {
	var l codexLine
	if err := json.Unmarshal(line, &l); err != nil {
		if s := strings.TrimSpace(string(line)); s != "" {
			return Output{Events: []app.Event{app.ErrorRow(s)}}
		}
		return Output{}
	}
	var out Output
	switch l.Type {
	case "thread.started":
		if l.ThreadID != "" {
			out.Set = providerSession(l.ThreadID)
		}
	case "item.started":
		if l.Item != nil {
			out.Events = p.itemStarted(*l.Item)
		}
	case "item.completed":
		if l.Item != nil {
			out.Events = p.itemCompleted(*l.Item)
		}
	case "turn.completed":
		// The turn ends the run (one turn an exec): a CLI still running
		// lingerGrace later is stopped.
		out.Finished = true
		if l.Usage != nil {
			out.Events = append(out.Events, codexTokenBudget(*l.Usage))
		}
	case "turn.failed":
		p.failed, out.Finished = true, true
		msg := codexErrorText(l.Error)
		if msg == "" {
			msg = "Codex reported that the turn failed"
		}
		if ev, ok := p.errorRow(msg); ok {
			out.Events = append(out.Events, ev)
		}
	case "error":
		if strings.HasPrefix(l.Message, "Reconnecting...") {
			// A retry in progress, not a failure: turn.failed follows if
			// the retries run out.
			p.reconnecting = true
			out.Events = append(out.Events, app.NewEvent(app.KindStatus, map[string]any{"text": l.Message, "canInterrupt": true}))
			return out
		} else if ev, ok := p.errorRow(apiErrorMessage(l.Message)); ok {
			out.Events = append(out.Events, ev)
		}
	}
	if p.reconnecting && len(out.Events) > 0 && !p.failed && l.Type != "error" {
		p.reconnecting = false
		working := app.NewEvent(app.KindStatus, map[string]any{"text": codexWorking, "canInterrupt": true})
		out.Events = append([]app.Event{working}, out.Events...)
	}
	return out
}

// toolID keeps tool ids unique within a session: the CLI numbers items
// from item_0 again in every run of a thread.
func (p *codexParser) toolID(item codexItem) string {
	return p.job.RunID + ":" + item.ID
}

func (p *codexParser) itemStarted(item codexItem) []app.Event {
	// Not web_search: its query is empty until it completes.
	switch item.Type {
	case "command_execution", "mcp_tool_call", "file_change":
		p.started.add(item.ID)
		return []app.Event{p.toolUse(item)}
	}
	return nil
}

func (p *codexParser) itemCompleted(item codexItem) []app.Event {
	switch item.Type {
	case "agent_message":
		if item.Text == "" {
			return nil
		}
		return []app.Event{app.Text("assistant", item.Text)}
	case "reasoning":
		if item.Text == "" {
			return nil
		}
		return []app.Event{app.Thinking(item.Text)}
	case "error":
		if ev, ok := p.errorRow(item.Message); ok {
			return []app.Event{ev}
		}
		return nil
	}
	var events []app.Event
	if !p.started[item.ID] {
		events = append(events, p.toolUse(item))
	}
	delete(p.started, item.ID)
	// Every tool gets its result: Claude Code UI's frontend shows a tool
	// without one as running for good.
	switch item.Type {
	case "command_execution":
		out := item.AggregatedOutput
		if item.Status == "declined" && out == "" {
			// The frontend hides a successful command's output: a
			// declined one looked as if it ran.
			out = "The command was declined: it needed an approval nobody is asked for here (permission mode bypassPermissions runs it)."
		}
		failed := item.Status == "failed" || item.Status == "declined" || (item.ExitCode != nil && *item.ExitCode != 0)
		events = append(events, app.ToolResult(p.toolID(item), out, failed))
	case "mcp_tool_call":
		if len(item.Error) > 0 && string(item.Error) != "null" {
			events = append(events, app.ToolResult(p.toolID(item), codexErrorText(item.Error), true))
		} else {
			events = append(events, app.ToolResult(p.toolID(item), app.ObjectOrEmpty(item.Result), item.Status == "failed"))
		}
	case "file_change":
		events = append(events, app.ToolResult(p.toolID(item), app.ObjectOrEmpty(item.Changes), item.Status == "failed"))
	case "web_search":
		events = append(events, app.ToolResult(p.toolID(item), item.Query, item.Status == "failed"))
	case "todo_list":
		events = append(events, app.ToolResult(p.toolID(item), app.ObjectOrEmpty(item.Items), false))
	default:
		events = append(events, app.ToolResult(p.toolID(item), "", item.Status == "failed"))
	}
	return events
}

// toolUse names an item's tool the way Claude Code UI shows Codex tools.
func (p *codexParser) toolUse(item codexItem) app.Event {
	var ev app.Event
	switch item.Type {
	case "command_execution":
		ev = app.ToolUse(p.toolID(item), "Bash", map[string]any{"command": item.Command})
	case "file_change":
		ev = app.ToolUse(p.toolID(item), "FileChanges", map[string]any{"changes": app.ObjectOrEmpty(item.Changes)})
	case "mcp_tool_call":
		ev = app.ToolUse(p.toolID(item), item.Tool, app.ObjectOrEmpty(item.Arguments))
		ev.Fields["server"] = item.Server
	case "web_search":
		ev = app.ToolUse(p.toolID(item), "WebSearch", map[string]any{"query": item.Query})
	case "todo_list":
		ev = app.ToolUse(p.toolID(item), "TodoList", map[string]any{"items": app.ObjectOrEmpty(item.Items)})
	default:
		ev = app.ToolUse(p.toolID(item), item.Type, map[string]any{})
	}
	return ev
}

func (p *codexParser) errorRow(text string) (app.Event, bool) {
	text = strings.TrimSpace(text)
	if text == "" || text == p.lastError {
		return app.Event{}, false
	}
	p.lastError = text
	return app.ErrorRow(text), true
}

func codexTokenBudget(u codexUsage) app.Event {
	// input_tokens already counts the cached ones.
	return app.TokenBudget(map[string]any{
		"used":            u.InputTokens + u.OutputTokens,
		"total":           codexContextWindow,
		"inputTokens":     u.InputTokens,
		"outputTokens":    u.OutputTokens,
		"cacheReadTokens": u.CachedInputTokens,
		"breakdown":       map[string]int{"input": u.InputTokens, "output": u.OutputTokens},
	})
}

// codexErrorText reads an error that is either a string or an object with
// a message.
func codexErrorText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return apiErrorMessage(s)
	}
	var e struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(raw, &e) == nil && e.Message != "" {
		return apiErrorMessage(e.Message)
	}
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	return string(raw)
}

// apiErrorMessage unwraps the API's JSON error body that the CLI passes on
// as its message for some statuses ({"error":{"message":…}}).
func apiErrorMessage(s string) string {
	var body struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if strings.HasPrefix(s, "{") && json.Unmarshal([]byte(s), &body) == nil && body.Error.Message != "" {
		return body.Error.Message
	}
	return s
}

// Stderr implements StderrFilter: a failed start (a resume of a thread
// that does not exist) prints "Error: …" and a Rust stack backtrace after
// warnings about the environment; the error line is what explains it.
func (p *codexParser) Stderr(tail string) string {
	var kept []string
	for _, line := range strings.Split(tail, "\n") {
		if msg, ok := strings.CutPrefix(line, "Error: "); ok {
			return msg
		}
		if strings.HasPrefix(line, "Stack backtrace:") {
			break
		}
		if strings.HasPrefix(line, "WARNING: proceeding") || strings.HasPrefix(line, "Reading ") || strings.TrimSpace(line) == "" {
			continue
		}
		kept = append(kept, line)
	}
	return strings.Join(kept, "\n")
}

// End implements Parser.
func (p *codexParser) End(code int) ([]app.Event, int) {
	if p.failed && code == 0 {
		code = 1
	}
	return nil, code
}
