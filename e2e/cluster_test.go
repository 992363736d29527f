package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/internal/mockanthropic"
	"github.com/agentgate/agentgate/store/storetest"
)

const (
	keyPrefix = "e2e"
	jwtSecret = "e2e-secret-0123456789-0123456789-0123456789"
)

// cluster is a redis-server, the Anthropic mock, and agentgate gateways and
// workers sharing them, each a real process.
type cluster struct {
	t     *testing.T
	redis *storetest.Server // nil on a Redis Cluster
	// rcluster is the Redis Cluster the processes share, when they do
	// (onRedisCluster); redisURL is what they are given.
	rcluster *storetest.Cluster
	redisURL string
	rdb      redis.UniversalClient
	mock     *mockanthropic.Server
	claude   string // AGENTGATE_CLAUDE_BIN of the workers
	home     string // HOME of every process (workers share it so --resume works)
	tmp      string // CLAUDE_CODE_TMPDIR
	root     string // the workspace root
	project  string // a project folder under root
	// gatewayEnv is added to the environment of the gateways started next.
	gatewayEnv []string
}

// newCluster starts redis-server and the mock; gateways and workers are
// started with startGateway and startWorker. claudeBin "" means the real CLI.
// Under TestOnRedisCluster, or with AGENTGATE_E2E_REDIS=cluster, the
// processes share a six-node Redis Cluster instead, named by one seed node.
func newCluster(t *testing.T, claudeBin string, turns ...mockanthropic.Turn) *cluster {
	t.Helper()
	if onRedisCluster(t) {
		return newClusterOnRedisCluster(t, claudeBin, turns...)
	}
	return newClusterOn(t, storetest.Options{}, claudeBin, turns...)
}

// onRedisCluster reports whether t runs its processes on a Redis Cluster:
// it is a subtest of TestOnRedisCluster, or AGENTGATE_E2E_REDIS=cluster
// asks it of the whole suite.
func onRedisCluster(t *testing.T) bool {
	return strings.HasPrefix(t.Name(), "TestOnRedisCluster/") || os.Getenv("AGENTGATE_E2E_REDIS") == "cluster"
}

// newClusterOnRedisCluster is newCluster on a fresh Redis Cluster.
func newClusterOnRedisCluster(t *testing.T, claudeBin string, turns ...mockanthropic.Turn) *cluster {
	t.Helper()
	if claudeBin == "" {
		claudeBin = mockanthropic.ClaudeBin(t)
	}
	c := &cluster{t: t, claude: claudeBin, home: t.TempDir(), tmp: t.TempDir(), root: t.TempDir()}
	c.rcluster = storetest.StartCluster(t)
	c.redisURL = c.rcluster.Seed
	c.rdb = storetest.Client(t, c.redisURL)
	c.mock = mockanthropic.New(t, turns...)
	c.project = filepath.Join(c.root, "project")
	require.NoError(t, os.MkdirAll(c.project, 0o755))
	return c
}

// newClusterOn is newCluster with a redis-server configured by opts.
func newClusterOn(t *testing.T, opts storetest.Options, claudeBin string, turns ...mockanthropic.Turn) *cluster {
	t.Helper()
	if claudeBin == "" {
		claudeBin = mockanthropic.ClaudeBin(t)
	}
	storetest.RequireRedisServer(t)
	c := &cluster{t: t, claude: claudeBin, home: t.TempDir(), tmp: t.TempDir(), root: t.TempDir()}
	c.redis = storetest.StartServerWith(t, opts)
	c.redisURL = c.redis.URL
	c.rdb = redis.NewClient(&redis.Options{Addr: c.redis.Addr})
	t.Cleanup(func() { _ = c.rdb.Close() })
	c.mock = mockanthropic.New(t, turns...)
	c.project = filepath.Join(c.root, "project")
	require.NoError(t, os.MkdirAll(c.project, 0o755))
	return c
}

// baseEnv is the environment every agentgate process of the cluster gets;
// nothing is inherited from the test's own environment but PATH.
func (c *cluster) baseEnv() []string {
	return []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + c.home,
		"AGENTGATE_REDIS_URL=" + c.redisURL,
		"AGENTGATE_JWT_SECRET=" + jwtSecret,
		"AGENTGATE_WORKSPACES=" + c.root,
		"AGENTGATE_KEY_PREFIX=" + keyPrefix,
	}
}

// startGateway starts `agentgate gateway` on a free port (or addr) and waits
// for /readyz.
func (c *cluster) startGateway(name string) *proc {
	c.t.Helper()
	return c.startGatewayAt(name, freeAddr(c.t))
}

func (c *cluster) startGatewayAt(name, addr string) *proc {
	c.t.Helper()
	env := append(append(c.baseEnv(), c.gatewayEnv...), "AGENTGATE_LISTEN="+addr)
	p := startProc(c.t, name, env, "gateway")
	p.addr = addr
	waitReady(c.t, p)
	return p
}

