package store

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/redis/go-redis/v9"
)

// Redis command metrics, in the process's default registry: the gateway
// serves them on /metrics, a worker on its --metrics-listen address.
var (
	commandSeconds = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "agentgate_redis_command_seconds",
		Help:    "Round trips to Redis by command (a pipeline counts once, as pipeline); blocking reads include their wait.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 8),
	}, []string{"command"})
	commandErrors = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "agentgate_redis_errors_total",
		Help: "Redis commands that failed, by kind (unavailable: down, loading or unreachable; other: anything else but a missing key).",
	}, []string{"kind"})
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
		observeCommand("pipeline", start, err)
		return err
	}
}

// commandObservers caches one histogram child per command name, so a
// command costs no label lookup after its first use.
var commandObservers sync.Map // string -> prometheus.Observer

func observeCommand(name string, start time.Time, err error) {
	o, ok := commandObservers.Load(name)
	if !ok {
		o, _ = commandObservers.LoadOrStore(name, commandSeconds.WithLabelValues(strings.ToLower(name)))
	}
	o.(prometheus.Observer).Observe(time.Since(start).Seconds())
	switch {
	case err == nil, errors.Is(err, redis.Nil), errors.Is(err, context.Canceled):
	case Unavailable(err):
		commandErrors.WithLabelValues("unavailable").Inc()
	default:
		commandErrors.WithLabelValues("other").Inc()
	}
}
