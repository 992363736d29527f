// Package mockanthropic is a scripted stand-in for the Anthropic Messages API,
// meant for tests that run the real Claude Code CLI as a subprocess.
//
// The CLI is pointed at the mock with ANTHROPIC_BASE_URL=<Server.URL> and any
// non-empty ANTHROPIC_API_KEY. Every streaming POST /v1/messages request (one
// "model turn" of the agent loop) is answered with the next matching Turn of
// the script, streamed as Server-Sent Events in the real API's format (each
// event flushed on its own, usage in message_start and message_delta). The
// CLI's HEAD / connectivity probe, non-streaming side requests, token
// counting and model listing get small canned answers and never consume the
// script; unknown paths get an Anthropic-style 404.
//
// The server listens on 127.0.0.1 only and is safe for many concurrent CLI
// processes. See CLI_FACTS.md in this folder for what the CLI sends and prints.
//
// Things a test has to get right when running the CLI (details in CLI_FACTS.md):
//   - give every CLI process its own HOME (sessions live under $HOME/.claude,
//     keyed by the working directory);
//   - Env returns the variables that point the CLI at the mock;
//   - errors are fast only without retries: see Turn.Retryable and
//     CLAUDE_CODE_MAX_RETRIES;
//   - as root, --permission-mode bypassPermissions exits 1 unless IS_SANDBOX=1
//     is set; --allowedTools works everywhere.
package mockanthropic

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentgate/agentgate/internal/mockscript"
)

// Turn is the model's answer to one streaming POST /v1/messages request.
// Turns are consumed in order: a request takes the first unconsumed turn whose
// When marker matches it (a turn with an empty When matches any request).
type Turn struct {
	// When, if non-empty, restricts this turn to requests whose prompt text
	// (see Request.PromptText) contains the marker. This lets concurrent CLI
	// processes in one test follow different scripts: put a unique marker in
	// each process's prompt and in the turns meant for it.
	When string

	// Text is the assistant text block. It may be empty; a turn with neither
	// Text, Thinking nor ToolUses still sends an empty text block, because the
	// real API never returns an empty content list.
	Text string

	// Thinking, if non-empty, is sent as a thinking block before the text.
	Thinking string

	// ToolUses are sent as tool_use blocks after the text; when present the
	// stop_reason becomes "tool_use" and the CLI will run the tools and send
	// another request carrying the tool_result blocks.
	ToolUses []ToolUse

	// Chunks splits Text into this many text_delta events (default 1).
	Chunks int

	// Delay is the pause before each SSE event, to simulate a slow stream.
	Delay time.Duration

	// Status, when non-zero and not 200, makes the mock answer with an
	// Anthropic-style JSON error of this HTTP status instead of a stream
	// (401 authentication_error, 500 api_error, 529 overloaded_error, ...).
	Status int

	// ErrorMessage overrides the error message sent with Status.
	ErrorMessage string

	// Retryable, with Status, lets the CLI apply its normal retry policy.
	// By default the mock adds the header "x-should-retry: false" to error
	// answers, which the CLI honours for 4xx and 5xx, so one error turn
	// fails one CLI run at once. With Retryable (and always for 529, which
	// the CLI retries whatever the header says) the CLI retries up to 10
	// times with exponential backoff, about three minutes in all, each retry
	// taking the next turn; set CLAUDE_CODE_MAX_RETRIES=0 (or a small
	// number) in the CLI's environment to keep such tests fast.
	Retryable bool

	// Hang makes the mock accept the request, send the HTTP 200 headers,
	// message_start and (if Text is set) the start of the text block with
	// its deltas, and then stall until the client goes away or the server is
	// closed. Use it to test aborts, timeouts and killing the CLI mid-stream.
	Hang bool

	// StopReason overrides the computed stop_reason ("end_turn", or
	// "tool_use" when ToolUses is set), e.g. "max_tokens".
	StopReason string

	// InputTokens and OutputTokens are reported in usage (defaults 10 and a
	// rough count derived from the content).
	InputTokens, OutputTokens int
}

// ToolUse is one tool_use content block of a Turn.
type ToolUse struct {
	// ID is the tool_use id; generated ("toolu_mock_N") when empty.
	ID string
	// Name is the tool name as the CLI knows it, e.g. "Bash", "Read".
	Name string
	// Input is the tool input, e.g. {"command": "echo hi"} for Bash.
	Input map[string]any
}