// waitReady polls a gateway's /readyz until it answers 200.
func waitReady(t *testing.T, p *proc) {
	t.Helper()
	client := &http.Client{Timeout: time.Second}
	eventually(t, 20*time.Second, p.name+" /readyz", func() bool {
		if p.exited() {
			t.Fatalf("%s exited before it was ready", p.name)
		}
		resp, err := client.Get("http://" + p.addr + "/readyz")
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// workerEnv is the environment of a worker: the base, the CLI, a fast
// heartbeat, and the mock's variables for the provider processes.
func (c *cluster) workerEnv() []string {
	env := append(c.baseEnv(),
		"AGENTGATE_CLAUDE_BIN="+c.claude,
		"AGENTGATE_HEARTBEAT_INTERVAL=200ms",
		"AGENTGATE_HEARTBEAT_TTL=1s",
		"AGENTGATE_DRAIN_TIMEOUT=2s",
		"CLAUDE_CODE_MAX_RETRIES=0",
		"CLAUDE_CODE_TMPDIR="+c.tmp,
	)
	return append(env, c.mock.Env()...)
}

// startWorker starts `agentgate worker` and waits until it is registered
// in Redis with a live heartbeat.
func (c *cluster) startWorker(name string) *proc {
	c.t.Helper()
	p := startProc(c.t, name, c.workerEnv(), "worker")
	c.waitWorker(p)
	return p
}

// waitWorker waits for the worker of p (its id holds its PID) to appear in
// `<prefix>:workers` with a live `<prefix>:worker:ID` hash.
func (c *cluster) waitWorker(p *proc) {
	c.t.Helper()
	marker := fmt.Sprintf("-%d-", p.pid())
	eventually(c.t, 20*time.Second, p.name+" registered in Redis", func() bool {
		if p.exited() {
			c.t.Fatalf("%s exited before it registered", p.name)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		ids, err := c.rdb.ZRange(ctx, keyPrefix+":workers", 0, -1).Result()
		if err != nil {
			return false
		}
		for _, id := range ids {
			if strings.Contains(id, marker) {
				if n, err := c.rdb.Exists(ctx, keyPrefix+":worker:"+id).Result(); err == nil && n == 1 {
					p.workerID = id
					return true
				}
			}
		}
		return false
	})
	c.t.Logf("%s registered as %s", p.name, p.workerID)
}

// workerRuns reads the run count of a worker's heartbeat ("" when gone).
func (c *cluster) workerRuns(p *proc) string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	v, _ := c.rdb.HGet(ctx, keyPrefix+":worker:"+p.workerID, "runs").Result()
	return v
}

// token returns a JWT printed by `agentgate token`.
func (c *cluster) token(user string) string {
	c.t.Helper()
	return issueToken(c.t, user, jwtSecret)
}

func issueToken(t *testing.T, user, secret string) string {
	t.Helper()
	cmd := exec.Command(agentgateBin, "token", "--user", user, "--jwt-secret", secret)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	out, err := cmd.Output()
	require.NoError(t, err, "agentgate token")
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	require.Len(t, lines, 1, "agentgate token prints the token alone on one line")
	return lines[0]
}

// dial opens a chat socket on gateway gw as user.
func (c *cluster) dial(gw *proc, user string) *wsClient {
	c.t.Helper()
	return dialWS(c.t, user+"@"+gw.name, "ws://"+gw.addr+"/ws?delivery=immediate&token="+c.token(user))
}

// command is a claude-command frame for a project of the cluster.
func (c *cluster) command(prompt, sessionID, requestID string) map[string]any {
	m := map[string]any{
		"type": "claude-command", "command": prompt, "requestId": requestID,
		"options": map[string]any{
			"projectPath":   c.project,
			"toolsSettings": map[string]any{"allowedTools": []string{"Bash"}},
		},
	}
	if sessionID != "" {
		m["sessionId"] = sessionID
	}
	return m
}

// restGet calls the REST API of gw with a bearer token and returns the
// status and body.
func restGet(t *testing.T, gw *proc, path, token string) (int, string) {
	t.Helper()
	return restDo(t, http.MethodGet, gw.addr, path, token)
}

func restDo(t *testing.T, method, addr, path, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr+path, nil)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// longRun is a script of n tool-use turns (Bash `echo i`) and a final text,
// each streamed slowly, for the prompt that contains marker.
func longRun(marker string, n int, delay time.Duration) []mockanthropic.Turn {
	var turns []mockanthropic.Turn
	for i := 1; i <= n; i++ {
		turns = append(turns, mockanthropic.Turn{
			When: marker, Text: fmt.Sprintf("Step %d of %s.", i, marker), Chunks: 3, Delay: delay,
			ToolUses: []mockanthropic.ToolUse{{
				ID: fmt.Sprintf("toolu_%s_%d", marker, i), Name: "Bash",
				Input: map[string]any{"command": fmt.Sprintf("echo %d", i), "description": "Print a number"},
			}},
		})
	}
	return append(turns, mockanthropic.Turn{When: marker, Text: "Finished " + marker + ".", Chunks: 3, Delay: delay})
}

// keys lists the keys matching pattern, on every master of a Redis Cluster
// (KEYS on a cluster client asks one node only).
func (c *cluster) keys(ctx context.Context, pattern string) []string {
	c.t.Helper()
	var out []string
	if cc, ok := c.rdb.(*redis.ClusterClient); ok {
		var mu sync.Mutex
		err := cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			keys, err := m.Keys(ctx, pattern).Result()
			mu.Lock()
			out = append(out, keys...)
			mu.Unlock()
			return err
		})
		require.NoError(c.t, err)
		return out
	}
	out, err := c.rdb.Keys(ctx, pattern).Result()
	require.NoError(c.t, err)
	return out
}

// killPubSub has Redis close every pub/sub connection (CLIENT KILL TYPE
// pubsub), on every node of a Redis Cluster (a cluster's subscribers hold
// one connection per node), and returns how many it closed.
func (c *cluster) killPubSub(ctx context.Context) (int, error) {
	kill := func(ctx context.Context, rdb *redis.Client) (int, error) {
		return rdb.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Int()
	}
	rc, ok := c.rdb.(*redis.ClusterClient)
	if !ok {
		return kill(ctx, c.rdb.(*redis.Client))
	}
	var closed atomic.Int64
	err := rc.ForEachShard(ctx, func(ctx context.Context, node *redis.Client) error {
		n, err := kill(ctx, node)
		closed.Add(int64(n))
		return err
	})
	return int(closed.Load()), err
}
