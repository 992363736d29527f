package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/internal/mockanthropic"
)

// TestPermissionAcrossGateways: the real CLI asks to run a tool; the run
// was started through gateway A, and the user answers from a tab on
// gateway B, which sees the pending request when it reconnects. The tool
// runs, and the run ends with one complete.
func TestPermissionAcrossGateways(t *testing.T) {
	t.Parallel()
	cl := newCluster(t, "",
		mockanthropic.Turn{When: "perm-across", ToolUses: []mockanthropic.ToolUse{{ID: "toolu_touch", Name: "Bash",
			Input: map[string]any{"command": "touch approved", "description": "Create approved"}}}},
		mockanthropic.Turn{When: "perm-across", Text: "created"},
	)
	a, b := cl.startGateway("gwA"), cl.startGateway("gwB")
	cl.startWorker("worker1")

	c := cl.dial(a, "alice")
	cmd := cl.command("please perm-across", "", "r1")
	cmd["options"].(map[string]any)["toolsSettings"] = map[string]any{} // ask for every tool
	c.send(cmd)
	accepted := c.waitReply("session-accepted", nil)
	sid := accepted.str("sessionId")
	evs := c.waitEvent(sid, "permission_request", time.Minute, func(e event) bool { return e.Kind == "permission_request" })
	req := evs[indexOf(evs, "permission_request")]
	requestID := req.str("requestId")
	require.NotEmpty(t, requestID)
	require.Equal(t, "Bash", req.str("toolName"))

	tab := cl.dial(b, "alice")
	tab.send(map[string]any{"type": "check-session-status", "sessionId": sid, "lastSeq": 0})
	status := tab.waitReply("session-status", nil)
	pending, _ := status.m["pendingPermissions"].([]any)
	require.Len(t, pending, 1, "the other gateway shows the pending request: %s", status.raw)
	require.Equal(t, requestID, pending[0].(map[string]any)["requestId"])

	tab.send(map[string]any{"type": "claude-permission-response", "requestId": requestID, "allow": true})
	evs = tab.waitEnd(sid, 1, 30*time.Second)
	sum := checkRun(t, evs, 1)
	requireComplete(t, sum.completes[0], 0, true, false)
	_, err := os.Stat(filepath.Join(cl.project, "approved"))
	require.NoError(t, err, "the approved tool ran")
	// One cancel, telling the first tab (which shows the request) that
	// it was answered.
	require.Equal(t, 1, countKind(evs, "permission_cancelled"))
	require.Equal(t, "answered", evs[indexOf(evs, "permission_cancelled")].str("reason"))
	// The first tab saw the same run end.
	c.waitEnd(sid, 1, 10*time.Second)
}

// TestPrefixRuleAsksForACompoundCommand: with `Bash(git log:*)` allowed
// (the README's example), the real CLI asks to run a command that starts
// with `git log` and then runs another: the user is asked, not the rule's
// answer given, and a denial keeps the second command from running.
func TestPrefixRuleAsksForACompoundCommand(t *testing.T) {
	t.Parallel()
	cl := newCluster(t, "",
		mockanthropic.Turn{When: "perm-compound", ToolUses: []mockanthropic.ToolUse{{ID: "toolu_compound", Name: "Bash",
			Input: map[string]any{"command": "git log -1 2>/dev/null; touch pwned", "description": "Show the last commit"}}}},
		mockanthropic.Turn{When: "perm-compound", Text: "denied"},
	)
	gw := cl.startGateway("gwA")
	cl.startWorker("worker1")

	c := cl.dial(gw, "alice")
	cmd := cl.command("please perm-compound", "", "r1")
	cmd["options"].(map[string]any)["toolsSettings"] = map[string]any{"allowedTools": []string{"Bash(git log:*)"}}
	c.send(cmd)
	sid := c.waitReply("session-accepted", nil).str("sessionId")
	evs := c.waitEvent(sid, "permission_request", time.Minute, func(e event) bool { return e.Kind == "permission_request" })
	req := evs[indexOf(evs, "permission_request")]
	require.Equal(t, "Bash", req.str("toolName"))

	c.send(map[string]any{"type": "claude-permission-response", "requestId": req.str("requestId"), "allow": false})
	evs = c.waitEnd(sid, 1, 30*time.Second)
	checkRun(t, evs, 1)
	_, err := os.Stat(filepath.Join(cl.project, "pwned"))
	require.True(t, os.IsNotExist(err), "the command after `git log` did not run: %v", err)
}
