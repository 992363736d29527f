package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// historyReadTTL is how long a note of a history read lasts: the check
// that follows the read comes within a REST round trip. Within it the
// lowest of the reads stands (two tabs), so a tab that reconnects again
// and again is sent at most this long's events twice.
const historyReadTTL = 10 * time.Second

// NoteHistoryRead records that user's client read the session's history
// up to seq (history_read.lua keeps the lowest of the reads of historyReadTTL), so
// that the check of the session that follows can send it what came after.
func (s *Store) NoteHistoryRead(ctx context.Context, sessionID, user string, seq int64) error {
	err := s.sc.historyRead.Run(ctx, s.rdb, []string{s.k.historyRead(sessionID, user)},
		seq, int(historyReadTTL/time.Second)).Err()
	if err != nil {
		return fmt.Errorf("store: note a history read of %s: %w", sessionID, err)
	}
	return nil
}

// HistoryRead is the seq up to which user's client read the session's
// history within historyReadTTL; ok is false when it read none.
func (s *Store) HistoryRead(ctx context.Context, sessionID, user string) (seq int64, ok bool, err error) {
	v, err := s.rdb.Get(ctx, s.k.historyRead(sessionID, user)).Result()
	if errors.Is(err, redis.Nil) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("store: read a history read of %s: %w", sessionID, err)
	}
	seq, err = strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("store: read a history read of %s: %w", sessionID, err)
	}
	return seq, true, nil
}
