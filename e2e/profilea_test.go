package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/internal/mockanthropic"
)

// The tests in this file drive agentgate with refClient, a client that
// behaves like Claude Code UI's own frontend at commit afc717e6
// (github.com/siteboon/claudecodeui), the "Profile A" client of the
// reference. It opens /ws without any delivery parameter and never sends a
// lastSeq, so agentgate paces its frames.

// coalesceWindow is how close two frames must arrive for refClient to lose
// the first: src/contexts/WebSocketContext.tsx keeps only the latest frame
// (setLatestMessage) and src/components/chat/hooks/useChatRealtimeHandlers.ts
// handles it in an effect, after React rendered; a frame that arrives before
// that render replaces the one before it unseen. The frames that issue 8
// saw lost arrived 0-2 ms after another; the window is wider, and still
// well under the gateway's 50 ms of quiet, so that a loaded test machine's
// scheduling delays do not count as losses.
const coalesceWindow = 10 * time.Millisecond

// pendingSessionID is PENDING_SESSION_ID of src/hooks/useSessionProtection.ts:
// the processing-map key of a new conversation until session_created.
const pendingSessionID = "__pending_session__"

// activity is a processing-map entry (SessionActivity of
// useSessionProtection.ts).
type activity struct {
	statusText   string
	canInterrupt bool
	startedAt    time.Time
}

// stamped is a frame and when refClient read it, in ms since it connected.
type stamped struct {
	raw []byte
	ms  float64
}

// refClient keeps the state the reference frontend keeps, changed only by
// the frames it handles: the processing map, the current session id (the
// URL /session/ID), pending permission requests, the messages of each
// session, and the project list.
type refClient struct {
	t    *testing.T
	name string
	url  string

	mu         sync.Mutex
	ws         *websocket.Conn
	opened     time.Time
	processing map[string]activity
	current    string // currentSessionId; the URL once navigated
	pending    []map[string]any
	messages   map[string][]map[string]any
	projects   []any
	handled    []map[string]any // every frame it acted on, in order
	wire       []stamped        // every frame read, handled or not
	statusSent map[string]time.Time
	serverIDs  map[string]map[any]bool // ids of the messages read from the history route, by session
	stalls     [][2]float64            // when this process did not run (watchStalls), in ms
	done       chan struct{}
}

func dialRef(t *testing.T, name, url string) *refClient {
	t.Helper()
	r := &refClient{t: t, name: name, url: url, processing: map[string]activity{},
		messages: map[string][]map[string]any{}, statusSent: map[string]time.Time{}, serverIDs: map[string]map[any]bool{}}
	r.connect()
	t.Cleanup(func() { r.close() })
	return r
}

func (r *refClient) connect() {
	r.t.Helper()
	ws, resp, err := dialer.Dial(r.url, nil)
	if resp != nil {
		resp.Body.Close()
	}
	require.NoError(r.t, err, "dial %s", r.name)
	r.mu.Lock()
	r.ws, r.opened, r.done, r.stalls = ws, time.Now(), make(chan struct{}), nil
	r.mu.Unlock()
	frames := make(chan stamped, 1024)
	go r.read(ws, frames)
	go r.render(frames)
	go r.watchStalls(r.done)
}

// stallMin is the shortest pause of this process that watchStalls records:
// longer than the gateway's pace interval less coalesceWindow, so that two
// frames it spaced may be read together after it.
const stallMin = 30 * time.Millisecond

// watchStalls records when this test process did not run for stallMin or
// more (a loaded machine, -race, a collection). Frames the gateway spaced
// are read together after such a pause, as a browser whose page was busy
// would take them; that is the client's doing, not the gateway's pacing,
// and render does not count it as a lost frame.
func (r *refClient) watchStalls(done <-chan struct{}) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		now := time.Now()
		if now.Sub(last) >= stallMin {
			r.mu.Lock()
			r.stalls = append(r.stalls, [2]float64{r.sinceOpened(last), r.sinceOpened(now)})
			r.mu.Unlock()
		}
		last = now
	}
}

