package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// cpuTimes is where the 2 cores went during a round: this process (the
// gateway, the worker and the clients), the emitter processes, redis-server;
// and the machine's steal and total jiffies (a VM's vCPUs can be taken away
// by the host: steal shows how much, it makes a round noisy).
type cpuTimes struct {
	self, children, redis, servers time.Duration
	// perServer is the CPU of each of cpuMeter.servers.
	perServer    []time.Duration
	steal, total int64
}

// machineJiffies reads the steal and total jiffies of all CPUs.
func machineJiffies() (steal, total int64) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal guest guest_nice
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i < 8 { // guest time is already in user
			total += n
		}
		if i == 7 {
			steal = n
		}
	}
	return steal, total
}

func rusage(who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// redisCPU reads used_cpu_user + used_cpu_sys from INFO cpu: of the one
// server, or summed over every node (masters and replicas) of a cluster.
func redisCPU(ctx context.Context, rdb redis.UniversalClient) time.Duration {
	var total time.Duration
	for _, d := range redisNodeCPU(ctx, rdb) {
		total += d
	}
	return total
}

// redisNodeCPU reads the CPU time of each Redis node, by address.
func redisNodeCPU(ctx context.Context, rdb redis.UniversalClient) map[string]time.Duration {
	out := map[string]time.Duration{}
	read := func(ctx context.Context, c *redis.Client) time.Duration {
		info, err := c.Info(ctx, "cpu").Result()
		if err != nil {
			return 0
		}
		var total float64
		for _, line := range strings.Split(info, "\n") {
			k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
			if ok && (k == "used_cpu_user" || k == "used_cpu_sys") {
				f, _ := strconv.ParseFloat(v, 64)
				total += f
			}
		}
		return time.Duration(total * float64(time.Second))
	}
	switch c := rdb.(type) {
	case *redis.Client:
		out[c.Options().Addr] = read(ctx, c)
	case *redis.ClusterClient:
		var mu sync.Mutex
		_ = c.ForEachShard(ctx, func(ctx context.Context, n *redis.Client) error {
			d := read(ctx, n)
			mu.Lock()
			out[n.Options().Addr] = d
			mu.Unlock()
			return nil
		})
	}
	return out
}

// liveChildrenCPU sums the CPU time of the running children of parent that
// run exe (the emitters): the on-CPU nanoseconds of each of their
// threads from /proc/PID/task/TID/schedstat (utime and stime in
// /proc/PID/stat are in 10 ms ticks, too coarse for 1000 short processes).
func liveChildrenCPU(exe string, parent int) time.Duration {
	self := strconv.Itoa(parent)
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var ns int64
	for _, d := range dirs {
		stat, err := os.ReadFile(d + "/stat")
		if err != nil {
			continue
		}
		// The command name is in parentheses and may hold spaces.
		i := strings.LastIndexByte(string(stat), ')')
		if i < 0 {
			continue
		}
		// Field 3 is the state, field 4 the parent's pid.
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 2 || f[1] != self {
			continue
		}
		if target, err := os.Readlink(d + "/exe"); err != nil || target != exe {
			continue
		}
		tasks, _ := filepath.Glob(d + "/task/[0-9]*")
		for _, t := range tasks {
			ss, err := os.ReadFile(t + "/schedstat")
			if err != nil {
				continue
			}
			first, _, _ := strings.Cut(string(ss), " ")
			n, _ := strconv.ParseInt(first, 10, 64)
			ns += n
		}
	}
	return time.Duration(ns)
}

// cpuMeter measures a round: mark when the emitters are released, end
// when every event was received (the emitters still run then).
type cpuMeter struct {
	exe string
	// emitParent is the process the emitters run under (0: this one).
	emitParent int
	// servers are agentgate processes whose CPU is reported apart, and
	// serverNames their roles, for the per-event figures.
	servers     []int
	serverNames []string
	rdb         redis.UniversalClient
	start       cpuTimes
	// nodes is each Redis node's CPU at mark; busiest the most one node
	// used over the measured parts, summed.
	nodes   map[string]time.Duration
	busiest time.Duration
	wall    time.Time
	total   cpuTimes
	// cmds is INFO commandstats at mark, when $BENCH_COMMANDSTATS is set:
	// end logs what Redis ran in the measured part.
	cmds map[string][2]float64
	span time.Duration
	// prof receives a CPU profile of the measured part of a round when
	// $BENCH_CPUPROFILE names a file (run one sub-benchmark, -benchtime 1x).
	prof *os.File
}

func (m *cpuMeter) now() cpuTimes {
	t := cpuTimes{self: rusage(syscall.RUSAGE_SELF), redis: redisCPU(context.Background(), m.rdb)}
	if m.exe != "" {
		parent := m.emitParent
		if parent == 0 {
			parent = os.Getpid()
		}
		t.children = liveChildrenCPU(m.exe, parent)
	}
	for _, pid := range m.servers {
		c := procCPU(pid)
		t.servers += c
		t.perServer = append(t.perServer, c)
	}
	t.steal, t.total = machineJiffies()
	return t
}

func (m *cpuMeter) mark() {
	m.start = m.now()
	m.nodes = redisNodeCPU(context.Background(), m.rdb)
	if os.Getenv("BENCH_COMMANDSTATS") != "" {
		m.cmds = commandStats(context.Background(), m.rdb)
	}
	m.wall = time.Now()
	if path := os.Getenv("BENCH_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil && pprof.StartCPUProfile(f) == nil {
			m.prof = f
		}
	}
}

