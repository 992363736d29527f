package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
)

// redisError is a reply error as go-redis returns them.
type redisError string

func (e redisError) Error() string { return string(e) }
func (redisError) RedisError()     {}

func TestUnavailable(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"not found", app.ErrNotFound, false},
		{"stale run", fmt.Errorf("store: append: %w", app.ErrStaleRun), false},
		{"nil reply", redis.Nil, false},
		{"closed client", redis.ErrClosed, false},
		{"script error", redisError("ERR user_script:1: bad"), false},
		{"wrong type", redisError("WRONGTYPE Operation against a key holding the wrong kind of value"), false},
		{"loading", fmt.Errorf("store: read session: %w", redisError("LOADING Redis is loading the dataset in memory")), true},
		{"loading (INFO)", ErrLoading, true},
		{"control late (Redis stalled)", fmt.Errorf("store: send x: %w", ErrLate), true},
		{"busy script", redisError("BUSY Redis is busy running a script"), true},
		{"refused", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, true},
		{"reset", fmt.Errorf("store: x: %w", syscall.ECONNRESET), true},
		{"eof", fmt.Errorf("store: x: %w", io.EOF), true},
		{"deadline", fmt.Errorf("store: x: %w", context.DeadlineExceeded), true},
		{"canceled", context.Canceled, false},
		{"pool timeout", errors.New("redis: connection pool timeout"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, Unavailable(tc.err))
		})
	}
}

// TestRefused: the error replies of a Redis that answers but takes no
// write for now, each wrapped as the store wraps them. A writer pauses
// on them rather than wait for Redis to answer, which it does.
func TestRefused(t *testing.T) {
	for _, tc := range []struct {
		name              string
		err               error
		refused, full, up bool
	}{
		{"nil", nil, false, false, false},
		{"script error", redisError("ERR user_script:1: bad"), false, false, false},
		{"connection refused", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, false, false, true},
		{"full", fmt.Errorf("store: append: %w", redisError("OOM command not allowed when used memory > 'maxmemory'.")), true, true, false},
		{"cannot save", fmt.Errorf("store: heartbeat: %w", redisError("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.")), true, false, false},
		{"replica", fmt.Errorf("store: append: %w", redisError("READONLY You can't write against a read only replica.")), true, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.refused, Refused(tc.err), "Refused")
			require.Equal(t, tc.full, Full(tc.err), "Full")
			require.Equal(t, tc.up, Unavailable(tc.err), "Unavailable")
			require.Equal(t, tc.up || tc.refused, Retryable(tc.err), "Retryable")
		})
	}
}
