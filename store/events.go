package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// StoredEvent is one event as kept in a session stream: its seq and the
// frame sent to clients (JSON that starts with `{"seq":N,`).
type StoredEvent struct {
	Seq  int64
	Kind string
	Data []byte
}

// Events returns up to limit stored events of a session with seq > after, in
// seq order. Stream ids are "<seq>-0", so this is one XRANGE from after+1.
// Events that were trimmed away are simply absent: compare the first seq
// with after+1 to detect that.
func (s *Store) Events(ctx context.Context, sessionID string, after int64, limit int) ([]StoredEvent, error) {
	if after < 0 {
		after = 0
	}
	msgs, err := s.rdb.XRangeN(ctx, s.k.events(sessionID), strconv.FormatInt(after+1, 10)+"-0", "+", int64(limit)).Result()
	if err != nil {
		return nil, fmt.Errorf("store: read events of %s: %w", sessionID, err)
	}
	out := make([]StoredEvent, 0, len(msgs))
	for _, m := range msgs {
		data, _ := m.Values["data"].(string)
		kind, _ := m.Values["kind"].(string)
		out = append(out, StoredEvent{Seq: entrySeq(m), Kind: kind, Data: []byte(data)})
	}
	if len(out) > 0 {
		s.floors.note(sessionID, out[len(out)-1].Seq)
	}
	return out, nil
}

// EventsWithin is Events for a reader that holds what it read (a replay
// at a socket's pace, a REST response): it stops before the event that
// would take the data read past maxBytes (at least one is returned). The
// bound is kept in Redis (events_within.lua), so a stream of small events
// followed by large ones is not fetched whole to keep a few.
func (s *Store) EventsWithin(ctx context.Context, sessionID string, after int64, limit, maxBytes int) ([]StoredEvent, error) {
	if after < 0 {
		after = 0
	}
	res, err := s.sc.eventsWithin.Run(ctx, s.rdb, []string{s.k.events(sessionID)}, after+1, limit, maxBytes).Slice()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("store: read events of %s: %w", sessionID, err)
	}
	out := make([]StoredEvent, 0, len(res)/3)
	for i := 0; i+2 < len(res); i += 3 {
		id, _ := res[i].(string)
		kind, _ := res[i+1].(string)
		data, _ := res[i+2].(string)
		out = append(out, StoredEvent{Seq: entrySeq(redis.XMessage{ID: id}), Kind: kind, Data: []byte(data)})
	}
	if len(out) > 0 {
		s.floors.note(sessionID, out[len(out)-1].Seq)
	}
	return out, nil
}

// entrySeq reads the seq of a stream entry from its id "<seq>-0".
func entrySeq(m redis.XMessage) int64 {
	ms, _, _ := strings.Cut(m.ID, "-")
	n, _ := strconv.ParseInt(ms, 10, 64)
	return n
}
