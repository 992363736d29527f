package workers

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/agentgate/agentgate/app"
)

// GeminiProvider runs the Gemini CLI headless with streamed JSON events:
// `gemini -p "" --output-format stream-json --skip-trust [--model=M]
// [--resume=ID] [approval flags] [--allowed-tools=a,b]`, the prompt on
// stdin (the CLI appends -p's text to what stdin holds).
type GeminiProvider struct{}

var _ Provider = GeminiProvider{}

// Name implements Provider.
func (GeminiProvider) Name() app.Provider { return app.Gemini }

// InstallHint implements Provider.
func (GeminiProvider) InstallHint() string {
	return "Gemini CLI not found. Install it with `npm install -g @google/gemini-cli`, or set AGENTGATE_GEMINI_BIN to its path."
}

// Command implements Provider. --skip-trust because the worker has already
// checked the project path against its workspaces; without it a headless
// run in a folder the CLI was never told to trust exits 55. Values from a
// job go in the `--flag=value` form: as an argument of their own, the CLI's
// parser reads a model or an id like `--yolo` as that flag.
func (GeminiProvider) Command(job app.Job, _ []string) ([]string, []byte) {
	args := []string{"-p", "", "--output-format", "stream-json", "--skip-trust"}
	if job.Options.Model != "" {
		args = append(args, "--model="+job.Options.Model)
	}
	switch {
	case job.ProviderSessionID != "":
		args = append(args, "--resume="+job.ProviderSessionID)
	case isUUID(job.SessionID):
		// The conversation takes the session's own id, as Claude's does:
		// a client that lists it under the CLI's id (Claude Code UI's
		// projects service) then names the session agentgate's events
		// carry.
		args = append(args, "--session-id="+job.SessionID)
	}
	args = append(args, geminiPermissionArgs(job.Options)...)
	// One argument, the rules joined with ',': the gateway refuses a rule
	// with a ',' outside its parentheses, which would split there, and
	// bounds the rules' bytes well under an argument's 128 KiB.
	if tools := job.Options.Tools.AllowedTools; len(tools) > 0 {
		args = append(args, "--allowed-tools="+strings.Join(tools, ","))
	}
	return args, []byte(app.PromptWithImages(job.Command, job.ImageFiles))
}

// isUUID reports whether s is a UUID in its canonical form (the gateway
// mints session ids so), which is what the CLI takes for --session-id.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range []byte(s) {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}

// geminiPermissionArgs maps permissionMode to the CLI's approval mode. A
// headless run has nobody to ask: in the default mode the CLI does not
// offer the model the tools that would need approval (shell, file writes).
//
//	default, auto, dontAsk  (none: read-only tools only)
//	acceptEdits             --approval-mode auto_edit
//	plan                    --approval-mode plan
//	bypassPermissions       --yolo (also skipPermissions)
func geminiPermissionArgs(o app.RunOptions) []string {
	switch o.Mode() {
	case "bypassPermissions":
		return []string{"--yolo"}
	case "acceptEdits":
		return []string{"--approval-mode", "auto_edit"}
	case "plan":
		return []string{"--approval-mode", "plan"}
	}
	return nil
}

// NewParser implements Provider.
func (GeminiProvider) NewParser(app.Job) Parser {
	return &geminiParser{}
}

// geminiParser maps `--output-format stream-json` lines (see
// internal/mockgemini/CLI_FACTS.md) to session events. The CLI streams an
// answer as message deltas; they are joined into one text event, sent when
// something else happens or the run ends, so history holds whole messages.
type geminiParser struct {
	pending strings.Builder
	// failed is set by a result with status "error".
	failed bool
	// lastError is the last error row's text, not to repeat it.
	lastError string
	// code is the exit code End saw, for Stderr.
	code int
}

type geminiLine struct {
	Type       string          `json:"type"`
	SessionID  string          `json:"session_id"`
	Role       string          `json:"role"`
	Content    string          `json:"content"`
	ToolName   string          `json:"tool_name"`
	ToolID     string          `json:"tool_id"`
	Parameters json.RawMessage `json:"parameters"`
	Status     string          `json:"status"`
	Output     *string         `json:"output"`
	Error      json.RawMessage `json:"error"`
	Message    string          `json:"message"`
	Stats      *geminiStats    `json:"stats"`
}

type geminiStats struct {
	TotalTokens  int `json:"total_tokens"`
	InputTokens  int `json:"input_tokens"`
	OutputTokens int `json:"output_tokens"`
	Cached       int `json:"cached"`
}

