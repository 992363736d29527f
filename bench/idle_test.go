package bench

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// chatSockets is the gateway's series of open /ws sockets.
const chatSockets = `agentgate_sockets{endpoint="chat"}`

// idleSockets is the number of idle sockets opened on one gateway.
const idleSockets = 10_000

// idleSettle is how long the sockets sit idle before the measurement: 3 s,
// or $BENCH_SOCKETS_SETTLE (a duration). Past 2 minutes a Go server has
// been through the runtime's periodic collection and returned what it
// freed: memory at rest rather than just after the sockets opened.
var idleSettle = func() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("BENCH_SOCKETS_SETTLE")); err == nil && d > 0 {
		return d
	}
	return 3 * time.Second
}()

// raiseNoFile raises the soft limit of open files to want (or the hard
// limit) and returns the soft limit in force.
func raiseNoFile(want uint64) uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	if lim.Cur < want {
		lim.Cur = min(want, lim.Max)
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	return lim.Cur
}

// socketCount returns how many sockets to open in this process, which also
// needs descriptors for everything else (reserve).
func socketCount(b *testing.B, want, reserve int) int {
	limit := int(raiseNoFile(uint64(want + reserve)))
	if limit >= want+reserve {
		return want
	}
	n := max(limit-reserve, 0)
	b.Logf("RLIMIT_NOFILE allows %d descriptors: opening %d sockets instead of %d", limit, n, want)
	return n
}

// openSockets opens n authenticated idle /ws sockets, 64 at a time. Nothing
// reads them: the gateway sends nothing to an idle socket before its first
// ping (25 s).
func openSockets(b *testing.B, wsURL string, n int) []*websocket.Conn {
	b.Helper()
	conns := make([]*websocket.Conn, n)
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				ws, err := dialWS(wsURL)
				if err != nil {
					failed.Store(err)
					return
				}
				conns[i] = ws
			}
		}()
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		closeSockets(conns)
		b.Fatalf("open socket: %v", err)
	}
	return conns
}

// answerPings reads every socket in the background until it closes, so
// that its pings are answered (gorilla answers them while reading) and the
// gateway keeps it open however long it sits.
func answerPings(conns []*websocket.Conn) {
	for _, ws := range conns {
		go func() {
			for {
				if _, _, err := ws.ReadMessage(); err != nil {
					return
				}
			}
		}()
	}
}

func closeSockets(conns []*websocket.Conn) {
	for _, ws := range conns {
		if ws != nil {
			_ = ws.Close()
		}
	}
}

// gatewayProcess is `agentgate gateway` run as a separate process.
type gatewayProcess struct {
	cmd  *exec.Cmd
	addr string
	log  *os.File
}

