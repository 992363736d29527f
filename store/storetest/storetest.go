// Package storetest starts the Redis servers tests run against: a real
// redis-server on a free loopback port, or an in-process miniredis.
package storetest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
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

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store"
)

// Backend names a Redis implementation tests run against.
type Backend string

// The backends.
const (
	Real Backend = "redis"
	Mini Backend = "miniredis"
	// ClusterBackend is a Redis Cluster of three masters and three replicas,
	// shared by the tests of a process (SharedCluster), named by one seed
	// node.
	ClusterBackend Backend = "cluster"
)

// Backends lists miniredis and a single redis-server, for table tests.
var Backends = []Backend{Mini, Real}

// AllBackends adds Redis Cluster to Backends, for the tests of code that
// must also hold on a cluster.
var AllBackends = []Backend{Mini, Real, ClusterBackend}

// Start returns the URL of a fresh server of backend b, stopped when the
// test ends.
func Start(t testing.TB, b Backend) string {
	t.Helper()
	switch b {
	case Mini:
		return Miniredis(t)
	case ClusterBackend:
		return SharedCluster(t).Seed
	}
	return Redis(t)
}

// Miniredis starts an in-process miniredis on 127.0.0.1.
func Miniredis(t testing.TB) string {
	t.Helper()
	m := miniredis.NewMiniRedis()
	if err := m.StartAddr("127.0.0.1:0"); err != nil {
		t.Fatalf("start miniredis: %v", err)
	}
	t.Cleanup(m.Close)
	return "redis://" + m.Addr() + "/0"
}

// RedisServerPath returns the redis-server binary, or "" when there is none.
func RedisServerPath() string {
	if p := os.Getenv("AGENTGATE_REDIS_SERVER"); p != "" {
		return p
	}
	p, err := exec.LookPath("redis-server")
	if err != nil {
		return ""
	}
	return p
}

// RequireRedisServer fails the test in CI and skips it loudly elsewhere when
// redis-server is not installed.
func RequireRedisServer(t testing.TB) string {
	t.Helper()
	p := RedisServerPath()
	if p != "" {
		return p
	}
	msg := "redis-server is not installed (apt-get install redis-server, or set AGENTGATE_REDIS_SERVER)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip("SKIPPED: " + msg)
	return ""
}

// Server is a redis-server process started for a test.
type Server struct {
	URL  string
	Addr string
	// Dir holds the server's files (its AOF in appendonlydir).
	Dir string

	bin, dir, password string
	args               []string
	cmd                *exec.Cmd
	running            bool
}

// Options configure a redis-server started by StartServerWith.
type Options struct {
	// Password is required of clients (none when empty); the URL carries it.
	Password string
	// AOF persists every write to an append-only file, fsynced every
	// second, so that Stop and Restart act like a crash and a restart.
	AOF bool
	// Config holds more lines of the server's configuration file.
	Config []string
}

// Redis starts a real redis-server on a free loopback port, without
// persistence, and stops it (by its PID) when the test ends.
func Redis(t testing.TB) string {
	t.Helper()
	return StartServer(t).URL
}

// StartServer is Redis returning the whole Server, for tests that need to
// stop it themselves.
func StartServer(t testing.TB) *Server {
	t.Helper()
	return StartServerWith(t, Options{})
}

// StartServerWithPassword is StartServer for a server that requires
// password (none when empty); its URL carries the password.
func StartServerWithPassword(t testing.TB, password string) *Server {
	t.Helper()
	return StartServerWith(t, Options{Password: password})
}

// StartServerWith starts a redis-server configured by o, stopped when the
// test ends.
func StartServerWith(t testing.TB, o Options) *Server {
	t.Helper()
	bin := RequireRedisServer(t)
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		srv, err := startServer(bin, t.TempDir(), o)
		if err == nil {
			t.Cleanup(srv.Stop)
			return srv
		}
		lastErr = err
	}
	t.Fatalf("start redis-server: %v", lastErr)
	return nil
}

