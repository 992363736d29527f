package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/handlers"
	"github.com/agentgate/agentgate/store/storetest"
)

var testSecret = []byte("server-test-secret")

// serveGateway serves a gateway on the embedded store through gatewayHTTP,
// with the timeouts t and the connection cap maxConns, and returns its
// address.
func serveGateway(t *testing.T, maxConns int, timeouts httpTimeouts) string {
	t.Helper()
	st := storetest.New(t, storetest.Start(t, storetest.Mini))
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	gw, err := handlers.New(handlers.Config{
		Store: st, Auth: &handlers.Auth{Mode: handlers.AuthJWT, Secret: testSecret},
		Workspaces: app.Workspaces{Roots: []string{t.TempDir()}}, Logger: log,
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = gw.Run(ctx) }()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv, limited := gatewayHTTP(gw.Handler(), ln, maxConns, timeouts, log)
	go func() { _ = srv.Serve(limited) }()
	t.Cleanup(func() {
		gw.Drain()
		_ = srv.Close()
		cancel()
		<-done
	})
	return ln.Addr().String()
}

// closedWithin reports whether the server closes conn within d; conn sends
// nothing meanwhile, and whatever the server sends is read and dropped.
func closedWithin(t *testing.T, conn net.Conn, d time.Duration) bool {
	t.Helper()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(d)))
	_, err := io.Copy(io.Discard, conn)
	if err == nil {
		return true // EOF: the server closed it
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return true // reset by the server
}

func getHealthz(t *testing.T, conn net.Conn) {
	t.Helper()
	_, err := conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"))
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.False(t, resp.Close, "a keep-alive connection")
}

// TestHTTPTimeouts: a connection that sends nothing is closed after the
// header timeout, an idle keep-alive connection after the idle timeout, and
// a WebSocket outlives every one of them.
func TestHTTPTimeouts(t *testing.T) {
	short := 300 * time.Millisecond
	addr := serveGateway(t, 100, httpTimeouts{readHeader: short, read: short, write: short, idle: short})
	const bound = 10 * time.Second // generous: the timeouts are 0.3 s

	silent, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer silent.Close()
	idle, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer idle.Close()
	getHealthz(t, idle)
	require.True(t, closedWithin(t, silent, bound), "a connection that sends nothing is closed")
	require.True(t, closedWithin(t, idle, bound), "an idle keep-alive connection is closed")

	tok, err := handlers.IssueToken(testSecret, "alice", false, time.Hour)
	require.NoError(t, err)
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws?token="+tok, nil)
	require.NoError(t, err)
	defer ws.Close()
	for range 3 {
		time.Sleep(4 * short) // past every deadline of the HTTP server
		require.NoError(t, ws.WriteJSON(map[string]any{"type": "get-active-sessions"}))
		var reply map[string]any
		require.NoError(t, ws.SetReadDeadline(time.Now().Add(bound)))
		require.NoError(t, ws.ReadJSON(&reply))
		require.Equal(t, "active-sessions", reply["type"])
	}
}

