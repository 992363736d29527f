package handlers

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestTerminalsOfADeadWorkerGiveTheirPlaces: a terminal whose worker died
// while no socket watched it (the tab closed, then the worker killed -9)
// was never ended, and kept one of its owner's --max-terminals-per-user
// places for ever. The owner's next open ends it as lost, with its
// retention, and takes the place.
func TestTerminalsOfADeadWorkerGiveTheirPlaces(t *testing.T) {
	url := storetest.Start(t, storetest.Real)
	st := storetest.New(t, url)
	opt, err := redis.ParseURL(url)
	require.NoError(t, err)
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	ctx := context.Background()
	g := startGateway(t, st, func(c *Config) { c.MaxTerminalsPerUser = 2 })

	// A worker alive when the terminals open, that never runs them and
	// whose heartbeat then expires.
	require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "doomed", StartedAt: time.Now()}, time.Second))
	init := func(shellID string) map[string]any {
		ws, _, err := g.dialPath("/shell", "alice")
		require.NoError(t, err)
		defer ws.Close() // the tab closes
		require.NoError(t, ws.SetReadDeadline(time.Now().Add(10*time.Second)))
		require.NoError(t, ws.WriteJSON(map[string]any{"type": "init", "shellId": shellID}))
		var m map[string]any
		require.NoError(t, ws.ReadJSON(&m))
		return m
	}
	for _, id := range []string{"tab1", "tab2"} {
		require.NotEqual(t, "error", init(id)["type"])
	}
	require.Eventually(t, func() bool {
		alive, err := st.WorkerAlive(ctx, "doomed")
		return err == nil && !alive
	}, 10*time.Second, 100*time.Millisecond)

	require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "healthy", StartedAt: time.Now()}, time.Hour))
	m := init("tab3")
	require.NotEqual(t, "error", m["type"], "%v", m)
	keys, err := rdb.Keys(ctx, st.Prefix()+":shell:{*}").Result()
	require.NoError(t, err)
	ended := 0
	for _, k := range keys {
		if h := rdb.HMGet(ctx, k, "worker", "state").Val(); h[0] == "doomed" {
			require.Equal(t, store.ShellExited, h[1], k)
			require.Positive(t, rdb.TTL(ctx, k).Val(), "an ended terminal expires")
			ended++
		}
	}
	require.Equal(t, 2, ended)
	places, err := rdb.ZRange(ctx, st.Prefix()+":user:{alice}:shells", 0, -1).Result()
	require.NoError(t, err)
	require.Len(t, places, 1)
}