func startServer(bin, dir string, o Options) (*Server, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	aof := "no"
	if o.AOF {
		aof = "yes"
	}
	args := []string{
		"--bind", "127.0.0.1", "--port", fmt.Sprint(port), "--save", "", "--appendonly", aof,
		"--dir", dir, "--logfile", filepath.Join(dir, "redis.log"), "--protected-mode", "yes",
	}
	url := "redis://" + addr + "/0"
	conf := o.Config
	if o.Password != "" {
		// From a config file, not the command line that every account reads.
		conf = append([]string{"requirepass " + o.Password}, conf...)
		url = "redis://:" + o.Password + "@" + addr + "/0"
	}
	if len(conf) > 0 {
		path := filepath.Join(dir, "redis.conf")
		if err := os.WriteFile(path, []byte(strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
			return nil, err
		}
		args = append([]string{path}, args...)
	}
	srv := &Server{URL: url, Addr: addr, Dir: dir, bin: bin, dir: dir, password: o.Password, args: args}
	if err := srv.start(false); err != nil {
		return nil, err
	}
	return srv, nil
}

// start runs the server and waits until it answers PING, or, with loading,
// until it answers at all (a server loading its AOF answers LOADING).
func (s *Server) start(loading bool) error {
	cmd := exec.Command(s.bin, s.args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run %s: %w", s.bin, err)
	}
	s.cmd = cmd
	s.running = true
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if reply := ping(s.Addr, s.password); reply == "+PONG" || loading && strings.HasPrefix(reply, "-LOADING") {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	s.Stop()
	log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	return fmt.Errorf("redis-server on %s did not answer: %s", s.Addr, strings.TrimSpace(string(log)))
}

// Stop kills the server by its PID (SIGKILL, as a crash would) and waits
// for it.
func (s *Server) Stop() {
	if s.running && s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
	}
	s.running = false
}

// Pause stops the server's process (SIGSTOP) without closing anything, as
// a host that stalls it (a VM paused, a fork of a large heap, a disk that
// hangs an fsync) would: connections stay open and commands queue unread.
func (s *Server) Pause(t testing.TB) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("pause redis-server: %v", err)
	}
	t.Cleanup(func() { _ = s.cmd.Process.Signal(syscall.SIGCONT) })
}

// Resume lets a paused server run again (SIGCONT).
func (s *Server) Resume(t testing.TB) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatalf("resume redis-server: %v", err)
	}
}

// Running reports whether the server was started and not stopped since.
func (s *Server) Running() bool { return s.running }

// Restart starts a stopped server again on the same port and directory
// (with AOF, on the data it had persisted) and returns once it accepts
// connections, possibly still loading its data.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if err := s.start(true); err != nil {
		t.Fatalf("restart redis-server: %v", err)
	}
}

// ping sends PING (after AUTH with a password) and returns the first line
// of the answer, or "" when there is none.
func ping(addr, password string) string {
	c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
	if err != nil {
		return ""
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(200 * time.Millisecond))
	cmd := "PING\r\n"
	if password != "" {
		cmd = "AUTH " + password + "\r\n" + cmd
	}
	if _, err := c.Write([]byte(cmd)); err != nil {
		return ""
	}
	rd := bufio.NewReader(c)
	if password != "" {
		// AUTH is answered even while the server loads.
		if line, err := rd.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+OK") {
			return ""
		}
	}
	line, err := rd.ReadString('\n')
	if err != nil {
		return ""
	}
	return strings.TrimSpace(line)
}

// portsGiven are the ports FreePort handed out in this process.
var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
	// portLocks hold the lock files of the ports given, for the life of
	// the process (the kernel drops the locks when it exits).
	portLocks []*os.File
)

// The ports tests listen on are drawn from [testPortsLow, the low end of
// the kernel's ephemeral range - busOffset): the kernel never gives one
// of them to an outgoing connection as its local port, which it would
// while a test keeps it free (a Redis stopped to be restarted on the same
// port, a gateway between two runs), and a cluster node's bus port (its
// port + busOffset) stays below that range too.
const (
	testPortsLow = 10000
	busOffset    = 10000
)

// testPortRange returns the range test ports are drawn from, [lo, hi).
func testPortRange() (lo, hi int) {
	hi = 32768 // Linux's default ephemeral range starts here
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				hi = n
			}
		}
	}
	return testPortsLow, hi - busOffset
}

// FreePort returns a loopback port that is free, below the kernel's
// ephemeral range, and that no test of this process or of another test
// process on the host (go test runs packages at once) was given before:
// each port given, and the bus port a cluster node would use with it, is
// held by a lock file under os.TempDir() until the process ends. A test
// that killed or stopped a server may still run clients of it that retry
// its address, and a Redis Cluster client re-reads its slot map from any
// node it reaches: a server of another test on that port drew them into
// that test's cluster, where a worker took the other test's jobs (same key
// prefix) and refused their project paths.
func FreePort() (int, error) {
	lo, hi := testPortRange()
	if hi-lo < 1000 {
		return 0, fmt.Errorf("storetest: the ephemeral port range starts at %d: no room below it for test ports", hi+busOffset)
	}
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("agentgate-test-ports-%d", os.Getuid()))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 1000 {
		port := lo + rand.IntN(hi-lo)
		if portsGiven[port] || portsGiven[port+busOffset] || portsGiven[port-busOffset] {
			continue
		}
		held, err := lockPort(dir, port)
		if err != nil {
			return 0, err
		}
		if held == nil {
			continue // another process's
		}
		bus, err := lockPort(dir, port+busOffset)
		if err != nil || bus == nil {
			held.Close()
			if err != nil {
				return 0, err
			}
			continue
		}
		// Free now: nothing of another user, or outside the tests, holds it.
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			held.Close()
			bus.Close()
			continue
		}
		l.Close()
		portsGiven[port] = true
		portLocks = append(portLocks, held, bus)
		return port, nil
	}
	return 0, errors.New("storetest: no free test port found in a thousand tries")
}

