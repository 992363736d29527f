package handlers

import (
	"bytes"
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store/storetest"
)

// TestBroadcastReachesOneUser: a frame published for a user reaches that
// user's chat sockets on every gateway, and no other user's (PROTOCOL §3.7:
// it describes their projects and conversations).
func TestBroadcastReachesOneUser(t *testing.T) {
	st := newStore(t, storetest.Real)
	a, b := startGateway(t, st), startGateway(t, st)
	alice := []*client{a.dial("alice"), b.dial("alice")}
	bob := a.dial("bob")
	require.NoError(t, st.Broadcast(context.Background(), "alice", []byte(`{"type":"projects_updated","projects":[],"batched":true}`)))
	for _, c := range alice {
		m := c.next()
		require.Equal(t, "projects_updated", m["type"])
		require.Equal(t, true, m["batched"])
	}
	bob.expectNothing(200 * time.Millisecond)
}

// TestBroadcastEndpoint: POST /api/broadcast takes an admin token and a
// frame of the kinds a projects service sends, and refuses anything else.
func TestBroadcastEndpoint(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st)
	alice, bob := g.dial("alice"), g.dial("bob")
	post := func(tok, body string) int {
		req, err := http.NewRequest(http.MethodPost, g.ts.URL+"/api/broadcast", bytes.NewBufferString(body))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	admin := token(t, "ops", true)
	frame := `{"type":"projects_updated","projects":[{"projectId":"p1","displayName":"demo","sessions":[]}]}`
	require.Equal(t, http.StatusForbidden, post(token(t, "alice", false), `{"user":"alice","frame":`+frame+`}`))
	require.Equal(t, http.StatusBadRequest, post(admin, `{"user":"alice","frame":{"kind":"complete"}}`))
	require.Equal(t, http.StatusBadRequest, post(admin, `{"user":"alice","frame":{"type":"session-status"}}`))
	require.Equal(t, http.StatusBadRequest, post(admin, `{"user":"../x","frame":`+frame+`}`))
	require.Equal(t, http.StatusBadRequest, post(admin, `not json`))
	alice.expectNothing(100 * time.Millisecond)

	require.Equal(t, http.StatusAccepted, post(admin, `{"user":"alice","frame":`+frame+`}`))
	m := alice.next()
	require.Equal(t, "projects_updated", m["type"])
	require.Equal(t, "demo", m["projects"].([]any)[0].(map[string]any)["displayName"])
	bob.expectNothing(200 * time.Millisecond)
}