// sinceOpened is t in ms since the socket opened; r.mu is held.
func (r *refClient) sinceOpened(t time.Time) float64 {
	return float64(t.Sub(r.opened).Microseconds()) / 1000
}

// stalledBefore reports whether this process paused (watchStalls) just
// before the frames read from ms to next.
func (r *refClient) stalledBefore(ms, next float64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, st := range r.stalls {
		// The ticker may run only after the reader once the pause ends.
		if st[1] >= ms-stallMin.Seconds()*1000 && st[0] <= next {
			return true
		}
	}
	return false
}

func (r *refClient) close() {
	r.mu.Lock()
	ws, done := r.ws, r.done
	r.mu.Unlock()
	_ = ws.Close()
	<-done
}

// read is the socket's onmessage: it only records the frame.
func (r *refClient) read(ws *websocket.Conn, out chan<- stamped) {
	defer close(out)
	for {
		_, data, err := ws.ReadMessage()
		if err != nil {
			return
		}
		r.mu.Lock()
		f := stamped{raw: data, ms: r.sinceOpened(time.Now())}
		r.wire = append(r.wire, f)
		r.mu.Unlock()
		out <- f
	}
}

// render plays React: a frame followed within coalesceWindow by another is
// replaced by it (setLatestMessage); only the last of such a run reaches
// the effect (handle). Arrival times decide, as the reader took them, so
// that this goroutine's own delays do not.
func (r *refClient) render(in <-chan stamped) {
	defer close(r.done)
	window := float64(coalesceWindow.Microseconds()) / 1000
	cur, ok := <-in
	for ok {
		r.mu.Lock()
		wait := time.Until(r.opened.Add(time.Duration((cur.ms + window) * float64(time.Millisecond))))
		r.mu.Unlock()
		var next stamped
		select {
		case next, ok = <-in: // a frame already read decides by its time
		default:
			select {
			case next, ok = <-in:
			case <-time.After(wait):
				r.handle(cur)
				cur, ok = <-in
				continue
			}
		}
		if ok && next.ms-cur.ms < window && r.stalledBefore(cur.ms, next.ms) {
			r.t.Logf("[%s] %8.1f ms read late (this process paused), taken as seen", r.name, cur.ms)
			r.handle(cur)
		} else if ok && next.ms-cur.ms < window {
			r.t.Logf("[%s] %8.1f ms LOST %s", r.name, cur.ms, truncate(string(cur.raw), 120))
		} else {
			r.handle(cur)
		}
		cur = next
	}
}

