package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// inboxMaxLen bounds a worker's inbox; a worker reads it continuously.
const inboxMaxLen = 10000

// Control is a message to a worker: an abort, a permission answer, terminal
// input. It travels through the worker's inbox stream, so messages to one
// worker stay in order and survive a gateway restart.
type Control struct {
	Type      string          `json:"type"`
	SessionID string          `json:"sessionId,omitempty"`
	RunID     string          `json:"runId,omitempty"`
	Data      json.RawMessage `json:"data,omitempty"`
	// Shell and Gen name the terminal generation of a shell control.
	Shell string `json:"shell,omitempty"`
	Gen   int64  `json:"gen,omitempty"`
}

// Control types.
const (
	ControlAbort = "abort"
	// ControlPermission carries an app.PermissionAnswer in Data.
	ControlPermission = "permission"
)

// ControlEntry is a control message read from an inbox.
type ControlEntry struct {
	StreamID string
	Control  Control
	Err      error
}

// SendControl appends a control message to a worker's inbox.
func (s *Store) SendControl(ctx context.Context, worker string, c Control) error {
	body, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("store: encode control: %w", err)
	}
	err = s.rdb.XAdd(ctx, &redis.XAddArgs{
		Stream: s.k.inbox(worker), MaxLen: inboxMaxLen, Approx: true, Values: []any{"msg", body},
	}).Err()
	if err != nil {
		return fmt.Errorf("store: send %s to %s: %w", c.Type, worker, err)
	}
	return nil
}

// ReadInbox waits up to block for control messages after the stream id
// after ("0" for all) and deletes what it returns.
func (s *Store) ReadInbox(ctx context.Context, worker, after string, block time.Duration) ([]ControlEntry, error) {
	if block <= 0 {
		block = time.Second
	}
	key := s.k.inbox(worker)
	streams, err := s.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{key, after}, Count: 100, Block: block}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: read inbox: %w", err)
	}
	var out []ControlEntry
	var ids []string
	for _, st := range streams {
		for _, m := range st.Messages {
			e := ControlEntry{StreamID: m.ID}
			raw, _ := m.Values["msg"].(string)
			if err := json.Unmarshal([]byte(raw), &e.Control); err != nil {
				e.Err = fmt.Errorf("decode control %s: %w", m.ID, err)
			}
			out = append(out, e)
			ids = append(ids, m.ID)
		}
	}
	if len(ids) > 0 {
		if err := s.rdb.XDel(ctx, key, ids...).Err(); err != nil {
			s.log.Warn("delete read inbox entries", "worker", worker, "err", err)
		}
	}
	return out, nil
}
