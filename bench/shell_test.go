package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sys/unix"

	"github.com/agentgate/agentgate/handlers"
	"github.com/agentgate/agentgate/store/storetest"
)

// shellRig is a real gateway process and a real worker process on a real
// redis-server, for the terminal benchmark; the clients are in this process.
type shellRig struct {
	addr, token, project string
	gateway, worker      *exec.Cmd
	rdb                  *redis.Client
	// ttyd, when set, is a ttyd process serving the same shell instead
	// (BenchmarkShellTTYD): no gateway, worker or Redis.
	ttyd *exec.Cmd
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// agentgateBinary builds cmd/agentgate once per benchmark run, as the
// Dockerfile builds it: static (no cgo, so no dynamic loader and libc at
// each start) and without symbol tables.
func agentgateBinary(b *testing.B) string {
	b.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "agentgate-bench-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "agentgate")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", builtBin, "../cmd/agentgate")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		cmd.Stderr = os.Stderr
		buildErr = cmd.Run()
	})
	if buildErr != nil {
		b.Fatalf("build agentgate: %v", buildErr)
	}
	return builtBin
}

// startAgentgate starts `agentgate MODE` with env; it is stopped by its PID
// when the benchmark ends (SIGTERM, then SIGKILL after 5 s).
func startAgentgate(b *testing.B, bin, mode string, env []string) *exec.Cmd {
	b.Helper()
	cmd := exec.Command(bin, mode)
	cmd.Env = env
	// $BENCH_PROFILE_DIR collects a CPU profile of each agentgate process,
	// named after the benchmark and the process's role.
	if dir := os.Getenv("BENCH_PROFILE_DIR"); dir != "" {
		name := strings.NewReplacer("/", "_", "=", "-").Replace(b.Name()) + "." + mode + ".pprof"
		cmd.Env = append(cmd.Env, "AGENTGATE_CPU_PROFILE="+filepath.Join(dir, name))
	}
	cmd.Stderr = os.Stderr
	startStopped(b, cmd)
	return cmd
}

// startStopped starts cmd, killed if the benchmark dies, and stops it when
// the benchmark ends: SIGTERM, then SIGKILL after 5 s.
func startStopped(b *testing.B, cmd *exec.Cmd) {
	b.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
}

func newShellRig(b *testing.B) *shellRig {
	b.Helper()
	bin := agentgateBinary(b)
	srv := storetest.StartServer(b)
	root := b.TempDir()
	r := &shellRig{addr: freeLoopback(b), project: filepath.Join(root, "p"), rdb: redis.NewClient(&redis.Options{Addr: srv.Addr})}
	b.Cleanup(func() { _ = r.rdb.Close() })
	if err := os.MkdirAll(r.project, 0o755); err != nil {
		b.Fatal(err)
	}
	secret := "bench-secret-0123456789-0123456789"
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + root, "AGENTGATE_REDIS_URL=" + srv.URL, "AGENTGATE_JWT_SECRET=" + secret,
		"AGENTGATE_WORKSPACES=" + root, "AGENTGATE_KEY_PREFIX=" + storetest.Prefix(), "AGENTGATE_LOG_LEVEL=warn",
		"AGENTGATE_LISTEN=" + r.addr, "AGENTGATE_SHELL_DETACH_TIMEOUT=5s",
	}
	env = append(env, benchLimitEnv...)
	// BENCH_SERVER_GOMAXPROCS sets GOMAXPROCS of both processes.
	if n := os.Getenv("BENCH_SERVER_GOMAXPROCS"); n != "" {
		env = append(env, "GOMAXPROCS="+n)
	}
	// The worker takes keystrokes and acks on its link, as the worker
	// image does; BENCH_SHELL_LINK=off sends them through its inbox.
	link := "127.0.0.1:0"
	if os.Getenv("BENCH_SHELL_LINK") == "off" {
		link = "off"
	}
	// BENCH_SHELL_WINDOW sets the worker's --shell-window.
	workerEnv := append(env, "AGENTGATE_LINK_LISTEN="+link, "ZPAUSE="+os.Getenv("ZPAUSE"))
	if w := os.Getenv("BENCH_SHELL_WINDOW"); w != "" {
		workerEnv = append(workerEnv, "AGENTGATE_SHELL_WINDOW="+w)
	}
	r.worker = startAgentgate(b, bin, "worker", workerEnv)
	// BENCH_GATEWAY_GOGC sets the gateway's GOGC, as in BenchmarkFanout.
	r.gateway = startAgentgate(b, bin, "gateway", append(env, "GOGC="+os.Getenv("BENCH_GATEWAY_GOGC")))
	var err error
	if r.token, err = handlers.IssueToken([]byte(secret), "bench", false, time.Hour); err != nil {
		b.Fatal(err)
	}
	waitFor(b, 20*time.Second, "gateway ready and a worker registered", func() bool {
		n, _ := r.rdb.Keys(context.Background(), "*:worker:*").Result()
		c, _, err := websocket.DefaultDialer.Dial("ws://"+r.addr+"/shell?token="+r.token, nil)
		if err == nil {
			c.Close()
		}
		return err == nil && len(n) > 0
	})
	return r
}

