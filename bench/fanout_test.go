package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/handlers"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
	"github.com/agentgate/agentgate/workers"
)

// A fan-out mode: as fast as the pipeline takes events, or paced so that
// all sessions together produce rate events per second.
type mode struct {
	name  string
	paced bool
	rate  int
}

// The paced rates: 10,000 events/s is the knee of a 2-core machine; 2,000
// is a realistic load for 1000 streaming chats, a second point of the curve.
var modes = []mode{{"max", false, 0}, {"paced10k", true, 10_000}, {"paced2k", true, 2_000}}

const (
	// maxEvents is the number of events of a max-mode round, shared among
	// its sessions: a fixed amount of work, so that a round lasts a few
	// seconds and the backlog in the pipes stays bounded.
	maxEvents = 120_000
	// pacedFor is how long a paced round's sessions emit together.
	pacedFor = 3 * time.Second
	// roundTimeout is a hang guard, not a performance bound.
	roundTimeout = 5 * time.Minute
	// lossWait is how long a round waits for events still missing before
	// it counts them as lost.
	lossWait = 30 * time.Second
)

var sessionCounts = []int{1, 100, 1000}

// schedule says when each session of a round writes its events: session s
// writes count events, event i at start + s*step + i*interval (paced, so
// that all events are evenly spread), or all at once when interval is 0.
type schedule struct {
	start          time.Time
	count          int
	interval, step time.Duration
}

func newSchedule(sessions int, m mode, start time.Time) schedule {
	if !m.paced {
		return schedule{start: start, count: maxEvents / sessions}
	}
	step := time.Second / time.Duration(m.rate)
	total := int(pacedFor.Seconds() * float64(m.rate))
	return schedule{start: start, count: total / sessions, interval: time.Duration(sessions) * step, step: step}
}

// wait waits until session s may write its event i, and reports false when
// the session is done.
func (sc schedule) wait(s, i int) bool {
	if i >= sc.count {
		return false
	}
	if sc.interval > 0 {
		if d := time.Until(sc.at(s, i)); d > 0 {
			time.Sleep(d)
		}
	}
	return true
}

// at is when session s is to write its event i (paced).
func (sc schedule) at(s, i int) time.Time {
	return sc.start.Add(time.Duration(s)*sc.step + time.Duration(i)*sc.interval)
}

// waitUntil polls cond for up to timeout and reports whether it held.
func waitUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

// BenchmarkFanout measures events/s and latency from a provider line to the
// client's socket through the whole gateway (worker, Redis, hub, melody),
// next to a raw Redis baseline of the same shape, for 1, 100 and 1000
// concurrently streaming sessions.
func BenchmarkFanout(b *testing.B) {
	for _, n := range sessionCounts {
		for _, m := range modes {
			b.Run(configName(n, m.name), func(b *testing.B) {
				b.Run("raw", func(b *testing.B) { benchRaw(b, n, m) })
				b.Run("gateway", func(b *testing.B) { benchGateway(b, n, m, inProcess(0)) })
				if m.paced {
					// As deployed: gateway and worker are processes of
					// their own, only the clients and emitters are here.
					b.Run("gateway_processes", func(b *testing.B) { benchGateway(b, n, m, startGatewayProcesses) })
				}
				if n == 1 && !m.paced {
					// The default queue (128 frames) closes this socket
					// with 4008; how fast would it go with more room?
					b.Run("gateway_queue1024", func(b *testing.B) { benchGateway(b, n, m, inProcess(1024)) })
				}
			})
		}
	}
}

// reportFanout reports the metrics shared by the raw and gateway runs and
// returns the delivered events per second.
func reportFanout(b *testing.B, lat *latencies, delivered, expected int64, span time.Duration) float64 {
	evps := float64(delivered) / span.Seconds()
	b.ReportMetric(evps, "events/s")
	b.ReportMetric(lat.quantile(0.50), "p50_ms")
	b.ReportMetric(lat.quantile(0.99), "p99_ms")
	b.ReportMetric(lat.quantile(1), "max_ms")
	b.ReportMetric(float64(expected-delivered), "lost")
	return evps
}

// ---- gateway ----

var benchSecret = []byte("bench-secret-0123456789-0123456789")

