package store

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/redis/go-redis/v9"
)

// redisLog sends go-redis' own log lines (pool and reconnect notices) to
// slog, so `--log-format json` stays one JSON object a line.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(_ context.Context, format string, v ...any) {
	l.log.Warn(fmt.Sprintf(format, v...), "component", "go-redis")
}

var setRedisLog sync.Once

// useLogger installs log as go-redis' logger. go-redis has one logger per
// process, so the first store's logger wins.
func useLogger(log *slog.Logger) {
	setRedisLog.Do(func() { redis.SetLogger(redisLog{log: log}) })
}
