package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestTerminalsOfADeadWorkerGiveTheirPlaces: a terminal whose worker died
// while no socket watched it (the tab closed, then the worker killed -9)
// was never ended, and kept one of its owner's --max-terminals-per-user
// places for ever. The owner's next open ends it as lost, with its
// retention, and takes the place.
func TestTerminalsOfADeadWorkerGiveTheirPlaces(t *testing.T) {
	st, rdb := realStore(t)
	ctx := context.Background()
	g := startGateway(t, st, func(c *Config) { c.MaxTerminalsPerUser = 2 })

	// A worker alive when the terminals open, that never runs them and
	// whose heartbeat then goes (deleted here rather than left to a short
	// TTL, which a loaded machine outlasted before the second open).
	require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "doomed", StartedAt: time.Now()}, time.Hour))
	init := func(shellID string) map[string]any {
		ws, _, err := g.dialPath("/shell", "alice")
		require.NoError(t, err)
		defer ws.Close() // the tab closes
		require.NoError(t, ws.SetReadDeadline(time.Now().Add(10*time.Second)))
		require.NoError(t, ws.WriteJSON(map[string]any{"type": "init", "shellId": shellID}))
		var m map[string]any
		require.NoError(t, ws.ReadJSON(&m))
		return m
	}
	for _, id := range []string{"tab1", "tab2"} {
		require.NotEqual(t, "error", init(id)["type"])
	}
	require.NoError(t, rdb.Del(ctx, st.Prefix()+":worker:doomed").Err())
	require.Eventually(t, func() bool {
		alive, err := st.WorkerAlive(ctx, "doomed")
		return err == nil && !alive
	}, 10*time.Second, 100*time.Millisecond)

	require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "healthy", StartedAt: time.Now()}, time.Hour))
	m := init("tab3")
	require.NotEqual(t, "error", m["type"], "%v", m)
	keys, err := rdb.Keys(ctx, st.Prefix()+":shell:{*}").Result()
	require.NoError(t, err)
	ended := 0
	for _, k := range keys {
		if h := rdb.HMGet(ctx, k, "worker", "state").Val(); h[0] == "doomed" {
			require.Equal(t, store.ShellExited, h[1], k)
			require.Positive(t, rdb.TTL(ctx, k).Val(), "an ended terminal expires")
			ended++
		}
	}
	require.Equal(t, 2, ended)
	places, err := rdb.ZRange(ctx, st.Prefix()+":user:{alice}:shells", 0, -1).Result()
	require.NoError(t, err)
	require.Len(t, places, 1)
}

// TestSignalKeyHoldsItsSocket: a socket that types a signal key gets
// nothing of its terminal until the worker answers; then, when the key
// flushed, it skips the chunks stored before the key (counted as written
// for the worker's flow control) and reads on from the stream; when the
// key was kept, or no answer comes, it gets every chunk. Another socket of
// the terminal gets every chunk throughout.
func TestSignalKeyHoldsItsSocket(t *testing.T) {
	st := newStore(t, storetest.Real)
	ctx := context.Background()
	g := startGateway(t, st)
	require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "w1", StartedAt: time.Now()}, time.Hour))
	// The answers below take a few Redis round trips: on a loaded machine
	// more than the 50 ms a hold lasts unanswered, and the socket then got
	// every chunk. Only the hold that is never answered waits it out.
	setHold := func(d time.Duration) {
		g.srv.shells.mu.Lock()
		g.srv.shells.holdMax = d
		g.srv.shells.mu.Unlock()
	}
	setHold(time.Minute)

	open := func() *websocket.Conn {
		ws, _, err := g.dialPath("/shell", "alice")
		require.NoError(t, err)
		require.NoError(t, ws.WriteJSON(map[string]any{"type": "init", "shellId": "tab"}))
		return ws
	}
	typist := open()
	// The worker's side: the open in its inbox, then what the gateway sends.
	inboxAt := "0"
	controls := func(typ string) []store.Control {
		t.Helper()
		var out []store.Control
		require.Eventually(t, func() bool {
			in, err := st.ReadInbox(ctx, "w1", inboxAt, 10*time.Millisecond)
			require.NoError(t, err)
			for _, e := range in {
				inboxAt = e.StreamID
				if e.Control.Type == typ {
					out = append(out, e.Control)
				}
			}
			return len(out) > 0
		}, 10*time.Second, time.Millisecond, typ)
		return out
	}
	opened := controls(store.ControlShellOpen)[0]
	gen, key := opened.Gen, opened.Shell
	watcher := open()
	appendOut := func(data ...string) {
		t.Helper()
		_, err := st.ShellAppend(ctx, key, gen, data)
		require.NoError(t, err)
	}
	// seqs reads output frames with a seq until one carries last.
	seqs := func(ws *websocket.Conn, last int64) []int64 {
		t.Helper()
		var got []int64
		require.NoError(t, ws.SetReadDeadline(time.Now().Add(10*time.Second)))
		for {
			var m map[string]any
			require.NoError(t, ws.ReadJSON(&m))
			if seq, ok := m["seq"].(float64); ok && m["type"] == "output" {
				got = append(got, int64(seq))
				if int64(seq) >= last {
					return got
				}
			}
		}
	}
	input := func(data string) {
		t.Helper()
		require.NoError(t, typist.WriteJSON(map[string]any{"type": "input", "data": data}))
		controls(store.ControlShellInput) // sent, so held
	}

	appendOut("a", "b", "c")
	require.Equal(t, []int64{1, 2, 3}, seqs(typist, 3))
	// The client acks what it rendered: from then on its acks, not the
	// gateway's writes, are what the worker is told.
	require.NoError(t, typist.WriteJSON(map[string]any{"type": "ack", "seq": 3}))

	input("\x03")
	appendOut("d", "e", "f") // stored before the key reached the worker
	require.NoError(t, st.ShellSignal(ctx, key, gen, 6, true))
	appendOut("^C\r\n$ ")
	require.Equal(t, []int64{7}, seqs(typist, 7), "the chunks before a flushing key are skipped")
	acked := int64(0)
	for acked < 6 {
		for _, c := range controls(store.ControlShellAcks) {
			var acks []store.ShellAck
			require.NoError(t, json.Unmarshal(c.Data, &acks))
			for _, a := range acks {
				acked = max(acked, a.Seq)
			}
		}
	}

	input("\x1a")
	appendOut("g", "h")
	require.NoError(t, st.ShellSignal(ctx, key, gen, 9, false))
	appendOut("i")
	require.Equal(t, []int64{8, 9, 10}, seqs(typist, 10), "a key that flushed nothing skips nothing")

	setHold(signalHoldMax)
	input("\x1c") // never answered
	appendOut("j")
	require.Equal(t, []int64{11}, seqs(typist, 11), "the hold ends without an answer")

	require.Equal(t, []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, seqs(watcher, 11), "a socket that typed nothing misses nothing")
}

