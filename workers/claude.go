package workers

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"golang.org/x/sys/unix"

	"github.com/agentgate/agentgate/app"
)

// ClaudeProvider runs the Claude Code CLI in print mode with its stream-json
// control channel: `claude -p --input-format stream-json --output-format
// stream-json --verbose --permission-prompt-tool stdio …`. The prompt is the
// first stdin line (an argument is limited to 128 KiB on Linux; stdin is
// not); the CLI then asks on stdout whether each tool may run and reads the
// answers on stdin, and exits once stdin is closed after its result.
type ClaudeProvider struct{}

var (
	_ Provider       = ClaudeProvider{}
	_ Conversational = ClaudeProvider{}
)

// Name implements Provider.
func (ClaudeProvider) Name() app.Provider { return app.Claude }

// InstallHint implements Provider.
func (ClaudeProvider) InstallHint() string {
	return "Claude Code CLI not found. Install it with `npm install -g @anthropic-ai/claude-code`, or set AGENTGATE_CLAUDE_BIN to its path."
}

// Command implements Provider. Every value from a job goes in the CLI's
// `--flag=value` form: as an argument of its own after `--resume` (whose
// value is optional) an id like `--continue` would be read as a flag.
func (ClaudeProvider) Command(job app.Job, env []string) ([]string, []byte) {
	args := []string{"-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose",
		"--permission-prompt-tool", "stdio"}
	resume := job.ProviderSessionID
	if resume == job.SessionID && !conversationSaved(env, resume) {
		// The gateway's own id, but no earlier run got as far as saving the
		// conversation (its worker died first): start it instead, or every
		// later run would fail with "No conversation found".
		resume = ""
	}
	if resume != "" {
		args = append(args, "--resume="+resume)
	} else {
		args = append(args, "--session-id="+job.SessionID)
	}
	if job.Options.Model != "" {
		args = append(args, "--model="+job.Options.Model)
	}
	mode := job.Options.Mode()
	if mode != "" && mode != "default" {
		args = append(args, "--permission-mode="+mode)
	}
	// One flag a tool: the list flags take every following argument that
	// does not look like a flag, and repeating them adds to the list.
	for _, tool := range job.Options.Tools.AllowedTools {
		args = append(args, "--allowedTools="+tool)
	}
	for _, tool := range job.Options.Tools.DisallowedTools {
		args = append(args, "--disallowedTools="+tool)
	}
	if len(job.ImageFiles) > 0 {
		// The model reads the images with its Read tool: their folder is
		// opened to it like the project's.
		args = append(args, "--add-dir="+filepath.Dir(job.ImageFiles[0]))
	}
	return args, claudeUserLine(app.PromptWithImages(job.Command, job.ImageFiles))
}

// claudeUserLine is a prompt as a stream-json user message line.
func claudeUserLine(prompt string) []byte {
	line, _ := json.Marshal(map[string]any{
		"type":               "user",
		"message":            map[string]any{"role": "user", "content": prompt},
		"parent_tool_use_id": nil,
		"session_id":         "",
	})
	return append(line, '\n')
}

// Answer implements Conversational. The CLI refuses an allow without
// updatedInput, so the original input is sent when the user changed none.
func (ClaudeProvider) Answer(ask ToolAsk, allow bool, input json.RawMessage, message string) []byte {
	var decision map[string]any
	if allow {
		if len(input) == 0 {
			input = ask.Input
		}
		decision = map[string]any{"behavior": "allow", "updatedInput": app.ObjectOrEmpty(input)}
	} else {
		decision = map[string]any{"behavior": "deny", "message": message}
	}
	return claudeControlResponse(ask.ID, decision)
}

// Interrupt implements Conversational: the CLI stops its turn (a pending
// permission request is withdrawn, a running tool is stopped) and prints
// its result.
func (ClaudeProvider) Interrupt() []byte {
	line, _ := json.Marshal(map[string]any{
		"type":       "control_request",
		"request_id": "interrupt_" + app.NewID(),
		"request":    map[string]any{"subtype": "interrupt"},
	})
	return append(line, '\n')
}

