package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"
)

// frame is one frame a client received.
type frame struct {
	raw []byte
	m   map[string]any
}

func (f frame) str(key string) string { s, _ := f.m[key].(string); return s }

// isEvent reports whether the frame is a session event (kind, never type).
func (f frame) isEvent() bool { _, ok := f.m["kind"]; return ok }

// event is a decoded session event.
type event struct {
	Seq       int64
	RunID     string
	SessionID string
	Kind      string
	M         map[string]any
	Raw       string
}

func (e event) str(key string) string { s, _ := e.M[key].(string); return s }

func (e event) boolean(key string) (bool, bool) { b, ok := e.M[key].(bool); return b, ok }

// wsClient is a real WebSocket client of /ws that records every frame.
type wsClient struct {
	t    *testing.T
	name string
	ws   *websocket.Conn

	mu      sync.Mutex
	frames  []frame
	readErr error
	notify  chan struct{}
	done    chan struct{} // closed when the reader stopped
}

var dialer = websocket.Dialer{HandshakeTimeout: 5 * time.Second}

// dialWS connects to url and starts recording frames; the socket is closed
// at cleanup.
func dialWS(t *testing.T, name, url string) *wsClient {
	t.Helper()
	ws, resp, err := dialer.Dial(url, nil)
	if resp != nil {
		resp.Body.Close()
	}
	require.NoError(t, err, "dial %s", name)
	return adoptWS(t, name, ws)
}

// adoptWS makes a wsClient of an open socket.
func adoptWS(t *testing.T, name string, ws *websocket.Conn) *wsClient {
	t.Helper()
	c := &wsClient{t: t, name: name, ws: ws, notify: make(chan struct{}, 1), done: make(chan struct{})}
	go c.read()
	t.Cleanup(func() {
		_ = c.ws.Close()
		<-c.done
	})
	return c
}

// dialStatus tries to open a socket and returns the HTTP status of the
// refused handshake (or 101 when it was upgraded).
func dialStatus(t *testing.T, url string, header http.Header) int {
	t.Helper()
	ws, resp, err := dialer.Dial(url, header)
	if err == nil {
		ws.Close()
		return http.StatusSwitchingProtocols
	}
	require.ErrorIs(t, err, websocket.ErrBadHandshake)
	require.NotNil(t, resp)
	resp.Body.Close()
	return resp.StatusCode
}

func (c *wsClient) read() {
	defer close(c.done)
	for {
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			c.mu.Lock()
			c.readErr = err
			c.mu.Unlock()
			c.signal()
			return
		}
		f := frame{raw: data}
		if err := json.Unmarshal(data, &f.m); err != nil {
			f.m = map[string]any{"unparsable": string(data)}
		}
		c.t.Logf("[%s <-] %s", c.name, truncate(string(data), 300))
		c.mu.Lock()
		c.frames = append(c.frames, f)
		c.mu.Unlock()
		c.signal()
	}
}

func (c *wsClient) signal() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// send writes one JSON frame.
func (c *wsClient) send(v any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	require.NoError(c.t, err)
	c.t.Logf("[%s ->] %s", c.name, truncate(string(b), 300))
	require.NoError(c.t, c.ws.WriteMessage(websocket.TextMessage, b), "%s: send", c.name)
}

// snapshot returns a copy of the frames so far and the read error if the
// socket is closed.
func (c *wsClient) snapshot() ([]frame, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]frame(nil), c.frames...), c.readErr
}

// waitFor waits until cond holds on the frames received so far. It fails
// the test at timeout, or at once if the socket closed without cond holding.
func (c *wsClient) waitFor(timeout time.Duration, what string, cond func([]frame) bool) []frame {
	c.t.Helper()
	deadline := time.After(timeout)
	for {
		frames, err := c.snapshot()
		if cond(frames) {
			return frames
		}
		if err != nil {
			c.t.Fatalf("%s: socket closed (%v) while waiting for %s", c.name, err, what)
		}
		select {
		case <-c.notify:
		case <-deadline:
			c.t.Fatalf("%s: timed out after %s waiting for %s", c.name, timeout, what)
		}
	}
}

// waitReply waits for a reply frame of type typ (and matching pred) and
// returns it.
func (c *wsClient) waitReply(typ string, pred func(frame) bool) frame {
	c.t.Helper()
	return c.waitReplyFrom(0, typ, pred)
}

// mark is the number of frames received so far, for waitReplyFrom.
func (c *wsClient) mark() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.frames)
}