// TestLoginURLOncePerAnnounce: a login URL announced twice for one
// generation (go-redis wrote the PUBLISH again after a stalled Redis's
// read timeout, and Redis ran both) reaches the socket once; the same URL
// with autoOpen, and another URL, are announcements of their own.
func TestLoginURLOncePerAnnounce(t *testing.T) {
	st := newStore(t, storetest.Real)
	ctx := context.Background()
	g := startGateway(t, st)
	require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "w1", StartedAt: time.Now()}, time.Hour))
	ws, _, err := g.dialPath("/shell", "alice")
	require.NoError(t, err)
	defer ws.Close()
	require.NoError(t, ws.WriteJSON(map[string]any{"type": "init", "shellId": "tab"}))
	var opened *store.Control
	require.Eventually(t, func() bool {
		in, err := st.ReadInbox(ctx, "w1", "0", 10*time.Millisecond)
		require.NoError(t, err)
		for _, e := range in {
			if e.Control.Type == store.ControlShellOpen {
				opened = &e.Control
			}
		}
		return opened != nil
	}, 10*time.Second, time.Millisecond)
	key, gen := opened.Shell, opened.Gen
	// The socket watches once it has the first output.
	_, err = st.ShellAppend(ctx, key, gen, []string{"$ "})
	require.NoError(t, err)
	const login, other = "https://auth.example.com/oauth?code=42", "https://example.com/docs"
	for _, a := range []struct {
		url  string
		auto bool
	}{{login, false}, {login, false}, {login, true}, {login, true}, {other, false}, {login, false}} {
		require.NoError(t, st.ShellAuthURL(ctx, key, gen, a.url, a.auto))
	}
	_, err = st.ShellAppend(ctx, key, gen, []string{"end"})
	require.NoError(t, err)

	var got []string
	require.NoError(t, ws.SetReadDeadline(time.Now().Add(10*time.Second)))
	for {
		var m map[string]any
		require.NoError(t, ws.ReadJSON(&m))
		if m["type"] == "auth_url" {
			got = append(got, fmt.Sprintf("%v %v", m["url"], m["autoOpen"]))
		}
		if m["type"] == "output" && m["data"] == "end" {
			break
		}
	}
	require.Equal(t, []string{login + " false", login + " true", other + " false"}, got)
}

// TestReplayFramesBounded: a catch-up read of a terminal's output keeps at
// most about a MiB of frames, however the chunks escape: 64 chunks of 32
// KiB of control bytes are 64 frames of 192 KiB each.
func TestReplayFramesBounded(t *testing.T) {
	ctrl := strings.Repeat("\x01", 32<<10)
	for _, tc := range []struct {
		name   string
		data   string
		frames int
	}{
		{"control bytes", ctrl, 6},
		{"text", strings.Repeat("a", 32<<10), 32},
		{"small", "ok", 64},
	} {
		t.Run(tc.name, func(t *testing.T) {
			chunks := make([]store.ShellChunk, 64)
			for i := range chunks {
				chunks[i] = store.ShellChunk{Seq: int64(i + 11), Data: tc.data}
			}
			frames := replayFrames(chunks, shellReplayBytes)
			require.Len(t, frames, tc.frames)
			size := 0
			for i, f := range frames {
				require.EqualValues(t, i+11, f.seq)
				size += len(f.frame)
			}
			require.Less(t, size, shellReplayBytes+200<<10)
		})
	}
	require.Len(t, replayFrames([]store.ShellChunk{{Seq: 1, Data: ctrl}}, 1), 1, "one frame at least")
}

