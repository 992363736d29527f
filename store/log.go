package store

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisLog sends go-redis' own log lines (pool and reconnect notices) to
// slog, so `--log-format json` stays one JSON object a line. During an
// outage go-redis says the same thing several times a second (every
// failed dial); a line is said once per redisLogEvery, with the number of
// repeats it stood for.
type redisLog struct {
	log *slog.Logger
	now func() time.Time

	mu   sync.Mutex
	seen map[string]*logRepeat // by format: go-redis has a few dozen
}

// logRepeat is when a line was last said, and how often it came since.
type logRepeat struct {
	said     time.Time
	repeated int
}

// redisLogEvery is how often the same go-redis line is said at most.
const redisLogEvery = 10 * time.Second

func newRedisLog(log *slog.Logger) *redisLog {
	return &redisLog{log: log, now: time.Now, seen: map[string]*logRepeat{}}
}

func (l *redisLog) Printf(_ context.Context, format string, v ...any) {
	now := l.now()
	l.mu.Lock()
	r := l.seen[format]
	if r == nil {
		r = &logRepeat{}
		l.seen[format] = r
	}
	if !r.said.IsZero() && now.Sub(r.said) < redisLogEvery {
		r.repeated++
		l.mu.Unlock()
		return
	}
	repeated := r.repeated
	r.said, r.repeated = now, 0
	l.mu.Unlock()
	attrs := []any{"component", "go-redis"}
	if repeated > 0 {
		attrs = append(attrs, "repeatedSinceLast", repeated)
	}
	l.log.Warn(fmt.Sprintf(format, v...), attrs...)
}

var setRedisLog sync.Once

// useLogger installs log as go-redis' logger. go-redis has one logger per
// process, so the first store's logger wins.
func useLogger(log *slog.Logger) {
	setRedisLog.Do(func() { redis.SetLogger(newRedisLog(log)) })
}
