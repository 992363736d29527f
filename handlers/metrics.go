package handlers

import (
	"net/http"

	"github.com/agentgate/agentgate/internal/metrics"
)

// Gateway metrics, served on /metrics. Every label takes a value from a
// fixed set: clients choose message types, so those are mapped first.
var (
	openSockets        = metrics.NewGaugeVec("agentgate_sockets", "Open sockets by endpoint (chat: /ws, shell: /shell, plugin: /plugin-ws).", "endpoint")
	watchedSessions    = metrics.NewGauge("agentgate_watched_sessions", "Chat sessions at least one socket of this gateway follows (one pub/sub subscription each).")
	watchedTerminals   = metrics.NewGauge("agentgate_watched_terminals", "Terminals at least one /shell socket of this gateway shows.")
	framesOut          = metrics.NewCounterVec("agentgate_frames_out_total", "Frames written to sockets, by endpoint.", "endpoint")
	bytesOut           = metrics.NewCounterVec("agentgate_bytes_out_total", "Payload bytes of the frames written to sockets, by endpoint.", "endpoint")
	messagesIn         = metrics.NewCounterVec("agentgate_chat_messages_total", "Client frames on /ws by type.", "type")
	runsAccepted       = metrics.NewCounterVec("agentgate_runs_accepted_total", "Runs accepted by this gateway, by provider.", "provider")
	replayedEvents     = metrics.NewCounter("agentgate_replayed_events_total", "Stored events sent to sockets by replays and hole fills.")
	resumes            = metrics.NewCounterVec("agentgate_resumes_total", "Reconnects that resumed a session from a lastSeq, by whether every missed event could be sent (recovered) or not.", "recovered")
	socketCloses       = metrics.NewCounterVec("agentgate_socket_closes_total", "Sockets the gateway closed, by reason (slow_consumer: 4008, shutdown: 1001, store_reset: 1012).", "reason")
	limitRefusals      = metrics.NewCounterVec("agentgate_limit_refusals_total", "What a per-user limit refused, by limit: upgrades (sockets), client frames (frames; frames_waited counts the /shell frames that waited for the rate instead), terminal acks (acks) and restarts (restarts), REST event reads (reads).", "limit")
	terminalControls   = metrics.NewCounterVec("agentgate_terminal_controls_total", "Terminal input, resizes and acks sent to workers, by path (link: the worker's link; inbox: through Redis).", "path")
	storeWaits         = metrics.NewCounter("agentgate_store_unavailable_total", "Client requests that met Redis down or loading and were answered with a retryable error or waited for it.")
	schemaRemigrations = metrics.NewCounterVec("agentgate_schema_remigrations_total", "Times /readyz found the key schema behind (Redis restarted empty) and applied the migrations again, by result (ok, failed).", "result")
)

// endpointMetrics are one endpoint's per-frame counters, resolved once:
// they are touched for every frame written.
type endpointMetrics struct {
	sockets       *metrics.Gauge
	frames, bytes *metrics.Counter
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

var (
	linkedControls = terminalControls.WithLabelValues("link")
	inboxControls  = terminalControls.WithLabelValues("inbox")
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

func metricsHandler() http.Handler { return metrics.Handler() }