// Request is what the mock received, recorded for assertions.
type Request struct {
	// Time is when the request arrived.
	Time time.Time
	// Method, Path and RawQuery are from the request line
	// (the CLI sends POST /v1/messages?beta=true).
	Method, Path, RawQuery string
	// Header holds the request headers (x-api-key, anthropic-beta, ...).
	Header http.Header
	// Body is the raw request body.
	Body []byte

	// Model, Stream, MaxTokens and System are decoded from a messages body.
	Model     string
	Stream    bool
	MaxTokens int
	System    string
	// Tools lists the names of the tools offered to the model.
	Tools []string
	// Messages is the conversation sent, with content normalised to blocks.
	Messages []Message

	// PromptText is the text of the latest user message that has text which
	// is not a tool result or a <system-reminder>; it is what Turn.When is
	// matched against, so it still holds the prompt on the follow-up request
	// of a tool loop.
	PromptText string
	// HasToolResult reports whether the last user message carries
	// tool_result blocks (i.e. this request continues a tool loop).
	HasToolResult bool
	// ToolResults are the tool_result blocks of the last user message.
	ToolResults []Block

	// Scripted is true for streaming POST /v1/messages requests, the ones
	// that consume a Turn. TurnIndex is the script index used, or -1 when
	// the default turn answered.
	Scripted  bool
	TurnIndex int
}

// Message is one conversation message of a Request.
type Message struct {
	// Role is "user" or "assistant".
	Role string
	// Content is the message content; a plain string content is turned into
	// one text block.
	Content []Block
}

// Block is a content block of a Message.
type Block struct {
	// Type is "text", "thinking", "tool_use", "tool_result", "image", ...
	Type string `json:"type"`
	// Text is set for text blocks.
	Text string `json:"text,omitempty"`
	// ID, Name and Input are set for tool_use blocks.
	ID    string         `json:"id,omitempty"`
	Name  string         `json:"name,omitempty"`
	Input map[string]any `json:"input,omitempty"`
	// ToolUseID, Content and IsError are set for tool_result blocks;
	// Content is the result flattened to text.
	ToolUseID string `json:"tool_use_id,omitempty"`
	Content   string `json:"-"`
	IsError   bool   `json:"is_error,omitempty"`
	// Thinking is set for thinking blocks.
	Thinking string `json:"thinking,omitempty"`
}

// Server is a scripted stand-in for the Anthropic Messages API on loopback.
type Server struct {
	// URL is the base URL to use as ANTHROPIC_BASE_URL (http://127.0.0.1:port).
	URL string

	srv    *httptest.Server
	closed chan struct{}
	once   sync.Once

	mu sync.Mutex
	// Script holds the turns, takes them for requests and logs requests.
	*mockscript.Script[Turn, Request]
	seq  int
	logf func(format string, args ...any)
}

// New starts a Server on 127.0.0.1 with the given script and closes it when
// the test ends. Requests beyond the script get the default turn (Text "ok").
func New(t testing.TB, script ...Turn) *Server {
	t.Helper()
	s := start(t.Logf, script...)
	t.Cleanup(s.Close)
	return s
}

// Start starts a Server on 127.0.0.1 without a testing.TB; the caller must
// call Close. Prefer New in tests.
func Start(script ...Turn) *Server {
	return start(nil, script...)
}

// start builds and starts the server; logf is set before serving begins
// because handlers read it without the lock.
func start(logf func(string, ...any), script ...Turn) *Server {
	s := &Server{
		Script: mockscript.New[Turn, Request](Turn{Text: "ok"}, func(t Turn) string { return t.When }),
		closed: make(chan struct{}),
		logf:   logf,
	}
	s.Add(script...)
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serveHTTP))
	// httptest already uses 127.0.0.1:0, but bind explicitly so the mock can
	// never listen on another interface whatever flags the test run has.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(fmt.Sprintf("mockanthropic: listen on 127.0.0.1: %v", err))
	}
	s.srv.Listener.Close()
	s.srv.Listener = ln
	s.srv.Start()
	s.URL = s.srv.URL
	return s
}

// Close releases hanging requests and shuts the server down. It is safe to
// call more than once.
func (s *Server) Close() {
	s.once.Do(func() {
		// Hanging handlers wait on this; httptest.Server.Close waits for
		// all handlers, so they must be released first.
		close(s.closed)
		s.srv.CloseClientConnections()
		s.srv.Close()
	})
}

