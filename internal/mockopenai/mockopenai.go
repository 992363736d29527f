// Package mockopenai is a scripted stand-in for the OpenAI Responses API,
// meant for tests that run the real Codex CLI as a subprocess.
//
// The CLI does not follow OPENAI_BASE_URL (it keeps talking to OpenAI); it is
// pointed at the mock through a custom model provider in its config.toml,
// which CLIEnv writes into a CODEX_HOME of the test's own. Every streaming
// POST /v1/responses request (one model turn of the agent loop) is answered
// with the next matching Turn, streamed as Server-Sent Events in the
// Responses API's format. Other paths get an OpenAI-style 404.
//
// The server listens on 127.0.0.1 only and is safe for many concurrent CLI
// processes. See CLI_FACTS.md in this folder for what the CLI sends and
// prints.
package mockopenai

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentgate/agentgate/internal/mockscript"
)

// Turn is the model's answer to one POST /v1/responses request. Turns are
// consumed in order: a request takes the first unconsumed turn whose When
// marker is in its prompt (an empty When matches any request).
type Turn struct {
	// When, if non-empty, restricts the turn to requests whose PromptText
	// contains it, so concurrent CLI processes can follow their own scripts.
	When string
	// Text is the assistant message. A turn with neither Text, Reasoning
	// nor ToolCalls still sends an empty message.
	Text string
	// Reasoning, if non-empty, is sent as a reasoning item with this
	// summary before the message.
	Reasoning string
	// ToolCalls are sent as function_call items after the message; the CLI
	// runs them and sends another request with their outputs.
	ToolCalls []ToolCall
	// Chunks splits Text into this many output_text deltas (default 1).
	Chunks int
	// Delay is the pause before each SSE event.
	Delay time.Duration
	// Status, when non-zero and not 200, answers with an OpenAI-style JSON
	// error of this HTTP status instead of a stream.
	Status int
	// ErrorMessage is the message of a Status error or of Failed.
	ErrorMessage string
	// Failed streams response.created and then response.failed.
	Failed bool
	// Hang sends response.created and the start of the message, then
	// stalls until the client goes away or the server is closed.
	Hang bool
	// InputTokens and OutputTokens are reported in usage (defaults 10 and
	// a rough count of the content).
	InputTokens, OutputTokens int
}

// ToolCall is one function_call item of a Turn.
type ToolCall struct {
	// CallID is the call id; generated when empty.
	CallID string
	// Name is the function name; the CLI's shell tool is "exec_command"
	// (with {"cmd": "..."}), the default.
	Name string
	// Arguments are the call's arguments, sent JSON-encoded.
	Arguments map[string]any
}

// Request is what the mock received, recorded for assertions.
type Request struct {
	Time         time.Time
	Method, Path string
	Header       http.Header
	Body         []byte
	// Model and Stream are decoded from the body.
	Model  string
	Stream bool
	// Tools are the names of the function tools offered to the model.
	Tools []string
	// PromptText is the text the user typed in the latest user message
	// (the CLI's tagged context blocks are left out); Turn.When is matched
	// against it, so it still holds the prompt on a tool loop's follow-up.
	PromptText string
	// Messages counts the user and assistant messages sent, so a test can
	// see that a resumed thread carried its history.
	Messages int
	// ToolOutputs are the function_call_output items after the last user
	// message, by call id.
	ToolOutputs map[string]string
	// Scripted is true for requests that consumed a turn; TurnIndex is the
	// script index used, or -1 for the default turn.
	Scripted  bool
	TurnIndex int
}

// Server is a scripted stand-in for the Responses API on loopback.
type Server struct {
	// URL is the server's base URL (http://127.0.0.1:port); the API is
	// under URL+"/v1".
	URL string

	srv    *httptest.Server
	closed chan struct{}
	once   sync.Once
	logf   func(string, ...any)

	mu sync.Mutex
	// Script holds the turns, takes them for requests and logs requests.
	*mockscript.Script[Turn, Request]
	seq int
}