// termClient is a /shell client that keeps the output it has read.
type termClient struct {
	ws     *websocket.Conn
	out    bytes.Buffer
	bytes  int64
	frames int64
	// wire counts the bytes of every message read, as sent.
	wire int64
	// pace is how long the client spends on each output frame, like a
	// browser's terminal rendering it; zero reads as fast as it can.
	pace time.Duration
	// acks makes the client acknowledge each frame once handled, as a
	// terminal does in its write callback (the /shell ack message).
	acks bool
	// ttyd speaks ttyd's protocol instead of /shell's.
	ttyd bool
}

func (r *shellRig) open(b *testing.B, shellID string) *termClient {
	b.Helper()
	if r.ttyd != nil {
		return r.openTTYD(b)
	}
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+r.addr+"/shell?token="+r.token, nil)
	if err != nil {
		b.Fatal(err)
	}
	c := &termClient{ws: ws}
	c.send(b, map[string]any{
		"type": "init", "projectPath": r.project, "provider": "plain-shell", "isPlainShell": true,
		"initialCommand": "bash --norc --noprofile -i", "shellId": shellID, "cols": 200, "rows": 50,
	})
	return c
}

// input types data into the terminal.
func (c *termClient) input(b *testing.B, data string) {
	if !c.ttyd {
		c.send(b, map[string]any{"type": "input", "data": data})
		return
	}
	if err := c.ws.WriteMessage(websocket.BinaryMessage, append([]byte{ttydInput}, data...)); err != nil {
		b.Fatal(err)
	}
}

func (c *termClient) send(b *testing.B, v any) {
	data, _ := json.Marshal(v)
	if err := c.ws.WriteMessage(websocket.TextMessage, data); err != nil {
		b.Fatal(err)
	}
}

// ready waits until the shell runs commands.
func (c *termClient) ready(b *testing.B) {
	b.Helper()
	c.input(b, "echo READY-$((1+1))\r")
	c.readUntil(b, "READY-2")
}

