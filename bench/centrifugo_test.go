package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/agentgate/agentgate/store/storetest"
)

// BenchmarkCentrifugo runs BenchmarkFanout's paced rounds against
// Centrifugo, the system issue 13 measures agentgate against, on this
// machine: Centrifugo with its Redis engine (a redis-server of its own),
// history and recovery on for every channel, JWT connections; one client
// socket per session subscribed to that session's channel; each event
// published through Centrifugo's HTTP API on BenchmarkFanout's schedule,
// carrying the time it was due. Latency is from that time to the client's
// read; CPU per event is centrifugo's process and redis-server's, as the
// gateway's, the worker's and Redis' are for agentgate (whose path also
// has a CLI process and its pipe). Skipped when centrifugo is not on PATH.
func BenchmarkCentrifugo(b *testing.B) {
	bin, err := exec.LookPath("centrifugo")
	if err != nil {
		b.Skip("centrifugo is not installed")
	}
	for _, n := range sessionCounts {
		for _, m := range modes {
			if !m.paced {
				continue
			}
			b.Run(configName(n, m.name), func(b *testing.B) { benchCentrifugo(b, bin, n, m) })
		}
	}
}

// centrifugoRig is a Centrifugo process on its own redis-server.
type centrifugoRig struct {
	addr, apiKey, token string
	pid                 int
	pub                 *http.Client
}

const centrifugoSecret = "bench-centrifugo-secret-0123456789"

// The text of every published event, so that the frame a client reads is
// about the size of an event frame of BenchmarkFanout (a few hundred bytes).
var centrifugoText = bytes.Repeat([]byte("x"), 120)

func startCentrifugo(b *testing.B, bin string) (*centrifugoRig, *cpuMeter) {
	b.Helper()
	srv := storetest.StartServer(b)
	dir := b.TempDir()
	r := &centrifugoRig{addr: freeLoopback(b), apiKey: "bench-api-key"}
	host, port, _ := net.SplitHostPort(r.addr)
	portNum, _ := strconv.Atoi(port)
	redisAddr := srv.URL
	cfg := map[string]any{
		"http_server": map[string]any{"address": host, "port": portNum},
		"client": map[string]any{
			"token": map[string]any{"hmac_secret_key": centrifugoSecret},
		},
		"health":   map[string]any{"enabled": true},
		"http_api": map[string]any{"key": r.apiKey},
		"engine": map[string]any{
			"type":  "redis",
			"redis": map[string]any{"address": []string{redisAddr}},
		},
		"channel": map[string]any{
			"without_namespace": map[string]any{
				"allow_subscribe_for_client": true,
				"history_size":               1000,
				"history_ttl":                "300s",
				"force_recovery":             true,
			},
		},
		"log": map[string]any{"level": "error"},
	}
	data, _ := json.Marshal(cfg)
	path := filepath.Join(dir, "config.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", path)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	startStopped(b, cmd)
	r.pid = cmd.Process.Pid
	waitFor(b, 20*time.Second, "centrifugo's /health", func() bool {
		resp, err := http.Get("http://" + r.addr + "/health")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == http.StatusOK
	})
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "bench", "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(centrifugoSecret))
	if err != nil {
		b.Fatal(err)
	}
	r.token = tok
	tr := &http.Transport{MaxIdleConnsPerHost: 256}
	b.Cleanup(tr.CloseIdleConnections)
	r.pub = &http.Client{Transport: tr}
	cpu := &cpuMeter{rdb: storetest.Client(b, srv.URL), servers: []int{r.pid}, serverNames: []string{"centrifugo"}}
	return r, cpu
}

