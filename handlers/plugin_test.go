package handlers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store/storetest"
)

// echoPlugin is a plugin's WebSocket server: it echoes every frame with
// its type, closes with 4123 "bye" when told "close-me", and reports the
// close code its client ended with.
func echoPlugin(t *testing.T) (addr string, closed chan int) {
	closed = make(chan int, 1)
	up := websocket.Upgrader{}
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			typ, data, err := c.ReadMessage()
			if err != nil {
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					closed <- ce.Code
				}
				return
			}
			if string(data) == "who-am-i" {
				data = []byte(r.Header.Get(PluginUserHeader) + "/" + r.Header.Get(PluginAdminHeader))
			}
			if string(data) == "close-me" {
				_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4123, "bye"), time.Now().Add(time.Second))
				continue
			}
			_ = c.WriteMessage(typ, data)
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), closed
}

func (g *gateway) dialPlugin(name, tok string) (*websocket.Conn, *http.Response, error) {
	url := "ws" + strings.TrimPrefix(g.ts.URL, "http") + "/plugin-ws/" + name
	if tok != "" {
		url += "?token=" + tok
	}
	ws, resp, err := websocket.DefaultDialer.Dial(url, nil)
	if ws != nil {
		g.t.Cleanup(func() { ws.Close() })
	}
	return ws, resp, err
}

// closedWith reads until the socket is closed and returns its close error.
func closedWith(t *testing.T, ws *websocket.Conn) *websocket.CloseError {
	t.Helper()
	require.NoError(t, ws.SetReadDeadline(time.Now().Add(5*time.Second)))
	for {
		_, _, err := ws.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		require.True(t, errors.As(err, &ce), "closed without a close frame: %v", err)
		return ce
	}
}

func TestPluginRelay(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st)
	ctx := context.Background()
	addr, upstreamClosed := echoPlugin(t)
	require.NoError(t, st.SetPlugin(ctx, "echo", addr))
	tok := token(t, "alice", false)

	t.Run("needs a token", func(t *testing.T) {
		_, resp, err := g.dialPlugin("echo", "")
		require.Error(t, err)
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	})
	t.Run("invalid name", func(t *testing.T) {
		ws, _, err := g.dialPlugin("bad.name", tok)
		require.NoError(t, err)
		ce := closedWith(t, ws)
		require.Equal(t, 4400, ce.Code)
		require.Equal(t, "Invalid plugin name", ce.Text)
	})
	t.Run("not registered", func(t *testing.T) {
		ws, _, err := g.dialPlugin("nobody", tok)
		require.NoError(t, err)
		ce := closedWith(t, ws)
		require.Equal(t, 4404, ce.Code)
		require.Equal(t, "Plugin not running", ce.Text)
	})
	t.Run("upstream down", func(t *testing.T) {
		down := storetest.FreeAddr(t) // nothing listens there
		require.NoError(t, st.SetPlugin(ctx, "down", down))
		ws, _, err := g.dialPlugin("down", tok)
		require.NoError(t, err)
		ce := closedWith(t, ws)
		require.Equal(t, 4502, ce.Code)
		require.Equal(t, "Upstream error", ce.Text)
	})
	t.Run("frames both ways, types kept, upstream close propagated", func(t *testing.T) {
		ws, _, err := g.dialPlugin("echo", tok)
		require.NoError(t, err)
		require.NoError(t, ws.WriteMessage(websocket.TextMessage, []byte(`{"hello":1}`)))
		require.NoError(t, ws.WriteMessage(websocket.BinaryMessage, []byte{0, 1, 2, 255}))
		typ, data, err := ws.ReadMessage()
		require.NoError(t, err)
		require.Equal(t, websocket.TextMessage, typ)
		require.Equal(t, `{"hello":1}`, string(data))
		typ, data, err = ws.ReadMessage()
		require.NoError(t, err)
		require.Equal(t, websocket.BinaryMessage, typ)
		require.Equal(t, []byte{0, 1, 2, 255}, data)
		require.NoError(t, ws.WriteMessage(websocket.TextMessage, []byte("close-me")))
		ce := closedWith(t, ws)
		require.Equal(t, 4123, ce.Code)
		require.Equal(t, "bye", ce.Text)
		<-upstreamClosed
	})
	t.Run("the plugin is told the user, not what the client says", func(t *testing.T) {
		for _, tc := range []struct{ tok, want string }{
			{tok, "alice/"},
			{token(t, "root", true), "root/true"},
		} {
			url := "ws" + strings.TrimPrefix(g.ts.URL, "http") + "/plugin-ws/echo?token=" + tc.tok
			forged := http.Header{PluginUserHeader: {"mallory"}, PluginAdminHeader: {"true"}}
			ws, _, err := websocket.DefaultDialer.Dial(url, forged)
			require.NoError(t, err)
			require.NoError(t, ws.WriteMessage(websocket.TextMessage, []byte("who-am-i")))
			_, data, err := ws.ReadMessage()
			require.NoError(t, err)
			require.Equal(t, tc.want, string(data))
			ws.Close()
			select { // the relay's close, which the next subtest must not take for its own
			case <-upstreamClosed:
			case <-time.After(5 * time.Second):
			}
		}
	})
	t.Run("client close propagated", func(t *testing.T) {
		ws, _, err := g.dialPlugin("echo", tok)
		require.NoError(t, err)
		require.NoError(t, ws.WriteMessage(websocket.TextMessage, []byte("ping")))
		_, _, err = ws.ReadMessage()
		require.NoError(t, err)
		require.NoError(t, ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4001, "done"), time.Now().Add(time.Second)))
		select {
		case code := <-upstreamClosed:
			require.Equal(t, 4001, code)
		case <-time.After(5 * time.Second):
			t.Fatal("the plugin never saw the close")
		}
	})
}