// providerScript is the fake Claude CLI the worker runs: it ignores its
// arguments, reads the path of a FIFO from the prompt on stdin, and becomes
// cat of that FIFO. The benchmark writes Claude stream-json assistant lines
// into the FIFO, each carrying the time it was written (UnixNano), and cat
// prints them as the CLI would. (A re-executed Go test binary per session
// was tried first: at 1000 sessions x 10 lines/s its runtime wake-ups cost
// 0.5-0.65 of the 2 cores, starving the gateway being measured.)
//
// The prompt arrives as Claude's stream-json user message, one line:
// {"message":{"content":"<fifo>\n","role":"user"},…}; the script cuts the
// path out of it with parameter expansion, so no other process runs.
const providerScript = "#!/bin/sh\nread -r line\nfifo=${line#*\\\"content\\\":\\\"}\nfifo=${fifo%%\\\\n*}\nexec cat \"$fifo\"\n"

// gatewayEnv is one real redis-server, one worker running providerScript
// as its Claude binary, and one gateway serving /ws on 127.0.0.1.
type gatewayEnv struct {
	wsURL  string
	dir    string // the workspace
	fifos  string // where the FIFOs are made
	catExe string
	rdb    redis.UniversalClient // for INFO
	// workerPID and servers are set when the worker and the gateway are
	// processes of their own.
	workerPID   int
	servers     []int
	serverNames []string
}

// inProcess starts the gateway and the worker in this process.
func inProcess(queueSize int) func(*testing.B) *gatewayEnv {
	return func(b *testing.B) *gatewayEnv { return startGatewayEnv(b, queueSize) }
}

// startGatewayProcesses runs `agentgate worker` (with providerScript as its
// Claude) and `agentgate gateway` as processes on a real redis-server.
func startGatewayProcesses(b *testing.B) *gatewayEnv {
	b.Helper()
	bin := agentgateBinary(b)
	srv := storetest.StartServer(b)
	dir, tmp := b.TempDir(), b.TempDir()
	claude := filepath.Join(tmp, "claude")
	if err := os.WriteFile(claude, []byte(providerScript), 0o755); err != nil {
		b.Fatal(err)
	}
	catExe, err := exec.LookPath("cat")
	if err == nil {
		catExe, err = filepath.EvalSymlinks(catExe)
	}
	if err != nil {
		b.Fatal(err)
	}
	addr := freeLoopback(b)
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + tmp, "AGENTGATE_REDIS_URL=" + srv.URL,
		"AGENTGATE_JWT_SECRET=" + string(benchSecret), "AGENTGATE_WORKSPACES=" + dir,
		"AGENTGATE_KEY_PREFIX=" + storetest.Prefix(), "AGENTGATE_LOG_LEVEL=warn", "AGENTGATE_LISTEN=" + addr,
		"AGENTGATE_CLAUDE_BIN=" + claude, "AGENTGATE_WATCH_INTERVAL=0",
	}
	env = append(env, benchLimitEnv...)
	// BENCH_SERVER_GOMAXPROCS sets GOMAXPROCS of both processes.
	if n := os.Getenv("BENCH_SERVER_GOMAXPROCS"); n != "" {
		env = append(env, "GOMAXPROCS="+n)
	}
	// BENCH_SERVER_GODEBUG sets GODEBUG of both processes (gctrace=1 lines
	// their collections up with the latency of BENCH_DUMP).
	if v := os.Getenv("BENCH_SERVER_GODEBUG"); v != "" {
		env = append(env, "GODEBUG="+v)
	}
	// BENCH_WORKER_GOGC and BENCH_GATEWAY_GOGC set GOGC of each process, to
	// see whose garbage collection makes the latency tail;
	// BENCH_WORKER_GOMEMLIMIT sets the worker's GOMEMLIMIT.
	worker := startAgentgate(b, bin, "worker", append(env, "GOGC="+os.Getenv("BENCH_WORKER_GOGC"),
		"GOMEMLIMIT="+os.Getenv("BENCH_WORKER_GOMEMLIMIT")))
	gateway := startAgentgate(b, bin, "gateway", append(env, "GOGC="+os.Getenv("BENCH_GATEWAY_GOGC")))
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	b.Cleanup(func() { _ = rdb.Close() })
	waitFor(b, 20*time.Second, "gateway ready and a worker registered", func() bool {
		n, _ := rdb.Keys(context.Background(), "*:worker:*").Result()
		ws, err := dialWS("ws://" + addr + "/ws")
		if err == nil {
			ws.Close()
		}
		return err == nil && len(n) > 0
	})
	return &gatewayEnv{wsURL: "ws://" + addr + "/ws", dir: dir, fifos: tmp, catExe: catExe, rdb: rdb,
		workerPID: worker.Process.Pid, servers: []int{worker.Process.Pid, gateway.Process.Pid}, serverNames: []string{"worker", "gateway"}}
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func startGatewayEnv(b *testing.B, queueSize int) *gatewayEnv {
	b.Helper()
	return startGatewayEnvOn(b, storetest.StartServer(b).URL, queueSize)
}