func claudeControlResponse(requestID string, response map[string]any) []byte {
	line, _ := json.Marshal(map[string]any{
		"type": "control_response",
		"response": map[string]any{
			"subtype": "success", "request_id": requestID, "response": response,
		},
	})
	return append(line, '\n')
}

// claudeControlError refuses a control request the gateway does not serve,
// so that the CLI does not wait for it.
func claudeControlError(requestID, msg string) []byte {
	line, _ := json.Marshal(map[string]any{
		"type": "control_response",
		"response": map[string]any{
			"subtype": "error", "request_id": requestID, "error": msg,
		},
	})
	return append(line, '\n')
}

// conversationSaved reports whether the CLI saved the conversation id where
// it keeps them: $CLAUDE_CONFIG_DIR, else $HOME/.claude, in
// projects/<project>/<id>.jsonl.
//
// It runs as root in a folder the user controls, so it opens nothing but
// the projects folder itself (as a folder, without blocking: a FIFO put
// there fails at once instead of hanging the run before its CLI exists),
// looks at most maxProjectDirs entries, and only stats each candidate
// without following it: a glob opened every entry, links in a loop made
// it quadratic, and one swapped for a FIFO blocked it for good.
//
// A candidate counts only when it belongs to the owner of the folder the
// CLI keeps its state in (its home, or $CLAUDE_CONFIG_DIR), or to the
// worker: the user links what they like in there, and a stat as root
// through a link into another user's folder would tell them whether a
// file exists in it.
func conversationSaved(env []string, id string) bool {
	dir := lookupEnv(env, "CLAUDE_CONFIG_DIR")
	base := dir // the folder whose owner the CLI runs as
	if dir == "" {
		base = lookupEnv(env, "HOME")
		if base == "" {
			return true // cannot tell: let the CLI decide
		}
		dir = filepath.Join(base, ".claude")
	}
	// The home's owner is the account the CLI runs as under --user-uids;
	// without accounts the CLI runs as the worker, and its files are the
	// worker's whoever owns the home (a worker that is not root sees no
	// more than its CLIs could anyway).
	var owner unix.Stat_t
	if unix.Stat(base, &owner) != nil {
		return false
	}
	root := os.Geteuid() == 0
	mine := func(uid uint32) bool { return !root || uid == owner.Uid || uid == 0 }
	fd, err := unix.Open(filepath.Join(dir, "projects"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	f := os.NewFile(uintptr(fd), "projects")
	defer f.Close()
	names, _ := f.Readdirnames(maxProjectDirs)
	for _, name := range names {
		var st unix.Stat_t
		if unix.Fstatat(fd, name+"/"+id+".jsonl", &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
			continue
		}
		if t := st.Mode & unix.S_IFMT; (t == unix.S_IFREG || t == unix.S_IFLNK) && mine(st.Uid) {
			return true
		}
	}
	return false
}

// maxProjectDirs bounds the project folders conversationSaved looks in.
const maxProjectDirs = 10000

// lookupEnv reads a variable the way exec does: the last assignment wins.
func lookupEnv(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], key+"="); ok {
			return v
		}
	}
	return ""
}

// NewParser implements Provider.
func (ClaudeProvider) NewParser(app.Job) Parser {
	return &claudeParser{contextWindow: contextWindow()}
}

// contextWindow is the token budget total, as the reference computes it.
func contextWindow() int {
	if n, err := strconv.Atoi(os.Getenv("CONTEXT_WINDOW")); err == nil && n > 0 {
		return n
	}
	return 160000
}

// claudeParser maps the CLI's stream-json lines (see the CLI facts in the
// README) to session events.
type claudeParser struct {
	contextWindow int
	// sawError is set by a `result` line with is_error: the CLI says
	// "subtype":"success" even for failed runs, so is_error decides.
	sawError bool
	// lastError is the last error row's text, so the result line that
	// repeats a failed request's message is not shown twice.
	lastError string
}