// New starts a Server on 127.0.0.1 with the given script and closes it when
// the test ends. Requests beyond the script get the default turn (Text "ok").
func New(t testing.TB, script ...Turn) *Server {
	t.Helper()
	s := &Server{closed: make(chan struct{}), logf: t.Logf,
		Script: mockscript.New[Turn, Request](Turn{Text: "ok"}, func(t Turn) string { return t.When })}
	s.Add(script...)
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serveHTTP))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("mockopenai: listen on 127.0.0.1: %v", err)
	}
	s.srv.Listener.Close()
	s.srv.Listener = ln
	s.srv.Start()
	s.URL = s.srv.URL
	t.Cleanup(s.Close)
	return s
}

// Close releases hanging requests and shuts the server down; safe to call
// more than once.
func (s *Server) Close() {
	s.once.Do(func() {
		close(s.closed)
		s.srv.CloseClientConnections()
		s.srv.Close()
	})
}

// APIKeyEnv is the variable the provider written by WriteConfig reads its
// key from.
const APIKeyEnv = "MOCK_OPENAI_API_KEY"

// DefaultModel is the model WriteConfig selects. An unknown model name gets
// the CLI's plain function tools (exec_command); its own default model gets
// a JavaScript "code mode" tool instead.
const DefaultModel = "mock-model"

// WriteConfig writes codexHome/config.toml selecting a model provider that
// points at this server, without retries so that an error turn fails a run
// at once.
func (s *Server) WriteConfig(codexHome string) error {
	cfg := fmt.Sprintf(`model = %q
model_provider = "mock"

[model_providers.mock]
name = "mock"
base_url = %q
env_key = %q
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
`, DefaultModel, s.URL+"/v1", APIKeyEnv)
	if err := os.MkdirAll(codexHome, 0o700); err != nil {
		return fmt.Errorf("mockopenai: create CODEX_HOME: %w", err)
	}
	if err := os.WriteFile(filepath.Join(codexHome, "config.toml"), []byte(cfg), 0o600); err != nil {
		return fmt.Errorf("mockopenai: write config.toml: %w", err)
	}
	return nil
}

// CLIEnv returns the environment entries for a Codex CLI process pointed at
// this server: a HOME and CODEX_HOME of the test's own holding the config,
// and the dummy API key.
func (s *Server) CLIEnv(t testing.TB) []string {
	t.Helper()
	home := t.TempDir()
	codexHome := filepath.Join(home, ".codex")
	if err := s.WriteConfig(codexHome); err != nil {
		t.Fatal(err)
	}
	return []string{"HOME=" + home, "CODEX_HOME=" + codexHome, APIKeyEnv + "=test"}
}

// ScriptedRequests returns the requests that consumed a turn.
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

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	req := Request{Time: time.Now(), Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Body: body}
	if r.Method == http.MethodPost && r.URL.Path == "/v1/responses" {
		decodeRequest(&req)
		req.Scripted = true
		turn := s.next(&req)
		s.logf("mockopenai: turn %d for %q (tool outputs: %d)", req.TurnIndex, req.PromptText, len(req.ToolOutputs))
		s.serveTurn(w, r, req.Model, turn)
		return
	}
	s.record(&req)
	s.logf("mockopenai: unhandled %s %s", r.Method, r.URL.Path)
	writeError(w, http.StatusNotFound, "mockopenai: no route for "+r.Method+" "+r.URL.Path)
}

