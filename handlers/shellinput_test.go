package handlers

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// inboxTerminal is a terminal of alice's opened on a gateway whose one
// worker (w1, which has no link) is played by the test: what the gateway
// sends the terminal is read from the worker's inbox.
type inboxTerminal struct {
	t    *testing.T
	st   *store.Store
	g    *gateway
	ws   *websocket.Conn
	spec app.ShellSpec
	// opened is the worker's shell-open control (the terminal's key and
	// generation).
	opened store.Control
	at     string // the inbox's last entry read
}

func openInboxTerminal(t *testing.T, opts ...gatewayOpt) *inboxTerminal {
	return openInboxTerminalWith(t, map[string]any{"type": "init", "shellId": "tab"}, opts...)
}

func openInboxTerminalWith(t *testing.T, init map[string]any, opts ...gatewayOpt) *inboxTerminal {
	t.Helper()
	st := newStore(t, storetest.Real)
	g := startGateway(t, st, opts...)
	require.NoError(t, st.Heartbeat(context.Background(), store.WorkerInfo{ID: "w1", StartedAt: time.Now()}, time.Hour))
	ws, _, err := g.dialPath("/shell", "alice")
	require.NoError(t, err)
	require.NoError(t, ws.WriteJSON(init))
	term := &inboxTerminal{t: t, st: st, g: g, ws: ws, at: "0"}
	opened := term.controls(store.ControlShellOpen, func(c []store.Control) bool { return len(c) > 0 })
	term.opened = opened[0]
	require.NoError(t, json.Unmarshal(opened[0].Data, &term.spec))
	return term
}

// controls reads the inbox's controls of type typ until done says it has
// them all (10 s at most).
func (term *inboxTerminal) controls(typ string, done func([]store.Control) bool) []store.Control {
	term.t.Helper()
	var out []store.Control
	deadline := time.Now().Add(20 * time.Second)
	for !done(out) {
		require.True(term.t, time.Now().Before(deadline), "%d %s controls within 20 s", len(out), typ)
		in, err := term.st.ReadInbox(context.Background(), "w1", term.at, 10*time.Millisecond)
		require.NoError(term.t, err)
		for _, e := range in {
			term.at = e.StreamID
			if e.Control.Type == typ {
				out = append(out, e.Control)
			}
		}
	}
	return out
}

// typed reads the input controls until their data ends with last, and
// returns the data of each.
func (term *inboxTerminal) typed(last string) []string {
	term.t.Helper()
	var pieces []string
	term.controls(store.ControlShellInput, func(cs []store.Control) bool {
		for _, c := range cs[len(pieces):] {
			var s string
			require.NoError(term.t, json.Unmarshal(c.Data, &s))
			pieces = append(pieces, s)
		}
		return len(pieces) > 0 && strings.HasSuffix(pieces[len(pieces)-1], last)
	})
	return pieces
}

// errorFrames reads what the socket was sent until it is quiet for quiet,
// and returns its error frames. The socket cannot be read after it.
func errorFrames(t *testing.T, ws *websocket.Conn, quiet time.Duration) []string {
	t.Helper()
	var errs []string
	for {
		require.NoError(t, ws.SetReadDeadline(time.Now().Add(quiet)))
		_, data, err := ws.ReadMessage()
		if err != nil {
			return errs
		}
		if strings.Contains(string(data), `"type":"error"`) {
			errs = append(errs, string(data))
		}
	}
}

// TestInputAfterExitHasNoTerminal: input after the terminal's exit is
// answered "No terminal: send init first", not as if another window had
// taken the terminal.
func TestInputAfterExitHasNoTerminal(t *testing.T) {
	term := openInboxTerminal(t)
	_, err := term.st.ShellExit(context.Background(), term.opened.Shell, term.opened.Gen, 0, "", "exit")
	require.NoError(t, err)
	require.NoError(t, term.ws.SetReadDeadline(time.Now().Add(10*time.Second)))
	for {
		var m map[string]any
		require.NoError(t, term.ws.ReadJSON(&m))
		if m["type"] == "exit" {
			break
		}
	}
	require.NoError(t, term.ws.WriteJSON(map[string]any{"type": "input", "data": "x"}))
	var m map[string]any
	require.NoError(t, term.ws.ReadJSON(&m))
	require.Equal(t, map[string]any{"type": "error", "message": app.ShellErrNoTerminal}, m)
}

