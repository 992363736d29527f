package e2e

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/handlers"
)

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// TestIsolation: bob sees nothing of alice's session, on the socket and over
// REST, while her run streams; sockets without a valid token are refused
// with 401 before any upgrade.
func TestIsolation(t *testing.T) {
	t.Parallel()
	cl := newCluster(t, "", longRun("isolation", 2, 60*time.Millisecond)...)
	gwA, gwB := cl.startGateway("gwA"), cl.startGateway("gwB")
	cl.startWorker("worker")

	alice := cl.dial(gwA, "alice")
	sid := startLongRun(t, cl, alice, "isolation")
	// A second socket of alice's on gateway B follows live: once it has the
	// complete, gateway B has dispatched every event of the run.
	alice2 := cl.dial(gwB, "alice")
	st := status(t, alice2, sid, nil)
	require.Equal(t, true, st.m["isProcessing"], st.raw)

	bob := cl.dial(gwB, "bob")
	unknown := "0d9e3c1a-5b7f-4c2e-9a41-6f1e2d3c4b5a"
	for _, last := range []*int64{ptr(0), nil, ptr(3)} {
		bst := status(t, bob, sid, last)
		require.Equal(t, false, bst.m["isProcessing"], bst.raw)
		require.Equal(t, "idle", bst.str("state"), bst.raw)
		require.Equal(t, float64(0), bst.m["lastSeq"], bst.raw)
		// Exactly as for a session that does not exist.
		ust := status(t, bob, unknown, last)
		require.JSONEq(t, strings.ReplaceAll(string(ust.raw), unknown, sid), string(bst.raw))
	}
	mark := bob.mark()
	bob.send(map[string]any{"type": "subscribe", "sessions": []map[string]any{{"sessionId": sid, "lastSeq": 0}}})
	bst := bob.waitReplyFrom(mark, "session-status", nil)
	require.Equal(t, false, bst.m["isProcessing"], bst.raw)
	require.Equal(t, float64(0), bst.m["lastSeq"], bst.raw)

	bob.send(map[string]any{"type": "abort-session", "sessionId": sid})
	e := bob.waitReply("error", nil)
	require.Equal(t, "No active run", e.str("error"), "bob's abort is answered as for an unknown session")
	bob.send(map[string]any{"type": "get-pending-permissions", "sessionId": sid})
	pp := bob.waitReply("pending-permissions-response", nil)
	require.Equal(t, []any{}, pp.m["data"], pp.raw)
	bob.send(map[string]any{"type": "get-active-sessions"})
	as := bob.waitReply("active-sessions", nil)
	require.NotContains(t, string(as.raw), sid)

	bobTok, aliceTok := cl.token("bob"), cl.token("alice")
	for _, path := range []string{"/api/sessions/" + sid, "/api/sessions/" + sid + "/events?after=0"} {
		code, body := restGet(t, gwA, path, bobTok)
		require.Equal(t, http.StatusNotFound, code, "bob GET %s: %s", path, body)
		code, body = restGet(t, gwA, path, aliceTok)
		require.Equal(t, http.StatusOK, code, "alice GET %s: %s", path, body)
	}
	code, body := restDo(t, http.MethodPost, gwA.addr, "/api/sessions/"+sid+"/abort", bobTok)
	require.Equal(t, http.StatusNotFound, code, "bob cannot abort alice's run over REST: %s", body)
	code, body = restGet(t, gwA, "/api/sessions/"+unknown, bobTok)
	require.Equal(t, http.StatusNotFound, code, body)
	_, bobBody := restGet(t, gwA, "/api/sessions/"+sid, bobTok)
	require.Equal(t, body, bobBody, "another user's session answers exactly as an unknown one")
	code, body = restGet(t, gwB, "/api/sessions", bobTok)
	require.Equal(t, http.StatusOK, code, body)
	require.NotContains(t, body, sid)

	// bob's command naming alice's session is the resume of an unknown
	// conversation: a new session of bob's, whose run fails as a missing
	// conversation does, and alice's run goes on.
	mark = bob.mark()
	bob.send(cl.command("hijack", sid, "bob-cmd"))
	bacc := bob.waitReplyFrom(mark, "session-accepted", nil)
	bsid := bacc.str("sessionId")
	require.NotEqual(t, sid, bsid, "bob's command does not run on alice's session")
	require.Equal(t, true, bacc.m["isNewSession"])
	bevs := bob.waitEnd(bsid, 1, 30*time.Second)
	bsum := checkRun(t, bevs, 1)
	ok, _ := bsum.completes[0].boolean("success")
	require.False(t, ok, bsum.completes[0].Raw)
	require.Contains(t, bevs[beforeEnd(bevs)].Raw, "No conversation found", kinds(bevs))

	evs := alice.waitEnd(sid, 1, 60*time.Second)
	sum := checkRun(t, evs, 1)
	requireComplete(t, sum.completes[0], 0, true, false)
	checkRun(t, alice2.waitEnd(sid, 1, 30*time.Second), int64(st.m["lastSeq"].(float64))+1)

	// A reply queued after every event gateway B dispatched.
	bob.send(map[string]any{"type": "get-active-sessions", "requestId": "last"})
	bob.waitFor(10*time.Second, "a second active-sessions", func(fs []frame) bool {
		n := 0
		for _, f := range fs {
			if f.str("type") == "active-sessions" {
				n++
			}
		}
		return n >= 2
	})
	fs, _ := bob.snapshot()
	for _, f := range fs {
		require.False(t, f.isEvent() && f.str("sessionId") != bsid, "bob received an event of another session: %s", f.raw)
	}

	// Sockets without a valid token: 401 before any upgrade.
	base := "ws://" + gwA.addr + "/ws"
	other := issueToken(t, "alice", "another-secret-another-secret-another-secret")
	expired, err := handlers.IssueToken([]byte(jwtSecret), "alice", false, -time.Minute)
	require.NoError(t, err)
	for name, u := range map[string]string{
		"no token":       base,
		"empty token":    base + "?token=",
		"garbage":        base + "?token=not-a-jwt",
		"wrong secret":   base + "?token=" + url.QueryEscape(other),
		"expired":        base + "?token=" + url.QueryEscape(expired),
		"truncated":      base + "?token=" + url.QueryEscape(aliceTok[:len(aliceTok)-4]),
		"other gateway":  "ws://" + gwB.addr + "/ws?token=garbage",
		"token for bob~": base + "?token=" + url.QueryEscape(strings.Replace(bobTok, ".", "..", 1)),
	} {
		require.Equal(t, http.StatusUnauthorized, dialStatus(t, u, nil), name)
	}
	require.Equal(t, http.StatusUnauthorized, dialStatus(t, base, http.Header{"Authorization": {"Bearer not-a-jwt"}}))
	require.Equal(t, http.StatusSwitchingProtocols, dialStatus(t, base, http.Header{"Authorization": {"Bearer " + aliceTok}}),
		"a valid bearer token opens the socket")
	code, body = restGet(t, gwA, "/api/sessions/"+sid, "")
	require.Equal(t, http.StatusUnauthorized, code, body)
	var errBody map[string]any
	require.NoError(t, json.Unmarshal([]byte(body), &errBody), body)
	require.Contains(t, errBody, "error")
}