// TestMaxConnections: past the cap a connection is not served until one
// of the open ones closes; open sockets count.
func TestMaxConnections(t *testing.T) {
	addr := serveGateway(t, 2, gatewayTimeouts)
	tok, err := handlers.IssueToken(testSecret, "alice", false, time.Hour)
	require.NoError(t, err)
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws?token="+tok, nil)
	require.NoError(t, err)
	defer ws.Close()
	silent, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer silent.Close()

	waiting, err := net.Dial("tcp", addr) // the kernel completes the handshake
	require.NoError(t, err)
	defer waiting.Close()
	_, err = waiting.Write([]byte("GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"))
	require.NoError(t, err)
	require.NoError(t, waiting.SetReadDeadline(time.Now().Add(500*time.Millisecond)))
	_, err = waiting.Read(make([]byte, 1))
	var ne net.Error
	require.True(t, errors.As(err, &ne) && ne.Timeout(), "not served over the cap: %v", err)

	require.NoError(t, silent.Close())
	require.NoError(t, waiting.SetReadDeadline(time.Now().Add(10*time.Second)))
	resp, err := http.ReadResponse(bufio.NewReader(waiting), nil)
	require.NoError(t, err, "served once a place is free")
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

// TestLimitOptions: the limits reach the gateway (the cap of sockets per
// user is seen as a 429 naming it), and --listen's host name is a public
// host.
func TestLimitOptions(t *testing.T) {
	var c config
	fs, finish := newFlags("gateway", io.Discard, &c)
	require.NoError(t, fs.Parse([]string{"--listen", "gw.internal:8080", "--public-hosts", "a.example.com, b.example.com,"}))
	require.NoError(t, finish())
	require.Equal(t, []string{"a.example.com", "b.example.com", "gw.internal"}, c.publicHosts())
	for _, listen := range []string{"0.0.0.0:8080", ":8080", "[::1]:8080"} {
		c.Listen = listen
		require.Equal(t, []string{"a.example.com", "b.example.com"}, c.publicHosts(), listen)
	}

	for _, env := range []string{"AGENTGATE_REDIS_URL", "AGENTGATE_JWT_SECRET", "AGENTGATE_LISTEN"} {
		t.Setenv(env, "")
	}
	t.Setenv("AGENTGATE_WORKSPACES", t.TempDir())
	t.Setenv("AGENTGATE_MAX_SOCKETS_PER_USER", "1")
	wsURL, _, cancel, done := startServe(t)
	first, _, err := websocket.DefaultDialer.Dial(wsURL, nil)
	require.NoError(t, err)
	defer first.Close()
	_, resp, err := websocket.DefaultDialer.Dial(wsURL, nil)
	require.Error(t, err)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	body, _ := io.ReadAll(resp.Body)
	require.Contains(t, string(body), "at most 1 per gateway")

	stopServe(t, cancel, done)
}

// startServe runs `agentgate serve` in-process on a free port with extra
// arguments and returns its login WebSocket URL, its address, and what
// stopServe needs.
func startServe(t *testing.T, args ...string) (wsURL, addr string, cancel context.CancelFunc, done chan error) {
	t.Helper()
	// The port is free when picked, and may be taken before serve binds
	// it (other packages' tests run meanwhile): then serve is run again.
	for attempt := 0; ; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr = ln.Addr().String()
		require.NoError(t, ln.Close())
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		outR, outW := io.Pipe()
		var stderr syncBuffer
		done = make(chan error, 1)
		go func() {
			done <- run(ctx, append([]string{"serve", "--listen", addr}, args...), outW, &stderr)
			outW.Close()
		}()
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			if _, u, ok := strings.Cut(sc.Text(), "WebSocket clients: "); ok {
				wsURL, _, _ = strings.Cut(u, " ")
				break
			}
		}
		go func() { _, _ = io.Copy(io.Discard, outR) }()
		if wsURL == "" && attempt < 2 && strings.Contains(stderr.String(), "address already in use") {
			continue
		}
		require.NotEmpty(t, wsURL, "serve printed no URL: %s", stderr.String())
		return wsURL, addr, cancel, done
	}
}

// syncBuffer is a bytes.Buffer that a process writes to while a test
// reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestDrainGrace: with --drain-grace, a gateway told to stop first answers
// /readyz with 503 and refuses new sockets with 503 while its open sockets
// still work, and only then closes them with 1001. The worker's
// --metrics-listen serves /metrics meanwhile.
func TestDrainGrace(t *testing.T) {
	for _, env := range []string{"AGENTGATE_REDIS_URL", "AGENTGATE_JWT_SECRET", "AGENTGATE_LISTEN"} {
		t.Setenv(env, "")
	}
	t.Setenv("AGENTGATE_WORKSPACES", t.TempDir())
	metricsLn, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	metricsAddr := metricsLn.Addr().String()
	require.NoError(t, metricsLn.Close())
	wsURL, addr, cancel, done := startServe(t, "--drain-grace", "3s", "--metrics-listen", metricsAddr)

	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, string(body), `agentgate_sockets{endpoint="chat"} 0`)
	resp, err = http.Get("http://" + metricsAddr + "/readyz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "the worker's /readyz: serve starts its gateway once its worker is registered")

	ws, _, err := websocket.DefaultDialer.Dial(wsURL, nil)
	require.NoError(t, err)
	defer ws.Close()
	cancel()
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	}, 10*time.Second, 20*time.Millisecond, "/readyz turns 503 during the grace")
	resp, err = http.Get("http://" + metricsAddr + "/readyz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "--metrics-listen's /readyz answers as the gateway's")
	_, resp, err = websocket.DefaultDialer.Dial(wsURL, nil)
	require.Error(t, err, "a new socket during the grace")
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)

	// The open socket is still served: a request gets its answer.
	require.NoError(t, ws.WriteJSON(map[string]any{"type": "check-session-status", "sessionId": "s-none"}))
	var reply map[string]any
	require.NoError(t, ws.SetReadDeadline(time.Now().Add(20*time.Second)))
	require.NoError(t, ws.ReadJSON(&reply), "the answer during the grace")
	require.Equal(t, "session-status", reply["type"])

	for {
		if _, _, err = ws.ReadMessage(); err != nil {
			break
		}
	}
	var ce *websocket.CloseError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, websocket.CloseGoingAway, ce.Code)
	stopServe(t, cancel, done)
}

