package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/internal/mockanthropic"
)

// TestMetrics: after one run through a gateway and a worker process, each
// one's /metrics (the worker's on --metrics-listen) counts what happened:
// the socket, the run by provider and outcome, its first output, the frames
// written and the Redis round trips.
func TestMetrics(t *testing.T) {
	t.Parallel()
	cl := newCluster(t, "", mockanthropic.Turn{When: "count me", Text: "Counted"})
	gw := cl.startGateway("gw")
	metricsAddr := freeAddr(t)
	w := startProc(t, "worker", append(cl.workerEnv(), "AGENTGATE_METRICS_LISTEN="+metricsAddr), "worker")
	// Ready means registered: the first 200 of the worker's /readyz comes
	// once gateways can see it (a load balancer or an orchestrator that
	// waits for it can send work at once).
	eventually(t, 20*time.Second, "the worker's /readyz", func() bool {
		resp, err := http.Get("http://" + metricsAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	live, err := cl.rdb.ZRange(context.Background(), keyPrefix+":workers", 0, -1).Result()
	require.NoError(t, err)
	require.True(t, slices.ContainsFunc(live, func(id string) bool { return strings.Contains(id, fmt.Sprintf("-%d-", w.pid())) }),
		"ready before it registered: %v", live)
	cl.waitWorker(w)
	c := cl.dial(gw, "alice")
	sid := accept(t, cl, c, "count me", "", "r1")
	evs := c.waitEnd(sid, 1, 60*time.Second)
	sum := checkRun(t, evs, 1)
	requireComplete(t, sum.completes[0], 0, true, false)

	g := scrape(t, "http://"+gw.addr+"/metrics")
	require.Equal(t, 1.0, g.value(`agentgate_sockets{endpoint="chat"}`))
	require.Equal(t, 1.0, g.value(`agentgate_runs_accepted_total{provider="claude"}`))
	require.Equal(t, 1.0, g.value(`agentgate_watched_sessions`))
	require.GreaterOrEqual(t, g.value(`agentgate_frames_out_total{endpoint="chat"}`), float64(len(evs)))
	require.Greater(t, g.value(`agentgate_bytes_out_total{endpoint="chat"}`), 0.0)
	require.Greater(t, g.value(`agentgate_redis_command_seconds_count{command="evalsha"}`), 0.0, "the accept script")

	// The worker's counters are written after the complete it appended:
	// poll rather than assume the order.
	var m metrics
	eventually(t, 10*time.Second, "the worker to count the run", func() bool {
		m = scrape(t, "http://"+metricsAddr+"/metrics")
		return m.value(`agentgate_runs_finished_total{outcome="success",provider="claude"}`) == 1
	})
	require.Equal(t, 0.0, m.value(`agentgate_runs_running{provider="claude"}`))
	require.Equal(t, 1.0, m.value(`agentgate_run_first_output_seconds_count{provider="claude"}`))
	require.Equal(t, 1.0, m.value(`agentgate_run_duration_seconds_count{provider="claude"}`))
	require.Greater(t, m.value(`agentgate_redis_command_seconds_count{command="evalsha"}`), 0.0, "the append and complete scripts")
	eventually(t, 10*time.Second, "a heartbeat to read the jobs stream's lag", func() bool {
		return scrape(t, "http://"+metricsAddr+"/metrics").has(`agentgate_jobs_waiting`)
	})
	require.Equal(t, 0.0, scrape(t, "http://"+metricsAddr+"/metrics").value(`agentgate_jobs_waiting`))
	// Not "unavailable": a deadline counts as that, and on a loaded
	// machine the worker's heartbeat (500 ms) or jobs lag read may pass
	// one though nothing is wrong.
	for _, kind := range []string{"reply", "other", "full", "refused"} {
		series := `agentgate_redis_errors_total{kind="` + kind + `"}`
		require.False(t, g.has(series) || m.has(series), "no Redis error in a clean run (%s)", series)
	}
	t.Logf("gateway metrics:\n%s\nworker metrics:\n%s", g.sample(), m.sample())

	// On a host of two CPUs the processes run on one P unless GOMAXPROCS
	// is set (cmd/agentgate/procs.go); this test's own process has the
	// runtime's default.
	if os.Getenv("GOMAXPROCS") == "" {
		want := float64(runtime.GOMAXPROCS(0))
		if want == 2 {
			want = 1
		}
		require.Equal(t, want, g.value("go_sched_gomaxprocs_threads"), "the gateway's Ps on %d CPUs", runtime.GOMAXPROCS(0))
		require.Equal(t, want, m.value("go_sched_gomaxprocs_threads"), "the worker's Ps on %d CPUs", runtime.GOMAXPROCS(0))
	}
	set := freeAddr(t)
	startProc(t, "worker-procs", append(cl.workerEnv(), "AGENTGATE_METRICS_LISTEN="+set, "GOMAXPROCS=3"), "worker")
	eventually(t, 20*time.Second, "the second worker's /readyz", func() bool {
		resp, err := http.Get("http://" + set + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	require.Equal(t, 3.0, scrape(t, "http://"+set+"/metrics").value("go_sched_gomaxprocs_threads"), "the operator's GOMAXPROCS is kept")
}

// sample lists agentgate's series that are not zero (histogram buckets
// left out), sorted.
func (m metrics) sample() string {
	var out []string
	for series, v := range m {
		if strings.HasPrefix(series, "agentgate_") && !strings.Contains(series, "_bucket") && v != 0 {
			out = append(out, fmt.Sprintf("%s %g", series, v))
		}
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}

// metrics is a scraped Prometheus text exposition, by series.
type metrics map[string]float64

var sampleLine = regexp.MustCompile(`(?m)^([a-z_]+(?:\{[^}]*\})?) (\S+)$`)

func scrape(t *testing.T, url string) metrics {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	m := metrics{}
	for _, s := range sampleLine.FindAllSubmatch(b, -1) {
		v, err := strconv.ParseFloat(string(s[2]), 64)
		require.NoError(t, err, "%s", s[0])
		m[string(s[1])] = v
	}
	return m
}

func (m metrics) has(series string) bool { _, ok := m[series]; return ok }

func (m metrics) value(series string) float64 {
	v, ok := m[series]
	if !ok {
		return -1
	}
	return v
}

// TestGatewayMetricsElsewhere: a gateway given --metrics-listen serves
// /metrics there and not on its public address, which a load balancer or
// an Ingress exposes (a Kubernetes Ingress cannot leave one path out).
func TestGatewayMetricsElsewhere(t *testing.T) {
	t.Parallel()
	cl := newCluster(t, "")
	addr, metricsAddr := freeAddr(t), freeAddr(t)
	gw := startProc(t, "gw", append(cl.baseEnv(), "AGENTGATE_LISTEN="+addr, "AGENTGATE_METRICS_LISTEN="+metricsAddr), "gateway")
	gw.addr = addr
	waitReady(t, gw)
	cl.dial(gw, "alice")

	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode, "%s", body)
	require.NotContains(t, string(body), "agentgate_")
	eventually(t, 10*time.Second, "the socket counted on the metrics address", func() bool {
		return scrape(t, "http://"+metricsAddr+"/metrics").value(`agentgate_sockets{endpoint="chat"}`) == 1
	})
}
