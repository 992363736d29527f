package storetest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster is a Redis Cluster of six redis-server processes (three masters,
// each with one replica) started for tests, on free loopback ports.
type Cluster struct {
	// Nodes are the servers, in the order they were created.
	Nodes []*Server
	// URL names every node in go-redis' cluster URL form
	// (redis://HOST:PORT?addr=HOST2:PORT2&…).
	URL string
	// Seed names one node only, as an operator would: agentgate must find
	// out by itself that it is a cluster.
	Seed string

	password string
	cleanup  func()
}

// clusterNodeTimeout is cluster-node-timeout in ms: a master that stops
// answering is replaced by its replica a few seconds later.
const clusterNodeTimeout = 3000

// clusterSize is how many redis-servers a test cluster has: three masters
// and one replica each.
const clusterSize = 6

// StartCluster starts a fresh six-node Redis Cluster, stopped (each server
// by its PID) when the test ends.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	return StartClusterWithPassword(t, "")
}

// StartClusterWithPassword is StartCluster for a cluster whose nodes
// require password (of clients and of each other); its URLs carry it.
func StartClusterWithPassword(t testing.TB, password string) *Cluster {
	t.Helper()
	bin := RequireRedisServer(t)
	c, err := startCluster(bin, t.TempDir, password)
	if err != nil {
		t.Fatalf("start Redis Cluster: %v", err)
	}
	t.Cleanup(c.Stop)
	return c
}

var (
	sharedMu      sync.Mutex
	sharedCluster *Cluster
)

// SharedCluster returns a cluster shared by every test of this process that
// asks for one (tests keep apart by their key prefix, see Prefix), started
// on first use. StopShared, from TestMain, stops it; servers also die with
// the test process.
func SharedCluster(t testing.TB) *Cluster {
	t.Helper()
	bin := RequireRedisServer(t)
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if sharedCluster == nil {
		dir, err := os.MkdirTemp("", "agentgate-cluster-")
		if err != nil {
			t.Fatalf("start Redis Cluster: %v", err)
		}
		n := 0
		c, err := startCluster(bin, func() string {
			n++
			d := filepath.Join(dir, fmt.Sprint(n))
			_ = os.Mkdir(d, 0o700)
			return d
		}, "")
		if err != nil {
			t.Fatalf("start Redis Cluster: %v", err)
		}
		c.cleanup = func() { _ = os.RemoveAll(dir) }
		sharedCluster = c
	}
	return sharedCluster
}

// StopShared stops the cluster SharedCluster started, if any.
func StopShared() {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if sharedCluster != nil {
		sharedCluster.Stop()
		sharedCluster = nil
	}
}

// RunMain runs a package's tests and stops the shared cluster afterwards:
// `func TestMain(m *testing.M) { os.Exit(storetest.RunMain(m)) }`.
func RunMain(m *testing.M) int {
	defer StopShared()
	return m.Run()
}