// serveTurn answers one scripted request: an error, or an SSE stream.
func (s *Server) serveTurn(w http.ResponseWriter, r *http.Request, model string, t Turn) {
	if t.Status != 0 && t.Status != http.StatusOK {
		writeError(w, t.Status, t.ErrorMessage)
		return
	}
	flusher, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	if flusher != nil {
		flusher.Flush()
	}
	stop := r.Context().Done()
	seq := 0
	emit := func(typ string, data map[string]any) bool {
		if t.Delay > 0 {
			select {
			case <-time.After(t.Delay):
			case <-stop:
				return false
			case <-s.closed:
				return false
			}
		}
		data["type"] = typ
		data["sequence_number"] = seq
		seq++
		b, err := json.Marshal(data)
		if err != nil {
			panic(err)
		}
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", typ, b); err != nil {
			return false
		}
		if flusher != nil {
			flusher.Flush()
		}
		return true
	}

	respID := s.newID("resp")
	response := func(status string) map[string]any {
		return map[string]any{"id": respID, "object": "response", "created_at": time.Now().Unix(), "status": status, "model": model, "output": []any{}}
	}
	if !emit("response.created", map[string]any{"response": response("in_progress")}) {
		return
	}
	if t.Failed {
		failed := response("failed")
		msg := t.ErrorMessage
		if msg == "" {
			msg = "The model failed to generate a response."
		}
		failed["error"] = map[string]any{"code": "server_error", "message": msg}
		emit("response.failed", map[string]any{"response": failed})
		return
	}

	index := 0
	if t.Reasoning != "" {
		id := s.newID("rs")
		done := map[string]any{"type": "reasoning", "id": id, "summary": []any{map[string]any{"type": "summary_text", "text": t.Reasoning}}}
		if !emit("response.output_item.added", map[string]any{"output_index": index, "item": map[string]any{"type": "reasoning", "id": id, "summary": []any{}}}) ||
			!emit("response.reasoning_summary_part.added", map[string]any{"item_id": id, "output_index": index, "summary_index": 0, "part": map[string]any{"type": "summary_text", "text": ""}}) ||
			!emit("response.reasoning_summary_text.delta", map[string]any{"item_id": id, "output_index": index, "summary_index": 0, "delta": t.Reasoning}) ||
			!emit("response.reasoning_summary_text.done", map[string]any{"item_id": id, "output_index": index, "summary_index": 0, "text": t.Reasoning}) ||
			!emit("response.output_item.done", map[string]any{"output_index": index, "item": done}) {
			return
		}
		index++
	}

	if t.Text != "" || t.Hang || (t.Reasoning == "" && len(t.ToolCalls) == 0) {
		id := s.newID("msg")
		if !emit("response.output_item.added", map[string]any{"output_index": index, "item": map[string]any{"type": "message", "id": id, "role": "assistant", "status": "in_progress", "content": []any{}}}) ||
			!emit("response.content_part.added", map[string]any{"item_id": id, "output_index": index, "content_index": 0, "part": map[string]any{"type": "output_text", "text": "", "annotations": []any{}}}) {
			return
		}
		for _, c := range mockscript.Split(t.Text, t.Chunks) {
			if !emit("response.output_text.delta", map[string]any{"item_id": id, "output_index": index, "content_index": 0, "delta": c}) {
				return
			}
		}
		if t.Hang {
			s.Hang(stop, s.closed)
			return
		}
		part := map[string]any{"type": "output_text", "text": t.Text, "annotations": []any{}}
		if !emit("response.output_text.done", map[string]any{"item_id": id, "output_index": index, "content_index": 0, "text": t.Text}) ||
			!emit("response.content_part.done", map[string]any{"item_id": id, "output_index": index, "content_index": 0, "part": part}) ||
			!emit("response.output_item.done", map[string]any{"output_index": index, "item": map[string]any{"type": "message", "id": id, "role": "assistant", "status": "completed", "content": []any{part}}}) {
			return
		}
		index++
	}

	for _, tc := range t.ToolCalls {
		id, callID, name := s.newID("fc"), tc.CallID, tc.Name
		if callID == "" {
			callID = s.newID("call")
		}
		if name == "" {
			name = "exec_command"
		}
		args, err := json.Marshal(tc.Arguments)
		if err != nil {
			panic(fmt.Sprintf("mockopenai: arguments of %s: %v", name, err))
		}
		item := map[string]any{"type": "function_call", "id": id, "call_id": callID, "name": name, "arguments": "", "status": "in_progress"}
		if !emit("response.output_item.added", map[string]any{"output_index": index, "item": item}) ||
			!emit("response.function_call_arguments.delta", map[string]any{"item_id": id, "output_index": index, "delta": string(args)}) ||
			!emit("response.function_call_arguments.done", map[string]any{"item_id": id, "output_index": index, "arguments": string(args)}) {
			return
		}
		done := map[string]any{"type": "function_call", "id": id, "call_id": callID, "name": name, "arguments": string(args), "status": "completed"}
		if !emit("response.output_item.done", map[string]any{"output_index": index, "item": done}) {
			return
		}
		index++
	}

	in, out := t.InputTokens, t.OutputTokens
	if in == 0 {
		in = 10
	}
	if out == 0 {
		out = 1 + (len(t.Text)+len(t.Reasoning))/4 + 20*len(t.ToolCalls)
	}
	completed := response("completed")
	completed["usage"] = map[string]any{
		"input_tokens": in, "input_tokens_details": map[string]any{"cached_tokens": 0},
		"output_tokens": out, "output_tokens_details": map[string]any{"reasoning_tokens": 0},
		"total_tokens": in + out,
	}
	emit("response.completed", map[string]any{"response": completed})
}