// TestTypingOverTheRateIsNotLost: keystrokes over the user's frame rate
// wait for it instead of being dropped. Claude Code UI's terminal shows
// no error frame, and a trackpad scrolling a program that has the mouse
// (less, vim) sends a frame per wheel event: before, a burst past the
// rate lost its tail silently (300 frames and then a line into `cat >
// file` stored 200 of them and not the line). Every byte reaches the
// worker, in order, and the socket is sent no rate-limit error. A user
// waiting for the rate does not hold another user back.
func TestTypingOverTheRateIsNotLost(t *testing.T) {
	term := openInboxTerminal(t, func(c *Config) { c.MaxFrameRate = 50 })
	burst := max(frameBurstSeconds*50, maxSubscribe)
	var want strings.Builder
	for i := range burst + 100 {
		s := fmt.Sprintf("%d,", i)
		want.WriteString(s)
		require.NoError(t, term.ws.WriteJSON(map[string]any{"type": "input", "data": s}))
	}
	require.NoError(t, term.ws.WriteJSON(map[string]any{"type": "input", "data": "IMPORTANT\r"}))
	want.WriteString("IMPORTANT\r")
	require.Equal(t, want.String(), strings.Join(term.typed("IMPORTANT\r"), ""))
	require.Empty(t, errorFrames(t, term.ws, 300*time.Millisecond))

	// Alice floods again, past her budget: her frames wait. Bob, typing
	// meanwhile, is answered before her flood is through.
	for i := range burst {
		require.NoError(t, term.ws.WriteJSON(map[string]any{"type": "input", "data": fmt.Sprintf("again-%d,", i)}))
	}
	require.NoError(t, term.ws.WriteJSON(map[string]any{"type": "input", "data": "LAST\r"}))
	bob, _, err := term.g.dialPath("/shell", "bob")
	require.NoError(t, err)
	require.NoError(t, bob.WriteJSON(map[string]any{"type": "input", "data": "x"}))
	require.NoError(t, bob.SetReadDeadline(time.Now().Add(10*time.Second)))
	var m map[string]any
	require.NoError(t, bob.ReadJSON(&m))
	require.Equal(t, app.ShellErrNoTerminal, m["message"])
	for after := term.at; ; {
		in, err := term.st.PeekInbox(context.Background(), "w1", after, time.Millisecond)
		require.NoError(t, err)
		if len(in) == 0 {
			break
		}
		for _, e := range in {
			require.NotContains(t, string(e.Control.Data), "LAST", "bob was answered only after alice's flood")
			after = e.StreamID
		}
	}
	pieces := term.typed("LAST\r")
	require.True(t, strings.HasPrefix(strings.Join(pieces, ""), "again-0,again-1,"), "in order")
}

