package workers

import (
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/agentgate/agentgate/app"
)

// Worker metrics, in the process's default registry: served on the
// worker's --metrics-listen address, or on the gateway's /metrics by
// `agentgate serve`. Labels take values from fixed sets (providers are the
// adapters this build has; outcomes and reasons are constants).
var (
	runsRunning = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "agentgate_runs_running", Help: "Runs this worker is running, by provider.",
	}, []string{"provider"})
	runsFinished = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "agentgate_runs_finished_total",
		Help: "Runs this worker finished, by provider and outcome (success, error, aborted, shutdown, store_unavailable, stale: aborted or reaped elsewhere).",
	}, []string{"provider", "outcome"})
	runSeconds = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name: "agentgate_run_duration_seconds", Help: "Time from a run's claim by this worker to its end, by provider.",
		Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600},
	}, []string{"provider"})
	firstLineSeconds = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name: "agentgate_run_first_output_seconds", Help: "Time from a run's acceptance by a gateway to the CLI's first output line, by provider.",
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32},
	}, []string{"provider"})
	jobsWaiting = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "agentgate_jobs_waiting", Help: "Accepted runs no worker has read yet (the jobs stream's lag), as this worker saw it at its last heartbeat.",
	})
	reaperActions = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "agentgate_reaper_actions_total", Help: "Runs the reaper ended, by reason (worker-lost, no-worker).",
	}, []string{"reason"})
	terminalsOpen = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "agentgate_terminals_open", Help: "Terminals (PTYs) open on this worker.",
	})
	ptyBytes = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "agentgate_pty_bytes_total", Help: "Bytes through this worker's terminals: out (the PTY's output) and in (keystrokes).",
	}, []string{"direction"})
	ptyOut, ptyIn = ptyBytes.WithLabelValues("out"), ptyBytes.WithLabelValues("in")
)

// providerLabel bounds the provider label to the known providers.
func providerLabel(p app.Provider) string {
	switch p {
	case app.Claude, app.Cursor, app.Codex, app.Gemini:
		return string(p)
	}
	return "other"
}

// outcomeLabel names how a run ended for runs_finished_total.
func outcomeLabel(reason stopReason, o app.Outcome) string {
	switch reason {
	case stopAbort:
		return "aborted"
	case stopStale:
		return "stale"
	case stopShutdown:
		return "shutdown"
	case stopFailed:
		return "store_unavailable"
	}
	if o.ExitCode == 0 {
		return "success"
	}
	return "error"
}

// streamIDTime is the time a Redis stream entry was added: its id's
// first part, in Unix milliseconds.
func streamIDTime(id string) (time.Time, bool) {
	ms, _, _ := strings.Cut(id, "-")
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil || n <= 0 {
		return time.Time{}, false
	}
	return time.UnixMilli(n), true
}