// waitReplyFrom is waitReply among the frames received after mark.
func (c *wsClient) waitReplyFrom(mark int, typ string, pred func(frame) bool) frame {
	c.t.Helper()
	var got frame
	c.waitFor(15*time.Second, "a "+typ+" reply", func(fs []frame) bool {
		for _, f := range fs[mark:] {
			if f.str("type") == typ && (pred == nil || pred(f)) {
				got = f
				return true
			}
		}
		return false
	})
	return got
}

// events returns the session events of sessionID received so far, in
// arrival order.
func (c *wsClient) events(sessionID string) []event {
	fs, _ := c.snapshot()
	return eventsOf(c.t, fs, sessionID)
}

func eventsOf(t *testing.T, fs []frame, sessionID string) []event {
	t.Helper()
	var out []event
	for _, f := range fs {
		if !f.isEvent() || f.str("sessionId") != sessionID {
			continue
		}
		seq, ok := f.m["seq"].(float64)
		require.True(t, ok, "session event without a numeric seq: %s", f.raw)
		out = append(out, event{
			Seq: int64(seq), RunID: f.str("runId"), SessionID: f.str("sessionId"), Kind: f.str("kind"),
			M: f.m, Raw: string(f.raw),
		})
	}
	return out
}

// waitEvent waits for an event of sessionID matching pred and returns the
// events received so far.
func (c *wsClient) waitEvent(sessionID, what string, timeout time.Duration, pred func(event) bool) []event {
	c.t.Helper()
	fs := c.waitFor(timeout, what, func(fs []frame) bool {
		for _, e := range eventsOf(c.t, fs, sessionID) {
			if pred(e) {
				return true
			}
		}
		return false
	})
	return eventsOf(c.t, fs, sessionID)
}

// waitEnd waits until the session's events hold n completes, each right
// after its terminal session-state-changed, and returns the events.
func (c *wsClient) waitEnd(sessionID string, n int, timeout time.Duration) []event {
	c.t.Helper()
	fs := c.waitFor(timeout, fmt.Sprintf("%d complete(s) of %s", n, sessionID), func(fs []frame) bool {
		evs := eventsOf(c.t, fs, sessionID)
		count := 0
		for i, e := range evs {
			if e.Kind == "complete" && i > 0 && isTerminal(evs[i-1]) {
				count++
			}
		}
		return count >= n
	})
	return eventsOf(c.t, fs, sessionID)
}

// waitEndOrClose waits until the session's events hold a complete right
// after its terminal session-state-changed, or the socket is closed; it
// returns the read error of a closed socket, nil for an end.
func (c *wsClient) waitEndOrClose(sessionID string, timeout time.Duration) error {
	c.t.Helper()
	deadline := time.After(timeout)
	for {
		frames, err := c.snapshot()
		evs := eventsOf(c.t, frames, sessionID)
		for i, e := range evs {
			if e.Kind == "complete" && i > 0 && isTerminal(evs[i-1]) {
				return nil
			}
		}
		if err != nil {
			return err
		}
		select {
		case <-c.notify:
		case <-deadline:
			c.t.Fatalf("%s: neither ended nor closed after %s", c.name, timeout)
		}
	}
}

// waitClosed waits for the socket to be closed by the other side and
// returns the read error (a *websocket.CloseError for a close frame).
func (c *wsClient) waitClosed(timeout time.Duration) error {
	c.t.Helper()
	select {
	case <-c.done:
	case <-time.After(timeout):
		c.t.Fatalf("%s: socket still open after %s", c.name, timeout)
	}
	_, err := c.snapshot()
	return err
}

// drop closes the TCP connection without a close frame, like a client whose
// network went away.
func (c *wsClient) drop() {
	c.t.Logf("[%s] dropping the connection", c.name)
	_ = c.ws.UnderlyingConn().Close()
	<-c.done
}

// closeCode returns the close code of a read error, or -1.
func closeCode(err error) int {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return -1
}

func isTerminal(e event) bool {
	if e.Kind != "session-state-changed" {
		return false
	}
	switch e.str("state") {
	case "completed", "failed", "aborted":
		return true
	}
	return false
}

func lastSeq(evs []event) int64 {
	if len(evs) == 0 {
		return 0
	}
	return evs[len(evs)-1].Seq
}

// runSummary is what checkRun found.
type runSummary struct {
	// completes are the complete events, in order.
	completes []event
	// terminals are the terminal session-state-changed events, in order.
	terminals []event
	last      int64
}

