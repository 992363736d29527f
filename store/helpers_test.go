package store_test

import (
	"testing"

	"github.com/redis/go-redis/v9"
)

// redisClient is a raw client for tests that look at keys directly, the way
// an admin with redis-cli would.
func redisClient(t *testing.T, url string) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}
