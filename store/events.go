package store

import (
	"context"
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
// at a socket's pace, a REST response): it stops once the events read pass
// maxBytes of data (at least one is returned). It reads a few events
// first, then as many as their average size says fit in what is left, so
// that a stream of large events is neither read 500 at a time nor read
// many times over to return one each.
func (s *Store) EventsWithin(ctx context.Context, sessionID string, after int64, limit, maxBytes int) ([]StoredEvent, error) {
	var out []StoredEvent
	size, n := 0, min(limit, 4)
	for n > 0 {
		evs, err := s.Events(ctx, sessionID, after, n)
		if err != nil {
			return nil, err
		}
		for _, ev := range evs {
			if len(out) > 0 && size+len(ev.Data) > maxBytes {
				return out, nil
			}
			out = append(out, ev)
			size += len(ev.Data)
		}
		if len(evs) < n || len(out) >= limit || size >= maxBytes {
			break
		}
		after = evs[len(evs)-1].Seq
		avg := max(size/len(out), 1)
		n = min(limit-len(out), max((maxBytes-size)/avg, 1))
	}
	return out, nil
}

// entrySeq reads the seq of a stream entry from its id "<seq>-0".
func entrySeq(m redis.XMessage) int64 {
	ms, _, _ := strings.Cut(m.ID, "-")
	n, _ := strconv.ParseInt(ms, 10, 64)
	return n
}
