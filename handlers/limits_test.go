package handlers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store/storetest"
)

// dialPath opens a socket on path with user's token; the response is that of
// the handshake, a refusal included.
func (g *gateway) dialPath(path, user string) (*websocket.Conn, *http.Response, error) {
	url := "ws" + strings.TrimPrefix(g.ts.URL, "http") + path + "?token=" + token(g.t, user, false)
	ws, resp, err := websocket.DefaultDialer.Dial(url, nil)
	if ws != nil {
		g.t.Cleanup(func() { ws.Close() })
	}
	return ws, resp, err
}

// TestSocketsPerUser: a user's sockets on /ws, /shell and /plugin-ws count
// together; one over the cap is refused before the upgrade with 429 naming
// the limit; other users are not affected; a closed socket frees its place.
func TestSocketsPerUser(t *testing.T) {
	g := startGateway(t, newStore(t, storetest.Mini), func(c *Config) { c.MaxSocketsPerUser = 3 })
	var open []*websocket.Conn
	for _, path := range []string{"/ws", "/shell", "/ws"} {
		ws, _, err := g.dialPath(path, "alice")
		require.NoError(t, err, path)
		open = append(open, ws)
	}
	for _, path := range []string{"/ws", "/shell", "/plugin-ws/demo"} {
		ws, resp, err := g.dialPath(path, "alice")
		require.Error(t, err, path)
		require.Nil(t, ws)
		require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, path)
		body, _ := io.ReadAll(resp.Body)
		require.JSONEq(t, `{"error":"too many sockets for this user: at most 3 per gateway"}`, string(body))
	}
	_, _, err := g.dialPath("/ws", "bob")
	require.NoError(t, err, "another user has places of their own")

	require.NoError(t, open[1].Close())
	require.Eventually(t, func() bool {
		ws, _, err := g.dialPath("/ws", "alice")
		if ws != nil {
			ws.Close()
		}
		return err == nil
	}, 10*time.Second, 20*time.Millisecond, "a closed socket gives its place back")
}

// TestFrameRatePerUser: frames over the rate are not handled; the socket is
// told the limit at most once a second and stays open. A user's sockets
// share the rate, a subscribe costs a frame per session, and reconnecting
// does not refill the budget. The rate is measured on a clock the test
// moves: no frame is answered for time a slow machine took.
func TestFrameRatePerUser(t *testing.T) {
	const rate = 5
	g := startGateway(t, newStore(t, storetest.Mini), func(c *Config) { c.MaxFrameRate = rate })
	clock := newTestClock()
	g.srv.quotas.setClock(clock.now)
	want := fmt.Sprintf("Rate limit: at most %d frames per second per user", rate)
	burst := max(frameBurstSeconds*rate, maxSubscribe)
	refused := limitRefusals.WithLabelValues("frames")
	refusedBefore := refused.Value()

	c := g.dial("alice")
	const sent = 400
	for range sent {
		c.send(map[string]any{"type": "get-active-sessions"})
	}
	frames := c.until(isType("error"))
	require.Equal(t, map[string]any{"type": "error", "error": want}, frames[len(frames)-1])
	require.Len(t, frames, burst+1, "the burst is answered, then the error")
	// The rest of the flood: not handled, not answered, once every frame
	// was read.
	require.Eventually(t, func() bool { return refused.Value()-refusedBefore >= sent-float64(burst) }, 30*time.Second, 5*time.Millisecond,
		"the flood's frames over the burst refused")
	c.expectNothing(300 * time.Millisecond)

	// The socket is open, and handles frames again once the budget refills.
	clock.advance(time.Second)
	c.send(map[string]any{"type": "get-active-sessions"})
	require.Equal(t, "active-sessions", c.next()["type"])

	// Another socket of the same user shares the spent budget, and so does
	// one opened after the others closed; another user has a budget of
	// their own.
	flood := func(c *client) int {
		for range 30 {
			c.send(map[string]any{"type": "get-active-sessions"})
		}
		frames := c.until(isType("error"))
		require.Equal(t, want, frames[len(frames)-1]["error"])
		return len(frames) - 1
	}
	require.Equal(t, rate-1, flood(g.dial("alice")), "what the second refilled, less the frame just answered")
	require.NoError(t, c.ws.Close())
	require.Zero(t, flood(g.dial("alice")), "reconnecting does not refill the budget")
	bob := g.dial("bob")
	for range 30 {
		bob.send(map[string]any{"type": "get-active-sessions"})
	}
	for range 30 {
		require.Equal(t, "active-sessions", bob.next()["type"])
	}

	// A subscribe of as many sessions as the burst passes on a full budget;
	// a second one at once is refused whole.
	carol := g.dial("carol")
	sessions := make([]map[string]any, maxSubscribe)
	for i := range sessions {
		sessions[i] = map[string]any{"sessionId": fmt.Sprintf("s%d", i)}
	}
	carol.send(map[string]any{"type": "subscribe", "sessions": sessions})
	for range sessions {
		require.Equal(t, "session-status", carol.next()["type"])
	}
	carol.send(map[string]any{"type": "subscribe", "sessions": sessions})
	require.Equal(t, want, carol.next()["error"])
	carol.expectNothing(100 * time.Millisecond)

	// A subscribe of no session still costs its frame.
	dave := g.dial("dave")
	for range burst + 50 {
		dave.send(map[string]any{"type": "subscribe", "sessions": []any{}})
	}
	require.Equal(t, want, dave.next()["error"])
}

