package handlers

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Gateway metrics, served on /metrics. Every label takes a value from a
// fixed set: clients choose message types, so those are mapped first.
var (
	openSockets = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "agentgate_sockets", Help: "Open sockets by endpoint (chat: /ws, shell: /shell, plugin: /plugin-ws).",
	}, []string{"endpoint"})
	watchedSessions = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "agentgate_watched_sessions", Help: "Chat sessions at least one socket of this gateway follows (one pub/sub subscription each).",
	})
	watchedTerminals = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "agentgate_watched_terminals", Help: "Terminals at least one /shell socket of this gateway shows.",
	})
	framesOut = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "agentgate_frames_out_total", Help: "Frames written to sockets, by endpoint.",
	}, []string{"endpoint"})
	bytesOut = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "agentgate_bytes_out_total", Help: "Payload bytes of the frames written to sockets, by endpoint.",
	}, []string{"endpoint"})
	messagesIn = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "agentgate_chat_messages_total", Help: "Client frames on /ws by type.",
	}, []string{"type"})
	runsAccepted = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "agentgate_runs_accepted_total", Help: "Runs accepted by this gateway, by provider.",
	}, []string{"provider"})
	replayedEvents = promauto.NewCounter(prometheus.CounterOpts{
		Name: "agentgate_replayed_events_total", Help: "Stored events sent to sockets by replays and hole fills.",
	})
	resumes = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "agentgate_resumes_total", Help: "Reconnects that resumed a session from a lastSeq, by whether every missed event could be sent (recovered) or not.",
	}, []string{"recovered"})
	socketCloses = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "agentgate_socket_closes_total", Help: "Sockets the gateway closed, by reason (slow_consumer: 4008, shutdown: 1001, store_reset: 1012).",
	}, []string{"reason"})
	limitRefusals = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "agentgate_limit_refusals_total", Help: "Upgrades (sockets) and client frames (frames) refused by a per-user limit.",
	}, []string{"limit"})
	storeWaits = promauto.NewCounter(prometheus.CounterOpts{
		Name: "agentgate_store_unavailable_total", Help: "Client requests that met Redis down or loading and were answered with a retryable error or waited for it.",
	})
)

// endpointMetrics are one endpoint's per-frame counters, resolved once:
// they are touched for every frame written.
type endpointMetrics struct {
	sockets       prometheus.Gauge
	frames, bytes prometheus.Counter
}

func metricsOf(endpoint string) endpointMetrics {
	return endpointMetrics{
		sockets: openSockets.WithLabelValues(endpoint),
		frames:  framesOut.WithLabelValues(endpoint),
		bytes:   bytesOut.WithLabelValues(endpoint),
	}
}

var (
	chatMetrics   = metricsOf("chat")
	shellMetrics  = metricsOf("shell")
	pluginMetrics = metricsOf("plugin")
)

// wrote counts one frame written to a socket.
func (m endpointMetrics) wrote(frame []byte) {
	m.frames.Inc()
	m.bytes.Add(float64(len(frame)))
}

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
