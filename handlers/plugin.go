package handlers

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/labstack/echo/v4"
	"golang.org/x/time/rate"

	"github.com/agentgate/agentgate/app"
)

// Close codes of /plugin-ws (PROTOCOL §5).
const (
	closeInvalidPlugin = 4400
	closePluginMissing = 4404
	closeUpstreamError = 4502
)

const (
	// PluginUserHeader names, in the request that opens a relay to a
	// plugin, the user the relay is for; PluginAdminHeader is "true" when
	// that user is an admin.
	PluginUserHeader  = "X-Agentgate-User"
	PluginAdminHeader = "X-Agentgate-Admin"
	// pluginDialTimeout bounds the connection to a plugin.
	pluginDialTimeout = 5 * time.Second
	// pluginMaxFrame bounds a frame from a plugin; a plugin is trusted
	// more than a browser, but not with all of the gateway's memory.
	pluginMaxFrame = 16 << 20
	// closeWait is how long a relay waits for a close frame to be written.
	closeWait = time.Second
)

// pluginRelays are the open /plugin-ws relays, closed on drain.
type pluginRelays struct {
	mu     sync.Mutex
	relays map[*pluginRelay]struct{}
}

func (p *pluginRelays) add(r *pluginRelay) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.relays == nil {
		p.relays = map[*pluginRelay]struct{}{}
	}
	p.relays[r] = struct{}{}
	pluginMetrics.sockets.Inc()
}

func (p *pluginRelays) remove(r *pluginRelay) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.relays[r]; ok {
		delete(p.relays, r)
		pluginMetrics.sockets.Dec()
	}
}

// closeAll closes every relay with 1001, as a draining gateway does with
// its chat sockets.
func (p *pluginRelays) closeAll() {
	p.mu.Lock()
	relays := make([]*pluginRelay, 0, len(p.relays))
	for r := range p.relays {
		relays = append(relays, r)
	}
	p.mu.Unlock()
	for _, r := range relays {
		r.close(websocket.CloseGoingAway, "gateway shutting down")
	}
}

// servePlugin relays /plugin-ws/:name to the plugin's own WebSocket at
// ws://HOST:PORT/ws, frames both ways as they are (text stays text, binary
// stays binary) and closes propagated. The name and the registry are
// checked after the upgrade, because the contract answers with close codes.
func (s *Server) servePlugin(c echo.Context) error {
	if s.draining.Load() {
		return echo.NewHTTPError(http.StatusServiceUnavailable, "gateway is draining")
	}
	user, err := s.cfg.Auth.Authenticate(c.Request())
	if err != nil {
		return authFailure(c, err)
	}
	quota := s.quotas.acquire(user.Name)
	if quota == nil {
		return s.quotas.tooManySockets()
	}
	defer s.quotas.release(quota)
	up := websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 1024, CheckOrigin: s.origins.allows}
	client, err := up.Upgrade(c.Response(), c.Request(), nil)
	if err != nil {
		return nil // the upgrader has answered
	}
	client.SetReadLimit(s.cfg.MaxMessageSize)
	name := c.Param("name")
	if !app.ValidPluginName(name) {
		closeConn(client, closeInvalidPlugin, "Invalid plugin name")
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), pluginDialTimeout)
	defer cancel()
	addr, err := s.st.Plugin(ctx, name)
	if err != nil {
		if errors.Is(err, app.ErrNotFound) {
			closeConn(client, closePluginMissing, "Plugin not running")
		} else {
			s.log.Warn("read plugin", "plugin", name, "err", err)
			closeConn(client, closeUpstreamError, "Upstream error")
		}
		return nil
	}
	// The plugin is told whose relay this is, so that one that keeps state
	// can keep it per user; the client's own headers are never passed on.
	hdr := http.Header{PluginUserHeader: {user.Name}}
	if user.Admin {
		hdr.Set(PluginAdminHeader, "true")
	}
	upstream, _, err := (&websocket.Dialer{HandshakeTimeout: pluginDialTimeout}).DialContext(ctx, "ws://"+addr+"/ws", hdr)
	if err != nil {
		s.log.Info("dial plugin", "plugin", name, "addr", addr, "err", err)
		closeConn(client, closeUpstreamError, "Upstream error")
		return nil
	}
	upstream.SetReadLimit(pluginMaxFrame)
	paceCtx, stopPace := context.WithCancel(context.Background())
	defer stopPace()
	r := &pluginRelay{client: client, upstream: upstream, frames: quota.frames, paceCtx: paceCtx, stopPace: stopPace,
		pingPeriod: s.cfg.PingPeriod}
	s.plugins.add(r)
	defer s.plugins.remove(r)
	if !user.Expires.IsZero() {
		// As /ws and /shell sockets: past its token's expiry the relay
		// goes, so that expiry bounds what a leaked token can do.
		t := time.AfterFunc(time.Until(user.Expires), func() { r.close(app.CloseTokenExpired, "token expired") })
		defer t.Stop()
	}
	if s.drained.Load() {
		// Drain listed the relays before this one was added.
		r.close(websocket.CloseGoingAway, "gateway shutting down")
		return nil
	}
	r.run()
	return nil
}