// TestFrameRateOnShell: /shell frames count against the same rate, but one
// over it waits for the rate instead of being dropped (a terminal's frames
// are what its user typed, and Claude Code UI's terminal shows no error
// frame): every frame is answered, none with the rate's error, and the
// flood takes the time the rate gives it.
func TestFrameRateOnShell(t *testing.T) {
	const rate = 25
	g := startGateway(t, newStore(t, storetest.Mini), func(c *Config) { c.MaxFrameRate = rate })
	burst := max(frameBurstSeconds*rate, maxSubscribe)
	const over = 50
	answers := func(ws *websocket.Conn, n int) {
		t.Helper()
		require.NoError(t, ws.SetReadDeadline(time.Now().Add(20*time.Second)))
		for range n {
			_, data, err := ws.ReadMessage()
			require.NoError(t, err)
			var m map[string]any
			require.NoError(t, json.Unmarshal(data, &m))
			require.Equal(t, map[string]any{"type": "error", "message": app.ShellErrNoTerminal}, m)
		}
	}
	ws, _, err := g.dialPath("/shell", "alice")
	require.NoError(t, err)
	began := time.Now()
	for range burst + over {
		require.NoError(t, ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"input","data":"x"}`)))
	}
	answers(ws, burst+over) // each answered: no terminal
	require.GreaterOrEqual(t, time.Since(began), over*time.Second/rate*9/10, "the frames past the burst waited for the rate")

	// Acks are free, but not a frame too long to be only one: an input
	// after such frames waits for the rate they spent.
	bob, _, err := g.dialPath("/shell", "bob")
	require.NoError(t, err)
	padded := fmt.Appendf(nil, `{"type":"ack","seq":1,"pad":%q}`, strings.Repeat("x", 200))
	began = time.Now()
	for range burst + over {
		require.NoError(t, bob.WriteMessage(websocket.TextMessage, padded))
	}
	require.NoError(t, bob.WriteMessage(websocket.TextMessage, []byte(`{"type":"input","data":"x"}`)))
	answers(bob, 1)
	require.GreaterOrEqual(t, time.Since(began), over*time.Second/rate*9/10, "padded acks paid the frame rate")
}

// TestAcksPayTheirOwnRate: terminal acks do not pay the frame rate but an
// ack rate of their own, a hundred times it; past it they are dropped
// without a word (a flood of acks was a read and two parses each on the
// gateway), while other frames still pay the frame rate and are answered.
func TestAcksPayTheirOwnRate(t *testing.T) {
	const rate = 5
	g := startGateway(t, newStore(t, storetest.Mini), func(c *Config) { c.MaxFrameRate = rate })
	refused := func(limit string) float64 {
		resp, err := http.Get(g.ts.URL + "/metrics")
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		for line := range strings.SplitSeq(string(body), "\n") {
			if v, ok := strings.CutPrefix(line, `agentgate_limit_refusals_total{limit="`+limit+`"} `); ok {
				n, err := strconv.ParseFloat(v, 64)
				require.NoError(t, err)
				return n
			}
		}
		return 0
	}
	before := refused("acks")
	ws, _, err := g.dialPath("/shell", "mallory")
	require.NoError(t, err)
	const acks = 3000
	for range acks {
		require.NoError(t, ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"ack","seq":1}`)))
	}
	// A frame after them is answered (no terminal: an error), and is the
	// first answer: the acks got none.
	require.NoError(t, ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"input","data":"x"}`)))
	require.NoError(t, ws.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, data, err := ws.ReadMessage()
	require.NoError(t, err)
	require.NotContains(t, string(data), "Rate limit")
	dropped := refused("acks") - before
	t.Logf("%d acks at once: %.0f dropped past the ack rate (%d/s, burst %d)", acks, dropped, acksPerFrame*rate, ackBurstRatio*acksPerFrame*rate)
	require.Greater(t, dropped, float64(acks/2))
}

// TestRESTPaysTheFrameRate: REST requests of a user pay the frame rate
// their sockets share (a request can read a thousand events); past it they
// are answered 429 with the limit named, and another user is not.
func TestRESTPaysTheFrameRate(t *testing.T) {
	const rate = 5
	g := startGateway(t, newStore(t, storetest.Mini), func(c *Config) { c.MaxFrameRate = rate })
	burst := max(frameBurstSeconds*rate, maxSubscribe)
	alice := token(t, "alice", false)
	refused := 0
	var body map[string]any
	for range burst + 20 {
		code, b := httpGet(t, g.ts.URL+"/api/sessions", alice)
		if code == http.StatusTooManyRequests {
			refused++
			body = b
		}
	}
	require.Positive(t, refused)
	require.Equal(t, fmt.Sprintf("Rate limit: at most %d frames per second per user", rate), body["error"])
	code, _ := httpGet(t, g.ts.URL+"/api/sessions", token(t, "bob", false))
	require.Equal(t, http.StatusOK, code)
}

// TestRefusalsCloseTheConnection: a 429 (over the frame rate, the reads
// under way, or the sockets) closes its connection like a 401, so that a
// client refused again and again holds no --max-connections place; an
// answered request keeps its connection.
func TestRefusalsCloseTheConnection(t *testing.T) {
	g := startGateway(t, newStore(t, storetest.Mini), func(c *Config) { c.MaxSocketsPerUser = 1; c.MaxFrameRate = 1 })
	get := func(path, user string) *http.Response {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, g.ts.URL+path, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+token(t, user, false))
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	resp := get("/api/sessions", "alice")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.False(t, resp.Close, "an answer keeps its connection")

	g.dial("alice") // alice's one socket
	for _, path := range []string{"/ws", "/shell", "/plugin-ws/demo"} {
		resp := get(path, "alice")
		require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, path)
		require.True(t, resp.Close, "%s: the connection is closed after the 429", path)
	}

	for range maxReadsPerUser {
		require.True(t, g.srv.quotas.startRead("bob"))
	}
	resp = get("/api/sessions", "bob")
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	require.True(t, resp.Close, "reads under way: the connection is closed after the 429")

	for range max(frameBurstSeconds, maxSubscribe) + 10 { // the burst of a rate of 1, and what refills meanwhile
		if resp = get("/api/auth/user", "carol"); resp.StatusCode != http.StatusOK {
			break
		}
	}
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	require.True(t, resp.Close, "over the rate: the connection is closed after the 429")
}

// TestClientAckGoesNoFurtherThanWritten: an ack past the last chunk
// written to the socket counts as that chunk, so a client cannot switch
// its terminal's flow control off with a huge seq.
func TestClientAckGoesNoFurtherThanWritten(t *testing.T) {
	var sock shellSocket
	require.Zero(t, sock.ackedSeq(1<<62))
	sock.sentSeq.Store(10)
	require.EqualValues(t, 10, sock.ackedSeq(1<<62))
	require.EqualValues(t, 7, sock.ackedSeq(7))
}

func TestUserQuotasSweep(t *testing.T) {
	q := newUserQuotas(2, 10)
	a := q.acquire("alice")
	require.NotNil(t, a)
	require.Same(t, a, q.acquire("alice"), "one quota per user")
	require.Nil(t, q.acquire("alice"), "over the cap")
	require.True(t, a.frames.AllowN(time.Now(), q.burst))
	q.release(a)
	q.release(a)

	now := time.Now()
	q.sweep(now)
	require.Contains(t, q.users, "alice", "kept while its budget refills")
	q.sweep(now.Add(time.Duration(q.burst/q.rate+1) * time.Second))
	require.NotContains(t, q.users, "alice", "dropped once a new one would be the same")
}

// TestRESTEventsBounded: an events response holds at most restEventsBytes
// of events (one at least), a client reads on from its last seq, and a
// user has at most maxReadsPerUser event reads under way on a gateway (a
// client that never reads its responses held a session's history each,
// up to the write timeout); another user is not held back.
func TestRESTEventsBounded(t *testing.T) {
	st := newStore(t, storetest.Real)
	g, w, _, id, ref := startRun(t, st)
	big := strings.Repeat("y", 1<<20)
	for range 10 {
		w.emit(ref, app.Text("assistant", big))
	}
	alice := token(t, "alice", false)
	var after int64
	pages := 0
	for {
		code, body := httpGet(t, fmt.Sprintf("%s/api/sessions/%s/events?after=%d&limit=1000", g.ts.URL, id, after), alice)
		require.Equal(t, http.StatusOK, code)
		evs := body["events"].([]any)
		if len(evs) == 0 {
			break
		}
		size := 0
		for _, e := range evs {
			content, _ := e.(map[string]any)["content"].(string)
			size += len(content)
		}
		require.LessOrEqual(t, size, restEventsBytes, "page %d", pages)
		for _, e := range evs {
			seq := int64(e.(map[string]any)["seq"].(float64))
			require.Equal(t, after+1, seq)
			after = seq
		}
		pages++
	}
	require.EqualValues(t, 12, after, "every event once: the accept's two and ten large")
	require.GreaterOrEqual(t, pages, 3)

	for range maxReadsPerUser {
		require.True(t, g.srv.quotas.startRead("alice"))
	}
	code, body := httpGet(t, g.ts.URL+"/api/sessions/"+id+"/events", alice)
	require.Equal(t, http.StatusTooManyRequests, code)
	require.Contains(t, body["error"], "too many reads")
	g.srv.quotas.endRead("alice")
	code, _ = httpGet(t, g.ts.URL+"/api/sessions/"+id+"/events", alice)
	require.Equal(t, http.StatusOK, code, "a read given back")
}

// TestSessionListsBounded: session lists share the event reads' bound, a
// user's maxReadsPerUser under way at once on a gateway (each reads up to
// a thousand session hashes, and a user could run any number at once);
// each list gives its read back, and another user is not held back.
func TestSessionListsBounded(t *testing.T) {
	g := startGateway(t, newStore(t, storetest.Mini))
	alice := token(t, "alice", false)
	for range maxReadsPerUser {
		require.True(t, g.srv.quotas.startRead("alice"))
	}
	code, body := httpGet(t, g.ts.URL+"/api/sessions", alice)
	require.Equal(t, http.StatusTooManyRequests, code)
	require.Contains(t, body["error"], "too many reads")
	code, _ = httpGet(t, g.ts.URL+"/api/sessions", token(t, "bob", false))
	require.Equal(t, http.StatusOK, code, "another user")
	g.srv.quotas.endRead("alice")
	for i := range maxReadsPerUser {
		code, _ = httpGet(t, g.ts.URL+"/api/sessions", alice)
		require.Equal(t, http.StatusOK, code, "list %d: a read given back each time", i)
	}
}

// TestRESTEventsNotEscaped: stored events go out over REST as stored, not
// HTML-escaped again (each <, > and & six bytes).
func TestRESTEventsNotEscaped(t *testing.T) {
	g, w, _, id, ref := startRun(t, newStore(t, storetest.Mini))
	w.emit(ref, app.Text("assistant", "<b>a & b</b>"))
	req, err := http.NewRequest(http.MethodGet, g.ts.URL+"/api/sessions/"+id+"/events", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token(t, "alice", false))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	require.Contains(t, string(body), `"content":"<b>a & b</b>"`)
}

// TestRESTEventsGapNotRecovered: a page whose events skip seqs (lost in a
// failover or a restart of Redis, or trimmed) is not recovered, even when
// it starts right after the caller's position.
func TestRESTEventsGapNotRecovered(t *testing.T) {
	st, rdb := realStore(t)
	g, w, _, id, ref := startRun(t, st)
	for range 5 {
		w.emit(ref, app.Text("assistant", "x"))
	}
	require.NoError(t, rdb.XDel(context.Background(), fmt.Sprintf("%s:session:{%s}:events", st.Prefix(), id), "5-0").Err())
	alice := token(t, "alice", false)
	for _, tc := range []struct {
		after     int
		recovered bool
	}{{0, false}, {3, false}, {5, true}, {4, false}} {
		code, body := httpGet(t, fmt.Sprintf("%s/api/sessions/%s/events?after=%d", g.ts.URL, id, tc.after), alice)
		require.Equal(t, http.StatusOK, code)
		require.Equal(t, tc.recovered, body["recovered"], "after %d: %v", tc.after, body)
	}
	code, body := httpGet(t, fmt.Sprintf("%s/api/sessions/%s/events?after=0&limit=3", g.ts.URL, id), alice)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, true, body["recovered"], "a page before the gap is whole")
}

// TestRESTEventsAfterLastSeqNotRecovered: a position past the session's
// lastSeq (one from another store, as after an embedded store restarted)
// is not "up to date": the REST page says recovered:false, as the
// socket's check-session-status does for the same lastSeq; the caller's
// own lastSeq is up to date.
func TestRESTEventsAfterLastSeqNotRecovered(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g, w, c, id, ref := startRun(t, st)
	for range 3 {
		w.emit(ref, app.Text("assistant", "x"))
	}
	sess, err := st.Session(context.Background(), id)
	require.NoError(t, err)
	alice := token(t, "alice", false)
	for _, tc := range []struct {
		after     int64
		recovered bool
	}{{sess.LastSeq, true}, {sess.LastSeq + 1, false}, {1000, false}} {
		code, body := httpGet(t, fmt.Sprintf("%s/api/sessions/%s/events?after=%d", g.ts.URL, id, tc.after), alice)
		require.Equal(t, http.StatusOK, code)
		require.Equal(t, tc.recovered, body["recovered"], "after %d of %d: %v", tc.after, sess.LastSeq, body)

		c.send(map[string]any{"type": "check-session-status", "sessionId": id, "lastSeq": tc.after})
		ms := c.until(func(m map[string]any) bool { return m["type"] == "session-status" })
		require.Equal(t, tc.recovered, ms[len(ms)-1]["recovered"], "the socket says the same for lastSeq %d", tc.after)
	}
}

// TestShellFrameWaitBounded: a /shell frame waits for the rate at most
// typedWaitMax; one whose wait would be longer (a user's many sockets all
// over a low rate) is refused as before, with the rate's error, rather
// than hold its socket's reads past its pong wait.
func TestShellFrameWaitBounded(t *testing.T) {
	const rate = 1
	g := startGateway(t, newStore(t, storetest.Mini), func(c *Config) { c.MaxFrameRate = rate })
	burst := max(frameBurstSeconds*rate, maxSubscribe)
	first, _, err := g.dialPath("/shell", "alice")
	require.NoError(t, err)
	for range burst {
		require.NoError(t, first.WriteMessage(websocket.TextMessage, []byte(`{"type":"input","data":"x"}`)))
	}
	require.NoError(t, first.SetReadDeadline(time.Now().Add(10*time.Second)))
	for range burst {
		_, _, err := first.ReadMessage()
		require.NoError(t, err)
	}
	// The budget is spent: a frame waits a second for each one before it.
	const socks = int(typedWaitMax/time.Second) + 3
	answers := make(chan string, socks)
	for range socks {
		ws, _, err := g.dialPath("/shell", "alice")
		require.NoError(t, err)
		go func() {
			_ = ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"input","data":"x"}`))
			_ = ws.SetReadDeadline(time.Now().Add(20 * time.Second))
			var m map[string]any
			if err := ws.ReadJSON(&m); err != nil {
				answers <- err.Error()
				return
			}
			answers <- m["message"].(string)
		}()
	}
	got := map[string]int{}
	for range socks {
		got[<-answers]++
	}
	require.Positive(t, got[app.ShellErrNoTerminal], "%v", got)
	require.Positive(t, got[fmt.Sprintf("Rate limit: at most %d frames per second per user", rate)], "%v", got)
	require.Equal(t, socks, got[app.ShellErrNoTerminal]+got[fmt.Sprintf("Rate limit: at most %d frames per second per user", rate)], "%v", got)
}

// setClock makes the frame rate measured on now; called before any socket.
func (q *userQuotas) setClock(now func() time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.now = now
}

// testClock is a clock that moves only when the test says.
type testClock struct{ ns atomic.Int64 }

func newTestClock() *testClock {
	c := &testClock{}
	c.ns.Store(time.Now().UnixNano())
	return c
}

func (c *testClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *testClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// TestRefusedShellUpgradeWaits: a refused /shell upgrade (an expired or
// forged token here) is answered after refusedShellDelay: Claude Code UI's
// Shell tab opens a new socket as soon as one closes, and without the
// pause a tab with an expired token asked many times a second. The answer
// is still the refusal.
func TestRefusedShellUpgradeWaits(t *testing.T) {
	g := startGateway(t, newStore(t, storetest.Mini))
	url := "ws" + strings.TrimPrefix(g.ts.URL, "http") + "/shell?token=forged"
	start := time.Now()
	_, resp, err := websocket.DefaultDialer.Dial(url, nil)
	require.Error(t, err)
	require.NotNil(t, resp)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.GreaterOrEqual(t, time.Since(start), refusedShellDelay)
}