// readUntil reads output frames until the output read since the last call
// contains marker; it keeps only a tail of the text.
func (c *termClient) readUntil(b *testing.B, marker string) {
	b.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(60 * time.Second))
	var f struct {
		Type string `json:"type"`
		Data string `json:"data"`
		Seq  int64  `json:"seq"`
	}
	for !bytes.Contains(c.out.Bytes(), []byte(marker)) {
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			if c.ttyd && errors.Is(err, syscall.ECONNRESET) {
				// Seen in three rounds of five with the client that reads
				// 2 ms a frame and never pauses ttyd: the peer's doing,
				// reported rather than failing the whole comparison.
				b.Skipf("ttyd reset the connection (waiting for %q): %v", marker, err)
			}
			b.Fatalf("read: %v (waiting for %q)", err, marker)
		}
		c.wire += int64(len(data))
		f.Type, f.Data, f.Seq = "", "", 0
		if c.ttyd {
			if len(data) == 0 || data[0] != ttydOutput {
				continue
			}
			f.Data = string(data[1:])
		} else if err := json.Unmarshal(data, &f); err != nil || f.Type != "output" {
			continue
		}
		c.bytes += int64(len(f.Data))
		c.frames++
		if c.pace > 0 {
			time.Sleep(c.pace)
		}
		if c.acks && f.Seq > 0 {
			c.send(b, map[string]any{"type": "ack", "seq": f.Seq})
		}
		if c.out.Len() > 1<<16 {
			tail := append([]byte(nil), c.out.Bytes()[c.out.Len()-256:]...)
			c.out.Reset()
			c.out.Write(tail)
		}
		c.out.WriteString(f.Data)
	}
	c.out.Reset()
}

// shellThroughput runs cmd in a terminal b.N times and reports the output
// rate, the CPU of the gateway and worker processes and of redis-server per
// run and per MB, and the frames and Redis calls per run.
func shellThroughput(b *testing.B, r *shellRig, cmd string) {
	ctx := context.Background()
	c := r.open(b, fmt.Sprintf("flood-%d", time.Now().UnixNano()))
	defer c.ws.Close()
	c.ready(b)
	var total, frames int64
	var elapsed, serverCPU, gatewayCPU, redisCPUUsed time.Duration
	calls0 := r.redisCalls(ctx)
	for i := 0; i < b.N; i++ {
		c.bytes, c.frames = 0, 0
		gw0, wk0 := r.serverCPU()
		cpu0 := gw0 + wk0
		red0 := r.redisCPU(ctx)
		t0 := time.Now()
		c.input(b, fmt.Sprintf("%s; echo END%d-$((40+2))\r", cmd, i))
		c.readUntil(b, fmt.Sprintf("END%d-42", i))
		elapsed += time.Since(t0)
		gw, wk := r.serverCPU()
		serverCPU += gw + wk - cpu0
		gatewayCPU += gw - gw0
		redisCPUUsed += r.redisCPU(ctx) - red0
		total += c.bytes
		frames += c.frames
	}
	perRun, mb := float64(b.N), float64(total)/1e6
	b.ReportMetric(mb/elapsed.Seconds(), "MB/s")
	b.ReportMetric(serverCPU.Seconds()/perRun, "server-cpu-s/run")
	b.ReportMetric(redisCPUUsed.Seconds()/perRun, "redis-cpu-s/run")
	b.ReportMetric((serverCPU+redisCPUUsed).Seconds()*1e3/mb, "cpu-ms/MB")
	b.ReportMetric(gatewayCPU.Seconds()*1e3/mb, "gateway-cpu-ms/MB")
	b.ReportMetric((serverCPU-gatewayCPU).Seconds()*1e3/mb, "worker-cpu-ms/MB")
	b.ReportMetric(redisCPUUsed.Seconds()*1e3/mb, "redis-cpu-ms/MB")
	b.ReportMetric(mb/perRun, "MB/run")
	b.ReportMetric(float64(frames)/perRun, "frames/run")
	for cmd, n := range r.redisCalls(ctx) {
		if d := n - calls0[cmd]; d > int64(b.N) {
			b.Logf("redis %s: %.0f calls/run", cmd, float64(d)/perRun)
		}
	}
}

// serverCPU reads the CPU time the gateway and the worker (ttyd: ttyd and
// nothing) have used.
func (r *shellRig) serverCPU() (gateway, worker time.Duration) {
	if r.ttyd != nil {
		return procCPU(r.ttyd.Process.Pid), 0
	}
	return procCPU(r.gateway.Process.Pid), procCPU(r.worker.Process.Pid)
}