// startGatewayEnvOn is startGatewayEnv on the Redis (or Redis Cluster) at
// url.
func startGatewayEnvOn(b *testing.B, url string, queueSize int) *gatewayEnv {
	b.Helper()
	prefix := storetest.Prefix()
	// The worker and the gateway have a store (a connection pool) each, as
	// separate processes would.
	wkStore := storetest.New(b, url, store.Config{Prefix: prefix})
	gwStore := storetest.New(b, url, store.Config{Prefix: prefix})
	dir, tmp := b.TempDir(), b.TempDir()
	bin := filepath.Join(tmp, "claude")
	if err := os.WriteFile(bin, []byte(providerScript), 0o755); err != nil {
		b.Fatal(err)
	}
	catExe, err := exec.LookPath("cat")
	if err == nil {
		catExe, err = filepath.EvalSymlinks(catExe)
	}
	if err != nil {
		b.Fatal(err)
	}
	w, err := workers.New(workers.Config{
		Store:      wkStore,
		Providers:  map[app.Provider]workers.Provider{app.Claude: workers.ClaudeProvider{}},
		Bins:       map[app.Provider]string{app.Claude: bin},
		Workspaces: app.Workspaces{Roots: []string{dir}},
		MaxRuns:    benchLimit,
		Logger:     quietLogger(),
	})
	if err != nil {
		b.Fatal(err)
	}
	wctx, stopWorker := context.WithCancel(context.Background())
	workerDone := make(chan struct{})
	go func() { defer close(workerDone); _ = w.Run(wctx) }()
	b.Cleanup(func() { stopWorker(); <-workerDone }) // after the gateway's

	_, wsURL := startGateway(b, gwStore, dir, queueSize)
	// Commands are refused until the worker's first heartbeat is in.
	waitFor(b, 10*time.Second, "the worker's heartbeat", func() bool {
		live, err := gwStore.LiveWorkers(context.Background())
		return err == nil && len(live) > 0
	})
	return &gatewayEnv{wsURL: wsURL, dir: dir, fifos: tmp, catExe: catExe, rdb: storetest.Client(b, url)}
}

// startGateway serves a gateway on st at 127.0.0.1 until the benchmark ends
// and returns it with the URL of its /ws.
func startGateway(b *testing.B, st *store.Store, workspace string, queueSize int) (*handlers.Server, string) {
	b.Helper()
	gw, err := handlers.New(handlers.Config{
		Store: st, Auth: &handlers.Auth{Mode: handlers.AuthJWT, Secret: benchSecret},
		Workspaces: app.Workspaces{Roots: []string{workspace}}, QueueSize: queueSize, Logger: quietLogger(),
		MaxSocketsPerUser: benchLimit, MaxFrameRate: benchLimit, MaxRunsPerUser: benchLimit,
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = gw.Run(ctx) }()
	ts := httptest.NewServer(gw.Handler())
	b.Cleanup(func() {
		gw.Drain()
		ts.Close()
		stop()
		<-done
	})
	return gw, "ws" + strings.TrimPrefix(ts.URL, "http") + "/ws"
}

var dialer = &websocket.Dialer{HandshakeTimeout: 30 * time.Second}

// benchToken is the token of every benchmark socket (user "bench").
var benchToken = sync.OnceValue(func() string {
	tok, err := handlers.IssueToken(benchSecret, "bench", false, 24*time.Hour)
	if err != nil {
		panic(err)
	}
	return tok
})

// dialWS opens an authenticated /ws socket.
func dialWS(wsURL string) (*websocket.Conn, error) {
	ws, resp, err := dialer.Dial(wsURL+"?delivery=immediate&token="+benchToken(), nil)
	if resp != nil && resp.Body != nil {
		if err != nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			err = fmt.Errorf("%w: %s %s", err, resp.Status, bytes.TrimSpace(body))
		}
		resp.Body.Close()
	}
	return ws, err
}

func (e *gatewayEnv) dial() (*websocket.Conn, error) { return dialWS(e.wsURL) }

// streamClient is one chat socket following one session of a round.
type streamClient struct {
	ws       *websocket.Conn
	accepted chan struct{}
	done     chan struct{} // closed at the session's complete or the socket's end
	texts    atomic.Int64  // text events received
	warm     atomic.Bool   // the warm-up event arrived

	// Written by the reader goroutine, read after done.
	lat       []int64
	recv      []int64 // receive times, with BENCH_DUMP only
	lastRecv  atomic.Int64
	completed bool
	err       error
	errorText string
}