// TestTerminalRefusalsAreShown: every init that opens no terminal is
// answered with the error frame and then the same words as a red output
// notice, since Claude Code UI's shell client shows output frames only (it
// drops error frames, and its terminal stayed blank).
func TestTerminalRefusalsAreShown(t *testing.T) {
	st := newStore(t, storetest.Mini)
	// A gateway with no worker alive.
	lone := startGateway(t, st)
	// One with a worker, for the limits.
	busy := startGateway(t, st, func(c *Config) { c.MaxTerminalsPerUser = 1 })

	refusal := func(ws *websocket.Conn, want string) {
		t.Helper()
		require.NoError(t, ws.SetReadDeadline(time.Now().Add(10*time.Second)))
		var m map[string]any
		for m["type"] != "error" {
			m = nil
			require.NoError(t, ws.ReadJSON(&m))
		}
		require.Equal(t, want, m["message"])
		m = nil
		require.NoError(t, ws.ReadJSON(&m))
		require.Equal(t, map[string]any{"type": "output", "data": "\x1b[31m" + want + "\x1b[0m\r\n"}, m,
			"the refusal is also a notice the reference's client shows")
	}
	ws, _, err := lone.dialPath("/shell", "alice")
	require.NoError(t, err)
	for _, tc := range []struct {
		init map[string]any
		want string
	}{
		{map[string]any{"projectPath": "/etc"}, "Invalid project path"},
		{map[string]any{"provider": "bash"}, "Unknown provider: bash"},
		{map[string]any{"sessionId": "a b", "hasSession": true}, "Invalid session ID"},
		{map[string]any{"cols": 0.5}, "Invalid cols: must be a whole number, 1 or more"},
		{map[string]any{}, app.ShellErrNoWorker},
	} {
		tc.init["type"] = "init"
		require.NoError(t, ws.WriteJSON(tc.init))
		refusal(ws, tc.want)
	}

	newFakeWorker(t, st)
	// "one" stays on a socket of its own (attached to, or on its way):
	// it is not ended for "two".
	one, _, err := busy.dialPath("/shell", "alice")
	require.NoError(t, err)
	require.NoError(t, one.WriteJSON(map[string]any{"type": "init", "shellId": "one"}))
	require.NoError(t, one.SetReadDeadline(time.Now().Add(10*time.Second)))
	for {
		var m map[string]any
		require.NoError(t, one.ReadJSON(&m))
		if d, _ := m["data"].(string); strings.Contains(d, "Starting ") {
			break
		}
	}
	ws, _, err = busy.dialPath("/shell", "alice")
	require.NoError(t, err)
	require.NoError(t, ws.WriteJSON(map[string]any{"type": "init", "shellId": "two"}))
	refusal(ws, "Limit reached: at most 1 open terminals per user, and every one is open in a tab; close one of those tabs first")
	// The burst and more than the real clock's refill (one a second) can
	// give while a loaded machine handles them.
	for range restartBurst + 10 {
		require.NoError(t, ws.WriteJSON(map[string]any{"type": "init", "shellId": "one", "forceRestart": true}))
	}
	refusal(ws, restartsLimitText)
}

// TestReattachAfterARestartElsewhere: a socket that reattaches with a
// lastSeq of a generation restarted since (from another tab) gets the new
// terminal from its start, with the restarted notice, not from that seq
// (the new shell's prompt and banner were missing, and nothing said the
// terminal was another). Each generation's first notice names it (gen).
func TestReattachAfterARestartElsewhere(t *testing.T) {
	term := openInboxTerminal(t)
	ctx := context.Background()
	key, gen1 := term.opened.Shell, term.opened.Gen
	// frames reads a socket's output frames until one holds until.
	frames := func(ws *websocket.Conn, until string) []map[string]any {
		t.Helper()
		var out []map[string]any
		require.NoError(t, ws.SetReadDeadline(time.Now().Add(10*time.Second)))
		for {
			var m map[string]any
			require.NoError(t, ws.ReadJSON(&m))
			if m["type"] != "output" {
				continue
			}
			out = append(out, m)
			if strings.Contains(m["data"].(string), until) {
				return out
			}
		}
	}
	_, err := term.st.ShellAppend(ctx, key, gen1, []string{"a1", "a2", "a3"})
	require.NoError(t, err)
	got := frames(term.ws, "a3")
	require.EqualValues(t, gen1, got[0]["gen"], "the welcome names its generation")
	require.NoError(t, term.ws.Close())

	b, _, err := term.g.dialPath("/shell", "alice")
	require.NoError(t, err)
	defer b.Close()
	require.NoError(t, b.WriteJSON(map[string]any{"type": "init", "shellId": "tab", "forceRestart": true}))
	reopened := term.controls(store.ControlShellOpen, func(c []store.Control) bool { return len(c) > 0 })
	gen2 := reopened[0].Gen
	require.Greater(t, gen2, gen1)
	_, err = term.st.ShellAppend(ctx, key, gen2, []string{"b1", "b2", "b3", "b4", "b5"})
	require.NoError(t, err)
	frames(b, "b5")

	// reattach opens another socket of the tab with lastSeq 3 of gen and
	// returns its output frames up to the new terminal's last chunk.
	reattach := func(gen int64) []map[string]any {
		t.Helper()
		ws, _, err := term.g.dialPath("/shell", "alice")
		require.NoError(t, err)
		t.Cleanup(func() { ws.Close() })
		require.NoError(t, ws.WriteJSON(map[string]any{"type": "init", "shellId": "tab", "lastSeq": 3, "lastGen": gen}))
		return frames(ws, "b5")
	}
	got = reattach(gen1)
	require.Contains(t, got[0]["data"], "[Terminal restarted]")
	require.EqualValues(t, gen2, got[0]["gen"])
	require.Equal(t, "b1", got[1]["data"], "from the new terminal's start")
	require.EqualValues(t, 1, got[1]["seq"])

	// The same generation: from after its lastSeq, as before.
	got = reattach(gen2)
	require.Contains(t, got[0]["data"], "[Reconnected to existing session]")
	require.EqualValues(t, gen2, got[0]["gen"])
	require.Equal(t, "b4", got[1]["data"])
}

