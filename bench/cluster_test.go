package bench

import (
	"context"
	"fmt"
	"testing"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// BenchmarkFanoutCluster compares the gateway's fan-out (worker, Redis,
// hub, socket; in one process) on one redis-server and on a Redis Cluster
// of three masters and three replicas, all on this machine: events/s,
// latency, CPU per event, and the CPU of the busiest Redis node. On two
// cores a cluster cannot show scaling; it shows what sharding and
// replication cost.
func BenchmarkFanoutCluster(b *testing.B) {
	for _, n := range []int{100, 1000} {
		for _, m := range modes {
			b.Run(configName(n, m.name), func(b *testing.B) {
				b.Run("redis", func(b *testing.B) {
					benchGateway(b, n, m, func(b *testing.B) *gatewayEnv {
						return startGatewayEnvOn(b, storetest.StartServer(b).URL, 0)
					})
				})
				b.Run("cluster", func(b *testing.B) {
					benchGateway(b, n, m, func(b *testing.B) *gatewayEnv {
						return startGatewayEnvOn(b, storetest.StartCluster(b).URL, 0)
					})
				})
			})
		}
	}
}

// BenchmarkSessionMemory reports what one finished session of 100 text
// events holds in Redis (MEMORY USAGE of its hash and event stream), on
// one redis-server and on a cluster.
func BenchmarkSessionMemory(b *testing.B) {
	backends := map[string]func(testing.TB) string{
		"redis":   func(t testing.TB) string { return storetest.StartServer(t).URL },
		"cluster": func(t testing.TB) string { return storetest.StartCluster(t).URL },
	}
	for _, name := range []string{"redis", "cluster"} {
		b.Run(name, func(b *testing.B) {
			url := backends[name](b)
			st := storetest.New(b, url)
			raw := storetest.Client(b, url)
			ctx := context.Background()
			var bytes int64
			b.ResetTimer()
			for range b.N {
				sess := app.Session{ID: app.NewID(), Owner: "bench", Provider: app.Claude, ProjectPath: "/w"}
				res, err := st.Accept(ctx, &store.AcceptRequest{Session: sess, New: true, Job: app.Job{SessionID: sess.ID, Command: "hi"}})
				if err != nil {
					b.Fatal(err)
				}
				run := store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}
				for i := range 100 {
					if _, err := st.Append(ctx, run, []app.Event{app.Text("assistant", fmt.Sprintf("line %d of the answer", i))}, nil); err != nil {
						b.Fatal(err)
					}
				}
				if _, err := st.Complete(ctx, run, app.Outcome{}); err != nil {
					b.Fatal(err)
				}
				key := st.Prefix() + ":session:{" + sess.ID + "}"
				for _, k := range []string{key, key + ":events"} {
					n, err := raw.MemoryUsage(ctx, k).Result()
					if err != nil {
						b.Fatal(err)
					}
					bytes += n
				}
			}
			b.ReportMetric(float64(bytes)/float64(b.N), "bytes/session")
		})
	}
}