// checkRun is the check every test makes on the events one socket received
// for one session: seq from..N with no gap and no duplicate, in order, every
// event with the envelope (runId, sessionId, kind, no type); exactly one
// complete per runId, the run's last event, right after its terminal
// session-state-changed (PROTOCOL §3.3); runs do not interleave.
func checkRun(t *testing.T, evs []event, from int64) runSummary {
	t.Helper()
	require.NotEmpty(t, evs, "no session events")
	var sum runSummary
	seen := map[string]bool{}
	completes := map[string]int{}
	terminals := map[string]int{}
	ended := map[string]bool{}
	current := ""
	for i, e := range evs {
		require.Equal(t, from+int64(i), e.Seq, "event %d has seq %d, want %d (gap, duplicate or disorder): %s\nall seqs: %v", i, e.Seq, from+int64(i), e.Raw, seqs(evs))
		require.NotEmpty(t, e.RunID, "event without runId: %s", e.Raw)
		require.NotEmpty(t, e.Kind, "event without kind: %s", e.Raw)
		require.NotContains(t, e.M, "type", "a session event carries no type: %s", e.Raw)
		for _, f := range []string{"id", "sessionId", "timestamp", "provider"} {
			require.NotEmpty(t, e.str(f), "event without %s: %s", f, e.Raw)
		}
		if e.Kind == "session-state-changed" {
			require.NotEmpty(t, e.str("state"), e.Raw)
			for _, f := range []string{"changedAt", "startedAt"} {
				_, ok := e.M[f].(float64)
				require.True(t, ok, "session-state-changed without a numeric %s: %s", f, e.Raw)
			}
		}
		if e.RunID != current {
			require.False(t, seen[e.RunID], "run %s resumes after another run started: %s", e.RunID, e.Raw)
			if current != "" {
				require.True(t, ended[current], "run %s interleaves with run %s before its end: %s", e.RunID, current, e.Raw)
			}
			current = e.RunID
			seen[e.RunID] = true
		}
		require.False(t, ended[e.RunID], "event of run %s after its complete: %s", e.RunID, e.Raw)
		if isTerminal(e) {
			terminals[e.RunID]++
			require.Equal(t, 1, terminals[e.RunID], "second terminal state of run %s: %s", e.RunID, e.Raw)
			require.Less(t, i+1, len(evs), "a terminal session-state-changed is not followed by complete: %s", e.Raw)
			next := evs[i+1]
			require.Equal(t, "complete", next.Kind, "the terminal session-state-changed must be followed by complete, got %s", next.Raw)
			require.Equal(t, e.RunID, next.RunID, "complete of another run: %s", next.Raw)
			sum.terminals = append(sum.terminals, e)
		}
		if e.Kind == "complete" {
			completes[e.RunID]++
			require.Equal(t, e.SessionID, e.str("actualSessionId"), "complete.actualSessionId: %s", e.Raw)
			require.Equal(t, 1, completes[e.RunID], "second complete of run %s: %s", e.RunID, e.Raw)
			require.Equal(t, 1, terminals[e.RunID], "complete without a terminal state right before it: %s", e.Raw)
			ended[e.RunID] = true
			sum.completes = append(sum.completes, e)
		}
	}
	for run := range seen {
		require.Equal(t, 1, completes[run], "run %s has %d completes", run, completes[run])
	}
	sum.last = lastSeq(evs)
	return sum
}

func seqs(evs []event) []int64 {
	out := make([]int64, len(evs))
	for i, e := range evs {
		out[i] = e.Seq
	}
	return out
}

// kinds lists the kinds of evs, for messages.
func kinds(evs []event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "%d:%s ", e.Seq, e.Kind)
	}
	return b.String()
}

func countKind(evs []event, kind string) int {
	n := 0
	for _, e := range evs {
		if e.Kind == kind {
			n++
		}
	}
	return n
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// requireComplete checks the fields of a complete event.
func requireComplete(t *testing.T, e event, exitCode int, success, aborted bool) {
	t.Helper()
	require.Equal(t, "complete", e.Kind)
	code, ok := e.M["exitCode"].(float64)
	require.True(t, ok, "exitCode must be a number: %s", e.Raw)
	require.Equal(t, float64(exitCode), code, "exitCode: %s", e.Raw)
	s, ok := e.boolean("success")
	require.True(t, ok, "success must be a bool: %s", e.Raw)
	require.Equal(t, success, s, "success: %s", e.Raw)
	a, ok := e.boolean("aborted")
	require.True(t, ok, "aborted must be a bool: %s", e.Raw)
	require.Equal(t, aborted, a, "aborted: %s", e.Raw)
}