// TestLastInitTakesTheTerminal: a socket whose init names no shellId
// (Claude Code UI's frontend) takes its terminal from the sockets that did
// so before, on any gateway, as the reference server gives a terminal's
// output to its last init's socket: the frontend, switching sessions
// quickly, leaves its previous socket open and forgotten, and every chunk
// reached the screen twice. The socket taken from stays open, gets nothing
// more and no longer counts as a watcher. Sockets that name a shellId
// share their terminal. An init's size resizes the terminal it reattaches.
func TestLastInitTakesTheTerminal(t *testing.T) {
	st, _ := realStore(t)
	ctx := context.Background()
	gwA, gwB := twoTerminalGateways(t, st)
	open := func(g *gateway, init map[string]any) *websocket.Conn {
		ws, _, err := g.dialPath("/shell", "alice")
		require.NoError(t, err)
		t.Cleanup(func() { ws.Close() })
		init["type"] = "init"
		require.NoError(t, ws.WriteJSON(init))
		return ws
	}
	// output reads output frames until one carries want, and returns their
	// text.
	output := func(ws *websocket.Conn, want string) string {
		t.Helper()
		var text strings.Builder
		require.NoError(t, ws.SetReadDeadline(time.Now().Add(10*time.Second)))
		for !strings.Contains(text.String(), want) {
			var m map[string]any
			require.NoError(t, ws.ReadJSON(&m), "got %q", text.String())
			if d, ok := m["data"].(string); ok && m["type"] == "output" {
				text.WriteString(d)
			}
		}
		return text.String()
	}
	// opened returns the terminal of the worker's open control for a key
	// other than except.
	opened := func(except string) (string, int64) {
		t.Helper()
		var c *store.Control
		require.Eventually(t, func() bool {
			in, err := st.ReadInbox(ctx, "w1", "0", 10*time.Millisecond)
			require.NoError(t, err)
			for _, e := range in {
				if e.Control.Type == store.ControlShellOpen && e.Control.Shell != except {
					c = &e.Control
				}
			}
			return c != nil
		}, 10*time.Second, time.Millisecond)
		return c.Shell, c.Gen
	}
	// resizes returns the resizes of terminal key in the worker's inbox
	// since the last read (each read takes what it returns).
	resizes := func(key string) []store.ShellSize {
		in, err := st.ReadInbox(ctx, "w1", "0", 10*time.Millisecond)
		require.NoError(t, err)
		var sizes []store.ShellSize
		for _, e := range in {
			var size store.ShellSize
			if c := e.Control; c.Type == store.ControlShellResize && c.Shell == key && json.Unmarshal(c.Data, &size) == nil {
				sizes = append(sizes, size)
			}
		}
		return sizes
	}
	attached := func(key string) int {
		info, ok, err := st.Shell(ctx, key)
		require.NoError(t, err)
		require.True(t, ok)
		return info.Attached
	}

	first := open(gwA, map[string]any{"cols": 80, "rows": 24})
	key, gen := opened("")
	_, err := st.ShellAppend(ctx, key, gen, []string{"one "})
	require.NoError(t, err)
	output(first, "one ")
	second := open(gwB, map[string]any{"cols": 80, "rows": 24})
	output(second, "one ")
	require.Eventually(t, func() bool { return attached(key) == 1 }, 10*time.Second, 10*time.Millisecond,
		"the first socket no longer counts as a watcher")
	_, err = st.ShellAppend(ctx, key, gen, []string{"two "})
	require.NoError(t, err)
	require.NotContains(t, output(second, "two "), "one ", "the second socket got its replay once")
	// Typing into the first socket's window is answered with a notice
	// (once for a burst of keys), and nothing of the terminal's output
	// reaches it: a read that finds nothing more ends at its deadline.
	for range 3 {
		require.NoError(t, first.WriteJSON(map[string]any{"type": "input", "data": "x"}))
	}
	notice := output(first, "open in another window")
	require.NotContains(t, notice, "two ", "output after the terminal was taken")
	require.Equal(t, 1, strings.Count(notice, "open in another window"))
	// An init of it that is refused leaves it with no terminal, as any
	// other socket.
	require.NoError(t, first.WriteJSON(map[string]any{"type": "init", "projectPath": "/etc"}))
	output(first, app.ShellErrInvalidPath)
	require.NoError(t, first.WriteJSON(map[string]any{"type": "input", "data": "x"}))
	for {
		var m map[string]any
		require.NoError(t, first.ReadJSON(&m))
		if m["type"] == "error" && m["message"] != app.ShellErrInvalidPath {
			require.Equal(t, app.ShellErrNoTerminal, m["message"])
			break
		}
	}
	require.NoError(t, first.SetReadDeadline(time.Now().Add(300*time.Millisecond)))
	for {
		var m map[string]any
		err := first.ReadJSON(&m)
		if err != nil {
			var ne net.Error
			require.True(t, errors.As(err, &ne) && ne.Timeout(), "the first socket stays open: %v", err)
			break
		}
		require.NotContains(t, fmt.Sprint(m["data"]), "two ", "output after the terminal was taken: %v", m)
		require.NotContains(t, fmt.Sprint(m["data"]), "another window", "a notice per key: %v", m)
	}

	// An init from a window of another size resizes the terminal it
	// reattaches (its client sent its resizes before it, to no terminal).
	third := open(gwA, map[string]any{"cols": 120, "rows": 40})
	output(third, "two ")
	require.Eventually(t, func() bool {
		return slices.Contains(resizes(key), store.ShellSize{Cols: 120, Rows: 40})
	}, 10*time.Second, 10*time.Millisecond, "the reattach resized the terminal")

	// With a shellId both sockets follow their terminal.
	tabA := open(gwA, map[string]any{"shellId": "tab", "cols": 200, "rows": 50})
	key, gen = opened(key)
	tabB := open(gwB, map[string]any{"shellId": "tab"})
	output(tabB, "[Reconnected")
	_, err = st.ShellAppend(ctx, key, gen, []string{"shared "})
	require.NoError(t, err)
	output(tabA, "shared ")
	output(tabB, "shared ")
	// An init that gives no size leaves the terminal's alone (it would
	// have been 80x24, the size of a new terminal): the resize the second
	// tab sends after it is the first to reach the worker.
	require.NoError(t, tabB.WriteJSON(map[string]any{"type": "resize", "cols": 100, "rows": 30}))
	var sizes []store.ShellSize
	require.Eventually(t, func() bool {
		sizes = append(sizes, resizes(key)...)
		return len(sizes) > 0 && sizes[len(sizes)-1] == store.ShellSize{Cols: 100, Rows: 30}
	}, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, []store.ShellSize{{Cols: 100, Rows: 30}}, sizes, "the resizes the worker got")
}