// publish sends one event to channel ch through the HTTP API, carrying
// due (Unix nanoseconds), the time latency is counted from.
func (r *centrifugoRig) publish(ch string, due int64) error {
	body := fmt.Sprintf(`{"channel":%q,"data":{"t":%d,"text":%q}}`, ch, due, centrifugoText)
	req, err := http.NewRequest(http.MethodPost, "http://"+r.addr+"/api/publish", bytes.NewBufferString(body))
	if err != nil {
		return err
	}
	req.Header.Set("X-API-Key", r.apiKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.pub.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var out struct {
		Error *struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return fmt.Errorf("publish: %s: %w", resp.Status, err)
	}
	if resp.StatusCode != http.StatusOK || out.Error != nil {
		return fmt.Errorf("publish: %s %+v", resp.Status, out.Error)
	}
	return nil
}

// centrifugoClient is one subscriber: it connects, subscribes to one
// channel and records the latency of each publication it reads.
type centrifugoClient struct {
	ws     *websocket.Conn
	lastID int // the id of the last command sent on opening
	// ready is closed by the reply to the last command sent on opening:
	// the subscription's, or the connect's when there is no channel.
	ready chan struct{}
	// warm is set by the first publication, the round's untimed warm-up.
	warm     atomic.Bool
	sent     atomic.Int64 // publications the round sent to this channel
	got      atomic.Int64
	lastRecv atomic.Int64
	lat      []int64
	err      error
	done     chan struct{}
}

// subscribe opens a client socket, connects it and subscribes it to ch
// (connects it only when ch is empty).
func (r *centrifugoRig) subscribe(ch string) (*centrifugoClient, error) {
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+r.addr+"/connection/websocket", nil)
	if err != nil {
		return nil, err
	}
	c := &centrifugoClient{ws: ws, ready: make(chan struct{}), done: make(chan struct{}), lastID: 1}
	cmds := fmt.Sprintf(`{"id":1,"connect":{"token":%q,"name":"bench"}}`, r.token)
	if ch != "" {
		cmds += fmt.Sprintf("\n"+`{"id":2,"subscribe":{"channel":%q}}`, ch)
		c.lastID = 2
	}
	if err := ws.WriteMessage(websocket.TextMessage, []byte(cmds)); err != nil {
		ws.Close()
		return nil, err
	}
	go c.read()
	return c, nil
}

// openClients opens one client per entry of channels, subscribed to it
// (connected only, for ""), and waits for each one's last reply.
func (r *centrifugoRig) openClients(b *testing.B, channels []string) []*centrifugoClient {
	b.Helper()
	clients := make([]*centrifugoClient, len(channels))
	err := openAll(len(channels), func(i int) error {
		c, err := r.subscribe(channels[i])
		clients[i] = c
		return err
	})
	if err != nil {
		b.Fatalf("open sockets: %v", err)
	}
	for _, c := range clients {
		select {
		case <-c.ready:
		case <-c.done:
			b.Fatalf("socket ended before its reply: %v", c.err)
		case <-time.After(roundTimeout):
			b.Fatal("no reply to the socket's commands")
		}
	}
	return clients
}

// closeClients closes the clients' sockets and waits for their readers.
func closeClients(clients []*centrifugoClient) {
	for _, c := range clients {
		_ = c.ws.Close()
		<-c.done
	}
}

func (c *centrifugoClient) read() {
	defer close(c.done)
	var reply struct {
		ID    int                       `json:"id"`
		Error *struct{ Message string } `json:"error"`
		Push  *struct {
			Pub *struct {
				Data struct {
					T int64 `json:"t"`
				} `json:"data"`
			} `json:"pub"`
		} `json:"push"`
	}
	for {
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			c.err = err
			return
		}
		now := time.Now().UnixNano()
		// A frame holds one or more replies and pushes, a line each.
		for line := range bytes.SplitSeq(data, []byte("\n")) {
			if len(bytes.TrimSpace(line)) == 0 {
				continue
			}
			if string(line) == "{}" {
				// The server's ping: answer with a pong.
				if err := c.ws.WriteMessage(websocket.TextMessage, []byte("{}")); err != nil {
					c.err = err
					return
				}
				continue
			}
			reply.ID, reply.Error, reply.Push = 0, nil, nil
			if err := json.Unmarshal(line, &reply); err != nil {
				c.err = fmt.Errorf("reply %q: %w", line, err)
				return
			}
			switch {
			case reply.Error != nil:
				c.err = fmt.Errorf("reply %d: %s", reply.ID, reply.Error.Message)
				return
			case reply.ID != 0 && reply.ID == c.lastID:
				close(c.ready)
			case reply.Push != nil && reply.Push.Pub != nil && !c.warm.Load():
				c.warm.Store(true)
			case reply.Push != nil && reply.Push.Pub != nil:
				c.lat = append(c.lat, now-reply.Push.Pub.Data.T)
				c.got.Add(1)
				c.lastRecv.Store(now)
			}
		}
	}
}

