package store

import (
	"context"
	_ "embed"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

//go:embed lua/account_uid.lua
var accountUIDLua string

// AccountUID returns the uid of user's OS account on worker hosts, in
// [first, last]: the one recorded for the user, or the next free one of the
// range, recorded in `ag:{accounts}` so that every worker host maps a user
// to the same uid (account_uid.lua).
func (s *Store) AccountUID(ctx context.Context, user string, first, last int) (int, error) {
	uid, err := s.accountUID(ctx, []string{s.k.accounts(), s.k.accounts() + ":next"}, user, first, last)
	if err != nil {
		return 0, fmt.Errorf("store: account of %s: %w", user, err)
	}
	if uid < 0 {
		return 0, fmt.Errorf("store: account of %s: every uid of %d-%d is taken", user, first, last)
	}
	if uid < first || uid > last {
		return 0, fmt.Errorf("store: account of %s: recorded uid %d is outside %d-%d", user, uid, first, last)
	}
	return uid, nil
}

// accountUID runs account_uid.lua. On a Redis Cluster whose master of the
// accounts has replicas, a WAIT follows it on the same connection (WAIT
// counts that connection's writes only), and the uid is given only once a
// replica has it: replication is asynchronous, and a uid handed out and
// lost in a failover would be handed to the next user too, two users on
// one account. A worker asks once per user (it keeps the answer).
func (s *Store) accountUID(ctx context.Context, keys []string, args ...any) (int, error) {
	if s.cluster == nil {
		return s.sc.accountUID.Run(ctx, s.rdb, keys, args...).Int()
	}
	master, err := s.cluster.MasterForKey(ctx, keys[0])
	if err != nil {
		return 0, fmt.Errorf("find the master of %s: %w", keys[0], err)
	}
	info, err := master.Info(ctx, "replication").Result()
	if err != nil {
		return 0, fmt.Errorf("read replication of %s's master: %w", keys[0], err)
	}
	replicas := strings.Contains(info, "connected_slaves:") && !strings.Contains(info, "connected_slaves:0")
	pipe := master.Pipeline()
	uid := s.sc.accountUID.Eval(ctx, pipe, keys, args...)
	var wait *redis.Cmd
	if replicas {
		wait = pipe.Do(ctx, "WAIT", 1, replicatedWait.Milliseconds())
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, err
	}
	if wait != nil {
		if acked, _ := wait.Int64(); acked < 1 {
			return 0, fmt.Errorf("no replica of %s took it within %v; try again", keys[0], replicatedWait)
		}
	}
	return uid.Int()
}

// replicatedWait bounds accountUID's wait for a replica.
const replicatedWait = 2 * time.Second
