// Package mockgemini is a scripted stand-in for the Gemini API
// (generativelanguage v1beta), meant for tests that run the real Gemini CLI
// as a subprocess.
//
// The CLI is pointed at the mock with GOOGLE_GEMINI_BASE_URL and a dummy
// GEMINI_API_KEY, plus a settings file selecting API-key auth (CLIEnv writes
// it). Every POST /v1beta/models/{model}:streamGenerateContent?alt=sse (one
// model turn of the agent loop) is answered with the next matching Turn,
// streamed as Server-Sent Events. Non-streaming generateContent requests
// (the CLI's side questions: model routing, loop checks) get a small canned
// JSON answer and never consume the script; countTokens is answered too;
// other paths get a Google-style 404.
//
// The server listens on 127.0.0.1 only. See CLI_FACTS.md in this folder for
// what the CLI sends and prints.
package mockgemini

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

// Turn is the model's answer to one streamGenerateContent request. Turns are
// consumed in order: a request takes the first unconsumed turn whose When
// marker is in its prompt (an empty When matches any request).
type Turn struct {
	// When, if non-empty, restricts the turn to requests whose PromptText
	// contains it.
	When string
	// Text is the model's text. A turn with neither Text, Thought nor
	// FunctionCalls still sends an empty text part.
	Text string
	// Thought, if non-empty, is sent first as a part with thought:true.
	Thought string
	// FunctionCalls are sent as functionCall parts after the text; the CLI
	// runs them and sends another request with functionResponse parts.
	FunctionCalls []FunctionCall
	// Chunks splits Text into this many SSE chunks (default 1).
	Chunks int
	// Delay is the pause before each SSE chunk.
	Delay time.Duration
	// Status, when non-zero and not 200, answers with a Google-style JSON
	// error of this HTTP status instead of a stream.
	Status int
	// ErrorMessage is the message sent with Status.
	ErrorMessage string
	// Hang sends the first chunk of Text, then stalls until the client goes
	// away or the server is closed.
	Hang bool
	// FinishReason overrides "STOP".
	FinishReason string
	// PromptTokens and OutputTokens are reported in usageMetadata (defaults
	// 10 and a rough count of the content).
	PromptTokens, OutputTokens int
}

// FunctionCall is one functionCall part of a Turn.
type FunctionCall struct {
	// Name is the CLI's tool name, e.g. "run_shell_command" with
	// {"command": "echo hi"}.
	Name string
	Args map[string]any
}

// Request is what the mock received, recorded for assertions.
type Request struct {
	Time         time.Time
	Method, Path string
	RawQuery     string
	Header       http.Header
	Body         []byte
	// Model is the {model} of the path; Method is generateContent,
	// streamGenerateContent or countTokens.
	Model, APIMethod string
	// Tools are the names of the function declarations offered.
	Tools []string
	// PromptText is the user's own text in the latest user content (the
	// CLI's tagged context is left out); When is matched against it.
	PromptText string
	// Contents counts the contents sent, so a test can see a resumed
	// session carried its history.
	Contents int
	// FunctionResponses are the functionResponse parts of the last content,
	// by function name.
	FunctionResponses map[string]json.RawMessage
	// Scripted is true for requests that consumed a turn; TurnIndex is the
	// script index used, or -1 for the default turn.
	Scripted  bool
	TurnIndex int
}

// Server is a scripted stand-in for the Gemini API on loopback.
type Server struct {
	// URL is the base URL to use as GOOGLE_GEMINI_BASE_URL.
	URL string

	srv    *httptest.Server
	closed chan struct{}
	once   sync.Once
	logf   func(string, ...any)

	// Script holds the turns, takes them for requests and logs requests.
	*mockscript.Script[Turn, Request]
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
		t.Fatalf("mockgemini: listen on 127.0.0.1: %v", err)
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

// WriteSettings writes home/.gemini/settings.json selecting API-key auth:
// with GOOGLE_GEMINI_BASE_URL set the CLI otherwise picks its "gateway" auth
// and refuses to run headless ("Invalid auth method selected.", exit 41).
// Retries of failed requests are left to the CLI's defaults.
func WriteSettings(home string) error {
	dir := filepath.Join(home, ".gemini")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("mockgemini: create settings folder: %w", err)
	}
	// No update checks and no usage statistics: a test makes no request
	// that is not to the mock.
	settings := `{
  "security": {"auth": {"selectedType": "gemini-api-key"}},
  "general": {"enableAutoUpdate": false, "enableAutoUpdateNotification": false},
  "privacy": {"usageStatisticsEnabled": false},
  "telemetry": {"enabled": false}
}
`
	if err := os.WriteFile(filepath.Join(dir, "settings.json"), []byte(settings), 0o600); err != nil {
		return fmt.Errorf("mockgemini: write settings.json: %w", err)
	}
	return nil
}

