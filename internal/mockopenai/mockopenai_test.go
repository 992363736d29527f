package mockopenai

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/internal/mockscript"
)

// post sends a Responses request the way the CLI does and parses the SSE
// answer, so the wire format is checked without the CLI.
func post(t *testing.T, s *Server, body map[string]any) (*http.Response, []mockscript.SSEEvent) {
	t.Helper()
	b, err := json.Marshal(body)
	require.NoError(t, err)
	resp, err := http.Post(s.URL+"/v1/responses", "application/json", bytes.NewReader(b))
	require.NoError(t, err)
	defer resp.Body.Close()
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		return resp, nil
	}
	events, err := mockscript.ReadSSE(resp.Body)
	require.NoError(t, err)
	for _, e := range events {
		require.Equal(t, e.Name, e.Data["type"], "event name and data type must agree")
	}
	return resp, events
}

func userInput(text string) []any {
	return []any{
		map[string]any{"type": "message", "role": "developer", "content": []any{map[string]any{"type": "input_text", "text": "You are a coding agent"}}},
		map[string]any{"type": "message", "role": "user", "content": []any{map[string]any{"type": "input_text", "text": "<environment_context>\n  <cwd>/w</cwd>\n</environment_context>"}}},
		map[string]any{"type": "message", "role": "user", "content": []any{map[string]any{"type": "input_text", "text": text}}},
	}
}

func TestStreamWireFormat(t *testing.T) {
	s := New(t, Turn{Reasoning: "hmm", Text: "hello world", Chunks: 2, ToolCalls: []ToolCall{{CallID: "call_1", Arguments: map[string]any{"cmd": "echo hi"}}}})
	_, events := post(t, s, map[string]any{"model": "m", "stream": true, "input": userInput("go")})
	var names []string
	for _, e := range events {
		names = append(names, e.Name)
	}
	require.Equal(t, []string{
		"response.created",
		"response.output_item.added", "response.reasoning_summary_part.added", "response.reasoning_summary_text.delta", "response.reasoning_summary_text.done", "response.output_item.done",
		"response.output_item.added", "response.content_part.added", "response.output_text.delta", "response.output_text.delta", "response.output_text.done", "response.content_part.done", "response.output_item.done",
		"response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.done", "response.output_item.done",
		"response.completed",
	}, names)
	for i, e := range events {
		require.EqualValues(t, i, e.Data["sequence_number"])
	}
	msg := events[12].Data["item"].(map[string]any)
	require.Equal(t, "hello world", msg["content"].([]any)[0].(map[string]any)["text"])
	call := events[16].Data["item"].(map[string]any)
	require.Equal(t, map[string]any{"type": "function_call", "id": call["id"], "call_id": "call_1", "name": "exec_command", "arguments": `{"cmd":"echo hi"}`, "status": "completed"}, call)
	usage := events[17].Data["response"].(map[string]any)["usage"].(map[string]any)
	require.EqualValues(t, 10, usage["input_tokens"])
}

func TestErrorsAndFailures(t *testing.T) {
	s := New(t, Turn{Status: 401, ErrorMessage: "bad key"}, Turn{Failed: true, ErrorMessage: "went wrong"})
	resp, _ := post(t, s, map[string]any{"stream": true, "input": userInput("a")})
	require.Equal(t, 401, resp.StatusCode)
	_, events := post(t, s, map[string]any{"stream": true, "input": userInput("b")})
	require.Len(t, events, 2)
	require.Equal(t, "response.failed", events[1].Name)
	require.Equal(t, "went wrong", events[1].Data["response"].(map[string]any)["error"].(map[string]any)["message"])
	resp, _ = post(t, s, map[string]any{"stream": true, "input": userInput("c")})
	require.Equal(t, 200, resp.StatusCode, "past the script the default turn answers")
	r, err := http.Get(s.URL + "/v1/models")
	require.NoError(t, err)
	r.Body.Close()
	require.Equal(t, 404, r.StatusCode)
}

func TestRequestDecoding(t *testing.T) {
	s := New(t, Turn{When: "second", Text: "2"}, Turn{When: "first", Text: "1"})
	input := append(userInput("first prompt"),
		map[string]any{"type": "message", "role": "assistant", "content": []any{map[string]any{"type": "output_text", "text": "ok"}}},
		map[string]any{"type": "function_call", "call_id": "c1", "name": "exec_command", "arguments": "{}"},
		map[string]any{"type": "function_call_output", "call_id": "c1", "output": "hi\n"},
	)
	_, events := post(t, s, map[string]any{"model": "m", "stream": true, "input": input, "tools": []any{map[string]any{"type": "function", "name": "exec_command"}}})
	require.NotEmpty(t, events)
	reqs := s.ScriptedRequests()
	require.Len(t, reqs, 1)
	require.Equal(t, "first prompt", reqs[0].PromptText, "tagged context blocks are not the prompt")
	require.Equal(t, 1, reqs[0].TurnIndex, "When picks the matching turn, not the first")
	require.Equal(t, 2, reqs[0].Messages)
	require.Equal(t, map[string]string{"c1": "hi\n"}, reqs[0].ToolOutputs)
	require.Equal(t, []string{"exec_command"}, reqs[0].Tools)
}

func TestWriteConfig(t *testing.T) {
	s := New(t)
	dir := filepath.Join(t.TempDir(), "codex")
	require.NoError(t, s.WriteConfig(dir))
	b, err := os.ReadFile(filepath.Join(dir, "config.toml"))
	require.NoError(t, err)
	require.Contains(t, string(b), `base_url = "`+s.URL+`/v1"`)
	require.Contains(t, string(b), `wire_api = "responses"`)
}