// redisCPU reads the CPU time redis-server has used (none for ttyd).
func (r *shellRig) redisCPU(ctx context.Context) time.Duration {
	if r.rdb == nil {
		return 0
	}
	return redisCPU(ctx, r.rdb)
}

// redisCalls reads the calls of each command from INFO commandstats.
func (r *shellRig) redisCalls(ctx context.Context) map[string]int64 {
	if r.rdb == nil {
		return nil
	}
	info, _ := r.rdb.Info(ctx, "commandstats").Result()
	calls := map[string]int64{}
	for _, line := range strings.Split(info, "\r\n") {
		name, rest, ok := strings.Cut(strings.TrimPrefix(line, "cmdstat_"), ":calls=")
		if !ok {
			continue
		}
		n, _, _ := strings.Cut(rest, ",")
		calls[name], _ = strconv.ParseInt(n, 10, 64)
	}
	return calls
}

// procCPU reads a process' user+system CPU time from /proc/PID/stat.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ = 100
}

// BenchmarkShell measures /shell over loopback against a gateway process
// and a worker process on redis-server: the echo of a typed command line,
// the throughput of 20 MB of text, the time from connect to the first
// output, and the CPU the server processes spend per 20 MB.
func BenchmarkShell(b *testing.B) { shellBenchmarks(b, newShellRig(b)) }

// shellBenchmarks runs the terminal workloads against r.
func shellBenchmarks(b *testing.B, r *shellRig) {
	b.Run("echo", func(b *testing.B) { echoLatency(b, r) })

	// The same echo in a second terminal while a first one floods (`yes`,
	// read as fast as the client can): what one user's flood costs the
	// keystrokes of another on the same server.
	b.Run("echo-beside-flood", func(b *testing.B) {
		flood := r.open(b, fmt.Sprintf("beside-%d", time.Now().UnixNano()))
		flood.ready(b)
		flood.input(b, "yes\r")
		stopped := make(chan struct{})
		go func() {
			defer close(stopped)
			for {
				_ = flood.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, _, err := flood.ws.ReadMessage(); err != nil {
					return
				}
			}
		}()
		defer func() {
			flood.input(b, "\x03")
			flood.ws.Close()
			<-stopped
		}()
		echoLatency(b, r)
	})

	// The workloads of ttyd's comparison: 20 MB of 100-column lines, and
	// seq's 14.9 MB of short lines.
	for _, w := range []struct{ name, cmd string }{
		{"fold-20MB", "head -c 20000000 /dev/zero | tr '\\0' a | fold -w 100"},
		{"seq-2M", "seq 1 2000000"},
	} {
		b.Run("throughput/"+w.name, func(b *testing.B) { shellThroughput(b, r, w.cmd) })
	}

	// A flood (`yes`), then Ctrl-C: how long until the shell answers again,
	// and how much flood output still arrives after the Ctrl-C was sent.
	for _, client := range []struct {
		pace time.Duration
		acks bool
	}{{0, false}, {2 * time.Millisecond, false}, {2 * time.Millisecond, true}} {
		if client.acks && r.ttyd != nil {
			continue // acks are /shell's; ttyd's client pauses and resumes instead
		}
		b.Run(fmt.Sprintf("flood-ctrl-c/client-pace=%v/acks=%v", client.pace, client.acks), func(b *testing.B) {
			floodCtrlC(b, r, client.pace, client.acks)
		})
	}

	b.Run("first-output", func(b *testing.B) {
		var lat latencies
		samples := make([]int64, 0, b.N)
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			c := r.open(b, fmt.Sprintf("first-%d-%d", time.Now().UnixNano(), i))
			// The first frame is the gateway's welcome; wait for the
			// terminal's own first chunk (the prompt).
			for {
				_, data, err := c.ws.ReadMessage()
				if err != nil {
					b.Fatal(err)
				}
				if bytes.Contains(data, []byte(`"seq":`)) || (r.ttyd != nil && len(data) > 0 && data[0] == ttydOutput) {
					break
				}
			}
			samples = append(samples, int64(time.Since(t0)))
			c.input(b, "exit\r")
			c.ws.Close()
		}
		lat.add(samples)
		b.ReportMetric(lat.quantile(0.5), "p50-ms")
		b.ReportMetric(lat.quantile(0.99), "p99-ms")
	})
}