// handle is the effect of useChatRealtimeHandlers.ts (and, for
// projects_updated and loading_progress, of src/hooks/useProjectsState.ts).
func (r *refClient) handle(f stamped) {
	var msg map[string]any
	if json.Unmarshal(f.raw, &msg) != nil {
		return
	}
	r.t.Logf("[%s] %8.1f ms seen %s", r.name, f.ms, truncate(string(f.raw), 120))
	str := func(k string) string { s, _ := msg[k].(string); return s }
	r.mu.Lock()
	defer r.mu.Unlock()
	r.handled = append(r.handled, msg)
	kind := str("kind")
	if kind == "" {
		switch str("type") {
		case "pending-permissions-response":
			if sid := str("sessionId"); sid != "" && sid != r.current {
				return
			}
			data, _ := msg["data"].([]any)
			r.pending = nil
			for _, d := range data {
				r.pending = append(r.pending, d.(map[string]any))
			}
		case "session-status":
			sid := str("sessionId")
			if sid == "" {
				return
			}
			if st, ok := msg["status"].(map[string]any); ok {
				text, _ := st["text"].(string)
				r.markProcessing(sid, &text, st["can_interrupt"] != false)
				return
			}
			if msg["isProcessing"] == true {
				r.markProcessing(sid, nil, true)
				return
			}
			sent, ok := r.statusSent[sid]
			r.markIdle(sid, sent, ok)
		case "projects_updated":
			// useProjectsState replaces its list with the message's.
			projects, ok := msg["projects"].([]any)
			require.True(r.t, ok, "projects_updated without a projects list breaks the reference's sidebar: %s", f.raw)
			r.projects = projects
		}
		return
	}
	sid := str("sessionId")
	if sid == "" {
		sid = r.current
	}
	switch kind {
	case "session_created", "complete", "status", "permission_request", "permission_cancelled":
	default:
		// useSessionStore.ts computeMerged: a live message whose id the
		// history held is dropped.
		if !r.serverIDs[sid][msg["id"]] {
			r.messages[sid] = append(r.messages[sid], msg)
		}
	}
	switch kind {
	case "session_created":
		id := str("newSessionId")
		if id == "" {
			return
		}
		if r.current == "" {
			r.current = id // setCurrentSessionId + onNavigateToSession
		}
		r.markIdle(pendingSessionID, time.Time{}, false)
		r.markProcessing(id, nil, true)
	case "complete":
		r.markIdle(sid, time.Time{}, false)
		r.markIdle(pendingSessionID, time.Time{}, false)
		r.pending = nil
	case "permission_request":
		if str("requestId") == "" {
			return
		}
		for _, p := range r.pending {
			if p["requestId"] == msg["requestId"] {
				return
			}
		}
		r.pending = append(r.pending, map[string]any{"requestId": msg["requestId"], "toolName": msg["toolName"], "sessionId": sid})
		if sid == "" {
			sid = pendingSessionID
		}
		r.markProcessing(sid, nil, true)
	case "permission_cancelled":
		kept := r.pending[:0]
		for _, p := range r.pending {
			if p["requestId"] != msg["requestId"] {
				kept = append(kept, p)
			}
		}
		r.pending = kept
	case "status":
		if text := str("text"); text != "" && text != "token_budget" {
			if sid == "" {
				sid = pendingSessionID
			}
			r.markProcessing(sid, &text, msg["canInterrupt"] != false)
		}
	}
}

// markProcessing is markSessionProcessing: it keeps the first startedAt.
// r.mu must be held.
func (r *refClient) markProcessing(sid string, statusText *string, canInterrupt bool) {
	if sid == "" {
		return
	}
	a, ok := r.processing[sid]
	if !ok {
		a.startedAt = time.Now()
	}
	if statusText != nil {
		a.statusText = *statusText
	}
	a.canInterrupt = canInterrupt
	r.processing[sid] = a
}

// markIdle is markSessionIdle with its ifStartedBefore guard: an idle reply
// to a check sent before the entry started does not clear it. r.mu must be
// held.
func (r *refClient) markIdle(sid string, ifStartedBefore time.Time, guarded bool) {
	a, ok := r.processing[sid]
	if !ok {
		return
	}
	if guarded && !a.startedAt.Before(ifStartedBefore) {
		return
	}
	delete(r.processing, sid)
}

func (r *refClient) sendJSON(v any) {
	r.t.Helper()
	b, err := json.Marshal(v)
	require.NoError(r.t, err)
	r.mu.Lock()
	ws := r.ws
	r.mu.Unlock()
	r.t.Logf("[%s ->] %s", r.name, truncate(string(b), 200))
	require.NoError(r.t, ws.WriteMessage(websocket.TextMessage, b))
}

// send is the composer's submit (useChatComposerState.ts): the session is
// marked processing at once, under PENDING for a new conversation.
func (r *refClient) send(prompt, projectPath string, toolsSettings map[string]any) {
	r.t.Helper()
	r.mu.Lock()
	sid := r.current
	key := sid
	if key == "" {
		key = pendingSessionID
	}
	r.markProcessing(key, nil, true)
	r.mu.Unlock()
	opts := map[string]any{"projectPath": projectPath, "cwd": projectPath, "toolsSettings": toolsSettings,
		"permissionMode": "default", "resume": sid != ""}
	msg := map[string]any{"type": "claude-command", "command": prompt, "options": opts}
	if sid != "" {
		opts["sessionId"] = sid
	}
	r.sendJSON(msg)
}