func startCluster(bin string, tempDir func() string, password string) (*Cluster, error) {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		c, err := tryCluster(bin, tempDir, password)
		if err == nil {
			return c, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func tryCluster(bin string, tempDir func() string, password string) (*Cluster, error) {
	c := &Cluster{password: password}
	for i := 0; i < clusterSize; i++ {
		dir := tempDir()
		conf := []string{
			"cluster-enabled yes",
			"cluster-config-file " + filepath.Join(dir, "nodes.conf"),
			fmt.Sprintf("cluster-node-timeout %d", clusterNodeTimeout),
		}
		if password != "" {
			conf = append(conf, "masterauth "+password)
		}
		srv, err := startServer(bin, dir, Options{Password: password, Config: conf})
		if err != nil {
			c.Stop()
			return nil, err
		}
		c.Nodes = append(c.Nodes, srv)
	}
	args := []string{"--cluster", "create"}
	for _, n := range c.Nodes {
		args = append(args, n.Addr)
	}
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		cli = filepath.Join(filepath.Dir(bin), "redis-cli")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	create := exec.CommandContext(ctx, cli, args...)
	if password != "" {
		// From the environment, not the command line every account reads.
		create.Env = append(os.Environ(), "REDISCLI_AUTH="+password)
	}
	if out, err := create.CombinedOutput(); err != nil {
		c.Stop()
		return nil, fmt.Errorf("redis-cli --cluster create: %w: %s", err, out)
	}
	if err := c.waitHealthy(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	addrs := make([]string, 0, len(c.Nodes)-1)
	for _, n := range c.Nodes[1:] {
		addrs = append(addrs, "addr="+n.Addr)
	}
	auth := ""
	if password != "" {
		auth = ":" + password + "@"
	}
	c.URL = "redis://" + auth + c.Nodes[0].Addr + "?" + strings.Join(addrs, "&")
	c.Seed = "redis://" + auth + c.Nodes[0].Addr
	return c, nil
}

// waitHealthy waits until every node that runs says cluster_state:ok with
// all slots assigned, every master's slots are covered, and every replica
// of a running master has finished its first sync.
func (c *Cluster) waitHealthy(ctx context.Context) error {
	var last string
	for ctx.Err() == nil {
		ok, why := c.healthy(ctx)
		if ok {
			return nil
		}
		last = why
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("Redis Cluster not healthy: %s", last)
}

func (c *Cluster) healthy(ctx context.Context) (bool, string) {
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		rdb := redis.NewClient(&redis.Options{Addr: n.Addr, Password: c.password, MaxRetries: -1})
		info, err := rdb.ClusterInfo(ctx).Result()
		if err != nil {
			_ = rdb.Close()
			return false, n.Addr + ": " + err.Error()
		}
		if !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_slots_ok:16384") {
			_ = rdb.Close()
			return false, n.Addr + ": " + strings.ReplaceAll(info, "\r\n", " ")
		}
		repl, err := rdb.Info(ctx, "replication").Result()
		_ = rdb.Close()
		if err != nil {
			return false, n.Addr + ": " + err.Error()
		}
		if strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
			return false, n.Addr + ": replica not in sync"
		}
	}
	return true, ""
}

// WaitHealthy waits (up to a minute) until the cluster serves every slot
// again, after a failover for instance.
func (c *Cluster) WaitHealthy(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.waitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
}

// MasterOf returns the running server that is master of the slot of key,
// as the cluster sees it now.
func (c *Cluster) MasterOf(t testing.TB, key string) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		rdb := redis.NewClient(&redis.Options{Addr: n.Addr, Password: c.password, MaxRetries: -1})
		slot, err := rdb.ClusterKeySlot(ctx, key).Result()
		if err != nil {
			_ = rdb.Close()
			continue
		}
		shards, err := rdb.ClusterShards(ctx).Result()
		_ = rdb.Close()
		if err != nil {
			continue
		}
		for _, sh := range shards {
			owns := false
			for _, r := range sh.Slots {
				owns = owns || int64(r.Start) <= slot && slot <= int64(r.End)
			}
			if !owns {
				continue
			}
			for _, node := range sh.Nodes {
				if node.Role != "master" || node.Health != "online" {
					continue
				}
				for _, m := range c.Nodes {
					if m.Addr == fmt.Sprintf("%s:%d", node.IP, node.Port) {
						return m
					}
				}
			}
		}
	}
	t.Fatalf("no master found for key %s", key)
	return nil
}

// Stop kills every server of the cluster by its PID.
func (c *Cluster) Stop() {
	for _, n := range c.Nodes {
		n.Stop()
	}
	if c.cleanup != nil {
		c.cleanup()
	}
}

