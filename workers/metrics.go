package workers

import (
	"strconv"
	"strings"
	"time"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/internal/metrics"
)

// Worker metrics, in the process's default registry: served on the
// worker's --metrics-listen address, or on the gateway's /metrics by
// `agentgate serve`. Labels take values from fixed sets (providers are the
// adapters this build has; outcomes and reasons are constants).
var (
	runsRunning      = metrics.NewGaugeVec("agentgate_runs_running", "Runs this worker is running, by provider.", "provider")
	runsFinished     = metrics.NewCounterVec("agentgate_runs_finished_total", "Runs this worker finished, by provider and outcome (success, error, aborted, shutdown, store_unavailable, stale: aborted or reaped elsewhere).", "provider", "outcome")
	runSeconds       = metrics.NewHistogramVec("agentgate_run_duration_seconds", "Time from a run's claim by this worker to its end, by provider.", []float64{1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600}, "provider")
	firstLineSeconds = metrics.NewHistogramVec("agentgate_run_first_output_seconds", "Time from a run's acceptance by a gateway to the CLI's first output line, by provider.", []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32}, "provider")
	jobsWaiting      = metrics.NewGauge("agentgate_jobs_waiting", "Accepted runs no worker has read yet (the jobs stream's lag), as this worker saw it at its last heartbeat.")
	reaperActions    = metrics.NewCounterVec("agentgate_reaper_actions_total", "Runs and terminals the reaper ended, by reason (worker-lost, no-worker, terminal-lost).", "reason")
	terminalsOpen    = metrics.NewGauge("agentgate_terminals_open", "Terminals (PTYs) open on this worker.")
	ptyBytes         = metrics.NewCounterVec("agentgate_pty_bytes_total", "Bytes through this worker's terminals: out (the PTY's output) and in (keystrokes).", "direction")
	ptyOut, ptyIn    = ptyBytes.WithLabelValues("out"), ptyBytes.WithLabelValues("in")
	ptyFlushed       = metrics.NewCounter("agentgate_pty_flushed_bytes_total", "Output of this worker's terminals read but not yet stored when a typed interrupt, quit or suspend character flushed it (workers/shellintr.go).")
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