// abort is the Stop button: it needs the concrete session id.
func (r *refClient) abort() {
	r.t.Helper()
	sid := r.sessionID()
	require.NotEmpty(r.t, sid, "Abort requested but no concrete session ID is available yet")
	r.sendJSON(map[string]any{"type": "abort-session", "sessionId": sid, "provider": "claude"})
}

// reload drops the page: a new socket, nothing kept but the URL's session
// id; then what useChatSessionState.ts (check-session-status, without
// lastSeq) and AppContent.tsx (get-pending-permissions) send for it.
func (r *refClient) reload() {
	r.t.Helper()
	r.close()
	r.mu.Lock()
	sid := r.current
	r.processing = map[string]activity{}
	r.pending = nil
	r.handled = nil
	r.mu.Unlock()
	r.connect()
	// ChatInterface.tsx handleWebSocketReconnect: the history first
	// (refreshFromServer: it replaces the messages), then the check.
	history := r.history(sid)
	r.mu.Lock()
	ids := map[any]bool{}
	for _, m := range history {
		ids[m["id"]] = true
	}
	r.messages[sid], r.serverIDs[sid] = history, ids
	r.statusSent[sid] = time.Now()
	r.mu.Unlock()
	r.sendJSON(map[string]any{"type": "check-session-status", "sessionId": sid, "provider": "claude"})
	r.sendJSON(map[string]any{"type": "get-pending-permissions", "sessionId": sid})
}

// history reads a session's messages as useSessionStore.ts
// refreshFromServer does: GET /api/providers/sessions/ID/messages, no limit.
func (r *refClient) history(sid string) []map[string]any {
	r.t.Helper()
	u, err := url.Parse(r.url)
	require.NoError(r.t, err)
	req, err := http.NewRequest(http.MethodGet, "http://"+u.Host+"/api/providers/sessions/"+url.PathEscape(sid)+"/messages", nil)
	require.NoError(r.t, err)
	req.Header.Set("Authorization", "Bearer "+u.Query().Get("token"))
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	require.NoError(r.t, err)
	defer resp.Body.Close()
	require.Equal(r.t, http.StatusOK, resp.StatusCode)
	var body struct {
		Messages []map[string]any `json:"messages"`
	}
	require.NoError(r.t, json.NewDecoder(resp.Body).Decode(&body))
	return body.Messages
}

// answer is a click on the permission banner: the request leaves the list.
func (r *refClient) answer(requestID string, allow bool) {
	r.t.Helper()
	r.mu.Lock()
	kept := r.pending[:0]
	for _, p := range r.pending {
		if p["requestId"] != requestID {
			kept = append(kept, p)
		}
	}
	r.pending = kept
	r.mu.Unlock()
	r.sendJSON(map[string]any{"type": "claude-permission-response", "requestId": requestID, "allow": allow})
}

func (r *refClient) sessionID() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.current
}

// busy reports whether the activity indicator of the current view is on.
func (r *refClient) busy() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, a := r.processing[r.current]
	_, b := r.processing[pendingSessionID]
	return a || b
}

func (r *refClient) idle() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.processing) == 0
}

// texts are the assistant texts shown in the current session.
func (r *refClient) texts() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, m := range r.messages[r.current] {
		if m["kind"] == "text" && m["role"] == "assistant" {
			out = append(out, fmt.Sprint(m["content"]))
		}
	}
	return out
}

// handledKinds counts the frames of kind (or type) the client acted on.
func (r *refClient) handledKinds(name string) []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []map[string]any
	for _, m := range r.handled {
		if m["kind"] == name || (m["kind"] == nil && m["type"] == name) {
			out = append(out, m)
		}
	}
	return out
}

// wireKinds counts the frames of a kind on the wire, handled or not.
func (r *refClient) wireKinds(kind string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, f := range r.wire {
		if strings.Contains(string(f.raw), `"kind":"`+kind+`"`) {
			n++
		}
	}
	return n
}

func (r *refClient) pendingRequests() []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]map[string]any(nil), r.pending...)
}

func (r *refClient) projectList() []any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]any(nil), r.projects...)
}

