package workers

import (
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/agentgate/agentgate/app"
)

// CursorProvider runs Cursor's agent CLI headless with stream-json output:
// `cursor-agent -p --output-format stream-json [--model=M] [--resume=ID]
// [-f | --mode plan] -- PROMPT`. The CLI takes the prompt as an argument
// only. In a folder it was never told to trust it refuses to run; the run
// is then retried once with --trust.
type CursorProvider struct{}

var _ Provider = CursorProvider{}

// Name implements Provider.
func (CursorProvider) Name() app.Provider { return app.Cursor }

// InstallHint implements Provider.
func (CursorProvider) InstallHint() string {
	return "Cursor agent CLI not found. Install it with `curl https://cursor.com/install -fsS | bash`, or set AGENTGATE_CURSOR_BIN to its path."
}

// Command implements Provider. The prompt follows `--`, so a prompt that
// starts with a dash is not taken for an option; other values from a job go
// in the `--flag=value` form, so a model or an id like `--yolo` is not
// either.
func (CursorProvider) Command(job app.Job, _ []string) ([]string, []byte) {
	args := []string{"-p", "--output-format", "stream-json"}
	if job.Options.Model != "" {
		args = append(args, "--model="+job.Options.Model)
	}
	if job.ProviderSessionID != "" {
		args = append(args, "--resume="+job.ProviderSessionID)
	}
	args = append(args, cursorPermissionArgs(job.Options)...)
	return append(args, "--", app.PromptWithImages(job.Command, job.ImageFiles)), nil
}

// cursorPermissionArgs maps permissionMode to the CLI's flags. Print mode
// has nobody to ask: without -f the CLI refuses shell commands (the model
// is told so) and still edits files.
//
//	default, acceptEdits, auto, dontAsk  (none)
//	plan                                 --mode plan (read-only)
//	bypassPermissions                    -f (also skipPermissions)
func cursorPermissionArgs(o app.RunOptions) []string {
	switch o.Mode() {
	case "bypassPermissions":
		return []string{"-f"}
	case "plan":
		return []string{"--mode", "plan"}
	}
	return nil
}

// NewParser implements Provider.
func (CursorProvider) NewParser(job app.Job) Parser {
	return &cursorParser{job: job, started: toolsStarted{}}
}

// cursorTrustPrompt matches the CLI's refusal to run in a folder it does
// not trust (the patterns Claude Code UI retries on).
var cursorTrustPrompt = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`(?i)workspace trust required|do you trust the contents of this directory|working with untrusted contents|pass --trust,\s*--yolo,\s*or -f`)
})

// cursorToolNames names the CLI's typed tool calls the way Claude's tools
// are named, so clients render them alike.
var cursorToolNames = map[string]string{
	"shellToolCall":       "Bash",
	"readToolCall":        "Read",
	"editToolCall":        "Edit",
	"writeToolCall":       "Write",
	"deleteToolCall":      "Delete",
	"grepToolCall":        "Grep",
	"globToolCall":        "Glob",
	"lsToolCall":          "LS",
	"todoToolCall":        "TodoWrite",
	"updateTodosToolCall": "TodoWrite",
}

// cursorParser maps stream-json lines (see internal/fakecursor/FACTS.md)
// to session events.
type cursorParser struct {
	job app.Job
	// result is set once the CLI printed its result line.
	result  bool
	started toolsStarted
	// thinking collects thinking deltas until their "completed" line.
	thinking strings.Builder
	// failed is set by a result line with is_error.
	failed bool
	// trust is set when stdout asked for workspace trust.
	trust bool
	code  int
}

type cursorLine struct {
	Type      string          `json:"type"`
	Subtype   string          `json:"subtype"`
	SessionID string          `json:"session_id"`
	Message   *claudeMessage  `json:"message"`
	Text      string          `json:"text"`
	CallID    string          `json:"call_id"`
	ToolCall  json.RawMessage `json:"tool_call"`
	IsError   bool            `json:"is_error"`
	Result    json.RawMessage `json:"result"`
	Usage     *cursorUsage    `json:"usage"`
}

type cursorUsage struct {
	InputTokens      int `json:"inputTokens"`
	OutputTokens     int `json:"outputTokens"`
	CacheReadTokens  int `json:"cacheReadTokens"`
	CacheWriteTokens int `json:"cacheWriteTokens"`
}