var errorTypes = map[int]string{
	400: "invalid_request_error",
	401: "invalid_request_error",
	403: "invalid_request_error",
	404: "invalid_request_error",
	429: "rate_limit_exceeded",
}

// writeError sends an OpenAI-style error body.
func writeError(w http.ResponseWriter, status int, msg string) {
	if msg == "" {
		msg = http.StatusText(status)
	}
	typ := errorTypes[status]
	if typ == "" {
		typ = "server_error"
	}
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"message": msg, "type": typ, "param": nil, "code": nil}})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// contextBlock matches the tagged blocks the CLI adds to user messages
// (<environment_context>…</environment_context> and the like).
var contextBlock = regexp.MustCompile(`(?s)^\s*<([a-z_]+)>.*</([a-z_]+)>\s*$`)

// decodeRequest fills the decoded fields of req from a responses body.
func decodeRequest(req *Request) {
	var body struct {
		Model  string `json:"model"`
		Stream bool   `json:"stream"`
		Tools  []struct {
			Name string `json:"name"`
		} `json:"tools"`
		Input []struct {
			Type    string          `json:"type"`
			Role    string          `json:"role"`
			Content json.RawMessage `json:"content"`
			CallID  string          `json:"call_id"`
			Output  json.RawMessage `json:"output"`
		} `json:"input"`
	}
	if err := json.Unmarshal(req.Body, &body); err != nil {
		return
	}
	req.Model, req.Stream = body.Model, body.Stream
	for _, t := range body.Tools {
		if t.Name != "" {
			req.Tools = append(req.Tools, t.Name)
		}
	}
	req.ToolOutputs = map[string]string{}
	for _, it := range body.Input {
		switch {
		case it.Type == "message" && (it.Role == "user" || it.Role == "assistant"):
			var parts []struct {
				Type string `json:"type"`
				Text string `json:"text"`
			}
			_ = json.Unmarshal(it.Content, &parts)
			var typed []string
			for _, p := range parts {
				if m := contextBlock.FindStringSubmatch(p.Text); m != nil && m[1] == m[2] {
					continue
				}
				if p.Text != "" {
					typed = append(typed, p.Text)
				}
			}
			if len(typed) == 0 {
				continue
			}
			req.Messages++
			if it.Role == "user" {
				req.PromptText = strings.Join(typed, "\n")
				clear(req.ToolOutputs)
			}
		case it.Type == "function_call_output":
			var s string
			if json.Unmarshal(it.Output, &s) != nil {
				s = string(it.Output)
			}
			req.ToolOutputs[it.CallID] = s
		}
	}
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
