package handlers

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
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

var testSecret = []byte("test-secret")

// gateway is a Server under test, on 127.0.0.1.
type gateway struct {
	t   *testing.T
	srv *Server
	ts  *httptest.Server
	st  *store.Store
	dir string
}

type gatewayOpt func(*Config)

// startGateway starts a gateway on st, with a workspace of its own.
func startGateway(t *testing.T, st *store.Store, opts ...gatewayOpt) *gateway {
	t.Helper()
	dir := t.TempDir()
	cfg := Config{
		Store: st, Auth: &Auth{Mode: AuthJWT, Secret: testSecret},
		Workspaces: app.Workspaces{Roots: []string{dir}},
	}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(ctx) }()
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		srv.Drain()
		ts.Close()
		cancel()
		<-done
	})
	// As a load balancer waits for /readyz: a broadcast published before
	// the gateway's subscription is not heard (a loaded machine lost one).
	select {
	case <-srv.Listening():
	case <-time.After(10 * time.Second):
		t.Fatal("the gateway did not subscribe within 10 s")
	}
	return &gateway{t: t, srv: srv, ts: ts, st: st, dir: dir}
}

func token(t testing.TB, user string, admin bool) string {
	t.Helper()
	tok, err := IssueToken(testSecret, user, admin, time.Hour)
	require.NoError(t, err)
	return tok
}

// client is a real WebSocket client of /ws.
type client struct {
	t    *testing.T
	ws   *websocket.Conn
	msgs chan map[string]any
	raw  chan []byte
	errc chan error
}

func (g *gateway) dial(user string) *client {
	g.t.Helper()
	return g.dialToken(token(g.t, user, false))
}

// dialToken opens a socket with immediate delivery, as a client that
// handles every frame does (pace_test.go dials paced ones).
func (g *gateway) dialToken(tok string) *client {
	g.t.Helper()
	return g.dialQuery("token=" + tok + "&delivery=immediate")
}

func (g *gateway) dialQuery(query string) *client {
	g.t.Helper()
	url := "ws" + strings.TrimPrefix(g.ts.URL, "http") + "/ws?" + query
	ws, resp, err := websocket.DefaultDialer.Dial(url, nil)
	require.NoError(g.t, err)
	resp.Body.Close()
	c := &client{t: g.t, ws: ws, msgs: make(chan map[string]any, 100000), raw: make(chan []byte, 100000), errc: make(chan error, 1)}
	go func() {
		for {
			_, data, err := ws.ReadMessage()
			if err != nil {
				c.errc <- err
				close(c.msgs)
				return
			}
			var m map[string]any
			if json.Unmarshal(data, &m) != nil {
				m = map[string]any{"unparsable": string(data)}
			}
			c.raw <- data
			c.msgs <- m
		}
	}()
	g.t.Cleanup(func() { ws.Close() })
	return c
}

func (c *client) send(v any) {
	c.t.Helper()
	require.NoError(c.t, c.trySend(v))
}

// trySend is send returning its error, for goroutines other than the
// test's (which must not call require).
func (c *client) trySend(v any) error {
	var data []byte
	switch v := v.(type) {
	case string:
		data = []byte(v)
	default:
		var err error
		if data, err = json.Marshal(v); err != nil {
			return err
		}
	}
	return c.ws.WriteMessage(websocket.TextMessage, data)
}

// next returns the next frame, failing after a timeout.
func (c *client) next() map[string]any {
	c.t.Helper()
	select {
	case m, ok := <-c.msgs:
		if !ok {
			c.t.Fatalf("socket closed: %v", <-c.errc)
		}
		return m
	case <-time.After(10 * time.Second):
		c.t.Fatal("no frame within 10s")
	}
	return nil
}

// expectNothing checks that no frame arrives for a while, and that the
// socket stays open meanwhile (no caller expects a close: closeCode waits
// for one).
func (c *client) expectNothing(d time.Duration) {
	c.t.Helper()
	select {
	case m, ok := <-c.msgs:
		if ok {
			c.t.Fatalf("unexpected frame %v", m)
		}
		c.t.Fatalf("socket closed while nothing was expected: %v", <-c.errc)
	case <-time.After(d):
	}
}