var (
	kindText     = []byte(`"kind":"text"`)
	kindComplete = []byte(`"kind":"complete"`)
	typeAccepted = []byte(`"type":"session-accepted"`)
	typeError    = []byte(`"type":"error"`)
	contentKey   = []byte(`"content":"`)
)

// contentTime reads the UnixNano time carried by a text frame.
func contentTime(frame []byte) (int64, bool) {
	i := bytes.Index(frame, contentKey)
	if i < 0 {
		return 0, false
	}
	rest := frame[i+len(contentKey):]
	j := bytes.IndexByte(rest, '"')
	if j <= 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(rest[:j]), 10, 64)
	return n, err == nil
}

// read consumes frames until the session's complete (or the socket's end),
// timing every text event.
func (c *streamClient) read() {
	defer close(c.done)
	acceptedOnce := false
	for {
		_, data, err := c.ws.ReadMessage()
		now := time.Now().UnixNano()
		if err != nil {
			c.err = err
			return
		}
		switch {
		case bytes.Contains(data, kindText):
			if ts, ok := contentTime(data); !ok {
				c.warm.Store(true)
			} else {
				c.lat = append(c.lat, now-ts)
				if dumpOn {
					c.recv = append(c.recv, now)
				}
				c.lastRecv.Store(now)
				c.texts.Add(1)
			}
		case bytes.Contains(data, kindComplete):
			c.completed = true
			return
		case !acceptedOnce && bytes.Contains(data, typeAccepted):
			acceptedOnce = true
			close(c.accepted)
		case bytes.Contains(data, typeError):
			c.errorText = string(data)
			if !acceptedOnce {
				return // the command was refused
			}
		}
	}
}

func (c *streamClient) ended() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// emitter feeds one session's provider through its FIFO.
type emitter struct {
	path    string
	f       *os.File
	written int64
}

// open reports whether the provider (cat) has opened the FIFO for reading,
// and opens it for writing then.
func (e *emitter) open() (bool, error) {
	f, err := os.OpenFile(e.path, os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ENXIO) {
		return false, nil // no reader yet
	}
	if err != nil {
		return false, err
	}
	e.f = f
	return true, nil
}

const (
	linePrefix = `{"type":"assistant","message":{"content":[{"type":"text","text":"`
	lineSuffix = "\"}]}}\n"
)

// warmUp writes one untimed line, so that the measured events do not pay
// for the first use of the run's pipes, buffers and socket.
func (e *emitter) warmUp() error {
	_, err := e.f.Write([]byte(linePrefix + "warm-up" + lineSuffix))
	return err
}

// emit writes the Claude assistant lines of session s on schedule sc, one
// write each; every line carries the time it was written.
func (e *emitter) emit(sc schedule, s int) error {
	const prefix, suffix = linePrefix, lineSuffix
	buf := make([]byte, 0, 128)
	for i := 0; sc.wait(s, i); i++ {
		buf = append(buf[:0], prefix...)
		buf = strconv.AppendInt(buf, time.Now().UnixNano(), 10)
		buf = append(buf, suffix...)
		if _, err := e.f.Write(buf); err != nil {
			return err
		}
		e.written++
	}
	return nil
}

