package store

import (
	"context"
	_ "embed"
	"fmt"
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
	return uid, nil
}
