package e2e

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// checkKeys checks the Redis key schema of PROTOCOL §7 for one session of
// the cluster: the session hash, its event stream (which must hold exactly
// the frames clients received), the running and per-user sets, the jobs
// stream and its group, the worker heartbeat, the schema version, and that
// every key is under the prefix and holds plain strings.
func checkKeys(t *testing.T, cl *cluster, sid, owner string, worker *proc, running bool, received []event) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rdb := cl.rdb
	p := keyPrefix

	hkey := p + ":session:{" + sid + "}"
	require.Equal(t, "hash", rdb.Type(ctx, hkey).Val(), hkey)
	h := rdb.HGetAll(ctx, hkey).Val()
	for _, f := range []string{"id", "owner", "provider", "projectPath", "providerSessionId", "state", "runId",
		"startedAt", "statusText", "canInterrupt", "worker", "lastSeq", "exitCode", "createdAt", "updatedAt"} {
		require.Contains(t, h, f, "field %s of %s: %v", f, hkey, h)
	}
	require.Equal(t, sid, h["id"])
	require.Equal(t, owner, h["owner"])
	require.Equal(t, "claude", h["provider"])
	require.Equal(t, cl.project, h["projectPath"])
	require.Equal(t, sid, h["providerSessionId"], "the CLI's own id is the gateway's")
	require.Equal(t, worker.workerID, h["worker"])
	last, err := strconv.ParseInt(h["lastSeq"], 10, 64)
	require.NoError(t, err, h["lastSeq"])
	if running {
		require.Equal(t, "running", h["state"])
		require.Equal(t, "", h["exitCode"])
	} else {
		require.Equal(t, "completed", h["state"])
		require.Equal(t, "0", h["exitCode"])
		require.Equal(t, lastSeq(received), last)
	}

	ekey := hkey + ":events"
	require.Equal(t, "stream", rdb.Type(ctx, ekey).Val(), ekey)
	entries := rdb.XRange(ctx, ekey, "-", "+").Val()
	require.GreaterOrEqual(t, int64(len(entries)), lastSeq(received))
	byseq := map[int64]redis.XMessage{}
	for i, e := range entries {
		seq, err := strconv.ParseInt(e.Values["seq"].(string), 10, 64)
		require.NoError(t, err)
		require.Equal(t, int64(i+1), seq, "stream entries are the session's events in seq order")
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(e.Values["data"].(string)), &m), "data is the event's JSON")
		require.Equal(t, e.Values["kind"], m["kind"])
		byseq[seq] = e
	}
	for _, ev := range received {
		require.Equal(t, ev.Raw, byseq[ev.Seq].Values["data"], "the stored event is the frame clients got")
	}

	runningSet := func() []string { return rdb.ZRange(ctx, p+":sessions:running", 0, -1).Val() }
	if running {
		require.Contains(t, runningSet(), sid)
	} else {
		// The running index lies outside the session's slot: it is
		// updated by a call of its own after the complete is published,
		// so a client can see the complete first.
		require.Eventually(t, func() bool { return !slices.Contains(runningSet(), sid) }, 5*time.Second, 10*time.Millisecond,
			"the ended session leaves %s:sessions:running", p)
	}
	require.Contains(t, rdb.ZRange(ctx, p+":user:{"+owner+"}:sessions", 0, -1).Val(), sid)

	require.Equal(t, "stream", rdb.Type(ctx, p+":jobs").Val())
	groups := rdb.XInfoGroups(ctx, p+":jobs").Val()
	require.Len(t, groups, 1)
	require.Equal(t, "workers", groups[0].Name)

	wkey := p + ":worker:" + worker.workerID
	require.Equal(t, "hash", rdb.Type(ctx, wkey).Val(), wkey)
	ttl := rdb.PTTL(ctx, wkey).Val()
	require.True(t, ttl > 0 && ttl <= time.Second, "a worker heartbeat has a TTL of at most AGENTGATE_HEARTBEAT_TTL: %s", ttl)

	v, err := rdb.Get(ctx, p+":schema").Result()
	require.NoError(t, err)
	_, err = strconv.Atoi(v)
	require.NoError(t, err, "schema version %q", v)

	// Every key is under the prefix; values are plain strings.
	keys := cl.keys(ctx, "*")
	for _, k := range keys {
		require.True(t, strings.HasPrefix(k, p+":"), "key %q outside the prefix", k)
		var vals []string
		switch rdb.Type(ctx, k).Val() {
		case "string":
			vals = []string{rdb.Get(ctx, k).Val()}
		case "hash":
			for f, v := range rdb.HGetAll(ctx, k).Val() {
				vals = append(vals, f, v)
			}
		case "zset":
			vals = rdb.ZRange(ctx, k, 0, -1).Val()
		case "stream":
			for _, e := range rdb.XRange(ctx, k, "-", "+").Val() {
				for f, v := range e.Values {
					vals = append(vals, f, v.(string))
				}
			}
		}
		for _, v := range vals {
			require.True(t, utf8.ValidString(v), "key %s holds a binary value %q", k, v)
		}
	}
	t.Logf("redis keys: %v", keys)
}