// benchGateway runs rounds of the fan-out through a gateway: each round
// opens one socket per session, starts a run on each (claude-command),
// passes one untimed warm-up event through each, then every emitter writes
// on the same schedule while the sockets read; the round is measured until
// the last event was received.
func benchGateway(b *testing.B, sessions int, m mode, start func(*testing.B) *gatewayEnv) {
	env := start(b)
	var lat latencies
	var delivered, expected, closed int64
	var span, teardown, teardownCPU time.Duration
	cpu := &cpuMeter{exe: env.catExe, rdb: env.rdb, emitParent: env.workerPID, servers: env.servers, serverNames: env.serverNames}
	quiesce(time.Minute)
	b.ResetTimer()
	for round := range b.N {
		b.StopTimer()
		clients := make([]*streamClient, sessions)
		emitters := make([]*emitter, sessions)
		for i := range emitters {
			emitters[i] = &emitter{path: filepath.Join(env.fifos, fmt.Sprintf("r%d-%d", round, i))}
			if err := syscall.Mkfifo(emitters[i].path, 0o600); err != nil {
				b.Fatal(err)
			}
		}
		err := openAll(sessions, func(i int) error {
			ws, err := env.dial()
			if err != nil {
				return err
			}
			c := &streamClient{ws: ws, accepted: make(chan struct{}), done: make(chan struct{})}
			clients[i] = c
			cmd, _ := json.Marshal(map[string]any{
				"type": "claude-command", "command": emitters[i].path + "\n",
				"options": map[string]any{"projectPath": env.dir},
			})
			go c.read()
			return ws.WriteMessage(websocket.TextMessage, cmd)
		})
		if err != nil {
			b.Fatalf("open sockets: %v", err)
		}
		for _, c := range clients {
			select {
			case <-c.accepted:
			case <-c.done:
				b.Fatalf("socket ended before session-accepted: %v %s", c.err, c.errorText)
			case <-time.After(roundTimeout):
				b.Fatalf("no session-accepted: %s", c.errorText)
			}
		}
		// Every provider runs once it has opened its FIFO.
		for _, e := range emitters {
			waitFor(b, roundTimeout, "the provider to open "+e.path, func() bool {
				ok, err := e.open()
				if err != nil {
					b.Fatal(err)
				}
				return ok
			})
			if err := e.warmUp(); err != nil {
				b.Fatal(err)
			}
		}
		for _, c := range clients {
			waitFor(b, roundTimeout, "the warm-up events", func() bool { return c.warm.Load() || c.ended() })
		}

		release := make(chan struct{})
		var emitWG sync.WaitGroup
		var sc schedule
		for i, e := range emitters {
			emitWG.Add(1)
			go func() {
				defer emitWG.Done()
				<-release
				if err := e.emit(sc, i); err != nil {
					b.Errorf("emit: %v", err)
				}
			}()
		}
		cpu.mark()
		start := time.Now()
		if m.paced {
			// The paced schedule starts a little later, once every
			// emitter goroutine is awake.
			start = start.Add(5 * time.Millisecond)
		}
		sc = newSchedule(sessions, m, start)
		b.StartTimer()
		close(release)
		emitWG.Wait()
		for i, c := range clients {
			want := emitters[i].written
			if !waitUntil(lossWait, func() bool { return c.texts.Load() >= want || c.ended() }) {
				b.Logf("session %d: %d of %d events after %s", i, c.texts.Load(), want, lossWait)
			}
			expected += want
		}
		b.StopTimer()
		cpu.end()
		// Closing the FIFOs ends the providers; their runs complete.
		stopAt, cpuAt := time.Now(), rusage(syscall.RUSAGE_SELF)
		for _, e := range emitters {
			_ = e.f.Close()
		}
		for _, c := range clients {
			select {
			case <-c.done:
			case <-time.After(roundTimeout):
				b.Fatalf("session did not complete within %s", roundTimeout)
			}
		}
		teardown += time.Since(stopAt)
		// The worker keeps working on the ended runs after their complete
		// (process-tree kills); wait for it to finish and count its CPU.
		quiesce(time.Minute)
		teardownCPU += rusage(syscall.RUSAGE_SELF) - cpuAt
		last := sc.start.UnixNano()
		if dumpOn {
			dump(clients, sc.start)
		}
		for _, c := range clients {
			lat.add(c.lat)
			delivered += c.texts.Load()
			last = max(last, c.lastRecv.Load())
			if !c.completed {
				closed++
				b.Logf("socket ended early: %v", c.err)
			}
			_ = c.ws.Close()
		}
		span += time.Duration(last - sc.start.UnixNano())
	}
	evps := reportFanout(b, &lat, delivered, expected, span)
	b.ReportMetric(float64(closed), "closed_sockets")
	b.ReportMetric(teardown.Seconds()*1000/float64(b.N), "exit_to_complete_ms")
	b.ReportMetric(teardownCPU.Seconds()/float64(b.N), "exit_cpu_s")
	cpu.report(b.ReportMetric)
	cpu.reportPerEvent(b.ReportMetric, delivered)
	cpu.reportPerEventInProcess(b.ReportMetric, delivered)
	results.Lock()
	raw := results.raw[configName(sessions, m.name)]
	results.Unlock()
	if raw > 0 {
		b.ReportMetric(evps/raw, "x_raw")
	}
}

var dumpOn = os.Getenv("BENCH_DUMP") != ""

var processStart = time.Now()

// dump writes every sample of a round (session, index, receive time in µs
// since start, latency in µs) to $BENCH_DUMP, to see where latency builds up.
func dump(clients []*streamClient, start time.Time) {
	f, err := os.Create(os.Getenv("BENCH_DUMP"))
	if err != nil {
		return
	}
	fmt.Fprintf(os.Stderr, "dump: round started %.3fs after the process\n", start.Sub(processStart).Seconds())
	defer f.Close()
	for i, c := range clients {
		for j := range c.lat {
			fmt.Fprintf(f, "%d %d %d %d\n", i, j, (c.recv[j]-start.UnixNano())/1e3, c.lat[j]/1e3)
		}
	}
}