type claudeLine struct {
	Type            string         `json:"type"`
	Subtype         string         `json:"subtype"`
	SessionID       string         `json:"session_id"`
	Message         *claudeMessage `json:"message"`
	ParentToolUseID string         `json:"parent_tool_use_id"`
	IsError         bool           `json:"is_error"`
	Result          jsontext.Value `json:"result"`
	Usage           *claudeUsage   `json:"usage"`
	// Error is set on the synthetic assistant line the CLI prints for a
	// failed request ("authentication_failed", "server_error").
	Error string `json:"error"`
	// UUID names the line; the CLI writes the same line, under the same
	// uuid, to the conversation's transcript (messageID).
	UUID string `json:"uuid"`
	// Errors explains a result of subtype error_during_execution (a
	// --resume of a conversation that does not exist).
	Errors []string `json:"errors"`
	// RequestID and Request are set on control_request and
	// control_cancel_request lines.
	RequestID string         `json:"request_id"`
	Request   *claudeRequest `json:"request"`
	// ToolUseResult is the tool's own account of its result, on the user
	// line that carries it: a JSON object, or a string for an error.
	ToolUseResult jsontext.Value `json:"tool_use_result"`
}

// maxResultFiles bounds the file names a tool_result's toolUseResult
// repeats from its content: the frontend shows the list, and counts by
// numFiles.
const maxResultFiles = 1000

// toolUseResult is what a tool_result event keeps of the CLI's
// tool_use_result: the fields Claude Code UI's frontend reads (a Grep or
// Glob card's count and file list; a subagent's id). Its other fields
// repeat the result's content (a Read's whole file), which the event
// holds already.
type toolUseResult struct {
	NumFiles  *float64 `json:"numFiles,omitempty"`
	Filenames []string `json:"filenames,omitempty"`
	AgentID   string   `json:"agentId,omitempty"`
}

// countBlocks is how many of blocks are of type typ.
func countBlocks(blocks []claudeBlock, typ string) int {
	n := 0
	for _, b := range blocks {
		if b.Type == typ {
			n++
		}
	}
	return n
}

// toolUseResultOf is the toolUseResult field of raw, or nil when raw holds
// none of its fields.
func toolUseResultOf(raw jsontext.Value) *toolUseResult {
	if len(raw) == 0 || raw.Kind() != '{' {
		return nil
	}
	var r toolUseResult
	if jsonv2.Unmarshal(raw, &r, claudeLineJSON) != nil {
		return nil
	}
	if r.NumFiles == nil && r.Filenames == nil && r.AgentID == "" {
		return nil
	}
	if len(r.Filenames) > maxResultFiles {
		if r.NumFiles == nil {
			n := float64(len(r.Filenames))
			r.NumFiles = &n
		}
		r.Filenames = r.Filenames[:maxResultFiles]
	}
	if len(r.AgentID) > 256 {
		r.AgentID = ""
	}
	return &r
}

type claudeRequest struct {
	Subtype  string         `json:"subtype"`
	ToolName string         `json:"tool_name"`
	Input    jsontext.Value `json:"input"`
}

type claudeMessage struct {
	Role    string        `json:"role"`
	Content claudeContent `json:"content"`
	Usage   *claudeUsage  `json:"usage"`
}

// claudeContent is a message's content: a string (a prompt as the user
// typed it) or a list of blocks, decoded in the one pass over the line.
type claudeContent struct {
	IsText bool
	Text   string
	Blocks []claudeBlock
}

// UnmarshalJSONFrom decodes the content where it is (the Claude parser's
// encoding/json/v2 path).
func (c *claudeContent) UnmarshalJSONFrom(dec *jsontext.Decoder) error {
	*c = claudeContent{}
	switch dec.PeekKind() {
	case '"':
		c.IsText = true
		return jsonv2.UnmarshalDecode(dec, &c.Text)
	case '[':
		return jsonv2.UnmarshalDecode(dec, &c.Blocks)
	}
	return dec.SkipValue()
}

// UnmarshalJSON decodes the content for encoding/json (the Cursor parser,
// whose lines share this shape); content of another shape has no blocks.
func (c *claudeContent) UnmarshalJSON(b []byte) error {
	*c = claudeContent{}
	if len(b) > 0 && b[0] == '"' {
		c.IsText = true
		return json.Unmarshal(b, &c.Text)
	}
	_ = json.Unmarshal(b, &c.Blocks)
	return nil
}

