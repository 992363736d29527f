package app

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCheckBroadcast(t *testing.T) {
	cases := []struct {
		name, user, frame, err string
	}{
		{"projects", "alice", `{"type":"projects_updated","projects":[]}`, ""},
		{"progress", "alice", `{"type":"loading_progress","phase":"complete"}`, ""},
		{"taskmaster", "alice", `{"type":"taskmaster-tasks-updated","projectId":"p"}`, ""},
		{"bad user", "al ice", `{"type":"projects_updated"}`, "invalid user name"},
		{"no user", "", `{"type":"projects_updated"}`, "invalid user name"},
		{"not json", "alice", `{`, "JSON object"},
		{"array", "alice", `[1]`, "JSON object"},
		{"null", "alice", `null`, "JSON object"},
		{"no type", "alice", `{"projects":[]}`, "string type"},
		{"type not a string", "alice", `{"type":1}`, "string type"},
		{"a session event", "alice", `{"type":"projects_updated","kind":"complete"}`, "no kind"},
		{"a reply of agentgate", "alice", `{"type":"session-status","isProcessing":false}`, "may not be broadcast"},
		{"too large", "alice", `{"type":"projects_updated","x":"` + strings.Repeat("a", MaxBroadcastSize) + `"}`, "too large"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckBroadcast(tc.user, []byte(tc.frame))
			if tc.err == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.err)
		})
	}
}