// echoLatency types b.N command lines into a terminal of its own and
// reports the time from each line's send to its command's output.
func echoLatency(b *testing.B, r *shellRig) {
	c := r.open(b, fmt.Sprintf("echo-%d", time.Now().UnixNano()))
	defer c.ws.Close()
	c.ready(b)
	var lat latencies
	samples := make([]int64, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// The marker is printed by the command, not by the terminal's
		// echo of the typed line.
		t0 := time.Now()
		c.input(b, fmt.Sprintf("echo X%d-$((%d+1))\r", i, i))
		c.readUntil(b, fmt.Sprintf("X%d-%d", i, i+1))
		samples = append(samples, int64(time.Since(t0)))
	}
	b.StopTimer()
	lat.add(samples)
	b.ReportMetric(lat.quantile(0.5), "p50-ms")
	b.ReportMetric(lat.quantile(0.99), "p99-ms")
}

func freeLoopback(b *testing.B) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// floodCtrlC runs `yes`, reads 4 MB of it, then sends Ctrl-C and a command:
// how long until the command answers, and how much flood output the client
// still reads after the Ctrl-C, for a client that spends pace per frame and
// acknowledges what it handled or not. Of what it reads after, the bytes
// already in its socket's receive queue when it typed the key
// (KiB-unread-at-key, as sent, headers aside) were out of the server's
// hands; KiB-sent-after is the rest, what the server sent after the key.
func floodCtrlC(b *testing.B, r *shellRig, pace time.Duration, acks bool) {
	c := r.open(b, fmt.Sprintf("yes-%d", time.Now().UnixNano()))
	defer c.ws.Close()
	c.ready(b)
	c.pace, c.acks = pace, acks
	var lat latencies
	samples := make([]int64, 0, b.N)
	var after, unread, sentAfter, framesAfter int64
	for i := 0; i < b.N; i++ {
		c.input(b, "yes\r")
		c.bytes = 0
		for c.bytes < 4<<20 {
			c.readUntil(b, "y\r\ny\r\n")
		}
		c.bytes = 0
		queued, wire, frames := c.unread(b), c.wire, c.frames
		t0 := time.Now()
		c.input(b, "\x03")
		c.input(b, fmt.Sprintf("echo BACK%d-$((1+1))\r", i))
		c.readUntil(b, fmt.Sprintf("BACK%d-2", i))
		samples = append(samples, int64(time.Since(t0)))
		after += c.bytes
		unread += queued
		sentAfter += max(0, c.wire-wire-queued)
		framesAfter += c.frames - frames
	}
	lat.add(samples)
	b.ReportMetric(lat.quantile(0.5), "p50-ms")
	b.ReportMetric(lat.quantile(0.99), "p99-ms")
	b.ReportMetric(float64(after)/float64(b.N)/1024, "KiB-after")
	b.ReportMetric(float64(unread)/float64(b.N)/1024, "KiB-unread-at-key")
	b.ReportMetric(float64(sentAfter)/float64(b.N)/1024, "KiB-sent-after")
	b.ReportMetric(float64(framesAfter)/float64(b.N), "frames-after")
}

// unread returns the bytes waiting in the client's socket receive queue.
func (c *termClient) unread(b *testing.B) int64 {
	tc, ok := c.ws.UnderlyingConn().(*net.TCPConn)
	if !ok {
		b.Fatalf("not a TCP connection: %T", c.ws.UnderlyingConn())
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		b.Fatal(err)
	}
	var n int
	if cerr := raw.Control(func(fd uintptr) { n, err = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); cerr != nil || err != nil {
		b.Fatalf("SIOCINQ: %v %v", cerr, err)
	}
	return int64(n)
}