// TestPluginFramesPayTheRate: a user's frames to a plugin pay the same
// frame rate as their other sockets; past the burst they wait for it
// (none is lost), so the plugin sees them at that rate.
func TestPluginFramesPayTheRate(t *testing.T) {
	const rate = 5
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st, func(c *Config) { c.MaxFrameRate = rate })
	addr, _ := echoPlugin(t)
	require.NoError(t, st.SetPlugin(context.Background(), "echo", addr))
	ws, _, err := g.dialPlugin("echo", token(t, "alice", false))
	require.NoError(t, err)
	burst := max(frameBurstSeconds*rate, maxSubscribe)
	const over = 10
	start := time.Now()
	for i := range burst + over {
		require.NoError(t, ws.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, "%d", i)))
	}
	require.NoError(t, ws.SetReadDeadline(time.Now().Add(30*time.Second)))
	for i := range burst + over {
		_, data, err := ws.ReadMessage()
		require.NoError(t, err)
		require.Equal(t, fmt.Sprint(i), string(data))
	}
	// The frames past the burst waited for over/rate seconds, less the
	// tokens that came back while the burst was sent.
	require.GreaterOrEqual(t, time.Since(start), (over-1)*time.Second/rate)
}

// TestPluginRelayPings: the relay pings the browser's side as /ws does, so
// that a proxy in front does not close an idle relay, and a browser that
// vanishes is reported to the plugin as gone away (1001), not as a normal
// close.
func TestPluginRelayPings(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st, func(c *Config) { c.PingPeriod = 50 * time.Millisecond })
	addr, upstreamClosed := echoPlugin(t)
	require.NoError(t, st.SetPlugin(context.Background(), "echo", addr))
	ws, _, err := g.dialPlugin("echo", token(t, "alice", false))
	require.NoError(t, err)
	pings := make(chan struct{}, 16)
	ws.SetPingHandler(func(string) error {
		select {
		case pings <- struct{}{}:
		default:
		}
		return ws.WriteControl(websocket.PongMessage, nil, time.Now().Add(time.Second))
	})
	go func() {
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				return
			}
		}
	}()
	for range 3 {
		select {
		case <-pings:
		case <-time.After(5 * time.Second):
			t.Fatal("no ping from the relay")
		}
	}

	// The browser's connection drops without a close frame.
	require.NoError(t, ws.UnderlyingConn().Close())
	select {
	case code := <-upstreamClosed:
		require.Equal(t, websocket.CloseGoingAway, code)
	case <-time.After(10 * time.Second):
		t.Fatal("the plugin was not told")
	}
}
