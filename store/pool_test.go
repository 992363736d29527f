package store_test

import (
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store"
)

// TestPoolSize: a process that asks for a pool at least so large gets it
// (a worker: one connection per terminal appending, and its heartbeat
// beside them), never less than go-redis' default, and a pool_size in the
// URL wins. TestShellMemoryBound (e2e) is the case: a hundred terminals
// flooding at once on one worker with go-redis' default (10 with one P)
// held every connection, the worker's heartbeat waited for one until it
// expired, and the gateway refused further terminals for want of a worker.
func TestPoolSize(t *testing.T) {
	def := 10 * runtime.GOMAXPROCS(0)
	require.Equal(t, 0, store.PoolSize(0, 0), "go-redis' default")
	require.Equal(t, 7, store.PoolSize(200, 7), "the URL's pool_size")
	require.Equal(t, max(200, def), store.PoolSize(200, 0))
	require.Equal(t, def, store.PoolSize(1, 0))
}