// Env returns the environment entries ("KEY=value") that point a CLI
// process at this server: ANTHROPIC_BASE_URL, a dummy ANTHROPIC_API_KEY and
// CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1. Append them to a base
// environment that sets its own HOME.
func (s *Server) Env() []string {
	return []string{
		"ANTHROPIC_BASE_URL=" + s.URL,
		"ANTHROPIC_API_KEY=test",
		"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1",
	}
}

// ScriptedRequests returns only the streaming /v1/messages requests, i.e. the
// model turns of the agent loop.
func (s *Server) ScriptedRequests() []Request {
	var out []Request
	for _, r := range s.Requests() {
		if r.Scripted {
			out = append(out, r)
		}
	}
	return out
}

func (s *Server) newID(prefix string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	return fmt.Sprintf("%s_mock_%d", prefix, s.seq)
}

func (s *Server) log(format string, args ...any) {
	if s.logf != nil {
		s.logf("mockanthropic: "+format, args...)
	}
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	req := Request{
		Time:     time.Now(),
		Method:   r.Method,
		Path:     r.URL.Path,
		RawQuery: r.URL.RawQuery,
		Header:   r.Header.Clone(),
		Body:     body,
	}
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/v1/messages":
		decodeMessages(&req)
		if !req.Stream {
			// Side requests (titles, quota probes, ...) must not eat the
			// script: answer them with a fixed one-block message.
			s.record(&req)
			s.writeJSONMessage(w, req.Model)
			return
		}
		req.Scripted = true
		turn := s.next(&req)
		s.log("turn %d for %q (tool results: %v)", req.TurnIndex, truncate(req.PromptText, 60), req.HasToolResult)
		s.serveTurn(w, r, req.Model, turn)
	case r.Method == http.MethodPost && r.URL.Path == "/v1/messages/count_tokens":
		decodeMessages(&req)
		s.record(&req)
		mockscript.WriteJSON(w, http.StatusOK, map[string]any{"input_tokens": 10 + len(body)/4})
	case r.Method == http.MethodGet && r.URL.Path == "/v1/models":
		s.record(&req)
		mockscript.WriteJSON(w, http.StatusOK, map[string]any{
			"data":     []any{modelInfo("claude-sonnet-4-5"), modelInfo("claude-opus-4-1"), modelInfo("claude-haiku-4-5")},
			"has_more": false, "first_id": "claude-sonnet-4-5", "last_id": "claude-haiku-4-5",
		})
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/models/"):
		s.record(&req)
		mockscript.WriteJSON(w, http.StatusOK, modelInfo(strings.TrimPrefix(r.URL.Path, "/v1/models/")))
	case r.Method == http.MethodHead || (r.Method == http.MethodGet && r.URL.Path == "/"):
		// Connectivity probes only care that something answers.
		s.record(&req)
		w.WriteHeader(http.StatusOK)
	default:
		s.record(&req)
		s.log("unhandled %s %s", r.Method, r.URL.Path)
		writeError(w, http.StatusNotFound, fmt.Sprintf("mockanthropic: no route for %s %s", r.Method, r.URL.Path), false)
	}
}

func modelInfo(id string) map[string]any {
	return map[string]any{"type": "model", "id": id, "display_name": id, "created_at": "2025-01-01T00:00:00Z"}
}