// Line implements Parser.
func (p *geminiParser) Line(line []byte) Output {
	var l geminiLine
	if err := json.Unmarshal(line, &l); err != nil {
		if s := strings.TrimSpace(string(line)); s != "" {
			return Output{Events: append(p.flush(), app.ErrorRow(s))}
		}
		return Output{}
	}
	var out Output
	switch l.Type {
	case "init":
		if l.SessionID != "" {
			out.Set = providerSession(l.SessionID)
		}
	case "message":
		if l.Role == "assistant" {
			p.pending.WriteString(l.Content)
			if p.pending.Len() >= maxHeldText {
				out.Events = p.flush()
			}
		}
	case "tool_use":
		out.Events = append(p.flush(), app.ToolUse(l.ToolID, l.ToolName, app.ObjectOrEmpty(l.Parameters)))
	case "tool_result":
		content := ""
		if l.Output != nil {
			content = *l.Output
		}
		if msg := geminiErrorText(l.Error); msg != "" && content == "" {
			content = msg
		}
		out.Events = append(p.flush(), app.ToolResult(l.ToolID, content, l.Status == "error"))
	case "error":
		out.Events = p.flush()
		if ev, ok := p.errorRow(l.Message); ok {
			out.Events = append(out.Events, ev)
		}
	case "result":
		// The last line of a run: a CLI still running lingerGrace later
		// is stopped.
		out.Events, out.Finished = p.flush(), true
		if l.Status == "error" {
			p.failed = true
			msg := geminiErrorText(l.Error)
			if msg == "" {
				msg = "Gemini CLI reported an error"
			}
			if ev, ok := p.errorRow(msg); ok {
				out.Events = append(out.Events, ev)
			}
		} else if l.Stats != nil && l.Stats.TotalTokens > 0 {
			out.Events = append(out.Events, geminiTokenBudget(*l.Stats))
		}
	}
	return out
}

// flush turns the message deltas seen so far into one text event.
func (p *geminiParser) flush() []app.Event {
	if p.pending.Len() == 0 {
		return nil
	}
	text := p.pending.String()
	p.pending.Reset()
	if strings.TrimSpace(text) == "" {
		return nil
	}
	return []app.Event{app.Text("assistant", text)}
}

func (p *geminiParser) errorRow(text string) (app.Event, bool) {
	text = strings.TrimSpace(text)
	if text == "" || text == p.lastError {
		return app.Event{}, false
	}
	p.lastError = text
	return app.ErrorRow(text), true
}

// geminiTokenBudget reports the run's usage; the CLI's stats carry no
// context window, so there is no total (as in Claude Code UI).
func geminiTokenBudget(s geminiStats) app.Event {
	return app.TokenBudget(map[string]any{
		"used":            s.TotalTokens,
		"inputTokens":     s.InputTokens,
		"outputTokens":    s.OutputTokens,
		"cacheReadTokens": s.Cached,
		"breakdown":       map[string]int{"input": s.InputTokens, "output": s.OutputTokens},
	})
}

// geminiErrorText reads {type, message}, unwrapping the API's JSON error
// that the CLI wraps as "[API Error: {…}]".
func geminiErrorText(raw json.RawMessage) string {
	var e struct {
		Message string `json:"message"`
	}
	if len(raw) == 0 || json.Unmarshal(raw, &e) != nil {
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return s
		}
		return ""
	}
	msg := strings.TrimSpace(e.Message)
	if inner, ok := strings.CutPrefix(msg, "[API Error: "); ok {
		inner = strings.TrimSuffix(inner, "]")
		var body struct {
			Error struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal([]byte(inner), &body) == nil && body.Error.Message != "" {
			if body.Error.Code != 0 {
				return fmt.Sprintf("API Error %d: %s", body.Error.Code, body.Error.Message)
			}
			return "API Error: " + body.Error.Message
		}
		return "API Error: " + inner
	}
	return msg
}

// geminiExitMessages explain the CLI's own exit codes (its FatalError
// classes); other codes are an API error's HTTP status modulo 256, or 1.
var geminiExitMessages = map[int]string{
	41: "Gemini CLI could not authenticate: set GEMINI_API_KEY (or log in with `gemini` once) on the worker.",
	42: "Gemini CLI rejected its input (the prompt or the arguments).",
	44: "Gemini CLI could not start its sandbox.",
	52: "Gemini CLI configuration error: check settings.json in ~/.gemini and in the project.",
	53: "The conversation reached the maximum number of turns.",
	54: "A tool failed in a way that ended the Gemini run.",
	55: "Gemini CLI does not trust this project folder.",
}

// End implements Parser.
func (p *geminiParser) End(code int) ([]app.Event, int) {
	p.code = code
	final := p.flush()
	if p.failed && code == 0 {
		code = 1
	}
	return final, code
}

// Stderr implements StderrFilter: a fatal error is explained by its exit
// code, and by stderr once the CLI's start-up noise and stack frames are
// left out.
func (p *geminiParser) Stderr(tail string) string {
	var kept []string
	for _, line := range strings.Split(tail, "\n") {
		t := strings.TrimSpace(line)
		switch {
		case t == "", strings.HasPrefix(t, "at "), strings.HasPrefix(t, "[STARTUP]"),
			strings.HasPrefix(t, "Warning: 256-color"), strings.HasPrefix(t, "Ripgrep is not available"),
			strings.HasPrefix(t, "YOLO mode is enabled"), strings.HasPrefix(t, "Loaded cached credentials"):
			continue
		}
		kept = append(kept, t)
	}
	detail := strings.Join(kept, "\n")
	msg, known := geminiExitMessages[p.code]
	switch {
	case known && detail != "":
		return msg + "\n" + detail
	case known:
		return msg
	case detail != "":
		return detail
	}
	return fmt.Sprintf("Gemini CLI exited with code %d.", p.code)
}