func startGatewayProcess(b *testing.B, redisURL string) *gatewayProcess {
	b.Helper()
	bin := agentgateBinary(b)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	logf, err := os.Create(filepath.Join(b.TempDir(), "gateway.log"))
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, "gateway", "--redis", redisURL, "--jwt-secret", string(benchSecret),
		"--listen", addr, "--workspaces", b.TempDir(), "--log-level", "warn")
	cmd.Env = append(os.Environ(), benchLimitEnv...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &gatewayProcess{cmd: cmd, addr: addr, log: logf}
	b.Cleanup(p.stop)
	// Ready, not only live: /healthz answers while the gateway still
	// waits for its store (and its sockets would get 503).
	waitFor(b, 30*time.Second, "the gateway's /readyz", func() bool {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// stop ends the gateway by its PID: SIGTERM, then SIGKILL after 10 s.
func (p *gatewayProcess) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
	_ = p.log.Close()
}

// rss reads VmRSS of the gateway process in bytes.
func (p *gatewayProcess) rss(b *testing.B) float64 { return procRSS(b, p.cmd.Process.Pid) }

// procRSS reads VmRSS of process pid in bytes.
func procRSS(b *testing.B, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb * 1024
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

// metrics reads the gateway's /metrics samples without labels.
func (p *gatewayProcess) metrics(b *testing.B) map[string]float64 {
	resp, err := http.Get("http://" + p.addr + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") {
			continue
		}
		if f, err := strconv.ParseFloat(val, 64); err == nil {
			out[name] = f
		}
	}
	return out
}

// BenchmarkIdleSockets measures the memory of 10,000 idle authenticated /ws
// sockets on one gateway: `agentgate gateway` runs as its own process
// against a real redis-server, the sockets are opened from this process,
// and the gateway's RSS and Go heap and stacks are read before and after.
func BenchmarkIdleSockets(b *testing.B) { benchSockets(b, false) }

// BenchmarkWatchingSockets is BenchmarkIdleSockets with every socket
// watching a session of its own (check-session-status, answered, then
// idle): what a following socket adds, its watch, its session's feed and
// the pub/sub subscription.
func BenchmarkWatchingSockets(b *testing.B) { benchSockets(b, true) }

func benchSockets(b *testing.B, watch bool) {
	n := socketCount(b, idleSockets, 200)
	redisURL := storetest.StartServer(b).URL
	var sessions []string
	if watch {
		// The gateway's key prefix, not a test's own.
		sessions = createSessions(b, storetest.New(b, redisURL, store.Config{Prefix: store.DefaultPrefix}), n+100)
	}
	for range b.N {
		b.StopTimer()
		gw := startGatewayProcess(b, redisURL)
		wsURL := "ws://" + gw.addr + "/ws"
		// Warm up: one-time allocations (pools, routes, first GC cycles).
		warm := openSockets(b, wsURL, 100)
		if watch {
			watchSessions(b, warm, sessions[n:])
		}
		closeSockets(warm)
		waitFor(b, 30*time.Second, "the warm-up sockets to close", func() bool {
			return gw.metrics(b)[chatSockets] == 0
		})
		time.Sleep(time.Second)
		rss0, m0 := gw.rss(b), gw.metrics(b)

		// Timed: opening the sockets and letting them sit idle (so one
		// op lasts more than the default -benchtime and runs once).
		steal0, total0 := machineJiffies()
		b.StartTimer()
		t0 := time.Now()
		conns := openSockets(b, wsURL, n)
		openTime := time.Since(t0)
		if watch {
			watchSessions(b, conns, sessions[:n])
		}
		waitFor(b, time.Minute, "the gateway to count every socket", func() bool {
			return gw.metrics(b)[chatSockets] == float64(n)
		})
		answerPings(conns)
		time.Sleep(idleSettle)
		b.StopTimer()
		rss1, m1 := gw.rss(b), gw.metrics(b)
		if open := m1[chatSockets]; open != float64(n) {
			b.Fatalf("%v sockets open after %s, not %d", open, idleSettle, n)
		}
		if watch && m1["agentgate_watched_sessions"] != float64(n) {
			b.Fatalf("the gateway watches %v sessions, not %d", m1["agentgate_watched_sessions"], n)
		}
		per := func(k string) float64 { return (m1[k] - m0[k]) / float64(n) }
		b.ReportMetric((rss1-rss0)/float64(n)/1024, "rss_KiB/conn")
		b.ReportMetric(per("go_memstats_heap_inuse_bytes")/1024, "heap_inuse_KiB/conn")
		b.ReportMetric(per("go_memstats_heap_alloc_bytes")/1024, "heap_alloc_KiB/conn")
		b.ReportMetric(per("go_memstats_stack_inuse_bytes")/1024, "stack_KiB/conn")
		b.ReportMetric(per("go_goroutines"), "goroutines/conn")
		// RSS follows the heap goal (twice the live heap, plus the stacks,
		// at GOGC=100) more than the heap in use at the moment.
		b.ReportMetric(per("go_memstats_next_gc_bytes")/1024, "next_gc_KiB/conn")
		// Free heap pages the runtime has not returned to the kernel yet:
		// RSS, but neither heap in use nor stacks.
		b.ReportMetric((per("go_memstats_heap_idle_bytes")-per("go_memstats_heap_released_bytes"))/1024, "heap_retained_free_KiB/conn")
		b.ReportMetric(per("go_memstats_sys_bytes")/1024, "go_sys_KiB/conn")
		b.ReportMetric(rss1/(1<<20), "rss_MiB")
		b.ReportMetric(float64(n), "sockets")
		b.ReportMetric(float64(n)/openTime.Seconds(), "opens/s")
		if steal1, total1 := machineJiffies(); total1 > total0 {
			b.ReportMetric(100*float64(steal1-steal0)/float64(total1-total0), "steal_%")
		}
		closeSockets(conns)
		gw.stop()
	}
}

// createSessions stores n sessions of the benchmark's user, each with one
// accepted run that no worker takes, and returns their ids.
func createSessions(b *testing.B, st *store.Store, n int) []string {
	ids := make([]string, n)
	project := b.TempDir()
	for i := range ids {
		ids[i] = fmt.Sprintf("watch-%05d", i)
		sess := app.Session{ID: ids[i], Owner: "bench", Provider: app.Claude, ProjectPath: project}
		job := app.Job{SessionID: ids[i], Owner: "bench", Provider: app.Claude, Command: "hi", ProjectPath: project}
		if _, err := st.Accept(context.Background(), &store.AcceptRequest{Session: sess, New: true, Job: job}); err != nil {
			b.Fatalf("create session: %v", err)
		}
	}
	return ids
}

// watchSessions makes socket i watch session i and waits for each answer.
func watchSessions(b *testing.B, conns []*websocket.Conn, ids []string) {
	for i, ws := range conns {
		if err := ws.WriteJSON(map[string]any{"type": "check-session-status", "sessionId": ids[i]}); err != nil {
			b.Fatalf("check-session-status: %v", err)
		}
	}
	for i, ws := range conns {
		for {
			var m map[string]any
			if err := ws.ReadJSON(&m); err != nil {
				b.Fatalf("socket %d: %v", i, err)
			}
			if m["type"] == "session-status" {
				if m["sessionId"] != ids[i] {
					b.Fatalf("socket %d: %v", i, m)
				}
				break
			}
		}
	}
}

// BenchmarkIdleSocketsInProcess attributes the memory of idle sockets: the
// same measurement with handlers.Server in this process (5,000 sockets:
// both ends of each need a descriptor here), every allocation sampled
// (MemProfileRate 1), and the in-use bytes of the gateway's side of the
// sockets grouped by allocation site. The client side (gorilla's Dialer)
// is left out by its stacks; goroutine stacks come from MemStats (the
// clients have no goroutines).
func BenchmarkIdleSocketsInProcess(b *testing.B) { benchSocketsInProcess(b, false) }

// BenchmarkWatchingSocketsInProcess attributes the memory of sockets that
// each watch a session of their own, as BenchmarkWatchingSockets.
func BenchmarkWatchingSocketsInProcess(b *testing.B) { benchSocketsInProcess(b, true) }

func benchSocketsInProcess(b *testing.B, watch bool) {
	n := socketCount(b, idleSockets/2, idleSockets/2+200)
	old := runtime.MemProfileRate
	runtime.MemProfileRate = 1
	defer func() { runtime.MemProfileRate = old }()
	st := storetest.New(b, storetest.StartServer(b).URL)
	var sessions []string
	if watch {
		sessions = createSessions(b, st, n+100)
	}
	for range b.N {
		b.StopTimer()
		srv, wsURL := startGateway(b, st, b.TempDir(), 0)
		warm := openSockets(b, wsURL, 100)
		if watch {
			watchSessions(b, warm, sessions[n:])
		}
		closeSockets(warm)
		waitFor(b, 30*time.Second, "the warm-up sockets to close", func() bool { return srv.Connections() == 0 })
		var ms0, ms1 runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms0)
		g0 := runtime.NumGoroutine()
		before := serverSites()

		b.StartTimer()
		peakStacks := sampleMax("/memory/classes/heap/stacks:bytes", 2*time.Millisecond)
		conns := openSockets(b, wsURL, n)
		if watch {
			watchSessions(b, conns, sessions[:n])
		}
		peak := peakStacks()
		waitFor(b, time.Minute, "the gateway to count every socket", func() bool { return srv.Connections() == n })
		time.Sleep(idleSettle)
		b.StopTimer()
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms1)
		g1 := runtime.NumGoroutine()
		after := serverSites()

		var total int64
		type site struct {
			name  string
			bytes int64
		}
		var sites []site
		for k, v := range after {
			d := v - before[k]
			total += d
			if d > 0 {
				sites = append(sites, site{k, d})
			}
		}
		slices.SortFunc(sites, func(a, b site) int { return int(b.bytes - a.bytes) })
		stack := float64(ms1.StackInuse) - float64(ms0.StackInuse)
		b.ReportMetric(float64(total)/float64(n)/1024, "server_heap_KiB/conn")
		b.ReportMetric(stack/float64(n)/1024, "stack_KiB/conn")
		// The handlers of a burst of messages run at once, each on a stack
		// of its own (onFreshStack): what they take at the peak stays in the
		// process, freed but not yet returned, well after.
		b.ReportMetric((float64(peak)-float64(ms0.StackInuse))/float64(n)/1024, "peak_stack_KiB/conn")
		b.ReportMetric(float64(g1-g0)/float64(n), "goroutines/conn")
		b.ReportMetric((float64(ms1.HeapInuse)-float64(ms0.HeapInuse))/float64(n)/1024, "heap_inuse_both_ends_KiB/conn")
		b.Logf("gateway-side heap in use per socket, by allocation site (%d sockets):", n)
		// Benchmark logs are cut after 10 lines.
		for _, s := range sites[:min(len(sites), 8)] {
			b.Logf("  %7.0f B  %s", float64(s.bytes)/float64(n), s.name)
		}
		closeSockets(conns)
	}
}