// shellOpened waits for the open control a gateway sent worker w1, and
// returns its terminal.
func shellOpened(t *testing.T, st *store.Store) (key string, gen int64) {
	t.Helper()
	require.Eventually(t, func() bool {
		in, err := st.ReadInbox(context.Background(), "w1", "0", 10*time.Millisecond)
		require.NoError(t, err)
		for _, e := range in {
			if e.Control.Type == store.ControlShellOpen {
				key, gen = e.Control.Shell, e.Control.Gen
			}
		}
		return key != ""
	}, 10*time.Second, time.Millisecond)
	return key, gen
}

// twoTerminalGateways starts two gateways on st with one workspace, and
// a worker w1 that only has a heartbeat: its inbox holds what the gateways
// sent it.
func twoTerminalGateways(t *testing.T, st *store.Store) (a, b *gateway) {
	a = startGateway(t, st)
	b = startGateway(t, st, func(c *Config) { c.Workspaces = app.Workspaces{Roots: []string{a.dir}} })
	require.NoError(t, st.Heartbeat(context.Background(), store.WorkerInfo{ID: "w1", StartedAt: time.Now()}, time.Hour))
	return a, b
}

// TestClaimsCloseTogetherLeaveOne: two sockets of Claude Code UI's
// frontend (inits without shellId) that take a terminal at about the same
// time, on two gateways, leave it to exactly one of them. A socket's claim
// is made a few round trips after it joins the terminal, so each heard
// the other's claim while it waited for its own; when claims were ordered
// by when each gateway heard them, both gave the terminal up (18 rounds of
// 20): a Shell tab that showed nothing.
func TestClaimsCloseTogetherLeaveOne(t *testing.T) {
	st, rdb := realStore(t)
	ctx := context.Background()
	gwA, gwB := twoTerminalGateways(t, st)
	dial := func(g *gateway) *websocket.Conn {
		ws, _, err := g.dialPath("/shell", "alice")
		require.NoError(t, err)
		t.Cleanup(func() { ws.Close() })
		return ws
	}
	initMsg := map[string]any{"type": "init", "cols": 80, "rows": 24}
	// gets reports whether ws gets an output frame carrying want within d;
	// a socket is read to a deadline once only (gorilla's reads end then).
	gets := func(ws *websocket.Conn, want string, d time.Duration) bool {
		_ = ws.SetReadDeadline(time.Now().Add(d))
		var text strings.Builder
		for !strings.Contains(text.String(), want) {
			var m map[string]any
			if err := ws.ReadJSON(&m); err != nil {
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					t.Errorf("read: %v", err)
				}
				return false
			}
			if d, ok := m["data"].(string); ok && m["type"] == "output" {
				text.WriteString(d)
			}
		}
		return true
	}
	first := dial(gwA)
	require.NoError(t, first.WriteJSON(initMsg))
	key, gen := shellOpened(t, st)
	_, err := st.ShellAppend(ctx, key, gen, []string{"start "})
	require.NoError(t, err)
	require.True(t, gets(first, "start ", 10*time.Second))
	first.Close()
	psub := rdb.PSubscribe(ctx, "*:shell:{"+key+"}:live")
	t.Cleanup(func() { psub.Close() })
	_, err = psub.Receive(ctx)
	require.NoError(t, err)
	live := psub.Channel()

	// claimsOf waits for n claims on the terminal's channel.
	claimsOf := func(n int) []*redis.Message {
		var claims []*redis.Message
		for len(claims) < n {
			select {
			case m := <-live:
				if strings.HasPrefix(m.Payload, "t ") {
					claims = append(claims, m)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("%d claims published, not %d", len(claims), n)
			}
		}
		return claims
	}
	for round := range 11 {
		// The last round on one gateway, where the earlier claim is
		// heard again after the later one: it takes nothing.
		again := round == 10
		a, b := dial(gwA), dial(gwB)
		if again {
			b = dial(gwA)
		}
		errs := make(chan error, 2)
		for _, ws := range []*websocket.Conn{a, b} {
			go func() { errs <- ws.WriteJSON(initMsg) }()
		}
		require.NoError(t, <-errs)
		require.NoError(t, <-errs)
		// Both claims are published (each after its socket joined the
		// terminal), and heard: one watcher is left.
		claims := claimsOf(2)
		if again {
			require.NoError(t, rdb.Publish(ctx, claims[0].Channel, claims[0].Payload).Err())
			claimsOf(1)
		}
		require.Eventually(t, func() bool {
			info, ok, err := st.Shell(ctx, key)
			require.NoError(t, err)
			return ok && info.Attached == 1
		}, 10*time.Second, 10*time.Millisecond, "round %d: one socket follows the terminal", round)
		mark := fmt.Sprintf("mark-%d ", round)
		_, err := st.ShellAppend(ctx, key, gen, []string{mark})
		require.NoError(t, err)
		// Both read at once; once one has the output, the other has
		// 300 ms more.
		got := make(chan bool, 2)
		for i, ws := range []*websocket.Conn{a, b} {
			other := []*websocket.Conn{b, a}[i]
			go func() {
				ok := gets(ws, mark, 10*time.Second)
				if ok {
					_ = other.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
				}
				got <- ok
			}()
		}
		n := 0
		for range 2 {
			if <-got {
				n++
			}
		}
		require.Equal(t, 1, n, "round %d: sockets that got the output", round)
		a.Close()
		b.Close()
		require.Eventually(t, func() bool {
			info, ok, err := st.Shell(ctx, key)
			require.NoError(t, err)
			return ok && info.Attached == 0
		}, 10*time.Second, 10*time.Millisecond)
	}

	// A claim of an earlier generation of the terminal (published just
	// before another tab restarted it) is a claim all the same.
	last := dial(gwA)
	require.NoError(t, last.WriteJSON(initMsg))
	claimsOf(1)
	require.Eventually(t, func() bool {
		info, ok, err := st.Shell(ctx, key)
		require.NoError(t, err)
		return ok && info.Attached == 1
	}, 10*time.Second, 10*time.Millisecond)
	_, err = st.ShellTaken(ctx, key, gen-1)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, ok, err := st.Shell(ctx, key)
		require.NoError(t, err)
		return ok && info.Attached == 0
	}, 10*time.Second, 10*time.Millisecond, "the socket gave the terminal to the later claim")
}