func (m *cpuMeter) end() {
	if path := os.Getenv("BENCH_HEAPPROFILE"); path != "" {
		// The heap at the end of the measured part of a round.
		if f, err := os.Create(path); err == nil {
			_ = pprof.Lookup("heap").WriteTo(f, 0)
			_ = f.Close()
		}
	}
	if m.prof != nil {
		pprof.StopCPUProfile()
		_ = m.prof.Close()
		m.prof = nil
	}
	m.span += time.Since(m.wall)
	if m.cmds != nil {
		type row struct {
			name        string
			calls, usec float64
		}
		var rows []row
		for k, v := range commandStats(context.Background(), m.rdb) {
			if d := v[1] - m.cmds[k][1]; d > 0 {
				rows = append(rows, row{k, v[0] - m.cmds[k][0], d})
			}
		}
		slices.SortFunc(rows, func(a, b row) int { return int(b.usec - a.usec) })
		for _, r := range rows {
			fmt.Fprintf(os.Stderr, "redis %-24s %9.0f calls %9.0f us\n", r.name, r.calls, r.usec)
		}
	}
	t := m.now()
	var busiest time.Duration
	for addr, d := range redisNodeCPU(context.Background(), m.rdb) {
		busiest = max(busiest, d-m.nodes[addr])
	}
	m.busiest += busiest
	m.total.self += t.self - m.start.self
	m.total.children += t.children - m.start.children
	m.total.redis += t.redis - m.start.redis
	m.total.servers += t.servers - m.start.servers
	if m.total.perServer == nil {
		m.total.perServer = make([]time.Duration, len(t.perServer))
	}
	for i := range t.perServer {
		m.total.perServer[i] += t.perServer[i] - m.start.perServer[i]
	}
	m.total.steal += t.steal - m.start.steal
	m.total.total += t.total - m.start.total
}

// report gives each share in cores (1.0 = one core busy for the round).
func (m *cpuMeter) report(report func(float64, string)) {
	if m.span <= 0 {
		return
	}
	s := m.span.Seconds()
	report(m.total.self.Seconds()/s, "cpu_proc_cores")
	report(m.total.redis.Seconds()/s, "cpu_redis_cores")
	report(m.busiest.Seconds()/s, "cpu_redis_busiest_node_cores")
	if len(m.servers) > 0 {
		report(m.total.servers.Seconds()/s, "cpu_servers_cores")
	}
	if m.exe != "" {
		report(m.total.children.Seconds()/s, "cpu_emit_cores")
	}
	if m.total.total > 0 {
		report(100*float64(m.total.steal)/float64(m.total.total), "steal_%")
	}
}

// reportPerEvent gives the CPU of each server process and of redis-server
// per delivered event, in µs: the figure that survives a noisy machine.
func (m *cpuMeter) reportPerEvent(report func(float64, string), events int64) {
	if events <= 0 || len(m.serverNames) != len(m.total.perServer) {
		return
	}
	us := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(events) }
	var all time.Duration
	for i, name := range m.serverNames {
		report(us(m.total.perServer[i]), "us_per_event_"+name)
		all += m.total.perServer[i]
	}
	report(us(m.total.redis), "us_per_event_redis")
	report(us(all+m.total.redis), "us_per_event_total")
}

// quiesce waits until this process is idle (under 10% of a core over
// 200 ms), so that the leftovers of one sub-benchmark do not run during the
// next, and returns how long it waited.
func quiesce(limit time.Duration) time.Duration {
	const window = 200 * time.Millisecond
	t0 := time.Now()
	for time.Since(t0) < limit {
		c0 := rusage(syscall.RUSAGE_SELF)
		time.Sleep(window)
		if rusage(syscall.RUSAGE_SELF)-c0 < window/10 {
			break
		}
	}
	return time.Since(t0)
}

// reportPerEventInProcess is reportPerEvent when the gateway and the
// worker run in this process (no server processes): their CPU and Redis'
// per delivered event, in µs.
func (m *cpuMeter) reportPerEventInProcess(report func(float64, string), events int64) {
	if events <= 0 || len(m.servers) > 0 {
		return
	}
	us := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(events) }
	report(us(m.total.self), "us_per_event_proc")
	report(us(m.total.redis), "us_per_event_redis")
	report(us(m.total.self+m.total.redis), "us_per_event_total")
}

// commandStats reads INFO commandstats of one Redis: calls and
// microseconds by command.
func commandStats(ctx context.Context, rdb redis.UniversalClient) map[string][2]float64 {
	out := map[string][2]float64{}
	c, ok := rdb.(*redis.Client)
	if !ok {
		return out
	}
	info, err := c.Info(ctx, "commandstats").Result()
	if err != nil {
		return out
	}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		var v [2]float64
		for _, kv := range strings.Split(rest, ",") {
			k, val, _ := strings.Cut(kv, "=")
			f, _ := strconv.ParseFloat(val, 64)
			switch k {
			case "calls":
				v[0] = f
			case "usec":
				v[1] = f
			}
		}
		out[strings.TrimPrefix(name, "cmdstat_")] = v
	}
	return out
}
