package handlers

import (
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store/storetest"
)

// TestWebClient: the bundled page is served with its CSP, and speaks the
// parts of the protocol a user tries first (every provider, permissions).
func TestWebClient(t *testing.T) {
	g := startGateway(t, newStore(t, storetest.Mini))
	resp, err := http.Get(g.ts.URL + "/")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"))
	require.Contains(t, resp.Header.Get("Content-Security-Policy"), "connect-src 'self' ws: wss:")
	for _, s := range []string{`"-command"`, "<option>codex</option>", "<option>gemini</option>", "<option>cursor</option>",
		"claude-permission-response", "pendingPermissions", "permission_cancelled", "check-session-status"} {
		require.Contains(t, string(body), s)
	}
}