// TestClaimOrder: a claimed watch gives its terminal up to claims of
// higher numbers only, whether it hears them (or a refresh reads them)
// before or after Redis numbered its own. A watch that shares its terminal
// is never ended.
func TestClaimOrder(t *testing.T) {
	type step struct {
		op string // "heard", "read" (by a refresh) or "numbered" (Redis's answer)
		n  int64
	}
	for _, tc := range []struct {
		name  string
		steps []step
		ended bool
	}{
		{"a higher claim heard before its number", []step{{"heard", 5}, {"numbered", 4}}, true},
		{"a lower claim heard before its number", []step{{"heard", 3}, {"numbered", 4}}, false},
		{"its own claim heard before its number", []step{{"heard", 4}, {"numbered", 4}}, false},
		{"its own claim, and an earlier one heard late", []step{{"numbered", 4}, {"heard", 4}, {"heard", 2}}, false},
		{"a higher claim heard after its number", []step{{"numbered", 4}, {"heard", 5}}, true},
		{"a higher claim read by a refresh", []step{{"numbered", 4}, {"read", 6}}, true},
		{"its own claim read by a refresh", []step{{"numbered", 4}, {"read", 4}}, false},
		{"a claim heard on its way", []step{{"heard", 9}, {"read", 9}}, false},
		{"its claim run late by a stalled Redis, then made again", []step{{"heard", 4}, {"numbered", 5}, {"read", 5}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := newStore(t, storetest.Mini)
			log := slog.New(slog.DiscardHandler)
			tm := newTerminals(newHub(st, log, nil, nil), st, log, app.Workspaces{}, 0)
			f := &feed{key: "k1", kind: tm.kind, gen: 1, watches: map[*watch]struct{}{}, term: &termFeed{}}
			claimed := &watch{f: f, sock: &shellSocket{}, claim: claimPending}
			claimed.sock.w = claimed
			shared := &watch{f: f, sock: &shellSocket{}}
			f.watches[claimed], f.watches[shared] = struct{}{}, struct{}{}
			f.mu.Lock()
			for _, s := range tc.steps {
				switch s.op {
				case "heard", "read":
					tm.claimedLocked(f, s.n)
				case "numbered":
					tm.numberedLocked(claimed, s.n)
				}
			}
			ended, sharedEnded := claimed.done, shared.done
			f.mu.Unlock()
			require.Equal(t, tc.ended, ended, "the claimed watch ended")
			require.False(t, sharedEnded, "the shared watch ended")
			if ended {
				require.Eventually(t, func() bool {
					claimed.sock.mu.Lock()
					defer claimed.sock.mu.Unlock()
					return claimed.sock.taken
				}, 5*time.Second, time.Millisecond, "its socket is told its terminal was taken")
			}
		})
	}
}