// cursorTool is one typed tool call: {"<kind>ToolCall": {"args", "result"}}.
type cursorTool struct {
	Args   json.RawMessage `json:"args"`
	Result json.RawMessage `json:"result"`
	// Name and Arguments are set by function-style (MCP) calls.
	Name      string          `json:"name"`
	Arguments json.RawMessage `json:"arguments"`
}

// Line implements Parser.
func (p *cursorParser) Line(line []byte) Output {
	var l cursorLine
	if err := json.Unmarshal(line, &l); err != nil {
		s := strings.TrimSpace(string(line))
		if cursorTrustPrompt().MatchString(s) {
			// Retried with --trust: not worth a row.
			p.trust = true
			return Output{}
		}
		if s != "" {
			return Output{Events: []app.Event{app.ErrorRow(s)}}
		}
		return Output{}
	}
	var out Output
	switch l.Type {
	case "system":
		if l.Subtype == "init" && l.SessionID != "" {
			out.Set = providerSession(l.SessionID)
		}
	case "assistant":
		if l.Message != nil {
			var parts []string
			for _, b := range l.Message.Content.Blocks {
				if b.Type == "text" {
					parts = append(parts, b.Text)
				}
			}
			if text := strings.Join(parts, ""); strings.TrimSpace(text) != "" {
				out.Events = append(out.Events, app.Text("assistant", text))
			}
		}
	case "thinking":
		p.thinking.WriteString(l.Text)
		if (l.Subtype == "completed" || p.thinking.Len() >= maxHeldText) && p.thinking.Len() > 0 {
			out.Events = append(out.Events, app.Thinking(p.thinking.String()))
			p.thinking.Reset()
		}
	case "tool_call":
		out.Events = p.toolCall(l)
	case "result":
		// The run's outcome, as the reference takes it: the CLI sometimes
		// never exits after it, and is then stopped (Output.Finished).
		p.result, out.Finished = true, true
		if l.IsError {
			p.failed = true
			text := resultText(l.Result)
			if strings.TrimSpace(text) == "" {
				text = "Cursor agent reported an error"
			}
			out.Events = append(out.Events, app.ErrorRow(text))
		}
		if l.Usage != nil {
			out.Events = append(out.Events, cursorTokenBudget(*l.Usage))
		}
	}
	return out
}

func (p *cursorParser) toolCall(l cursorLine) []app.Event {
	kind, tool, ok := cursorToolOf(l.ToolCall)
	if !ok || l.CallID == "" {
		return nil
	}
	var events []app.Event
	if l.Subtype == "started" || !p.started[l.CallID] {
		name, input := cursorToolName(kind, tool)
		events = append(events, app.ToolUse(l.CallID, name, input))
		p.started.add(l.CallID)
	}
	if l.Subtype == "completed" {
		delete(p.started, l.CallID)
		content, isError := cursorToolResult(tool.Result)
		events = append(events, app.ToolResult(l.CallID, content, isError))
	}
	return events
}

// cursorToolOf reads the one "<kind>ToolCall" (or "function") key of a
// tool_call object.
func cursorToolOf(raw json.RawMessage) (string, cursorTool, bool) {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return "", cursorTool{}, false
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		if strings.HasSuffix(k, "ToolCall") || k == "function" {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return "", cursorTool{}, false
	}
	slices.Sort(keys) // one key in practice; sorted so the choice is stable
	var t cursorTool
	if json.Unmarshal(m[keys[0]], &t) != nil {
		return "", cursorTool{}, false
	}
	return keys[0], t, true
}

func cursorToolName(kind string, t cursorTool) (string, any) {
	if kind == "function" {
		return t.Name, app.ObjectOrEmpty(t.Arguments)
	}
	if name, ok := cursorToolNames[kind]; ok {
		return name, claudeToolInput(name, t.Args)
	}
	if kind == "mcpToolCall" {
		var a struct {
			ToolName string `json:"toolName"`
		}
		if json.Unmarshal(t.Args, &a) == nil && a.ToolName != "" {
			return a.ToolName, app.ObjectOrEmpty(t.Args)
		}
	}
	return strings.TrimSuffix(kind, "ToolCall"), app.ObjectOrEmpty(t.Args)
}