// until reads frames until one matches and returns every frame read.
func (c *client) until(match func(map[string]any) bool) []map[string]any {
	c.t.Helper()
	var got []map[string]any
	for {
		m := c.next()
		got = append(got, m)
		if match(m) {
			return got
		}
	}
}

func isType(ty string) func(map[string]any) bool {
	return func(m map[string]any) bool { return m["type"] == ty }
}

// closeCode waits for the socket to close and returns its close code.
func (c *client) closeCode() int {
	c.t.Helper()
	for {
		select {
		case _, ok := <-c.msgs:
			if ok {
				continue
			}
			err := <-c.errc
			var ce *websocket.CloseError
			if e, isClose := err.(*websocket.CloseError); isClose {
				ce = e
				return ce.Code
			}
			return -1
		case <-time.After(10 * time.Second):
			c.t.Fatal("socket did not close")
		}
	}
}

// fakeWorker plays a worker through the store, the only path a real one
// has to a gateway: it claims runs from the jobs stream and writes events.
type fakeWorker struct {
	t  *testing.T
	st *store.Store
	id string
}

func newFakeWorker(t *testing.T, st *store.Store) *fakeWorker {
	t.Helper()
	w := &fakeWorker{t: t, st: st, id: "fake-" + app.NewID()[:8]}
	require.NoError(t, st.Heartbeat(context.Background(), store.WorkerInfo{ID: w.id, StartedAt: time.Now()}, time.Hour))
	return w
}

// take reads the next job and claims its run.
func (w *fakeWorker) take() (app.Job, store.RunRef) {
	w.t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		jobs, err := w.st.ReadJobs(ctx, w.id, 1, 100*time.Millisecond)
		require.NoError(w.t, err)
		if len(jobs) == 0 {
			continue
		}
		job := jobs[0].Job
		ref := store.RunRef{SessionID: job.SessionID, RunID: job.RunID, Provider: job.Provider}
		ok, err := w.st.Claim(ctx, ref, w.id)
		require.NoError(w.t, err)
		require.True(w.t, ok)
		require.NoError(w.t, w.st.AckJob(ctx, jobs[0].StreamID))
		return job, ref
	}
	w.t.Fatal("no job within 10s")
	return app.Job{}, store.RunRef{}
}

func (w *fakeWorker) emit(ref store.RunRef, events ...app.Event) {
	w.t.Helper()
	_, err := w.st.Append(context.Background(), ref, events, nil)
	require.NoError(w.t, err)
}

func (w *fakeWorker) finish(ref store.RunRef, code int) {
	w.t.Helper()
	_, err := w.st.Complete(context.Background(), ref, app.Outcome{ExitCode: code})
	require.NoError(w.t, err)
}

// startRun starts a gateway and a fake worker on st, and a run of alice's
// that the worker has taken. c is alice's socket that sent the command.
func startRun(t *testing.T, st *store.Store, opts ...gatewayOpt) (*gateway, *fakeWorker, *client, string, store.RunRef) {
	t.Helper()
	g := startGateway(t, st, opts...)
	w := newFakeWorker(t, st)
	c := g.dial("alice")
	c.send(command("go", nil))
	id := c.next()["sessionId"].(string)
	_, ref := w.take()
	return g, w, c, id, ref
}

// newStore returns a store on a fresh server of backend b.
func newStore(t *testing.T, b storetest.Backend, cfg ...store.Config) *store.Store {
	t.Helper()
	return storetest.New(t, storetest.Start(t, b), cfg...)
}

func httpGet(t *testing.T, url, tok string) (int, map[string]any) {
	t.Helper()
	return httpDo(t, http.MethodGet, url, tok)
}

// httpDo sends a request without a body, with tok as its bearer token
// ("" for none), and returns the status and the decoded JSON body.
func httpDo(t *testing.T, method, url, tok string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	require.NoError(t, err)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

func symlink(target, link string) error { return os.Symlink(target, link) }

// realStore starts a redis-server and returns a store on it and a plain
// client, for tests that change what Redis holds behind the store's back.
func realStore(t *testing.T) (*store.Store, *redis.Client) {
	t.Helper()
	url := storetest.Start(t, storetest.Real)
	opt, err := redis.ParseURL(url)
	require.NoError(t, err)
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { rdb.Close() })
	return storetest.New(t, url), rdb
}
