package app

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestRunOptionsCheckTools: the rules Claude Code UI's frontend remembers
// ("Allow & remember") pass, whatever characters their argument holds;
// what a CLI could read as a flag, what an argument cannot carry, a ','
// that splits a rule in the CLIs' lists, and rules past the bounds are
// refused with an error that echoes at most a clip of the rule.
func TestRunOptionsCheckTools(t *testing.T) {
	accepted := []string{
		"Read", "Bash(git log:*)", "mcp__server__tool",
		"Bash(~/bin/deploy.sh:*)", "Read(~/.zshrc)", "Bash($HOME/bin/x:*)", "Bash(./скрипт.sh:*)",
		`Bash(C:\tools\x.exe:*)`, "Bash([ -f x ]:*)", "Bash(echo a,b:*)", "Edit(src/**/*.{ts,tsx})",
		"Bash(npm run build && npm test:*)", "~", "$", "[", `\`, "é",
		strings.Repeat("a", maxToolRule),
	}
	for _, rule := range accepted {
		require.NoError(t, RunOptions{Tools: ToolsSettings{AllowedTools: []string{rule}}}.Check(), "%q", Clip(rule, 40))
		require.NoError(t, RunOptions{Tools: ToolsSettings{DisallowedTools: []string{rule}}}.Check(), "%q", Clip(rule, 40))
	}
	refused := []struct {
		name, rule, want string
	}{
		{"a flag", "--help", `Invalid tool name "--help"`},
		{"a short flag", "-c", `Invalid tool name "-c"`},
		{"a minus sign", "\u2212c", `Invalid tool name "−c"`},
		{"an en dash", "\u2013c", `Invalid tool name`},
		{"a blank first", " -c", `Invalid tool name " -c"`},
		{"a no-break space first", "\u00a0Read", `Invalid tool name`},
		{"empty", "", `Invalid tool name "": empty`},
		{"NUL", "Bash(a\x00b:*)", "control characters are not allowed"},
		{"a line break", "Read\n--yolo", "control characters are not allowed"},
		{"a C1 control", "Bash(\u0085:*)", "control characters are not allowed"},
		{"a line separator", "Bash(\u2028:*)", "control characters are not allowed"},
		{"not UTF-8", "Bash(\xff:*)", "not UTF-8"},
		{"a comma between rules", "Read,Write", "a ',' outside parentheses would split it in two"},
		{"a comma after a rule", "Bash(ls:*),Write", "a ',' outside parentheses would split it in two"},
		{"too long", strings.Repeat("a", maxToolRule+1), "longer than 1024 bytes"},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			err := RunOptions{Tools: ToolsSettings{AllowedTools: []string{"Read", tc.rule}}}.Check()
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.want)
			require.Less(t, len(err.Error()), 200, "the error echoes a clip of the rule")
		})
	}

	many := make([]string, maxTools+1)
	for i := range many {
		many[i] = "Read"
	}
	require.ErrorContains(t, RunOptions{Tools: ToolsSettings{AllowedTools: many}}.Check(), "Too many tools")
	big := make([]string, maxToolBytes/maxToolRule+1)
	for i := range big {
		big[i] = strings.Repeat("b", maxToolRule)
	}
	require.ErrorContains(t, RunOptions{Tools: ToolsSettings{DisallowedTools: big}}.Check(), "toolsSettings too large")
}

// TestClip: a clip never ends in a cut UTF-8 character, and is never longer
// than asked.
func TestClip(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"abc", 5, "abc"},
		{"abcdef", 3, "abc"},
		{"aé", 2, "a"},
		{"скрипт", 5, "ск"},
		{"\xff\xff\xff\xff\xff", 3, "\xff\xff\xff"},
		{"a\u0085\u0085", 2, "a"},
	} {
		require.Equal(t, tc.want, Clip(tc.in, tc.n), "%q %d", tc.in, tc.n)
	}
}
