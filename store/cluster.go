package store

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// claims remembers the runs this process claimed, so that a job queued
// twice (a requeue, or a jobs stream that lost an acknowledgement in a
// failover) never starts a run twice on the worker that already runs it.
type claims struct {
	mu sync.Mutex
	m  map[string]time.Time
}

// claimsTTL is how long a claim is remembered: longer than any requeue.
const claimsTTL = time.Hour

// first records run and reports whether it was not recorded before.
func (c *claims) first(run RunRef) bool {
	key := run.SessionID + "/" + run.RunID
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]time.Time{}
	}
	if _, ok := c.m[key]; ok {
		return false
	}
	c.m[key] = now
	if len(c.m) > 1000 {
		for k, t := range c.m {
			if now.Sub(t) > claimsTTL {
				delete(c.m, k)
			}
		}
	}
	return true
}

// forget drops a claim whose script call failed, so a retry may claim.
func (c *claims) forget(run RunRef) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, run.SessionID+"/"+run.RunID)
}

// scanKeys calls fn with every key matching pattern, a page of SCAN's
// replies at a time (so fn can pipeline its reads of them), on every master
// of a cluster (a SCAN on one node sees that node's keys only).
func (s *Store) scanKeys(ctx context.Context, pattern, typ string, fn func(keys []string) error) error {
	scan := func(ctx context.Context, c redis.Cmdable) error {
		var cursor uint64
		for {
			var cmd *redis.ScanCmd
			if typ != "" {
				cmd = c.ScanType(ctx, cursor, pattern, 500, typ)
			} else {
				cmd = c.Scan(ctx, cursor, pattern, 500)
			}
			keys, next, err := cmd.Result()
			if err != nil {
				return err
			}
			if len(keys) > 0 {
				if err := fn(keys); err != nil {
					return err
				}
			}
			if next == 0 {
				return nil
			}
			cursor = next
		}
	}
	if s.cluster == nil {
		return scan(ctx, s.rdb)
	}
	var mu sync.Mutex
	inner := fn
	fn = func(keys []string) error {
		mu.Lock()
		defer mu.Unlock()
		return inner(keys)
	}
	return s.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		return scan(ctx, c)
	})
}

// reserve takes a place for member in a bounded index (index_reserve.lua).
// When the index is full, stale gives for each member the highest score at
// which its entry may go (see staleAfter; -1: it holds its place); those
// entries are dropped unless written again meanwhile, and the reservation
// is tried once more. It reports whether the place was taken and whether
// this call added the member.
func (s *Store) reserve(ctx context.Context, index, member string, limit int, stale func(ctx context.Context, members []string) ([]int64, error)) (ok, added bool, err error) {
	for attempt := 0; ; attempt++ {
		res, err := s.sc.indexReserve.Run(ctx, s.rdb, []string{index}, member, limit).Int64Slice()
		if err != nil {
			return false, false, err
		}
		if len(res) == 2 && res[0] == 1 {
			return true, res[1] == 1, nil
		}
		if attempt > 0 {
			return false, false, nil
		}
		members, err := s.rdb.ZRange(ctx, index, 0, -1).Result()
		if err != nil {
			return false, false, err
		}
		upTo, err := stale(ctx, members)
		if err != nil {
			return false, false, err
		}
		for i, m := range members {
			if upTo[i] >= 0 {
				if err := s.forget(ctx, index, m, upTo[i]); err != nil {
					return false, false, err
				}
			}
		}
	}
}

// staleAfter is the highest index score at which an entry of something
// that is no longer live (a run that ended at ended, a terminal that
// exited) may be dropped: entries are written just before the step they
// announce, so one written after the end announces a new step. A thing
// whose hash is gone (ended 0) may go once its entry is older than
// indexGrace; the grace covers an entry written just before its hash.
func staleAfter(now time.Time, ended int64) int64 {
	return max(ended, now.Add(-indexGrace).UnixMilli())
}

// indexGrace protects an index entry written just before the atomic step
// it announces (a reservation, the running set's entry of a run being
// accepted) from the cleaning of stale entries.
const indexGrace = 30 * time.Second

// forget removes member from a sorted-set index if its score is at most
// maxScore (index_forget.lua): an entry written again since stays.
func (s *Store) forget(ctx context.Context, index, member string, maxScore int64) error {
	return s.sc.indexForget.Run(ctx, s.rdb, []string{index}, member, maxScore).Err()
}

// touch sets member's score in an index: score, or the index node's Redis
// time when score is 0.
func (s *Store) touch(ctx context.Context, index, member string, score int64) error {
	arg := ""
	if score > 0 {
		arg = strconv.FormatInt(score, 10)
	}
	return s.sc.indexTouch.Run(ctx, s.rdb, []string{index}, member, arg).Err()
}

// clusterIdentity is Identity on a cluster: the run ids of every master,
// sorted and joined, so a failover (a replica promoted) or a restart of any
// master reads as a new identity; the youngest master's uptime.
func (s *Store) clusterIdentity(ctx context.Context) (ServerIdentity, error) {
	var mu sync.Mutex
	var ids []string
	out := ServerIdentity{Uptime: -1}
	err := s.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		info, err := c.Info(ctx, "server", "persistence").Result()
		if err != nil {
			return err
		}
		id, err := parseIdentity(info)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		ids = append(ids, id.RunID)
		if out.Uptime < 0 || id.Uptime < out.Uptime {
			out.Uptime = id.Uptime
		}
		out.Loaded = out.Loaded || id.Loaded
		return nil
	})
	if err != nil {
		return ServerIdentity{}, fmt.Errorf("store: read cluster info: %w", err)
	}
	sort.Strings(ids)
	out.RunID = strings.Join(ids, ",")
	return out, nil
}

// publish sends a message on a session or terminal channel: SPUBLISH on a
// cluster (the channel's shard only), PUBLISH elsewhere.
func (s *Store) publish(ctx context.Context, channel, msg string) error {
	if s.cluster != nil {
		return s.rdb.SPublish(ctx, channel, msg).Err()
	}
	return s.rdb.Publish(ctx, channel, msg).Err()
}