// Env returns the entries that point a Gemini CLI at this server.
func (s *Server) Env() []string {
	return []string{"GOOGLE_GEMINI_BASE_URL=" + s.URL, "GEMINI_API_KEY=test"}
}

// CLIEnv is Env plus a HOME of the test's own holding the settings file,
// and a TMPDIR of its own: the CLI writes an error report file there for
// every failed API request.
func (s *Server) CLIEnv(t testing.TB) []string {
	t.Helper()
	home := t.TempDir()
	if err := WriteSettings(home); err != nil {
		t.Fatal(err)
	}
	return append(s.Env(), "HOME="+home, "TMPDIR="+t.TempDir())
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

// modelPath matches /v1beta/models/{model}:{method}.
var modelPath = regexp.MustCompile(`^/v1(?:beta|alpha)?/models/([^/:]+):([A-Za-z]+)$`)

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	req := Request{Time: time.Now(), Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery, Header: r.Header.Clone(), Body: body}
	m := modelPath.FindStringSubmatch(r.URL.Path)
	if r.Method != http.MethodPost || m == nil {
		s.record(&req)
		s.logf("mockgemini: unhandled %s %s", r.Method, r.URL.Path)
		writeError(w, http.StatusNotFound, "mockgemini: no route for "+r.Method+" "+r.URL.Path)
		return
	}
	req.Model, req.APIMethod = m[1], m[2]
	decodeRequest(&req)
	switch req.APIMethod {
	case "streamGenerateContent":
		req.Scripted = true
		turn := s.next(&req)
		s.logf("mockgemini: turn %d for %q (function responses: %d)", req.TurnIndex, req.PromptText, len(req.FunctionResponses))
		s.serveTurn(w, r, req.Model, turn)
	case "generateContent":
		s.record(&req)
		mockscript.WriteJSON(w, http.StatusOK, sideAnswer(req))
	case "countTokens":
		s.record(&req)
		mockscript.WriteJSON(w, http.StatusOK, map[string]any{"totalTokens": 10 + len(body)/4})
	default:
		s.record(&req)
		writeError(w, http.StatusNotFound, "mockgemini: unknown method "+req.APIMethod)
	}
}