// pluginWriteWait is how long a relay waits for a side to take a frame
// before it ends the relay: a side that stops reading must not hold it
// (and a frame of up to pluginMaxFrame) for ever.
const pluginWriteWait = 10 * time.Second

// pluginRelay is one browser socket joined to one plugin socket.
type pluginRelay struct {
	client, upstream *websocket.Conn
	// frames is the user's frame rate, which the browser's frames pay:
	// a frame over it waits (a relay cannot answer in the plugin's
	// protocol), so the plugin sees the user's frames at that rate.
	frames *rate.Limiter
	// paceCtx ends a frame's wait for the rate; close cancels it.
	paceCtx  context.Context
	stopPace context.CancelFunc
	once     sync.Once
	// pingPeriod is how often the browser's side is pinged, as /ws and
	// /shell are: a proxy in front (nginx's proxy_read_timeout) closes a
	// socket idle for longer, and the plugin cannot keep it alive (the
	// relay answers the plugin's own pings). A browser that answers none
	// for two periods and 10 s is taken for gone.
	pingPeriod time.Duration
}

// run copies frames both ways until one side closes or fails, then closes
// the other side the same way.
func (r *pluginRelay) run() {
	pace := func() bool { return r.frames == nil || r.frames.Wait(r.paceCtx) == nil }
	if r.pingPeriod > 0 {
		pongWait := 2*r.pingPeriod + 10*time.Second
		_ = r.client.SetReadDeadline(time.Now().Add(pongWait))
		r.client.SetPongHandler(func(string) error { return r.client.SetReadDeadline(time.Now().Add(pongWait)) })
		go r.ping()
	}
	done := make(chan struct{}, 2)
	go func() {
		code, text := copyFrames(r.upstream, r.client, pace)
		if code == websocket.CloseAbnormalClosure {
			// The browser vanished without a close (or stopped answering
			// pings): 1006 may not be sent, and 1000 would say it left.
			code, text = websocket.CloseGoingAway, "client connection lost"
		}
		// The browser left: tell the plugin why, keeping its code.
		r.close(code, text)
		done <- struct{}{}
	}()
	go func() {
		code, text := copyFrames(r.client, r.upstream, nil)
		if code == websocket.CloseAbnormalClosure {
			// The plugin vanished without a close: that is an upstream error.
			code, text = closeUpstreamError, "Upstream error"
		}
		r.close(code, text)
		done <- struct{}{}
	}()
	<-done
	<-done
}

// ping pings the browser's side every pingPeriod until the relay ends.
// Runs in its own goroutine.
func (r *pluginRelay) ping() {
	t := time.NewTicker(r.pingPeriod)
	defer t.Stop()
	for {
		select {
		case <-r.paceCtx.Done(): // close cancels it
			return
		case <-t.C:
			if r.client.WriteControl(websocket.PingMessage, nil, time.Now().Add(pluginWriteWait)) != nil {
				return
			}
		}
	}
}

// close sends both sides the same close frame, once, then closes them.
func (r *pluginRelay) close(code int, text string) {
	r.once.Do(func() {
		r.stopPace()
		closeConn(r.client, code, text)
		closeConn(r.upstream, code, text)
	})
}

// copyFrames copies messages from src to dst until src ends, and returns
// the close code and text src ended with. pace, if not nil, is called
// before each frame is passed on, and ends the copy when it returns false.
func copyFrames(dst, src *websocket.Conn, pace func() bool) (int, string) {
	for {
		typ, data, err := src.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return ce.Code, ce.Text
			}
			if errors.Is(err, websocket.ErrReadLimit) {
				return websocket.CloseMessageTooBig, "message too big"
			}
			return websocket.CloseAbnormalClosure, ""
		}
		if pace != nil && !pace() {
			return websocket.CloseGoingAway, ""
		}
		_ = dst.SetWriteDeadline(time.Now().Add(pluginWriteWait))
		if err := dst.WriteMessage(typ, data); err != nil {
			return websocket.CloseAbnormalClosure, ""
		}
	}
}

// closeConn writes a close frame (codes that may not be sent become 1000)
// and closes the connection.
func closeConn(c *websocket.Conn, code int, text string) {
	switch code {
	case websocket.CloseNoStatusReceived, websocket.CloseAbnormalClosure, websocket.CloseTLSHandshake:
		code = websocket.CloseNormalClosure
	}
	msg := websocket.FormatCloseMessage(code, text)
	_ = c.WriteControl(websocket.CloseMessage, msg, time.Now().Add(closeWait))
	_ = c.Close()
}