// Client returns a raw client on url for tests that look at keys directly,
// as an admin with `redis-cli -c` would: a cluster client when url names a
// node of a cluster (or several nodes), else a plain one. Closed when the
// test ends.
func Client(t testing.TB, url string) redis.UniversalClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var c redis.UniversalClient
	if strings.Contains(url, "addr=") {
		opts, err := redis.ParseClusterURL(url)
		if err != nil {
			t.Fatal(err)
		}
		c = redis.NewClusterClient(opts)
	} else {
		opts, err := redis.ParseURL(url)
		if err != nil {
			t.Fatal(err)
		}
		single := redis.NewClient(opts)
		info, _ := single.Info(ctx, "cluster").Result()
		c = single
		if strings.Contains(info, "cluster_enabled:1") {
			_ = single.Close()
			c = redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{opts.Addr}, Username: opts.Username, Password: opts.Password})
		}
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// WaitReplicated waits until every replica of master has received all that
// master wrote so far, so that killing the master then loses nothing.
func (c *Cluster) WaitReplicated(t testing.TB, master *Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rdb := redis.NewClient(&redis.Options{Addr: master.Addr, Password: c.password, MaxRetries: -1})
	defer rdb.Close()
	for ctx.Err() == nil {
		info, err := rdb.Info(ctx, "replication").Result()
		if err == nil {
			offset := InfoField(info, "master_repl_offset")
			behind := false
			for _, line := range strings.Split(info, "\n") {
				// slave0:ip=127.0.0.1,port=…,state=online,offset=N,lag=0
				if strings.HasPrefix(line, "slave") && strings.Contains(line, "offset=") {
					_, rest, _ := strings.Cut(line, "offset=")
					off, _, _ := strings.Cut(rest, ",")
					if off != offset {
						behind = true
					}
				}
			}
			if !behind && strings.Contains(info, "connected_slaves:1") {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the replica of %s did not catch up", master.Addr)
}

// InfoField is the value of name in the text of an INFO reply ("" when
// absent).
func InfoField(info, name string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return ""
}

// MoveSlot moves the slot of key, with its keys, from the master that owns
// it to the master to, as a resharding does (CLUSTER SETSLOT IMPORTING /
// MIGRATING, MIGRATE, SETSLOT NODE on every master).
func (c *Cluster) MoveSlot(t testing.TB, key string, to *Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	from := c.MasterOf(t, key)
	if from == to {
		t.Fatalf("the slot of %s is on %s already", key, to.Addr)
	}
	client := func(s *Server) *redis.Client {
		rdb := redis.NewClient(&redis.Options{Addr: s.Addr, Password: c.password, MaxRetries: -1})
		t.Cleanup(func() { _ = rdb.Close() })
		return rdb
	}
	src, dst := client(from), client(to)
	slot, err := src.ClusterKeySlot(ctx, key).Result()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("move slot %d: %v", slot, err)
		}
	}
	must(err)
	fromID, err := src.Do(ctx, "CLUSTER", "MYID").Text()
	must(err)
	toID, err := dst.Do(ctx, "CLUSTER", "MYID").Text()
	must(err)
	must(dst.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", fromID).Err())
	must(src.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", toID).Err())
	host, port, _ := strings.Cut(to.Addr, ":")
	for {
		keys, err := src.ClusterGetKeysInSlot(ctx, int(slot), 100).Result()
		must(err)
		if len(keys) == 0 {
			break
		}
		args := []any{"MIGRATE", host, port, "", 0, 5000}
		if c.password != "" {
			args = append(args, "AUTH", c.password)
		}
		args = append(args, "KEYS")
		for _, k := range keys {
			args = append(args, k)
		}
		must(src.Do(ctx, args...).Err())
	}
	// The new owner first, then the old one, then the others.
	must(dst.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", toID).Err())
	must(src.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", toID).Err())
	for _, n := range c.Nodes {
		if n.Running() && n != from && n != to {
			_ = client(n).Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", toID).Err()
		}
	}
	for ctx.Err() == nil {
		if c.MasterOf(t, key) == to {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("slot %d did not move to %s", slot, to.Addr)
}

// Masters returns the running masters.
func (c *Cluster) Masters(t testing.TB) []*Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []*Server
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		rdb := redis.NewClient(&redis.Options{Addr: n.Addr, Password: c.password, MaxRetries: -1})
		info, err := rdb.Info(ctx, "replication").Result()
		_ = rdb.Close()
		if err == nil && strings.Contains(info, "role:master") {
			out = append(out, n)
		}
	}
	return out
}