// TestServeReadyMeansReady: a command sent the moment `agentgate serve`
// printed its URL finds its worker (it used to answer "No worker
// available" now and then: the URL came before the worker's first
// heartbeat).
func TestServeReadyMeansReady(t *testing.T) {
	for _, env := range []string{"AGENTGATE_REDIS_URL", "AGENTGATE_JWT_SECRET", "AGENTGATE_LISTEN"} {
		t.Setenv(env, "")
	}
	dir := t.TempDir()
	t.Setenv("AGENTGATE_WORKSPACES", dir)
	t.Setenv("AGENTGATE_CLAUDE_BIN", "/nonexistent/claude")
	for i := range 5 {
		wsURL, _, cancel, done := startServe(t)
		ws, _, err := websocket.DefaultDialer.Dial(wsURL, nil)
		require.NoError(t, err)
		require.NoError(t, ws.WriteJSON(map[string]any{
			"type": "claude-command", "command": "hi", "requestId": "r1", "options": map[string]any{"projectPath": dir},
		}))
		require.NoError(t, ws.SetReadDeadline(time.Now().Add(20*time.Second)))
		for {
			var f map[string]any
			require.NoError(t, ws.ReadJSON(&f))
			if f["requestId"] == "r1" {
				require.Equal(t, "session-accepted", f["type"], "try %d: %v", i, f)
				break
			}
		}
		ws.Close()
		stopServe(t, cancel, done)
	}
}

// TestGatewayBoundsRequestHeaders: a client without a token that sends a
// header without end is answered 431 once past maxHeaderBytes, and holds no
// more than that in the gateway (net/http's default let it hold 1 MiB per
// connection until the header timeout); a header of a few KiB still passes.
func TestGatewayBoundsRequestHeaders(t *testing.T) {
	const conns = 200
	addr := serveGateway(t, 10000, gatewayTimeouts)
	heap := func() float64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return float64(ms.HeapInuse)
	}
	before := heap()
	line := "X-Pad: " + strings.Repeat("a", 8000) + "\r\n"
	block := "GET /healthz HTTP/1.1\r\nHost: gateway\r\n" + strings.Repeat(line, 130) // 1 MB, no end
	var open []net.Conn
	for range conns {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		open = append(open, c)
		_, _ = c.Write([]byte(block)) // the server may close before it has all
	}
	time.Sleep(500 * time.Millisecond)
	perConn := (heap() - before) / conns
	t.Logf("%d connections sending 1 MB of header: %.1f KiB of gateway heap each", conns, perConn/1024)
	require.Less(t, perConn, float64(64<<10))
	resp, err := http.ReadResponse(bufio.NewReader(open[0]), nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode)
	for _, c := range open {
		c.Close()
	}

	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: gateway\r\nCookie: " + strings.Repeat("c", 8000) + "\r\n\r\n"))
	require.NoError(t, err)
	resp, err = http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

