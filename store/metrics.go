package store

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentgate/agentgate/internal/metrics"
)

// Redis command metrics, in the process's default registry: the gateway
// serves them on /metrics, a worker on its --metrics-listen address.
var (
	commandSeconds = metrics.NewHistogramVec("agentgate_redis_command_seconds", "Round trips to Redis by command (a pipeline counts once, as pipeline); blocking reads include their wait.", metrics.ExponentialBuckets(0.0001, 4, 8), "command")
	commandErrors  = metrics.NewCounterVec("agentgate_redis_errors_total", "Redis commands that failed, by kind (unavailable: down, loading or unreachable; full: a write refused at maxmemory; refused: a write refused because Redis cannot persist (MISCONF); reply: an error reply such as STALE, the refusal of a stale run; other: anything else).", "kind")
)

// metricsHook times every command the store sends. The command label is
// bounded by the store's own code: clients never name a command.
type metricsHook struct{}

func (metricsHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (metricsHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmd)
		observeCommand(cmd.Name(), start, err)
		return err
	}
}

func (metricsHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmds)
		observeCommand(pipelineName(cmds), start, err)
		return err
	}
}

// pipelineName labels a pipeline: "handshake" for the commands go-redis
// sends on a new connection, "pipeline" for the rest.
func pipelineName(cmds []redis.Cmder) string {
	for _, c := range cmds {
		if n := c.Name(); n != "client" && n != "hello" {
			return "pipeline"
		}
	}
	return "handshake"
}

// commandObservers caches one histogram child per command name, so a
// command costs no label lookup after its first use.
var commandObservers sync.Map // string -> *metrics.Histogram

func observeCommand(name string, start time.Time, err error) {
	o, ok := commandObservers.Load(name)
	if !ok {
		o, _ = commandObservers.LoadOrStore(name, commandSeconds.WithLabelValues(strings.ToLower(name)))
	}
	o.(*metrics.Histogram).Observe(time.Since(start).Seconds())
	var reply redis.Error
	switch {
	case err == nil, errors.Is(err, redis.Nil), errors.Is(err, context.Canceled):
	case name == "client" || name == "handshake":
		// go-redis announces itself with subcommands older servers do
		// not know, and goes on without them.
	case Unavailable(err):
		commandErrors.WithLabelValues("unavailable").Inc()
	case Full(err):
		commandErrors.WithLabelValues("full").Inc()
	case Refused(err):
		commandErrors.WithLabelValues("refused").Inc()
	case errors.As(err, &reply):
		// NOSCRIPT is how a script is loaded (go-redis sends it whole
		// next), BUSYGROUP a group that exists: neither is a failure.
		if msg := reply.Error(); !strings.HasPrefix(msg, "NOSCRIPT") && !strings.HasPrefix(msg, "BUSYGROUP") {
			commandErrors.WithLabelValues("reply").Inc()
		}
	default:
		commandErrors.WithLabelValues("other").Inc()
	}
}