// claudeToolInput gives the arguments of a tool call named as Claude's
// tool the field names Claude's take, beside the CLI's own: Claude Code
// UI's frontend renders a Read, Write or Edit from file_path, content,
// old_string and new_string (its server's history does the same renaming,
// normalizeCursorToolInput at afc717e6), and showed Cursor's ({path,
// fileText}) as a row without a file and an empty diff.
func claudeToolInput(name string, raw json.RawMessage) any {
	var in map[string]any
	if json.Unmarshal(raw, &in) != nil || in == nil {
		return app.ObjectOrEmpty(raw)
	}
	first := func(keys ...string) (string, bool) {
		for _, k := range keys {
			if v, ok := in[k].(string); ok {
				return v, true
			}
		}
		return "", false
	}
	if v, ok := first("file_path", "filePath", "path", "file", "filename"); ok && strings.TrimSpace(v) != "" {
		in["file_path"] = v
	}
	switch name {
	case "Write":
		if v, ok := first("content", "fileText", "text", "contents", "fileContent"); ok {
			in["content"] = v
		}
	case "Edit":
		if v, ok := first("old_string", "oldString", "old"); ok {
			in["old_string"] = v
		}
		if v, ok := first("new_string", "newString", "new"); ok {
			in["new_string"] = v
		}
	}
	return in
}

// cursorToolResult turns {"success": {…}} or {"rejected"|"failure"|"error":
// {…}} into a result's text: a shell's output, a file's content, else the
// object itself.
func cursorToolResult(raw json.RawMessage) (any, bool) {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil || len(m) == 0 {
		return "", false
	}
	outcome, body := "success", m["success"]
	if body == nil {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		outcome, body = keys[0], m[keys[0]]
	}
	var r struct {
		Stdout   *string `json:"stdout"`
		Stderr   string  `json:"stderr"`
		Content  *string `json:"content"`
		ExitCode *int    `json:"exitCode"`
		Reason   string  `json:"reason"`
		Message  string  `json:"message"`
		Error    string  `json:"error"`
	}
	_ = json.Unmarshal(body, &r)
	isError := outcome != "success" || (r.ExitCode != nil && *r.ExitCode != 0)
	switch {
	case r.Stdout != nil:
		text := *r.Stdout
		if r.Stderr != "" {
			text = strings.TrimRight(text, "\n") + "\n" + r.Stderr
		}
		if text == "" && outcome == "rejected" {
			return "The command was rejected (run with bypassPermissions to allow shell commands).", true
		}
		return text, isError
	case r.Content != nil:
		return *r.Content, isError
	case outcome == "rejected":
		msg := "The command was rejected (run with bypassPermissions to allow shell commands)."
		if r.Reason != "" {
			msg = "The command was rejected: " + r.Reason
		}
		return msg, true
	case r.Message != "" || r.Error != "":
		return strings.TrimSpace(r.Message + " " + r.Error), isError
	}
	return app.ObjectOrEmpty(body), isError
}

func cursorTokenBudget(u cursorUsage) app.Event {
	input := u.InputTokens + u.CacheReadTokens + u.CacheWriteTokens
	return app.TokenBudget(map[string]any{
		"used":                input + u.OutputTokens,
		"inputTokens":         input,
		"outputTokens":        u.OutputTokens,
		"cacheReadTokens":     u.CacheReadTokens,
		"cacheCreationTokens": u.CacheWriteTokens,
		"breakdown":           map[string]int{"input": input, "output": u.OutputTokens},
	})
}

// End implements Parser.
func (p *cursorParser) End(code int) ([]app.Event, int) {
	p.code = code
	var final []app.Event
	if p.thinking.Len() > 0 {
		final = append(final, app.Thinking(p.thinking.String()))
		p.thinking.Reset()
	}
	switch {
	case p.failed && code == 0:
		code = 1
	case p.result && !p.failed:
		code = 0 // stopped after its result, or exiting oddly after it
	}
	return final, code
}

// Retry implements Retrier: a run that failed because the folder is not
// trusted runs once more with --trust, as Claude Code UI does.
func (p *cursorParser) Retry(stderr string) ([]string, bool) {
	if p.code == 0 || (!p.trust && !cursorTrustPrompt().MatchString(stderr)) {
		return nil, false
	}
	args, _ := CursorProvider{}.Command(p.job, nil)
	end := slices.Index(args, "--")
	return slices.Insert(args, end, "--trust"), true
}