// sideAnswer answers a non-streaming request. The CLI asks them for JSON
// (model routing: a complexity score; next-speaker checks), so the text is
// a JSON object that satisfies those schemas and says "the user speaks
// next, the task is simple".
func sideAnswer(req Request) map[string]any {
	text := `{"complexity_reasoning":"mock","complexity_score":10,"reasoning":"mock","next_speaker":"user"}`
	return map[string]any{
		"candidates": []any{map[string]any{
			"content":      map[string]any{"role": "model", "parts": []any{map[string]any{"text": text}}},
			"finishReason": "STOP", "index": 0,
		}},
		"usageMetadata": map[string]any{"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15},
		"modelVersion":  req.Model,
	}
}

// serveTurn answers one scripted request: an error, or an SSE stream of
// GenerateContentResponse chunks.
func (s *Server) serveTurn(w http.ResponseWriter, r *http.Request, model string, t Turn) {
	if t.Status != 0 && t.Status != http.StatusOK {
		writeError(w, t.Status, t.ErrorMessage)
		return
	}
	flusher, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	if flusher != nil {
		flusher.Flush()
	}
	stop := r.Context().Done()
	prompt := t.PromptTokens
	if prompt == 0 {
		prompt = 10
	}
	out := t.OutputTokens
	if out == 0 {
		out = 1 + (len(t.Text)+len(t.Thought))/4 + 20*len(t.FunctionCalls)
	}
	emit := func(parts []any, last bool) bool {
		if t.Delay > 0 {
			select {
			case <-time.After(t.Delay):
			case <-stop:
				return false
			case <-s.closed:
				return false
			}
		}
		cand := map[string]any{"content": map[string]any{"role": "model", "parts": parts}, "index": 0}
		chunk := map[string]any{"candidates": []any{cand}, "modelVersion": model, "responseId": "mock-response"}
		usage := map[string]any{"promptTokenCount": prompt, "totalTokenCount": prompt}
		if last {
			finish := t.FinishReason
			if finish == "" {
				finish = "STOP"
			}
			cand["finishReason"] = finish
			usage["candidatesTokenCount"] = out
			usage["totalTokenCount"] = prompt + out
		}
		chunk["usageMetadata"] = usage
		b, err := json.Marshal(chunk)
		if err != nil {
			panic(err)
		}
		if _, err := fmt.Fprintf(w, "data: %s\r\n\r\n", b); err != nil {
			return false
		}
		if flusher != nil {
			flusher.Flush()
		}
		return true
	}

	var chunks [][]any
	if t.Thought != "" {
		chunks = append(chunks, []any{map[string]any{"text": t.Thought, "thought": true}})
	}
	if t.Text != "" || (t.Thought == "" && len(t.FunctionCalls) == 0) {
		for _, c := range mockscript.Split(t.Text, t.Chunks) {
			chunks = append(chunks, []any{map[string]any{"text": c}})
		}
	}
	if t.Hang {
		if len(chunks) > 0 {
			emit(chunks[0], false)
		}
		s.Hang(stop, s.closed)
		return
	}
	if len(t.FunctionCalls) > 0 {
		var calls []any
		for _, fc := range t.FunctionCalls {
			args := fc.Args
			if args == nil {
				args = map[string]any{}
			}
			calls = append(calls, map[string]any{"functionCall": map[string]any{"name": fc.Name, "args": args}})
		}
		chunks = append(chunks, calls)
	}
	for i, parts := range chunks {
		if !emit(parts, i == len(chunks)-1) {
			return
		}
	}
}

var errorStatuses = map[int]string{
	400: "INVALID_ARGUMENT",
	401: "UNAUTHENTICATED",
	403: "PERMISSION_DENIED",
	404: "NOT_FOUND",
	429: "RESOURCE_EXHAUSTED",
	500: "INTERNAL",
	503: "UNAVAILABLE",
}

// writeError sends a Google-style error body.
func writeError(w http.ResponseWriter, status int, msg string) {
	if msg == "" {
		msg = http.StatusText(status)
	}
	st := errorStatuses[status]
	if st == "" {
		st = "UNKNOWN"
	}
	mockscript.WriteJSON(w, status, map[string]any{"error": map[string]any{"code": status, "message": msg, "status": st}})
}

// contextBlock matches the tagged context the CLI sends as user text
// (<session_context>…</session_context> and the like).
var contextBlock = regexp.MustCompile(`(?s)^\s*<([a-z_]+)>.*</([a-z_]+)>\s*$`)

// decodeRequest fills the decoded fields of req from a generateContent body.
func decodeRequest(req *Request) {
	var body struct {
		Contents []struct {
			Role  string `json:"role"`
			Parts []struct {
				Text             string          `json:"text"`
				Thought          bool            `json:"thought"`
				FunctionResponse json.RawMessage `json:"functionResponse"`
			} `json:"parts"`
		} `json:"contents"`
		Tools []struct {
			FunctionDeclarations []struct {
				Name string `json:"name"`
			} `json:"functionDeclarations"`
		} `json:"tools"`
	}
	if err := json.Unmarshal(req.Body, &body); err != nil {
		return
	}
	req.Contents = len(body.Contents)
	for _, t := range body.Tools {
		for _, f := range t.FunctionDeclarations {
			req.Tools = append(req.Tools, f.Name)
		}
	}
	req.FunctionResponses = map[string]json.RawMessage{}
	for i, c := range body.Contents {
		if c.Role != "user" {
			continue
		}
		var typed []string
		for _, p := range c.Parts {
			if len(p.FunctionResponse) > 0 && i == len(body.Contents)-1 {
				var fr struct {
					Name     string          `json:"name"`
					Response json.RawMessage `json:"response"`
				}
				_ = json.Unmarshal(p.FunctionResponse, &fr)
				req.FunctionResponses[fr.Name] = fr.Response
			}
			if p.Text == "" || p.Thought {
				continue
			}
			if m := contextBlock.FindStringSubmatch(p.Text); m != nil && m[1] == m[2] {
				continue
			}
			typed = append(typed, p.Text)
		}
		if len(typed) > 0 {
			req.PromptText = strings.Join(typed, "\n")
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