// TestLargePasteArrivesWhole: Claude Code UI sends a paste as one input
// frame, however large. One past the worker path's bound of a control
// (app.MaxShellInput) was refused with "Input too large", an error frame
// that client does not show, and one past 1 MiB closed the socket with
// 1009. An input frame is split into pieces within the bound, cut between
// characters, which reach the worker whole and in order; a frame over
// --max-message-size (1 MiB by default) still closes the socket with 1009.
func TestLargePasteArrivesWhole(t *testing.T) {
	term := openInboxTerminal(t)
	for _, size := range []int{300 << 10, 600 << 10} {
		var b strings.Builder
		for i := 0; b.Len() < size; i++ {
			fmt.Fprintf(&b, "line %d: é€😀 \x01\r\n", i)
		}
		paste := b.String() + "END\r"
		require.NoError(t, term.ws.WriteJSON(map[string]any{"type": "input", "data": paste}))
		pieces := term.typed("END\r")
		require.Greater(t, len(pieces), 1)
		for _, p := range pieces {
			require.LessOrEqual(t, len(p), app.MaxShellInput)
			require.NotContains(t, p, "\uFFFD", "no character is cut")
		}
		require.Equal(t, paste, strings.Join(pieces, ""), "%d bytes", size)
	}
	require.Empty(t, errorFrames(t, term.ws, 300*time.Millisecond))

	// (A socket that timed out a read is done for: another one.)
	ws, _, err := term.g.dialPath("/shell", "alice")
	require.NoError(t, err)
	_ = ws.WriteJSON(map[string]any{"type": "input", "data": strings.Repeat("y", DefaultMaxMessageSize)}) // the gateway may close first
	require.NoError(t, ws.SetReadDeadline(time.Now().Add(10*time.Second)))
	for {
		_, _, err := ws.ReadMessage()
		if err != nil {
			require.True(t, websocket.IsCloseError(err, websocket.CloseMessageTooBig), "%v", err)
			break
		}
	}
}

// TestTerminalSizeClamped: an init wider or taller than a terminal may be
// (a very wide screen, a client's miscount) opens the terminal at the
// largest size, as a resize past it is applied, rather than refusing the
// terminal with an error its client may not show.
func TestTerminalSizeClamped(t *testing.T) {
	term := openInboxTerminalWith(t, map[string]any{"type": "init", "shellId": "wide", "cols": 5000, "rows": 9999})
	require.Equal(t, app.MaxShellCols, term.spec.Cols)
	require.Equal(t, app.MaxShellRows, term.spec.Rows)
	require.NoError(t, term.ws.WriteJSON(map[string]any{"type": "resize", "cols": 4000, "rows": 30}))
	resize := term.controls(store.ControlShellResize, func(c []store.Control) bool { return len(c) > 0 })
	var size store.ShellSize
	require.NoError(t, json.Unmarshal(resize[0].Data, &size))
	require.Equal(t, store.ShellSize{Cols: app.MaxShellCols, Rows: 30}, size)
}

// endedUnsent opens a terminal whose exit is sent to its socket 300 ms
// late, ends it, and returns 100 ms later: in the gap in which a client
// may type or init again before it has the exit.
func endedUnsent(t *testing.T) *inboxTerminal {
	testHookExitSend = func() { time.Sleep(300 * time.Millisecond) }
	t.Cleanup(func() { testHookExitSend = nil })
	term := openInboxTerminal(t)
	_, err := term.st.ShellExit(context.Background(), term.opened.Shell, term.opened.Gen, 0, "", "exit")
	require.NoError(t, err)
	time.Sleep(100 * time.Millisecond)
	return term
}

// TestInputBeforeTheExitArrives: input typed after the terminal ended but
// before its exit reached the client is answered ShellErrNoTerminal after
// the exit, not before it (the client would show an error for a
// keystroke it typed into a live terminal).
func TestInputBeforeTheExitArrives(t *testing.T) {
	term := endedUnsent(t)
	require.NoError(t, term.ws.WriteJSON(map[string]any{"type": "input", "data": "x"}))
	require.NoError(t, term.ws.SetReadDeadline(time.Now().Add(10*time.Second)))
	for {
		var m map[string]any
		require.NoError(t, term.ws.ReadJSON(&m))
		require.NotEqual(t, "error", m["type"], "an error before the exit: %v", m)
		if m["type"] == "exit" {
			break
		}
	}
	var m map[string]any
	require.NoError(t, term.ws.ReadJSON(&m))
	require.Equal(t, map[string]any{"type": "error", "message": app.ShellErrNoTerminal}, m)
}