// serverSites sums in-use heap bytes by allocation site, leaving out the
// client side of the sockets (stacks through gorilla's Dialer) and
// allocations of the benchmark itself.
func serverSites() map[string]int64 {
	var recs []runtime.MemProfileRecord
	n, _ := runtime.MemProfile(nil, false)
	for {
		recs = make([]runtime.MemProfileRecord, n+100)
		var ok bool
		if n, ok = runtime.MemProfile(recs, false); ok {
			recs = recs[:n]
			break
		}
	}
	out := map[string]int64{}
	for _, r := range recs {
		inuse := r.InUseBytes()
		if inuse == 0 {
			continue
		}
		var names []string
		client := false
		frames := runtime.CallersFrames(r.Stack())
		for {
			f, more := frames.Next()
			if strings.Contains(f.Function, "websocket.(*Dialer)") || strings.Contains(f.Function, "bench.") {
				client = true
				break
			}
			names = append(names, f.Function)
			if !more {
				break
			}
		}
		if client {
			continue
		}
		out[siteName(names)] += inuse
	}
	return out
}

// siteName names an allocation by its innermost frames: the allocating
// function and the callers up to the first one of the gateway's own code
// or of its libraries.
func siteName(names []string) string {
	var parts []string
	for _, f := range names {
		if strings.HasPrefix(f, "runtime.") || f == "" {
			continue
		}
		parts = append(parts, shortFunc(f))
		if len(parts) == 4 || strings.Contains(f, "agentgate/") {
			break
		}
	}
	if len(parts) == 0 && len(names) > 0 {
		for _, f := range names {
			if strings.HasPrefix(f, "runtime.newproc") {
				return "runtime.newproc (goroutine descriptors)"
			}
		}
		return "runtime: " + shortFunc(names[len(names)-1])
	}
	return strings.Join(parts, " ← ")
}

func shortFunc(f string) string {
	if i := strings.LastIndexByte(f, '/'); i >= 0 {
		return f[i+1:]
	}
	return f
}

// sampleMax reads the runtime metric name (a uint64) every interval until
// the returned function is called, which returns the largest value read.
func sampleMax(name string, interval time.Duration) func() uint64 {
	var peak atomic.Uint64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		sample := []metrics.Sample{{Name: name}}
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			metrics.Read(sample)
			if v := sample[0].Value.Uint64(); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	return func() uint64 {
		close(stop)
		<-done
		return peak.Load()
	}
}
