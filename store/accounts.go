package store

import (
	"context"
	_ "embed"
	"fmt"
	"strings"
	"time"
)

//go:embed lua/account_uid.lua
var accountUIDLua string

// AccountUID returns the uid of user's OS account on worker hosts, in
// [first, last]: the one recorded for the user, or the next free one of the
// range, recorded in `ag:{accounts}` so that every worker host maps a user
// to the same uid (account_uid.lua).
func (s *Store) AccountUID(ctx context.Context, user string, first, last int) (int, error) {
	uid, err := s.sc.accountUID.Run(ctx, s.rdb, []string{s.k.accounts(), s.k.accounts() + ":next"}, user, first, last).Int()
	if err != nil {
		return 0, fmt.Errorf("store: account of %s: %w", user, err)
	}
	if uid < 0 {
		return 0, fmt.Errorf("store: account of %s: every uid of %d-%d is taken", user, first, last)
	}
	if uid < first || uid > last {
		return 0, fmt.Errorf("store: account of %s: recorded uid %d is outside %d-%d", user, uid, first, last)
	}
	if err := s.replicated(ctx, s.k.accounts()); err != nil {
		return 0, fmt.Errorf("store: account of %s: %w", user, err)
	}
	return uid, nil
}

// replicated waits until a replica of key's master has every write the
// master took so far, when that master has replicas (a Redis Cluster): a
// uid handed out and lost in a failover (replication is asynchronous)
// would be handed to the next user too, and two users would share an
// account. A worker asks once per user (it keeps the answer).
func (s *Store) replicated(ctx context.Context, key string) error {
	if s.cluster == nil {
		return nil
	}
	master, err := s.cluster.MasterForKey(ctx, key)
	if err != nil {
		return fmt.Errorf("find the master of %s: %w", key, err)
	}
	info, err := master.Info(ctx, "replication").Result()
	if err != nil {
		return fmt.Errorf("read replication of %s's master: %w", key, err)
	}
	if !strings.Contains(info, "connected_slaves:") || strings.Contains(info, "connected_slaves:0") {
		return nil // no replica to lose it to
	}
	acked, err := master.Wait(ctx, 1, replicatedWait).Result()
	if err != nil {
		return fmt.Errorf("wait for a replica of %s: %w", key, err)
	}
	if acked < 1 {
		return fmt.Errorf("no replica of %s took it within %v; try again", key, replicatedWait)
	}
	return nil
}

// replicatedWait bounds replicated's wait for a replica.
const replicatedWait = 2 * time.Second