// refURL is how the reference frontend opens /ws: no delivery parameter.
func (c *cluster) refURL(gw *proc, user string) string {
	return "ws://" + gw.addr + "/ws?token=" + c.token(user)
}

// TestReferenceFrontendHello: a new chat's answer is shown, the URL becomes
// /session/ID, and the indicator goes off, with exactly one complete.
func TestReferenceFrontendHello(t *testing.T) {
	t.Parallel()
	cl := newCluster(t, "", mockanthropic.Turn{When: "ref-hello", Text: "Hello from the mock"})
	gw := cl.startGateway("gw1")
	cl.startWorker("worker1")
	r := dialRef(t, "ref", cl.refURL(gw, "alice"))
	r.send("ref-hello", cl.project, map[string]any{})
	require.True(t, r.busy(), "the indicator is on from the send")
	eventually(t, 60*time.Second, "the answer shown and the indicator off", func() bool {
		return r.sessionID() != "" && r.idle() && len(r.texts()) > 0
	})
	require.Equal(t, []string{"Hello from the mock"}, r.texts())
	require.Len(t, r.handledKinds("session_created"), 1, "session_created seen: the URL became /session/ID")
	require.Len(t, r.handledKinds("complete"), 1)
	require.Equal(t, 1, r.wireKinds("complete"))
}

// TestReferenceFrontendRefusedCommand: a command refused before any run
// (here no worker is alive, then a project path outside the workspaces)
// ends the reference frontend's busy state and shows why; before, it
// dropped the kind-less error reply and its indicator stayed on for good.
func TestReferenceFrontendRefusedCommand(t *testing.T) {
	t.Parallel()
	cl := newCluster(t, "")
	gw := cl.startGateway("gw1")
	r := dialRef(t, "ref", cl.refURL(gw, "alice"))
	r.send("ref-refused", cl.project, map[string]any{})
	require.True(t, r.busy(), "the indicator is on from the send")
	eventually(t, 30*time.Second, "the indicator off", r.idle)
	require.Len(t, r.handledKinds("complete"), 1)
	// The rows it shows (kind "error"), not the kind-less reply it drops.
	rows := func() []any {
		var out []any
		for _, m := range r.handledKinds("error") {
			if m["kind"] == "error" {
				out = append(out, m["content"])
			}
		}
		return out
	}
	require.Len(t, rows(), 1)
	require.Contains(t, rows()[0], "No worker available")

	cl.startWorker("worker1")
	r.send("ref-refused", "/etc", map[string]any{})
	eventually(t, 30*time.Second, "the indicator off again", func() bool {
		return r.idle() && len(r.handledKinds("complete")) == 2
	})
	require.Len(t, rows(), 2)
	require.Contains(t, rows()[1], "Invalid project path")
}

// TestReferenceFrontendStop: Stop during a slow run aborts it by the id
// session_created gave; one complete{aborted:true}, the indicator off.
func TestReferenceFrontendStop(t *testing.T) {
	t.Parallel()
	cl := newCluster(t, "", longRun("ref-stop", 5, 300*time.Millisecond)...)
	gw := cl.startGateway("gw1")
	cl.startWorker("worker1")
	r := dialRef(t, "ref", cl.refURL(gw, "alice"))
	r.send("ref-stop", cl.project, map[string]any{"allowedTools": []string{"Bash"}})
	eventually(t, 60*time.Second, "session_created seen and the run under way", func() bool {
		return r.sessionID() != "" && r.busy() && len(r.texts()) > 0
	})
	r.abort()
	eventually(t, 30*time.Second, "the indicator off", r.idle)
	completes := r.handledKinds("complete")
	require.Len(t, completes, 1)
	require.Equal(t, true, completes[0]["aborted"])
	time.Sleep(time.Second)
	require.Equal(t, 1, r.wireKinds("complete"), "one complete on the wire")
	require.True(t, r.idle())
}