type claudeBlock struct {
	Type      string         `json:"type"`
	Text      string         `json:"text"`
	Thinking  string         `json:"thinking"`
	ID        string         `json:"id"`
	Name      string         `json:"name"`
	Input     jsontext.Value `json:"input"`
	ToolUseID string         `json:"tool_use_id"`
	Content   jsontext.Value `json:"content"`
	IsError   bool           `json:"is_error"`
}

type claudeUsage struct {
	InputTokens              int `json:"input_tokens"`
	OutputTokens             int `json:"output_tokens"`
	CacheReadInputTokens     int `json:"cache_read_input_tokens"`
	CacheCreationInputTokens int `json:"cache_creation_input_tokens"`
}

// claudeLineJSON decodes a line as encoding/json would (a name given
// twice takes its last value, invalid UTF-8 is replaced) with
// encoding/json/v2's decoder: a CLI's line is the largest part of a run's
// cost per event in a worker (BenchmarkClaudeLine: an assistant line 10.7
// µs and 45 allocations with encoding/json). Names match exactly: the CLI
// prints them in one case.
var claudeLineJSON = jsonv2.JoinOptions(jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))

// Line implements Parser.
func (p *claudeParser) Line(line []byte) Output {
	var l claudeLine
	if err := jsonv2.Unmarshal(line, &l, claudeLineJSON); err != nil {
		// The CLI prints only JSON on stdout; anything else is shown, not lost.
		if s := strings.TrimSpace(string(line)); s != "" {
			return Output{Events: []app.Event{app.ErrorRow(s)}}
		}
		return Output{}
	}
	var out Output
	if l.SessionID != "" && l.Type == "system" && l.Subtype == "init" {
		out.Set = providerSession(l.SessionID)
	}
	switch l.Type {
	case "assistant":
		if l.Message != nil && l.Error != "" {
			// A failed request: its text is the error, not an answer.
			for _, b := range l.Message.Content.Blocks {
				if b.Type == "text" && b.Text != "" {
					out.Events = append(out.Events, p.errorRow(b.Text))
				}
			}
		} else if l.Message != nil {
			out.Events = p.assistant(l)
			if l.Message.Usage != nil {
				out.Events = append(out.Events, p.tokenBudget(*l.Message.Usage))
			}
		}
	case "user":
		if l.Message != nil {
			out.Events = p.user(l)
		}
	case "control_request":
		switch {
		case l.Request != nil && l.Request.Subtype == "can_use_tool" && l.RequestID != "" && l.Request.ToolName != "":
			out.Ask = &ToolAsk{ID: l.RequestID, Tool: l.Request.ToolName, Input: json.RawMessage(l.Request.Input)}
		case l.RequestID != "":
			subtype := ""
			if l.Request != nil {
				subtype = l.Request.Subtype
			}
			out.Reply = claudeControlError(l.RequestID, "agentgate does not serve control requests of subtype "+strconv.Quote(subtype))
		}
	case "control_cancel_request":
		out.Withdrawn = l.RequestID
	case "result":
		// The turn is over: closing stdin lets the CLI exit. One that
		// does not (`claude -p` waits for the tasks it ran in the
		// background) is stopped after lingerGrace.
		out.EndInput, out.Finished = true, true
		if l.IsError {
			p.sawError = true
			text := resultText(json.RawMessage(l.Result))
			if text == "" {
				text = strings.Join(l.Errors, "\n")
			}
			if text == "" {
				text = "Claude CLI reported an error"
			}
			if text != p.lastError {
				out.Events = append(out.Events, p.errorRow(text))
			}
		}
		if l.Usage != nil {
			out.Events = append(out.Events, p.tokenBudget(*l.Usage))
		}
	}
	return out
}

func (p *claudeParser) errorRow(text string) app.Event {
	p.lastError = text
	return app.ErrorRow(text)
}

