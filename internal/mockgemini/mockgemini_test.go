package mockgemini

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

// stream sends a streamGenerateContent request the way the CLI does and
// returns the SSE chunks.
func stream(t *testing.T, s *Server, body map[string]any) (*http.Response, []map[string]any) {
	t.Helper()
	b, err := json.Marshal(body)
	require.NoError(t, err)
	resp, err := http.Post(s.URL+"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", "application/json", bytes.NewReader(b))
	require.NoError(t, err)
	defer resp.Body.Close()
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		return resp, nil
	}
	events, err := mockscript.ReadSSE(resp.Body)
	require.NoError(t, err)
	chunks := make([]map[string]any, len(events))
	for i, e := range events {
		chunks[i] = e.Data
	}
	return resp, chunks
}

func userContents(text string) []any {
	return []any{map[string]any{"role": "user", "parts": []any{
		map[string]any{"text": "<session_context>\nThis is the Gemini CLI.\n</session_context>"},
		map[string]any{"text": text},
	}}}
}

func parts(chunk map[string]any) []any {
	return chunk["candidates"].([]any)[0].(map[string]any)["content"].(map[string]any)["parts"].([]any)
}

func TestStreamWireFormat(t *testing.T) {
	s := New(t, Turn{Thought: "hmm", Text: "hello world", Chunks: 2, FunctionCalls: []FunctionCall{{Name: "run_shell_command", Args: map[string]any{"command": "echo hi"}}}})
	_, chunks := stream(t, s, map[string]any{"contents": userContents("go")})
	require.Len(t, chunks, 4)
	require.Equal(t, map[string]any{"text": "hmm", "thought": true}, parts(chunks[0])[0])
	require.Equal(t, "hello", parts(chunks[1])[0].(map[string]any)["text"])
	require.Equal(t, " world", parts(chunks[2])[0].(map[string]any)["text"])
	require.Equal(t, map[string]any{"functionCall": map[string]any{"name": "run_shell_command", "args": map[string]any{"command": "echo hi"}}}, parts(chunks[3])[0])
	last := chunks[3]["candidates"].([]any)[0].(map[string]any)
	require.Equal(t, "STOP", last["finishReason"])
	require.Nil(t, chunks[0]["candidates"].([]any)[0].(map[string]any)["finishReason"], "only the last chunk finishes")
	require.EqualValues(t, 10, chunks[3]["usageMetadata"].(map[string]any)["promptTokenCount"])
}

func TestSideRequestsAndErrors(t *testing.T) {
	s := New(t, Turn{Status: 400, ErrorMessage: "nope"})
	resp, err := http.Post(s.URL+"/v1beta/models/flash-lite:generateContent", "application/json", strings.NewReader(`{"contents":[]}`))
	require.NoError(t, err)
	var side map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&side))
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, 1, s.Pending(), "a side request does not consume the script")
	resp, _ = stream(t, s, map[string]any{"contents": userContents("x")})
	require.Equal(t, 400, resp.StatusCode)
	r, err := http.Get(s.URL + "/v1beta/models")
	require.NoError(t, err)
	r.Body.Close()
	require.Equal(t, 404, r.StatusCode)
}

func TestRequestDecoding(t *testing.T) {
	s := New(t, Turn{When: "other", Text: "no"}, Turn{When: "list", Text: "yes"})
	contents := append(userContents("list files"),
		map[string]any{"role": "model", "parts": []any{map[string]any{"functionCall": map[string]any{"name": "list_directory", "args": map[string]any{}}}}},
		map[string]any{"role": "user", "parts": []any{map[string]any{"functionResponse": map[string]any{"name": "list_directory", "response": map[string]any{"output": "empty"}}}}},
	)
	_, chunks := stream(t, s, map[string]any{"contents": contents, "tools": []any{map[string]any{"functionDeclarations": []any{map[string]any{"name": "list_directory"}}}}})
	require.NotEmpty(t, chunks)
	reqs := s.ScriptedRequests()
	require.Len(t, reqs, 1)
	require.Equal(t, "list files", reqs[0].PromptText, "the tagged context is not the prompt, and a tool loop keeps the prompt")
	require.Equal(t, 1, reqs[0].TurnIndex)
	require.Equal(t, 3, reqs[0].Contents)
	require.JSONEq(t, `{"output":"empty"}`, string(reqs[0].FunctionResponses["list_directory"]))
	require.Equal(t, []string{"list_directory"}, reqs[0].Tools)
	require.Equal(t, "gemini-2.5-flash", reqs[0].Model)
}

func TestWriteSettings(t *testing.T) {
	home := t.TempDir()
	require.NoError(t, WriteSettings(home))
	b, err := os.ReadFile(filepath.Join(home, ".gemini", "settings.json"))
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	require.Equal(t, "gemini-api-key", m["security"].(map[string]any)["auth"].(map[string]any)["selectedType"])
}