// TestNoOldExitAfterANewInit: a socket that inits another terminal before
// the exit of its old one was sent gets that exit first, never after the
// new terminal's frames (the new one would show as ended).
func TestNoOldExitAfterANewInit(t *testing.T) {
	term := endedUnsent(t)
	require.NoError(t, term.ws.WriteJSON(map[string]any{"type": "init", "shellId": "tab2"}))
	var frames []string
	exited, reopened := false, false
	for !reopened {
		require.NoError(t, term.ws.SetReadDeadline(time.Now().Add(10*time.Second)))
		var m map[string]any
		require.NoError(t, term.ws.ReadJSON(&m), "frames: %v", frames)
		frames = append(frames, fmt.Sprint(m))
		switch {
		case m["type"] == "exit":
			require.False(t, exited, "two exits: %v", frames)
			exited = true
		case exited && m["type"] == "output" && m["gen"] != nil:
			reopened = true
		}
	}
	// Nothing more: the old terminal's exit is not sent again.
	require.NoError(t, term.ws.SetReadDeadline(time.Now().Add(time.Second)))
	for {
		var m map[string]any
		if term.ws.ReadJSON(&m) != nil {
			break
		}
		require.NotEqual(t, "exit", m["type"], "an exit after the new terminal's frames: %v", frames)
	}
}

// TestRestartWhileASocketJoins: a terminal restarted elsewhere, and ended
// again, while a socket's init of it is still joining its feed, sends that
// socket its exit once the socket holds the watch, and the socket's input
// after it is answered ShellErrNoTerminal. The restart started the joining
// watch: its exit went out before the socket held it, and the socket then
// held an ended watch whose input was dropped.
func TestRestartWhileASocketJoins(t *testing.T) {
	term := openInboxTerminal(t)
	ctx := context.Background()
	key, gen1 := term.opened.Shell, term.opened.Gen
	// The first socket's own join is over (the hook is for the second's).
	require.Eventually(t, func() bool {
		tm := term.g.srv.shells
		tm.mu.Lock()
		defer tm.mu.Unlock()
		for sock := range tm.socks {
			sock.mu.Lock()
			w := sock.w
			sock.mu.Unlock()
			if w == nil {
				return false
			}
		}
		return len(tm.socks) == 1
	}, 10*time.Second, time.Millisecond)
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	testHookJoining = func() {
		once.Do(func() {
			close(entered)
			<-release
		})
	}
	t.Cleanup(func() { testHookJoining = nil })
	b, _, err := term.g.dialPath("/shell", "alice")
	require.NoError(t, err)
	require.NoError(t, b.WriteJSON(map[string]any{"type": "init", "shellId": "tab"}))
	<-entered
	// Another tab restarts the terminal; the new one prints and exits.
	_, err = term.st.ShellExit(ctx, key, gen1, 0, "", "exit")
	require.NoError(t, err)
	gen2, opened, err := term.st.ShellOpen(ctx, key, gen1, "w1", "bash", term.spec, store.ShellLimit{})
	require.NoError(t, err)
	require.True(t, opened)
	_, err = term.st.ShellAppend(ctx, key, gen2, []string{"hi "})
	require.NoError(t, err)
	_, err = term.st.ShellExit(ctx, key, gen2, 0, "", "exit")
	require.NoError(t, err)
	time.Sleep(500 * time.Millisecond) // heard while the socket joins
	close(release)
	require.NoError(t, b.SetReadDeadline(time.Now().Add(10*time.Second)))
	for {
		var m map[string]any
		require.NoError(t, b.ReadJSON(&m))
		if m["type"] == "exit" {
			break
		}
	}
	require.NoError(t, b.WriteJSON(map[string]any{"type": "input", "data": "x"}))
	var m map[string]any
	require.NoError(t, b.ReadJSON(&m), "input after the exit")
	require.Equal(t, map[string]any{"type": "error", "message": app.ShellErrNoTerminal}, m)
}