// messageID is the id Claude Code UI's server gives the message a part of
// a transcript line makes (claude-sessions.provider.ts at afc717e6: the
// line's uuid, and a suffix for each part of its content). Its frontend,
// reloading a conversation's history from the transcript, keeps the live
// messages whose ids the history lacks: with ids of their own, every live
// message of the run was shown twice. A line without a uuid keeps the
// event's random id.
func messageID(ev *app.Event, uuid, suffix string) {
	if uuid != "" && len(uuid) <= 64 {
		ev.ID = uuid + suffix
	}
}

func (p *claudeParser) assistant(l claudeLine) []app.Event {
	var events []app.Event
	for i, b := range l.Message.Content.Blocks {
		var ev app.Event
		switch b.Type {
		case "text":
			if b.Text == "" {
				continue
			}
			ev = app.Text("assistant", b.Text)
		case "thinking":
			if b.Thinking == "" {
				continue
			}
			ev = app.Thinking(b.Thinking)
		case "tool_use":
			ev = app.ToolUse(b.ID, b.Name, app.ObjectOrEmpty(json.RawMessage(b.Input)))
		default:
			continue
		}
		messageID(&ev, l.UUID, "_"+strconv.Itoa(i))
		events = append(events, withParent(ev, l.ParentToolUseID))
	}
	return events
}

func (p *claudeParser) user(l claudeLine) []app.Event {
	var events []app.Event
	if c := l.Message.Content; c.IsText {
		if c.Text != "" {
			ev := app.Text("user", c.Text)
			messageID(&ev, l.UUID, "")
			events = append(events, withParent(ev, l.ParentToolUseID))
		}
		return events
	}
	// The line's account is of its one result: with several, whose it is
	// is unknown.
	var result *toolUseResult
	if n := countBlocks(l.Message.Content.Blocks, "tool_result"); n == 1 {
		result = toolUseResultOf(l.ToolUseResult)
	}
	for i, b := range l.Message.Content.Blocks {
		switch b.Type {
		case "tool_result":
			ev := app.ToolResult(b.ToolUseID, toolResultContent(json.RawMessage(b.Content)), b.IsError)
			if result != nil {
				ev.Fields["toolUseResult"] = result
			}
			if len(b.ToolUseID) <= 128 {
				messageID(&ev, l.UUID, "_tr_"+b.ToolUseID)
			}
			events = append(events, withParent(ev, l.ParentToolUseID))
		case "text":
			if b.Text != "" {
				ev := app.Text("user", b.Text)
				messageID(&ev, l.UUID, "_text_"+strconv.Itoa(i))
				events = append(events, withParent(ev, l.ParentToolUseID))
			}
		}
	}
	return events
}

func (p *claudeParser) tokenBudget(u claudeUsage) app.Event {
	input := u.InputTokens + u.CacheReadInputTokens + u.CacheCreationInputTokens
	return app.TokenBudget(map[string]any{
		"used":                input + u.OutputTokens,
		"total":               p.contextWindow,
		"inputTokens":         input,
		"outputTokens":        u.OutputTokens,
		"cacheReadTokens":     u.CacheReadInputTokens,
		"cacheCreationTokens": u.CacheCreationInputTokens,
		"cacheTokens":         u.CacheReadInputTokens + u.CacheCreationInputTokens,
		"breakdown":           map[string]int{"input": input, "output": u.OutputTokens},
	})
}

// End implements Parser.
func (p *claudeParser) End(code int) ([]app.Event, int) {
	if p.sawError && code == 0 {
		code = 1
	}
	return nil, code
}

// toolResultContent keeps a string as is and joins the text of a list of
// blocks, the shape clients render.
func toolResultContent(raw json.RawMessage) any {
	if len(raw) == 0 {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var blocks []claudeBlock
	if json.Unmarshal(raw, &blocks) == nil {
		var parts []string
		for _, b := range blocks {
			if b.Type == "text" {
				parts = append(parts, b.Text)
			}
		}
		if len(parts) == len(blocks) {
			return strings.Join(parts, "\n")
		}
	}
	return raw
}

func resultText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}

func withParent(ev app.Event, parent string) app.Event {
	if parent != "" {
		ev.Fields["parentToolUseId"] = parent
	}
	return ev
}
