package handlers

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/migrations"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestReadyAfterRedisFlushed: a Redis that comes back empty (here
// FLUSHALL on a real redis-server) loses the key-schema version; the
// gateways' /readyz then applies the migrations again and answers 200
// within a bounded wait, though probes hammer both gateways at once: each
// gateway migrates once at most, not once per probe. Before, /readyz answered 503
// "key schema not current" for good (every gateway out of the load
// balancer) until someone ran `agentgate migrate`.
func TestReadyAfterRedisFlushed(t *testing.T) {
	url := storetest.Redis(t)
	st := storetest.New(t, url)
	ctx := context.Background()
	v, err := migrations.Apply(ctx, st)
	require.NoError(t, err)
	var calls [2]atomic.Int32
	gws := make([]*gateway, 2)
	for i := range gws {
		gws[i] = startGateway(t, st, func(c *Config) {
			c.SchemaVersion = v
			c.Migrate = func(ctx context.Context) (int, error) {
				calls[i].Add(1)
				return migrations.Apply(ctx, st)
			}
		})
		code, _ := httpGet(t, gws[i].ts.URL+"/readyz", "")
		require.Equal(t, http.StatusOK, code)
	}
	require.NoError(t, storetest.Client(t, url).FlushAll(ctx).Err())
	got, err := st.SchemaVersion(ctx)
	require.NoError(t, err)
	require.Zero(t, got, "FLUSHALL took the schema key")

	deadline := time.Now().Add(15 * time.Second)
	var wg sync.WaitGroup
	for i := range gws {
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(deadline) {
					resp, err := http.Get(gws[i].ts.URL + "/readyz")
					if err == nil {
						resp.Body.Close()
						if resp.StatusCode == http.StatusOK {
							return
						}
					}
					time.Sleep(10 * time.Millisecond)
				}
				t.Errorf("gateway %d: /readyz not 200 within 15 s of FLUSHALL", i)
			}()
		}
	}
	wg.Wait()
	// Four probes at once start one migration per gateway at most; a
	// gateway whose first probe comes after another's migration (a loaded
	// machine) finds the schema current and starts none.
	total := int32(0)
	for i := range gws {
		require.LessOrEqual(t, calls[i].Load(), int32(1), "gateway %d migrated more than once", i)
		total += calls[i].Load()
	}
	require.Positive(t, total, "no gateway migrated")
	got, err = st.SchemaVersion(ctx)
	require.NoError(t, err)
	require.Equal(t, migrations.Current, got)
	// The jobs group, migration 1's work, is back.
	_, err = st.ReadJobs(ctx, "w1", 1, 10*time.Millisecond)
	require.NoError(t, err)
}

// TestReadyWithoutMigrateOnlyReports: with no Config.Migrate, /readyz
// reports a schema behind and changes nothing.
func TestReadyWithoutMigrateOnlyReports(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st, func(c *Config) { c.SchemaVersion = 2 })
	code, body := httpGet(t, g.ts.URL+"/readyz", "")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "key schema not current", body["status"])
	v, err := st.SchemaVersion(context.Background())
	require.NoError(t, err)
	require.Zero(t, v)
}