// serveTurn answers one scripted request: an error, or an SSE stream.
func (s *Server) serveTurn(w http.ResponseWriter, r *http.Request, model string, t Turn) {
	if t.Status != 0 && t.Status != http.StatusOK {
		time.Sleep(t.Delay)
		writeError(w, t.Status, t.ErrorMessage, t.Retryable)
		return
	}
	if model == "" {
		model = "claude-sonnet-4-5"
	}
	flusher, _ := w.(http.Flusher)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("request-id", s.newID("req"))
	w.WriteHeader(http.StatusOK)
	if flusher != nil {
		flusher.Flush()
	}

	stop := r.Context().Done()
	// emit writes one event and flushes it, so the CLI sees each event as
	// soon as it is "generated"; it reports false once the client is gone.
	emit := func(event string, data any) bool {
		if t.Delay > 0 {
			select {
			case <-time.After(t.Delay):
			case <-stop:
				return false
			case <-s.closed:
				return false
			}
		}
		b, err := json.Marshal(data)
		if err != nil {
			panic(err)
		}
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b); err != nil {
			return false
		}
		if flusher != nil {
			flusher.Flush()
		}
		return true
	}

	in := t.InputTokens
	if in == 0 {
		in = 10
	}
	out := t.OutputTokens
	if out == 0 {
		out = 1 + (len(t.Text)+len(t.Thinking))/4 + 20*len(t.ToolUses)
	}
	if !emit("message_start", map[string]any{
		"type": "message_start",
		"message": map[string]any{
			"id": s.newID("msg"), "type": "message", "role": "assistant", "model": model,
			"content": []any{}, "stop_reason": nil, "stop_sequence": nil,
			"usage": map[string]any{
				"input_tokens": in, "output_tokens": 1,
				"cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
				"service_tier": "standard",
			},
		},
	}) {
		return
	}

	idx := 0
	block := func(start map[string]any, deltas []map[string]any) bool {
		if !emit("content_block_start", map[string]any{"type": "content_block_start", "index": idx, "content_block": start}) {
			return false
		}
		for _, d := range deltas {
			if !emit("content_block_delta", map[string]any{"type": "content_block_delta", "index": idx, "delta": d}) {
				return false
			}
		}
		ok := emit("content_block_stop", map[string]any{"type": "content_block_stop", "index": idx})
		idx++
		return ok
	}

	if t.Hang {
		if t.Text != "" {
			emit("content_block_start", map[string]any{"type": "content_block_start", "index": 0, "content_block": map[string]any{"type": "text", "text": ""}})
			for _, c := range mockscript.Split(t.Text, t.Chunks) {
				emit("content_block_delta", map[string]any{"type": "content_block_delta", "index": 0, "delta": map[string]any{"type": "text_delta", "text": c}})
			}
		}
		s.Hang(stop, s.closed)
		return
	}

	if t.Thinking != "" {
		if !block(map[string]any{"type": "thinking", "thinking": "", "signature": ""}, []map[string]any{
			{"type": "thinking_delta", "thinking": t.Thinking},
			{"type": "signature_delta", "signature": "mock-signature"},
		}) {
			return
		}
	}
	if t.Text != "" || (t.Thinking == "" && len(t.ToolUses) == 0) {
		var deltas []map[string]any
		for _, c := range mockscript.Split(t.Text, t.Chunks) {
			deltas = append(deltas, map[string]any{"type": "text_delta", "text": c})
		}
		if !block(map[string]any{"type": "text", "text": ""}, deltas) {
			return
		}
	}
	for _, tu := range t.ToolUses {
		id := tu.ID
		if id == "" {
			id = s.newID("toolu")
		}
		input := tu.Input
		if input == nil {
			input = map[string]any{}
		}
		js, err := json.Marshal(input)
		if err != nil {
			panic(fmt.Sprintf("mockanthropic: tool input for %s: %v", tu.Name, err))
		}
		// The real API starts tool_use blocks with an empty input and
		// streams the JSON as input_json_delta; one delta is enough.
		if !block(map[string]any{"type": "tool_use", "id": id, "name": tu.Name, "input": map[string]any{}},
			[]map[string]any{{"type": "input_json_delta", "partial_json": string(js)}}) {
			return
		}
	}

	stopReason := t.StopReason
	if stopReason == "" {
		stopReason = "end_turn"
		if len(t.ToolUses) > 0 {
			stopReason = "tool_use"
		}
	}
	if !emit("message_delta", map[string]any{
		"type":  "message_delta",
		"delta": map[string]any{"stop_reason": stopReason, "stop_sequence": nil},
		"usage": map[string]any{
			"input_tokens": in, "output_tokens": out,
			"cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
		},
	}) {
		return
	}
	emit("message_stop", map[string]any{"type": "message_stop"})
}

func (s *Server) writeJSONMessage(w http.ResponseWriter, model string) {
	if model == "" {
		model = "claude-haiku-4-5"
	}
	w.Header().Set("request-id", s.newID("req"))
	mockscript.WriteJSON(w, http.StatusOK, map[string]any{
		"id": s.newID("msg"), "type": "message", "role": "assistant", "model": model,
		"content":     []any{map[string]any{"type": "text", "text": "ok"}},
		"stop_reason": "end_turn", "stop_sequence": nil,
		"usage": map[string]any{
			"input_tokens": 10, "output_tokens": 1,
			"cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
		},
	})
}