// TestRefreshHearsAMissedClaim: a claim made while a gateway's
// subscription was away (a Redis restart, a failover) is read by its next
// refresh of the terminal, and the socket it was taken from gets nothing
// more; the socket's own claim, read back the same way, takes nothing.
func TestRefreshHearsAMissedClaim(t *testing.T) {
	st, rdb := realStore(t)
	ctx := context.Background()
	// A refresh every 250 ms.
	g := startGateway(t, st, func(c *Config) { c.ShellDetachTimeout = time.Second })
	require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "w1", StartedAt: time.Now()}, time.Hour))
	ws, _, err := g.dialPath("/shell", "alice")
	require.NoError(t, err)
	defer ws.Close()
	require.NoError(t, ws.WriteJSON(map[string]any{"type": "init", "cols": 80, "rows": 24}))
	key, gen := shellOpened(t, st)
	hash := st.Prefix() + ":shell:{" + key + "}"
	require.Eventually(t, func() bool {
		n, err := rdb.HGet(ctx, hash, "claims").Int()
		return err == nil && n == 1
	}, 10*time.Second, 10*time.Millisecond, "the socket's claim is made")
	attached := func() int {
		info, ok, err := st.Shell(ctx, key)
		require.NoError(t, err)
		require.True(t, ok)
		return info.Attached
	}
	require.Never(t, func() bool { return attached() != 1 }, time.Second, 50*time.Millisecond,
		"refreshes that read the socket's own claim take the terminal from it")
	// A claim of another socket, on a gateway that published it while
	// this one did not listen: counted, never heard.
	require.NoError(t, rdb.HIncrBy(ctx, hash, "claims", 1).Err())
	require.Eventually(t, func() bool { return attached() == 0 }, 10*time.Second, 10*time.Millisecond,
		"the socket no longer counts as a watcher")
	_, err = st.ShellAppend(ctx, key, gen, []string{"after "})
	require.NoError(t, err)
	require.NoError(t, ws.WriteJSON(map[string]any{"type": "input", "data": "x"}))
	require.NoError(t, ws.SetReadDeadline(time.Now().Add(10*time.Second)))
	var text strings.Builder
	for !strings.Contains(text.String(), "open in another window") {
		var m map[string]any
		require.NoError(t, ws.ReadJSON(&m), "got %q", text.String())
		if d, ok := m["data"].(string); ok && m["type"] == "output" {
			text.WriteString(d)
		}
	}
	require.NotContains(t, text.String(), "after ", "output after the terminal was taken")
}

// TestShellResumesTheCLIsConversation: Claude Code UI's Shell tab, on a
// Codex or Cursor chat, asks to resume the id of the session it shows,
// which is agentgate's (session_created); the terminal resumes the id the
// CLI gave that conversation, starts the CLI afresh when it gave none yet,
// and resumes any other id (the CLI's own, another user's session's) as it
// is.
func TestShellResumesTheCLIsConversation(t *testing.T) {
	st, rdb := realStore(t)
	ctx := context.Background()
	g := startGateway(t, st)
	require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "w1", StartedAt: time.Now()}, time.Hour))
	session := func(id, owner string, provider app.Provider, providerID string) {
		require.NoError(t, rdb.HSet(ctx, st.Prefix()+":session:{"+id+"}", "id", id, "owner", owner,
			"provider", string(provider), "providerSessionId", providerID, "state", "completed").Err())
	}
	const (
		codexS   = "11111111-1111-4111-8111-111111111111"
		codexT   = "019a0000-aaaa-7bbb-8ccc-000000000001"
		cursorS  = "22222222-2222-4222-8222-222222222222"
		cursorT  = "33333333-3333-4333-8333-333333333333"
		fresh    = "44444444-4444-4444-8444-444444444444"
		bobs     = "55555555-5555-4555-8555-555555555555"
		outsider = "019a0000-aaaa-7bbb-8ccc-000000000002"
	)
	session(codexS, "alice", app.Codex, codexT)
	session(cursorS, "alice", app.Cursor, cursorT)
	session(fresh, "alice", app.Codex, "")
	session(bobs, "bob", app.Codex, "019a0000-aaaa-7bbb-8ccc-000000000003")
	for _, tc := range []struct {
		provider   app.Provider
		id         string
		resumed    string // "" for none
		commandHas string
	}{
		{app.Codex, codexS, codexT, `resume -- "` + codexT + `"`},
		{app.Cursor, cursorS, cursorT, `--resume="` + cursorT + `"`},
		{app.Codex, fresh, "", "codex"},
		{app.Codex, bobs, bobs, `resume -- "` + bobs + `"`},
		{app.Codex, outsider, outsider, `resume -- "` + outsider + `"`},
	} {
		ws, _, err := g.dialPath("/shell", "alice")
		require.NoError(t, err)
		require.NoError(t, ws.WriteJSON(map[string]any{"type": "init", "provider": string(tc.provider),
			"sessionId": tc.id, "hasSession": true, "cols": 80, "rows": 24}))
		var spec app.ShellSpec
		require.Eventually(t, func() bool {
			in, err := st.ReadInbox(ctx, "w1", "0", 10*time.Millisecond)
			require.NoError(t, err)
			for _, e := range in {
				if e.Control.Type == store.ControlShellOpen {
					require.NoError(t, json.Unmarshal(e.Control.Data, &spec))
				}
			}
			return spec.Owner != ""
		}, 10*time.Second, time.Millisecond, tc.id)
		require.Equal(t, tc.resumed, spec.SessionID, tc.id)
		require.Equal(t, tc.resumed != "", spec.HasSession, tc.id)
		require.Contains(t, spec.Command(nil), tc.commandHas, tc.id)
		ws.Close()
	}
}

