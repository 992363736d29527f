package store_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// BenchmarkAppendMany is the append of one event to each of runs sessions
// in one pipeline (store.AppendMany), as a worker sends the lines its runs
// printed meanwhile, against a real redis-server whose channels one
// subscriber follows, as a gateway does. It reports the CPU redis-server
// spends per event (INFO cpu): the Redis share of an event's cost, which
// bench/'s Fanout measures for the whole path, here in seconds and alone,
// for changes to run_append.lua.
func BenchmarkAppendMany(b *testing.B) {
	for _, runs := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("runs=%d", runs), func(b *testing.B) {
			url := storetest.StartServer(b).URL
			st := storetest.New(b, url)
			raw := redisClient(b, url)
			ctx := context.Background()
			reqs := make([]store.AppendReq, runs)
			channels := make([]string, runs)
			for i := range reqs {
				sess := app.Session{ID: app.NewID(), Owner: "bench", Provider: app.Claude, ProjectPath: "/tmp"}
				res, err := st.Accept(ctx, &store.AcceptRequest{Session: sess, New: true,
					Job: app.Job{SessionID: sess.ID, Owner: "bench", Provider: app.Claude, Command: "hi"}})
				if err != nil {
					b.Fatal(err)
				}
				reqs[i].Run = store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}
				channels[i] = sessionKey(st, sess.ID) + ":live"
			}
			sub := raw.Subscribe(ctx, channels...)
			b.Cleanup(func() { _ = sub.Close() })
			if _, err := sub.Receive(ctx); err != nil {
				b.Fatal(err)
			}
			go func() {
				for range sub.Channel(redis.WithChannelSize(1 << 16)) {
				}
			}()
			before := redisCPU(b, raw)
			b.ReportAllocs()
			b.ResetTimer()
			for n := int64(1); n <= int64(b.N); n++ {
				for i := range reqs {
					reqs[i].Batch = n
					reqs[i].Events = []app.Event{app.Text("assistant", "1733412345678901234")}
				}
				for _, r := range st.AppendMany(ctx, reqs) {
					if r.Err != nil {
						b.Fatal(r.Err)
					}
				}
			}
			b.StopTimer()
			b.ReportMetric((redisCPU(b, raw)-before)*1e6/float64(b.N*runs), "redis-µs/event")
		})
	}
}

// redisCPU is the CPU time redis-server has used, user and system, in
// seconds.
func redisCPU(b *testing.B, rdb redis.UniversalClient) float64 {
	b.Helper()
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	total := 0.0
	for _, line := range strings.Split(info, "\r\n") {
		name, v, _ := strings.Cut(line, ":")
		if name == "used_cpu_user" || name == "used_cpu_sys" {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatal(err)
			}
			total += f
		}
	}
	return total
}

// BenchmarkConfirmClaims is a worker's periodic confirmation of its runs
// (store.ConfirmClaims, every 5 s) with 1000 runs going, against a real
// redis-server: what it costs the worker and Redis per run confirmed.
func BenchmarkConfirmClaims(b *testing.B) {
	const runs = 1000
	url := storetest.StartServer(b).URL
	st := storetest.New(b, url)
	raw := redisClient(b, url)
	ctx := context.Background()
	refs := make([]store.RunRef, runs)
	for i := range refs {
		sess := app.Session{ID: app.NewID(), Owner: "bench", Provider: app.Claude, ProjectPath: "/tmp"}
		res, err := st.Accept(ctx, &store.AcceptRequest{Session: sess, New: true,
			Job: app.Job{SessionID: sess.ID, Owner: "bench", Provider: app.Claude, Command: "hi"}})
		if err != nil {
			b.Fatal(err)
		}
		refs[i] = store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude, Worker: "w1"}
	}
	before := redisCPU(b, raw)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		ok, err := st.ConfirmClaims(ctx, refs, "w1")
		if err != nil || !ok[0] {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric((redisCPU(b, raw)-before)*1e6/float64(b.N*runs), "redis-µs/run")
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*runs), "µs/run")
}