// lockPort takes the lock file of port for this process, or returns nil
// when another process holds it.
func lockPort(dir string, port int) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(port)), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, nil
		}
		return nil, err
	}
	return f, nil
}

// FreeAddr is FreePort as a 127.0.0.1 address, failing the test when no
// port is free.
func FreeAddr(t testing.TB) string {
	t.Helper()
	port, err := FreePort()
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	return fmt.Sprintf("127.0.0.1:%d", port)
}

var prefixSeq atomic.Int64

// Prefix returns a key prefix no other test of this process uses, so tests
// may share one server.
func Prefix() string {
	return fmt.Sprintf("t%d_%d", os.Getpid(), prefixSeq.Add(1))
}

// New returns a Store on url with a fresh prefix, closed when the test ends.
func New(t testing.TB, url string, cfg ...store.Config) *store.Store {
	t.Helper()
	c := store.Config{}
	if len(cfg) > 0 {
		c = cfg[0]
	}
	c.URL = url
	if c.Prefix == "" {
		c.Prefix = Prefix()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := store.New(ctx, c)
	if err != nil {
		t.Fatalf("store.New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if err := s.EnsureJobsGroup(ctx); err != nil {
		t.Fatalf("EnsureJobsGroup: %v", err)
	}
	return s
}

// UsedMemory reads used_memory from INFO memory: what Redis holds (on a
// cluster, what its masters hold together).
func UsedMemory(tb testing.TB, rdb redis.UniversalClient) int64 {
	tb.Helper()
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		var mu sync.Mutex
		var sum int64
		err := cc.ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error {
			n := UsedMemory(tb, m)
			mu.Lock()
			sum += n
			mu.Unlock()
			return nil
		})
		if err != nil {
			tb.Fatalf("INFO memory on the masters: %v", err)
		}
		return sum
	}
	info, err := rdb.Info(context.Background(), "memory").Result()
	if err != nil {
		tb.Fatalf("INFO memory: %v", err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				tb.Fatalf("used_memory %q: %v", v, err)
			}
			return n
		}
	}
	tb.Fatal("no used_memory in INFO memory")
	return 0
}

// FailSnapshot makes the server refuse every write with MISCONF, as Redis
// does once a background save failed (a full or broken disk) while
// snapshots are configured: it configures one, starts a background save
// slowed down per key, and kills the save's child process (a child of the
// server, by its PID). FixSnapshot ends it.
func (s *Server) FailSnapshot(t testing.TB) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr, Password: s.password})
	defer rdb.Close()
	ctx := context.Background()
	require.NoError(t, rdb.Set(ctx, "storetest:snapshot", "x", 0).Err()) // a key to slow the save on
	require.NoError(t, rdb.ConfigSet(ctx, "save", "3600 1").Err())
	require.NoError(t, rdb.ConfigSet(ctx, "rdb-key-save-delay", "1000000").Err())
	require.NoError(t, rdb.BgSave(ctx).Err())
	pid := s.cmd.Process.Pid
	var child int
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		if err != nil {
			return false
		}
		_, err = fmt.Sscan(string(b), &child)
		return err == nil && child > 0
	}, 5*time.Second, 5*time.Millisecond, "the background save's child")
	require.NoError(t, syscall.Kill(child, syscall.SIGKILL))
	require.Eventually(t, func() bool {
		info, err := rdb.Info(ctx, "persistence").Result()
		return err == nil && strings.Contains(info, "rdb_last_bgsave_status:err") && strings.Contains(info, "rdb_bgsave_in_progress:0")
	}, 5*time.Second, 5*time.Millisecond, "the failed save")
}

// FixSnapshot saves successfully again, after which the server takes
// writes.
func (s *Server) FixSnapshot(t testing.TB) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr, Password: s.password})
	defer rdb.Close()
	ctx := context.Background()
	require.NoError(t, rdb.ConfigSet(ctx, "rdb-key-save-delay", "0").Err())
	require.NoError(t, rdb.BgSave(ctx).Err())
	require.Eventually(t, func() bool {
		info, err := rdb.Info(ctx, "persistence").Result()
		return err == nil && strings.Contains(info, "rdb_last_bgsave_status:ok") && strings.Contains(info, "rdb_bgsave_in_progress:0")
	}, 10*time.Second, 5*time.Millisecond, "a good save")
}