func benchCentrifugo(b *testing.B, bin string, sessions int, m mode) {
	r, cpu := startCentrifugo(b, bin)
	var lat latencies
	var delivered, expected int64
	var span time.Duration
	b.ResetTimer()
	for round := range b.N {
		b.StopTimer()
		channels := make([]string, sessions)
		for i := range channels {
			channels[i] = "r" + strconv.Itoa(round) + "-" + strconv.Itoa(i)
		}
		clients := r.openClients(b, channels)
		// One untimed warm-up event through each channel, as the gateway
		// rounds pass one through each run.
		for i := range clients {
			if err := r.publish(channels[i], time.Now().UnixNano()); err != nil {
				b.Fatal(err)
			}
		}
		for _, c := range clients {
			waitFor(b, roundTimeout, "the warm-up events", func() bool { return c.warm.Load() })
		}
		quiesce(time.Minute)

		release := make(chan struct{})
		var pubWG sync.WaitGroup
		var sc schedule
		// Each publication is its own request, at most 256 in flight: one
		// channel at 10,000 a second needs a request every 100 µs, more
		// than one client waiting for each reply in turn can send.
		inflight := make(chan struct{}, 256)
		for i, c := range clients {
			pubWG.Add(1)
			go func() {
				defer pubWG.Done()
				<-release
				for j := 0; sc.wait(i, j); j++ {
					// The event's time is when it was due, not when a
					// request could be sent: a Centrifugo that falls behind
					// makes its publishers wait, and that wait is latency.
					due := sc.at(i, j).UnixNano()
					inflight <- struct{}{}
					pubWG.Add(1)
					go func() {
						defer pubWG.Done()
						defer func() { <-inflight }()
						if err := r.publish(channels[i], due); err != nil {
							b.Errorf("publish: %v", err)
							return
						}
						c.sent.Add(1)
					}()
				}
			}()
		}
		cpu.mark()
		start := time.Now().Add(5 * time.Millisecond)
		sc = newSchedule(sessions, m, start)
		b.StartTimer()
		close(release)
		pubWG.Wait()
		for i, c := range clients {
			if !waitUntil(lossWait, func() bool { return c.got.Load() >= c.sent.Load() }) {
				b.Logf("channel %d: %d of %d events after %s", i, c.got.Load(), c.sent.Load(), lossWait)
			}
			expected += c.sent.Load()
		}
		b.StopTimer()
		cpu.end()
		last := sc.start.UnixNano()
		for _, c := range clients {
			_ = c.ws.Close()
			<-c.done
			lat.add(c.lat)
			delivered += c.got.Load()
			last = max(last, c.lastRecv.Load())
		}
		span += time.Duration(last - sc.start.UnixNano())
	}
	reportFanout(b, &lat, delivered, expected, span)
	cpu.report(b.ReportMetric)
	cpu.reportPerEvent(b.ReportMetric, delivered)
}

// BenchmarkCentrifugoSockets is BenchmarkIdleSockets and
// BenchmarkWatchingSockets for Centrifugo, as BenchmarkCentrifugo runs it:
// the RSS of its process per socket, over 10,000 connected sockets
// (idle), or each also subscribed to a channel of its own (watching).
func BenchmarkCentrifugoSockets(b *testing.B) {
	bin, err := exec.LookPath("centrifugo")
	if err != nil {
		b.Skip("centrifugo is not installed")
	}
	for _, watch := range []bool{false, true} {
		name := map[bool]string{false: "idle", true: "watching"}[watch]
		b.Run(name, func(b *testing.B) {
			// Before Centrifugo starts: it inherits the raised limit.
			n := socketCount(b, idleSockets, 200)
			r, _ := startCentrifugo(b, bin)
			open := func(count int, prefix string) []*centrifugoClient {
				channels := make([]string, count)
				for i := range channels {
					if watch {
						channels[i] = prefix + strconv.Itoa(i)
					}
				}
				return r.openClients(b, channels)
			}
			for range b.N {
				b.StopTimer()
				// Warm up, as BenchmarkIdleSockets does.
				closeClients(open(100, "warm-"))
				time.Sleep(time.Second)
				rss0 := procRSS(b, r.pid)
				b.StartTimer()
				clients := open(n, "w-")
				time.Sleep(idleSettle)
				b.StopTimer()
				rss1 := procRSS(b, r.pid)
				b.ReportMetric((rss1-rss0)/float64(n)/1024, "rss_KiB/conn")
				b.ReportMetric(rss1/(1<<20), "rss_MiB")
				b.ReportMetric(float64(n), "sockets")
				closeClients(clients)
			}
		})
	}
}
