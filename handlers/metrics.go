package handlers

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Gateway metrics, served on /metrics.
var (
	openSockets = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "agentgate_chat_sockets", Help: "Open /ws sockets.",
	})
	messagesIn = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "agentgate_chat_messages_total", Help: "Client frames on /ws by type.",
	}, []string{"type"})
	runsAccepted = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "agentgate_runs_accepted_total", Help: "Runs accepted by this gateway, by provider.",
	}, []string{"provider"})
	replayedEvents = promauto.NewCounter(prometheus.CounterOpts{
		Name: "agentgate_replayed_events_total", Help: "Stored events sent to sockets by replays and hole fills.",
	})
	slowCloses = promauto.NewCounter(prometheus.CounterOpts{
		Name: "agentgate_slow_consumer_closes_total", Help: "Sockets closed with 4008 because their queue was full.",
	})
	limitRefusals = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "agentgate_limit_refusals_total", Help: "Upgrades (sockets) and client frames (frames) refused by a per-user limit.",
	}, []string{"limit"})
)

// metricType keeps the type label bounded: clients choose the type.
func metricType(t string) string {
	switch t {
	case "claude-command", "cursor-command", "codex-command", "gemini-command", "abort-session",
		"cursor-abort", "check-session-status", "subscribe", "unsubscribe", "get-pending-permissions",
		"get-active-sessions", "claude-permission-response":
		return t
	}
	return "other"
}

func metricsHandler() http.Handler { return promhttp.Handler() }
