package app

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestToolRules(t *testing.T) {
	bash := func(cmd string) json.RawMessage { b, _ := json.Marshal(map[string]string{"command": cmd}); return b }
	cases := []struct {
		name  string
		opts  RunOptions
		tool  string
		input json.RawMessage
		want  Decision
	}{
		{"nothing set asks", RunOptions{}, "Bash", bash("ls"), Ask},
		{"exact name allows", RunOptions{Tools: ToolsSettings{AllowedTools: []string{"Read"}}}, "Read", nil, Allow},
		{"disallowed beats allowed", RunOptions{Tools: ToolsSettings{AllowedTools: []string{"Bash"}, DisallowedTools: []string{"Bash"}}}, "Bash", bash("ls"), Deny},
		{"prefix rule", RunOptions{Tools: ToolsSettings{AllowedTools: []string{"Bash(git:*)"}}}, "Bash", bash("git status"), Allow},
		{"prefix rule, other command", RunOptions{Tools: ToolsSettings{AllowedTools: []string{"Bash(git:*)"}}}, "Bash", bash("rm -rf x"), Ask},
		{"prefix rule is for Bash only", RunOptions{Tools: ToolsSettings{AllowedTools: []string{"Read(git:*)"}}}, "Read", bash("git"), Ask},
		{"bypass mode", RunOptions{PermissionMode: "bypassPermissions"}, "Bash", bash("rm x"), Allow},
		{"skipPermissions bypasses", RunOptions{Tools: ToolsSettings{SkipPermissions: true}}, "Write", nil, Allow},
		{"skipPermissions in plan mode does not", RunOptions{PermissionMode: "plan", Tools: ToolsSettings{SkipPermissions: true}}, "Write", nil, Ask},
		{"questions are asked even in bypass", RunOptions{PermissionMode: "bypassPermissions"}, "AskUserQuestion", nil, Ask},
		{"questions are asked even when allowed", RunOptions{Tools: ToolsSettings{AllowedTools: []string{"ExitPlanMode"}}}, "ExitPlanMode", nil, Ask},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, RulesOf(tc.opts).Decide(tc.tool, tc.input))
		})
	}

	opts := RunOptions{Tools: ToolsSettings{DisallowedTools: []string{"Bash"}}}
	r := RulesOf(opts)
	r.Remember("Bash")
	require.Equal(t, Allow, r.Decide("Bash", bash("ls")), "a remembered entry leaves the disallowed list")
	require.Equal(t, []string{"Bash"}, opts.Tools.DisallowedTools, "the run's options are not changed")
}
