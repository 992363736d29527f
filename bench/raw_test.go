package bench

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store/storetest"
)

// rawAppend has the shape of run_append.lua's emit for one event: HINCRBY
// the session's lastSeq, XADD the frame under "<seq>-0" with MAXLEN ~, and
// PUBLISH it, without the run checks.
//
// KEYS[1] hash  KEYS[2] stream  KEYS[3] channel
// ARGV[1] MAXLEN  ARGV[2] runId  ARGV[3] event body (a JSON object)
var rawAppend = redis.NewScript(`
local seq = redis.call('HINCRBY', KEYS[1], 'lastSeq', 1)
local s = string.format('%d', seq)
local data = '{"seq":' .. s .. ',"runId":"' .. ARGV[2] .. '",' .. string.sub(ARGV[3], 2)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], s .. '-0', 'seq', s, 'kind', 'text', 'data', data)
redis.call('PUBLISH', KEYS[3], data)
return seq
`)

// rawBody builds an event body of the same shape and size as the gateway's
// text events, whose content is the time it was built.
func rawBody(sessionID string, sentAt int64) string {
	ev := app.Text("assistant", strconv.FormatInt(sentAt, 10))
	ev.SessionID = sessionID
	ev.Provider = app.Claude
	body, _ := ev.Body()
	return string(body)
}

// benchRaw is the baseline of benchGateway: N goroutines call rawAppend on
// N sessions on the same schedule as the gateway's emitters, and one
// go-redis PubSub subscribed to the N channels reads the frames; latency runs
// from before EVALSHA to receipt.
func benchRaw(b *testing.B, sessions int, m mode) {
	url := storetest.StartServer(b).URL
	opts, err := redis.ParseURL(url)
	if err != nil {
		b.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	ctx := context.Background()
	if err := rawAppend.Load(ctx, rdb).Err(); err != nil {
		b.Fatal(err)
	}
	var lat latencies
	var delivered, expected int64
	var span time.Duration
	cpu := &cpuMeter{rdb: rdb}
	quiesce(time.Minute)
	b.ResetTimer()
	for round := range b.N {
		b.StopTimer()
		ids := make([]string, sessions)
		channels := make([]string, sessions)
		for i := range ids {
			ids[i] = app.NewID()
			channels[i] = fmt.Sprintf("raw%d:session:{%s}:live", round, ids[i])
		}
		ps := rdb.Subscribe(ctx, channels...)
		for confirmed := 0; confirmed < sessions; {
			msg, err := ps.ReceiveTimeout(ctx, 10*time.Second)
			if err != nil {
				b.Fatalf("subscribe: %v", err)
			}
			if _, ok := msg.(*redis.Subscription); ok {
				confirmed++
			}
		}
		var received, last atomic.Int64
		samples := make([]int64, 0, 1<<16)
		receiverDone := make(chan struct{})
		go func() {
			defer close(receiverDone)
			for {
				// Ends when ps is closed, or after a silence (lost events).
				msg, err := ps.ReceiveTimeout(ctx, lossWait)
				now := time.Now().UnixNano()
				if err != nil {
					return
				}
				if m, ok := msg.(*redis.Message); ok {
					if ts, ok := contentTime([]byte(m.Payload)); ok {
						samples = append(samples, now-ts)
						last.Store(now)
						received.Add(1)
					}
				}
			}
		}()

		cpu.mark()
		start := time.Now()
		if m.paced {
			start = start.Add(5 * time.Millisecond) // every goroutine is awake by then
		}
		sc := newSchedule(sessions, m, start)
		runID := strconv.FormatInt(sc.start.UnixMilli(), 10)
		b.StartTimer()
		var wg sync.WaitGroup
		var sent atomic.Int64
		for s := range sessions {
			wg.Add(1)
			go func() {
				defer wg.Done()
				keys := []string{"raw:session:{" + ids[s] + "}", "raw:session:{" + ids[s] + "}:events", channels[s]}
				for i := 0; sc.wait(s, i); i++ {
					now := time.Now().UnixNano()
					err := rawAppend.EvalSha(ctx, rdb, keys, 10000, runID, rawBody(ids[s], now)).Err()
					if err != nil {
						b.Errorf("append: %v", err)
						return
					}
					sent.Add(1)
				}
			}()
		}
		wg.Wait()
		total := sent.Load()
		waitUntil(lossWait, func() bool { return received.Load() >= total })
		b.StopTimer()
		cpu.end()
		_ = ps.Close()
		<-receiverDone
		lat.add(samples)
		delivered += received.Load()
		expected += total
		span += time.Duration(last.Load() - sc.start.UnixNano())
	}
	evps := reportFanout(b, &lat, delivered, expected, span)
	cpu.report(b.ReportMetric)
	results.Lock()
	results.raw[configName(sessions, m.name)] = evps
	results.Unlock()
}
