package metrics

import (
	"math"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
)

// scrape serves Handler once and parses it with Prometheus's own text
// parser, which rejects what a Prometheus server would.
func scrape(t *testing.T) (string, map[string]*dto.MetricFamily) {
	t.Helper()
	rec := httptest.NewRecorder()
	Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	require.Equal(t, "text/plain; version=0.0.4; charset=utf-8", rec.Header().Get("Content-Type"))
	text := rec.Body.String()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	require.NoError(t, err, text)
	return text, fams
}

// forget drops the families a test registered when it ends, so that the
// test can run again in the same process (-count=2).
func forget(t *testing.T, names ...string) {
	t.Cleanup(func() {
		registry.mu.Lock()
		defer registry.mu.Unlock()
		for _, n := range names {
			delete(registry.families, n)
		}
	})
}

func TestExposition(t *testing.T) {
	forget(t, "test_events_total", "test_open", "test_runs_total", "test_seconds", "test_unused")
	// The kernel counts a process's CPU in 10 ms ticks: a test binary
	// that has just started may have none yet.
	spendCPU(t, 30*time.Millisecond)
	c := NewCounter("test_events_total", "Events.\nSecond line with a \\ backslash.")
	g := NewGauge("test_open", "Open things.")
	cv := NewCounterVec("test_runs_total", "Runs by provider and outcome.", "provider", "outcome")
	hv := NewHistogramVec("test_seconds", "Round trips.", ExponentialBuckets(0.001, 10, 3), "command")
	unused := NewGaugeVec("test_unused", "Never touched.", "kind")
	_ = unused

	c.Inc()
	c.Add(2.5)
	c.Add(-1) // a counter never goes down
	g.Inc()
	g.Inc()
	g.Dec()
	g.Add(0.25)
	cv.WithLabelValues("claude", "success").Inc()
	cv.WithLabelValues("codex", `a "quoted"\ value`+"\n").Add(3)
	h := hv.WithLabelValues("evalsha")
	for _, v := range []float64{0.0005, 0.001, 0.002, 0.5, 7} {
		h.Observe(v)
	}

	text, fams := scrape(t)
	require.Contains(t, text, "# HELP test_events_total Events.\\nSecond line with a \\\\ backslash.\n")
	require.Equal(t, 3.5, fams["test_events_total"].Metric[0].GetCounter().GetValue())
	require.Equal(t, dto.MetricType_GAUGE, fams["test_open"].GetType())
	require.Equal(t, 1.25, fams["test_open"].Metric[0].GetGauge().GetValue())
	require.NotContains(t, fams, "test_unused", "a family with labels appears with its first series")

	// Label pairs come sorted by name, as the Prometheus client writes
	// them (tests and dashboards match series by their text).
	require.Contains(t, text, `test_runs_total{outcome="success",provider="claude"} 1`)
	runs := fams["test_runs_total"].Metric
	require.Len(t, runs, 2)
	require.Equal(t, `a "quoted"\ value`+"\n", runs[1].Label[0].GetValue(), "escaped and parsed back")

	hist := fams["test_seconds"].Metric[0].GetHistogram()
	require.Equal(t, uint64(5), hist.GetSampleCount())
	require.InDelta(t, 7.5035, hist.GetSampleSum(), 1e-9)
	var cum []uint64
	for _, b := range hist.Bucket {
		cum = append(cum, b.GetCumulativeCount())
	}
	require.Equal(t, []uint64{2, 3, 3, 5}, cum, "le 0.001, 0.01, 0.1, +Inf")
	require.Contains(t, text, `test_seconds_bucket{command="evalsha",le="+Inf"} 5`)

	for _, name := range []string{"go_goroutines", "go_threads", "go_sched_gomaxprocs_threads", "go_memstats_heap_inuse_bytes", "go_memstats_heap_alloc_bytes",
		"go_memstats_stack_inuse_bytes", "process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"} {
		require.Contains(t, fams, name)
		require.Greater(t, fams[name].Metric[0].GetGauge().GetValue()+fams[name].Metric[0].GetCounter().GetValue(), 0.0, name)
	}
}

// spendCPU keeps the process busy until it has used at least d of CPU.
func spendCPU(t *testing.T, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	x := 0
	for time.Now().Before(deadline) {
		for i := range 1 << 16 {
			x += i
		}
		var ru syscall.Rusage
		require.NoError(t, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
		if time.Duration(ru.Utime.Nano()+ru.Stime.Nano()) >= d {
			return
		}
	}
	t.Fatalf("used less than %s of CPU in 10 s (%d)", d, x)
}

// TestConcurrentUpdates: no update is lost under concurrent use, whole
// and fractional.
func TestConcurrentUpdates(t *testing.T) {
	forget(t, "test_concurrent_total", "test_concurrent_gauge", "test_concurrent_seconds")
	c := NewCounter("test_concurrent_total", "Concurrent.")
	g := NewGauge("test_concurrent_gauge", "Concurrent.")
	h := NewHistogramVec("test_concurrent_seconds", "Concurrent.", []float64{1}).WithLabelValues()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				c.Inc()
				c.Add(0.5)
				g.Add(1)
				g.Dec()
				h.Observe(0.5)
			}
		})
	}
	wg.Wait()
	require.Equal(t, 12000.0, c.v.get())
	require.Equal(t, 0.0, g.v.get())
	_, fams := scrape(t)
	require.Equal(t, uint64(8000), fams["test_concurrent_seconds"].Metric[0].GetHistogram().GetSampleCount())
}

func TestFormatFloat(t *testing.T) {
	for v, want := range map[float64]string{
		0: "0", 1: "1", 2.5: "2.5", 1e6: "1e+06", math.Inf(1): "+Inf", math.Inf(-1): "-Inf", math.NaN(): "NaN",
	} {
		require.Equal(t, want, formatFloat(v))
	}
}

// Registered once: a benchmark function runs several times.
var (
	benchCounter   = NewCounter("bench_counter_total", "Bench.")
	benchHistogram = NewHistogramVec("bench_seconds", "Bench.", ExponentialBuckets(0.0001, 4, 8)).WithLabelValues()
)

func BenchmarkCounterAdd(b *testing.B) {
	c := benchCounter
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Add(512)
		}
	})
}

func BenchmarkHistogramObserve(b *testing.B) {
	h := benchHistogram
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			h.Observe(0.0003)
		}
	})
}
