package workers

import (
	"testing"

	"github.com/agentgate/agentgate/app"
)

// claudeBenchLines are stream-json lines as the Claude CLI prints them: the
// short text line the fanout benchmark's stand-in writes, and a whole
// assistant message (text, then a tool call) with the fields the CLI adds.
var claudeBenchLines = map[string]string{
	"short":    `{"type":"assistant","message":{"content":[{"type":"text","text":"1733412345678901234"}]}}`,
	"text":     `{"type":"assistant","message":{"content":[{"text":"I'll look at the failing test first, then run it again with the verbose flag so we can see which assertion trips.","type":"text"}],"id":"msg_01XFDUDYJgAACzvnptvVoYEL","model":"claude-sonnet-4-5","role":"assistant","stop_reason":null,"stop_sequence":null,"type":"message","usage":{"cache_creation_input_tokens":0,"cache_read_input_tokens":20311,"input_tokens":4,"output_tokens":1,"service_tier":"standard"},"context_management":null},"parent_tool_use_id":null,"session_id":"6f1c0b4e-1b2a-4c3d-9e8f-001122334455","uuid":"0b7c6a58-3f53-4a34-9d36-9f0f2a0f7c11","request_id":"req_011CUqzVkq6mYxZ3"}`,
	"tool_use": `{"type":"assistant","message":{"content":[{"id":"toolu_01A09q90qw90lq917835lq9","input":{"command":"go test -run TestParse -v ./workers/","description":"Run the parser test verbosely"},"name":"Bash","type":"tool_use"}],"id":"msg_01XFDUDYJgAACzvnptvVoYEM","model":"claude-sonnet-4-5","role":"assistant","stop_reason":null,"stop_sequence":null,"type":"message","usage":{"cache_creation_input_tokens":0,"cache_read_input_tokens":20311,"input_tokens":4,"output_tokens":1,"service_tier":"standard"},"context_management":null},"parent_tool_use_id":null,"session_id":"6f1c0b4e-1b2a-4c3d-9e8f-001122334455","uuid":"0b7c6a58-3f53-4a34-9d36-9f0f2a0f7c12","request_id":"req_011CUqzVkq6mYxZ3"}`,
}

// BenchmarkClaudeLine measures the parse of one CLI line into events, what
// a worker spends on each line a run prints before it is appended.
func BenchmarkClaudeLine(b *testing.B) {
	for _, name := range []string{"short", "text", "tool_use"} {
		line := []byte(claudeBenchLines[name])
		b.Run(name, func(b *testing.B) {
			p := ClaudeProvider{}.NewParser(app.Job{})
			b.ReportAllocs()
			b.SetBytes(int64(len(line)))
			for b.Loop() {
				if out := p.Line(line); len(out.Events) == 0 {
					b.Fatal("no event")
				}
			}
		})
	}
}