// TestReloadMidRun: a reload mid-run brings the indicator back (session-status
// without lastSeq), shows the rest of the answer, and ends idle.
func TestReferenceFrontendReload(t *testing.T) {
	t.Parallel()
	cl := newCluster(t, "", longRun("ref-reload", 4, 250*time.Millisecond)...)
	gw := cl.startGateway("gw1")
	cl.startWorker("worker1")
	r := dialRef(t, "ref", cl.refURL(gw, "alice"))
	r.send("ref-reload", cl.project, map[string]any{"allowedTools": []string{"Bash"}})
	eventually(t, 60*time.Second, "the first step shown", func() bool { return len(r.texts()) > 0 })
	sid := r.sessionID()
	require.NotEmpty(t, sid)
	r.reload()
	eventually(t, 15*time.Second, "the indicator back after the reload", func() bool {
		return len(r.handledKinds("session-status")) == 1 && r.busy()
	})
	eventually(t, 60*time.Second, "the end of the answer and the indicator off", func() bool {
		return r.idle() && len(r.handledKinds("complete")) == 1
	})
	texts := r.texts()
	require.Equal(t, "Finished ref-reload.", texts[len(texts)-1], "the rest of the answer is shown: %v", texts)
	require.Equal(t, sid, r.sessionID())
	seen := map[string]bool{}
	for _, text := range texts {
		require.False(t, seen[text], "%q shown twice: %v", text, texts)
		seen[text] = true
	}
	require.True(t, seen["Step 1 of ref-reload."] && seen["Step 4 of ref-reload."], "every step shown: %v", texts)

	// After a reload the frontend shows the chat as this route gives it
	// (and drops the prompt it had sent): the question with its answer.
	code, body := restGet(t, gw, "/api/providers/sessions/"+sid+"/messages?limit=50&offset=0", cl.token("alice"))
	require.Equal(t, http.StatusOK, code, body)
	var history struct {
		Messages []map[string]any `json:"messages"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &history))
	require.NotEmpty(t, history.Messages)
	first, last := history.Messages[0], history.Messages[len(history.Messages)-1]
	require.Equal(t, "user", first["role"], "the user's prompt first: %s", body)
	require.Equal(t, "ref-reload", first["content"])
	require.Equal(t, "Finished ref-reload.", last["content"])
}

// TestReferenceFrontendPermission: a tool permission answered Allow; the run
// finishes and the indicator goes off.
func TestReferenceFrontendPermission(t *testing.T) {
	t.Parallel()
	cl := newCluster(t, "",
		mockanthropic.Turn{When: "ref-perm", ToolUses: []mockanthropic.ToolUse{{ID: "toolu_ref", Name: "Bash",
			Input: map[string]any{"command": "touch allowed", "description": "Create allowed"}}}},
		mockanthropic.Turn{When: "ref-perm", Text: "done"},
	)
	gw := cl.startGateway("gw1")
	cl.startWorker("worker1")
	r := dialRef(t, "ref", cl.refURL(gw, "alice"))
	r.send("ref-perm", cl.project, map[string]any{})
	eventually(t, 60*time.Second, "the permission prompt shown", func() bool { return len(r.pendingRequests()) == 1 })
	req := r.pendingRequests()[0]
	require.Equal(t, "Bash", req["toolName"])
	require.True(t, r.busy())
	r.answer(req["requestId"].(string), true)
	eventually(t, 60*time.Second, "the run finished and the indicator off", func() bool {
		return r.idle() && len(r.handledKinds("complete")) == 1
	})
	require.Equal(t, []string{"done"}, r.texts())
	require.Empty(t, r.pendingRequests())
	_, err := os.Stat(filepath.Join(cl.project, "allowed"))
	require.NoError(t, err, "the allowed tool ran")
}

// TestReferenceFrontendProjects: a projects service beside agentgate sets
// alice's project list through POST /api/broadcast; bob's run, and the
// worker's session-folder watcher that sees it, never touch her list nor
// reach her socket; bob hears of his own session only.
func TestReferenceFrontendProjects(t *testing.T) {
	t.Parallel()
	cl := newCluster(t, "", mockanthropic.Turn{When: "ref-bob", Text: "Hi bob"})
	gw := cl.startGateway("gw1")
	p := startProc(t, "worker1", append(cl.workerEnv(), "AGENTGATE_WATCH_INTERVAL=200ms"), "worker")
	cl.waitWorker(p)
	alice := dialRef(t, "alice", cl.refURL(gw, "alice"))
	bob := dialRef(t, "bob", cl.refURL(gw, "bob"))

	admin := adminToken(t)
	list := `[{"projectId":"p1","name":"demo","displayName":"Demo","fullPath":"/srv/demo","sessions":[]}]`
	status, body := restPost(t, gw.addr, "/api/broadcast", admin, `{"user":"alice","frame":{"type":"projects_updated","projects":`+list+`}}`)
	require.Equal(t, 202, status, body)
	eventually(t, 10*time.Second, "alice's list set", func() bool { return len(alice.projectList()) == 1 })

	bob.send("ref-bob", cl.project, map[string]any{})
	eventually(t, 60*time.Second, "bob's run done", func() bool { return bob.idle() && len(bob.texts()) > 0 })
	sid := bob.sessionID()
	eventually(t, 10*time.Second, "bob told of his session by the watcher", func() bool {
		for _, m := range bob.handledKinds("sessions_updated") {
			if strings.Contains(fmt.Sprint(m["updatedSessionIds"]), sid) {
				return true
			}
		}
		return false
	})
	require.Equal(t, "Demo", alice.projectList()[0].(map[string]any)["displayName"], "alice's list is untouched")
	alice.mu.Lock()
	defer alice.mu.Unlock()
	require.Len(t, alice.wire, 1, "alice's socket got nothing but her own projects_updated")
	require.Empty(t, bob.projectList(), "no projects_updated reached bob")
}

func adminToken(t *testing.T) string {
	t.Helper()
	cmd := exec.Command(agentgateBin, "token", "--user", "ops", "--admin", "--jwt-secret", jwtSecret)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	out, err := cmd.Output()
	require.NoError(t, err, "agentgate token --admin")
	return strings.TrimSpace(string(out))
}

func restPost(t *testing.T, addr, path, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// tinyPNG is a 1x1 PNG as a data URL, as the reference's composer sends it.
const tinyPNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="

// TestImagesReachTheCLI: an image sent with a command reaches the real CLI:
// its path is at the end of the prompt the model gets, its folder is one of
// the CLI's directories (--add-dir), and the folder is gone after the run.
func TestImagesReachTheCLI(t *testing.T) {
	t.Parallel()
	cl := newCluster(t, "", mockanthropic.Turn{When: "look-at-image", Text: "A pixel"})
	gw := cl.startGateway("gw1")
	cl.startWorker("worker1")
	c := cl.dial(gw, "alice")
	cmd := cl.command("look-at-image", "", "r1")
	cmd["options"].(map[string]any)["images"] = []any{map[string]any{"data": tinyPNG}}
	c.send(cmd)
	sid := c.waitReply("session-accepted", nil).str("sessionId")
	sum := checkRun(t, c.waitEnd(sid, 1, 60*time.Second), 1)
	requireComplete(t, sum.completes[0], 0, true, false)

	reqs := cl.mock.Requests()
	require.NotEmpty(t, reqs)
	prompt := reqs[len(reqs)-1].PromptText
	_, list, ok := strings.Cut(prompt, "[Images provided at the following paths:]")
	require.True(t, ok, "the prompt lists the images: %q", prompt)
	path := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(list), "1."))
	path = strings.Fields(path)[0]
	require.Equal(t, ".png", filepath.Ext(path), "prompt: %q", prompt)
	dir := filepath.Dir(path)
	// The CLI describes its environment to the model, --add-dir folders
	// included.
	body := string(reqs[len(reqs)-1].Body)
	require.Contains(t, body, `Additional working directories:\n  - `+dir+`\n`, "the folder is passed with --add-dir")
	_, err := os.Stat(dir)
	require.True(t, os.IsNotExist(err), "the images' folder is removed after the run: %v", err)
}