// TestPlatformNeedsTrustedProxies: a gateway in platform mode does not
// start without the proxies whose user header it takes, and refuses a
// header from any other peer.
func TestPlatformNeedsTrustedProxies(t *testing.T) {
	for _, env := range []string{"AGENTGATE_REDIS_URL", "AGENTGATE_JWT_SECRET", "AGENTGATE_LISTEN", "AGENTGATE_TRUSTED_PROXIES"} {
		t.Setenv(env, "")
	}
	t.Setenv("AGENTGATE_WORKSPACES", t.TempDir())
	err := run(t.Context(), []string{"serve", "--listen", "127.0.0.1:0", "--auth", "platform"}, io.Discard, io.Discard)
	require.ErrorContains(t, err, "--auth platform needs --trusted-proxies")

	var c config
	fs, finish := newFlags("gateway", io.Discard, &c)
	require.NoError(t, fs.Parse([]string{"--trusted-proxies", "10.0.0.2, 10.1.0.0/16"}))
	require.NoError(t, finish())
	require.Len(t, c.TrustedProxies, 2)
	fs, finish = newFlags("gateway", io.Discard, &c)
	require.NoError(t, fs.Parse([]string{"--trusted-proxies", "proxy.internal"}))
	require.ErrorContains(t, finish(), "--trusted-proxies")
}

// TestHeartbeatIntervalWithinHalfTheTTL: a command that runs a worker does
// not start with a heartbeat interval over half the heartbeat TTL, whether
// either comes from a flag, a variable or the default (`--heartbeat-ttl 1s`
// with the 2 s default interval left the heartbeat missing half the time,
// and the worker's runs were reaped as lost); a gateway writes no
// heartbeat, and starts.
func TestHeartbeatIntervalWithinHalfTheTTL(t *testing.T) {
	t.Setenv("AGENTGATE_REDIS_URL", "redis://127.0.0.1:1") // never up: a command that starts waits for it
	t.Setenv("AGENTGATE_JWT_SECRET", strings.Repeat("s", minSecretBytes))
	t.Setenv("AGENTGATE_LISTEN", "127.0.0.1:0")
	for _, tc := range []struct {
		name    string
		env     string // AGENTGATE_HEARTBEAT_TTL
		args    []string
		refused bool
	}{
		{"serve: TTL under the default interval", "", []string{"serve", "--heartbeat-ttl", "1s"}, true},
		{"worker: TTL from the environment", "3s", []string{"worker"}, true},
		{"worker: interval over half the default TTL", "", []string{"worker", "--heartbeat-interval", "6s"}, true},
		{"worker: interval equal to the TTL", "", []string{"worker", "--heartbeat-interval", "5s", "--heartbeat-ttl", "5s"}, true},
		{"worker: exactly half", "", []string{"worker", "--heartbeat-interval", "1s", "--heartbeat-ttl", "2s"}, false},
		{"worker: the defaults", "", []string{"worker"}, false},
		{"gateway: no heartbeat of its own", "", []string{"gateway", "--heartbeat-ttl", "1s"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("AGENTGATE_HEARTBEAT_TTL", tc.env)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
			defer cancel()
			err := run(ctx, tc.args, io.Discard, io.Discard)
			if !tc.refused {
				require.NoError(t, err, "started, and stopped while waiting for Redis")
				return
			}
			require.ErrorContains(t, err, "--heartbeat-interval")
			require.ErrorContains(t, err, "--heartbeat-ttl")
			require.ErrorContains(t, err, "more than half")
		})
	}
}

// TestGatewayReadyAgainAfterFlushAll: `agentgate gateway` on a real
// redis-server answers /readyz 200; after FLUSHALL (a Redis back without
// its data) its /readyz applies the migrations again and answers 200
// within a bounded wait, and the schema is current. Before, it answered
// 503 "key schema not current" until someone ran `agentgate migrate`.
func TestGatewayReadyAgainAfterFlushAll(t *testing.T) {
	url := storetest.Redis(t)
	t.Setenv("AGENTGATE_JWT_SECRET", strings.Repeat("s", minSecretBytes))
	t.Setenv("AGENTGATE_WORKSPACES", t.TempDir())
	t.Setenv("AGENTGATE_METRICS_LISTEN", "")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"gateway", "--redis", url, "--listen", addr}, io.Discard, io.Discard)
	}()
	t.Cleanup(func() { stopServe(t, cancel, done) })
	ready := func() bool {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	require.Eventually(t, ready, 20*time.Second, 20*time.Millisecond, "ready at start")

	raw := storetest.Client(t, url)
	require.NoError(t, raw.FlushAll(ctx).Err())
	require.Eventually(t, ready, 10*time.Second, 20*time.Millisecond, "ready again after FLUSHALL")
	v, err := raw.Get(ctx, "ag:schema").Int()
	require.NoError(t, err)
	require.Positive(t, v)
}
