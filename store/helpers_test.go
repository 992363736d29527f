package store_test

import (
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/agentgate/agentgate/store/storetest"
)

// redisClient is a raw client for tests that look at keys directly, the way
// an admin with redis-cli (-c on a cluster) would.
func redisClient(t testing.TB, url string) redis.UniversalClient {
	t.Helper()
	return storetest.Client(t, url)
}