// errorTypes maps HTTP statuses to the error types the real API uses.
var errorTypes = map[int]string{
	400: "invalid_request_error",
	401: "authentication_error",
	403: "permission_error",
	404: "not_found_error",
	413: "request_too_large",
	429: "rate_limit_error",
	500: "api_error",
	504: "timeout_error",
	529: "overloaded_error",
}

var errorMessages = map[int]string{
	401: "invalid x-api-key",
	500: "Internal server error",
	529: "Overloaded",
}

// writeError sends an Anthropic-style error body.
func writeError(w http.ResponseWriter, status int, msg string, retryable bool) {
	typ := errorTypes[status]
	if typ == "" {
		typ = "api_error"
	}
	if msg == "" {
		msg = errorMessages[status]
		if msg == "" {
			msg = http.StatusText(status)
		}
	}
	if !retryable {
		// Honoured by the CLI's retry loop: fail at once instead of
		// backing off for minutes.
		w.Header().Set("x-should-retry", "false")
	}
	mockscript.WriteJSON(w, status, map[string]any{
		"type":       "error",
		"error":      map[string]any{"type": typ, "message": msg},
		"request_id": "req_mock_error",
	})
}

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n]) + "…"
}

// decodeMessages fills the decoded fields of req from a messages body. A body
// that does not decode is kept raw only; the mock still answers it.
func decodeMessages(req *Request) {
	var body struct {
		Model     string          `json:"model"`
		Stream    bool            `json:"stream"`
		MaxTokens int             `json:"max_tokens"`
		System    json.RawMessage `json:"system"`
		Tools     []struct {
			Name string `json:"name"`
		} `json:"tools"`
		Messages []struct {
			Role    string          `json:"role"`
			Content json.RawMessage `json:"content"`
		} `json:"messages"`
	}
	if err := json.Unmarshal(req.Body, &body); err != nil {
		return
	}
	req.Model, req.Stream, req.MaxTokens = body.Model, body.Stream, body.MaxTokens
	req.System = flattenText(body.System)
	for _, t := range body.Tools {
		req.Tools = append(req.Tools, t.Name)
	}
	for _, m := range body.Messages {
		req.Messages = append(req.Messages, Message{Role: m.Role, Content: decodeBlocks(m.Content)})
	}
	for i := len(req.Messages) - 1; i >= 0; i-- {
		if req.Messages[i].Role != "user" {
			continue
		}
		if i == len(req.Messages)-1 {
			for _, b := range req.Messages[i].Content {
				if b.Type == "tool_result" {
					req.HasToolResult = true
					req.ToolResults = append(req.ToolResults, b)
				}
			}
		}
		if txt := promptText(req.Messages[i].Content); txt != "" {
			req.PromptText = txt
			break
		}
	}
}

// promptText joins the text blocks a user typed, skipping the
// <system-reminder> blocks the CLI injects next to prompts and tool results.
func promptText(blocks []Block) string {
	var parts []string
	for _, b := range blocks {
		if b.Type == "text" && !strings.HasPrefix(strings.TrimSpace(b.Text), "<system-reminder>") {
			parts = append(parts, b.Text)
		}
	}
	return strings.Join(parts, "\n")
}

func decodeBlocks(raw json.RawMessage) []Block {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	if raw[0] == '"' {
		var s string
		_ = json.Unmarshal(raw, &s)
		return []Block{{Type: "text", Text: s}}
	}
	var items []json.RawMessage
	if json.Unmarshal(raw, &items) != nil {
		return nil
	}
	out := make([]Block, 0, len(items))
	for _, it := range items {
		var b Block
		_ = json.Unmarshal(it, &b)
		if b.Type == "tool_result" {
			var c struct {
				Content json.RawMessage `json:"content"`
			}
			_ = json.Unmarshal(it, &c)
			b.Content = flattenText(c.Content)
		}
		out = append(out, b)
	}
	return out
}

// flattenText turns a string or a list of text blocks into one string.
func flattenText(raw json.RawMessage) string {
	var parts []string
	for _, b := range decodeBlocks(raw) {
		if b.Text != "" {
			parts = append(parts, b.Text)
		}
	}
	return strings.Join(parts, "\n")
}

// next takes the turn of a scripted request and logs the request.
func (s *Server) next(req *Request) Turn {
	turn, i := s.Take(req.PromptText)
	req.TurnIndex = i
	s.Record(*req)
	return turn
}

// record logs a request that takes no turn.
func (s *Server) record(req *Request) {
	req.TurnIndex = -1
	s.Record(*req)
}