// TestClaimMadeAgainAfterAStall: a claim a stalled Redis did not answer
// in time is made again until Redis answers, and the watch keeps the
// number of the one answered; the stalled one, which Redis runs when it
// comes back, is an earlier claim and takes nothing from it. (A watch
// whose claim went unanswered used to give the terminal up to the next
// claim heard, which was that one, its own: no socket got the output.)
func TestClaimMadeAgainAfterAStall(t *testing.T) {
	srv := storetest.StartServer(t)
	st := storetest.New(t, srv.URL)
	ctx := context.Background()
	gen, ok, err := st.ShellOpen(ctx, "k1", 0, "w1", "bash", app.ShellSpec{Owner: "alice", Cols: 80, Rows: 24}, store.ShellLimit{})
	require.NoError(t, err)
	require.True(t, ok)
	log := slog.New(slog.DiscardHandler)
	tm := newTerminals(newHub(st, log, nil, nil), st, log, app.Workspaces{}, 0)
	f := &feed{key: "k1", kind: tm.kind, gen: gen, watches: map[*watch]struct{}{}, term: &termFeed{}}
	w := &watch{f: f, sock: &shellSocket{}, claim: claimPending}
	f.watches[w] = struct{}{}

	srv.Pause(t)
	stalled, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	tm.claim(stalled, w, "k1", gen)
	f.mu.Lock()
	require.Equal(t, int64(claimPending), w.claim, "no number while Redis does not answer")
	f.mu.Unlock()
	srv.Resume(t)

	var claim int64
	require.Eventually(t, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		claim = w.claim
		return claim != claimPending
	}, 15*time.Second, 10*time.Millisecond, "the claim is made again")
	last, err := st.ShellRefresh(ctx, "k1", gen)
	require.NoError(t, err)
	require.Equal(t, last, claim, "the watch holds the last claim Redis numbered")
	f.mu.Lock()
	defer f.mu.Unlock()
	for n := int64(1); n <= last; n++ {
		tm.claimedLocked(f, n) // every claim Redis ran, the stalled one too
	}
	require.False(t, w.done, "the watch gave its terminal up to its own claims")
}

// TestInitDuringASignalHold: a socket that inits another terminal while
// its output is held for a signal key (typed, not answered yet) gets the
// new terminal's output: the old hold ends with its watch. Its timer ended
// it later, and threw away the new terminal's first chunks, whose seqs
// were at most the old one's last flushed seq.
func TestInitDuringASignalHold(t *testing.T) {
	term := openInboxTerminal(t)
	term.g.srv.shells.mu.Lock()
	term.g.srv.shells.holdMax = 2 * time.Second
	term.g.srv.shells.mu.Unlock()
	ctx := context.Background()
	key, gen := term.opened.Shell, term.opened.Gen
	seqs := func(last int64) []int64 {
		t.Helper()
		var got []int64
		require.NoError(t, term.ws.SetReadDeadline(time.Now().Add(10*time.Second)))
		for {
			var m map[string]any
			require.NoError(t, term.ws.ReadJSON(&m), "seqs so far %v", got)
			if seq, ok := m["seq"].(float64); ok && m["type"] == "output" {
				got = append(got, int64(seq))
				if int64(seq) >= last {
					return got
				}
			}
		}
	}
	_, err := term.st.ShellAppend(ctx, key, gen, []string{"a", "b", "c"})
	require.NoError(t, err)
	require.Equal(t, []int64{1, 2, 3}, seqs(3))
	// A Ctrl-C that flushed seqs 4 to 6.
	require.NoError(t, term.ws.WriteJSON(map[string]any{"type": "input", "data": "\x03"}))
	term.typed("\x03")
	_, err = term.st.ShellAppend(ctx, key, gen, []string{"d", "e", "f"})
	require.NoError(t, err)
	require.NoError(t, term.st.ShellSignal(ctx, key, gen, 6, true))
	_, err = term.st.ShellAppend(ctx, key, gen, []string{"^C"})
	require.NoError(t, err)
	require.Equal(t, []int64{7}, seqs(7))

	// Another, not answered, and an init of another terminal at once.
	require.NoError(t, term.ws.WriteJSON(map[string]any{"type": "input", "data": "\x03"}))
	term.typed("\x03")
	require.NoError(t, term.ws.WriteJSON(map[string]any{"type": "init", "shellId": "other"}))
	opened := term.controls(store.ControlShellOpen, func(c []store.Control) bool { return len(c) > 0 })
	_, err = term.st.ShellAppend(ctx, opened[0].Shell, opened[0].Gen, []string{"1", "2", "3", "4", "5", "6"})
	require.NoError(t, err)
	require.Equal(t, []int64{1, 2, 3, 4, 5, 6}, seqs(6))
}
