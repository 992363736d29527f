package store

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestRedisLogSaysARepeatOnce: go-redis' line for a failed dial, said
// many times a second during an outage, is logged once per redisLogEvery,
// the next time with how many it stood for; other lines are not held back.
func TestRedisLogSaysARepeatOnce(t *testing.T) {
	var out bytes.Buffer
	l := newRedisLog(slog.New(slog.NewTextHandler(&out, nil)))
	now := time.Unix(1000, 0)
	l.now = func() time.Time { return now }
	ctx := context.Background()
	const dial = "redis: connection pool: failed to dial after %d attempts: %v"
	for i := 0; i < 50; i++ {
		l.Printf(ctx, dial, 5, "connection refused")
		now = now.Add(100 * time.Millisecond)
	}
	l.Printf(ctx, "redis: discarding bad PubSub connection: %v", "EOF")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 2, out.String()) // the first dial line, the other line
	require.Contains(t, lines[0], "failed to dial after 5 attempts: connection refused")
	require.NotContains(t, lines[0], "repeatedSinceLast")

	now = now.Add(redisLogEvery)
	l.Printf(ctx, dial, 5, "connection refused")
	lines = strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 3)
	require.Contains(t, lines[2], "repeatedSinceLast=49")
}
