package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentgate/agentgate/app"
)

// inboxMaxLen bounds a worker's inbox; a worker reads it continuously.
const inboxMaxLen = 10000

// inboxTTL is how long an inbox outlives the last control sent to it. A
// live worker deletes what it reads; the inbox of a worker that died
// (kill -9, no clean shutdown to delete it) goes after this.
const inboxTTL = 10 * time.Minute

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
	// ID tells the copies of one send apart from another send: SendControl
	// sets it (app.NewID). A send retried after a timeout (go-redis does, on another
	// connection) can land twice when Redis was stalled rather than down,
	// and a worker acts on one copy only (a keystroke typed once runs once).
	ID string `json:"id,omitempty"`
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

// ErrLate is returned by SendControl, Accept and AskPermission when Redis ran the write
// after its deadline (ctx's, less a margin for the reply): nothing was
// written. A stalled Redis runs what waited in its sockets when it goes
// on, long after the caller told its user the write failed.
var ErrLate = errors.New("store: write reached Redis after its deadline")

// late returns ErrLate for a write Redis refused as past its deadline, and
// has the clock measured again before the next deadline: Redis stalled, or
// its clock moved.
func (s *Store) late() error {
	s.clock.expire()
	return ErrLate
}

// SendControl appends a control message to a worker's inbox, and gives it
// an ID when it has none. Under a ctx with a deadline, Redis takes it only
// until shortly before that deadline: a caller that gave up waiting (and
// told its user the control failed) never has it sent later, when a
// stalled Redis goes on.
func (s *Store) SendControl(ctx context.Context, worker string, c Control) error {
	if c.ID == "" {
		c.ID = app.NewID()
	}
	body, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("store: encode control: %w", err)
	}
	sent, err := s.sc.inboxSend.Run(ctx, s.rdb, []string{s.k.inbox(worker)}, inboxMaxLen, int(inboxTTL.Seconds()), body, s.deadlineMillis(ctx)).Int()
	if err != nil {
		return fmt.Errorf("store: send %s to %s: %w", c.Type, worker, err)
	}
	if sent == 0 {
		return fmt.Errorf("store: send %s to %s: %w", c.Type, worker, s.late())
	}
	return nil
}

// ReadInbox waits up to block for control messages after the stream id
// after ("0" for all) and deletes what it returns.
func (s *Store) ReadInbox(ctx context.Context, worker, after string, block time.Duration) ([]ControlEntry, error) {
	out, err := s.PeekInbox(ctx, worker, after, block)
	if err == nil {
		s.DeleteInbox(ctx, worker, out)
	}
	return out, err
}

// PeekInbox is ReadInbox without the delete: a worker acts on its
// controls first (a keystroke reaches its terminal one Redis round trip
// sooner) and deletes them after, with DeleteInbox.
func (s *Store) PeekInbox(ctx context.Context, worker, after string, block time.Duration) ([]ControlEntry, error) {
	if block <= 0 {
		block = time.Second
	}
	streams, err := s.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{s.k.inbox(worker), after}, Count: 100, Block: block}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: read inbox: %w", err)
	}
	var out []ControlEntry
	for _, st := range streams {
		for _, m := range st.Messages {
			e := ControlEntry{StreamID: m.ID}
			raw, _ := m.Values["msg"].(string)
			if err := json.Unmarshal([]byte(raw), &e.Control); err != nil {
				e.Err = fmt.Errorf("decode control %s: %w", m.ID, err)
			}
			out = append(out, e)
		}
	}
	return out, nil
}

// DeleteInbox deletes entries read from a worker's inbox. A failure is
// logged, not returned: the reader goes on from its last id, so an entry
// left behind is only kept longer (the inbox is capped).
func (s *Store) DeleteInbox(ctx context.Context, worker string, entries []ControlEntry) {
	if len(entries) == 0 {
		return
	}
	ids := make([]string, len(entries))
	for i, e := range entries {
		ids[i] = e.StreamID
	}
	if err := s.rdb.XDel(ctx, s.k.inbox(worker), ids...).Err(); err != nil {
		s.log.Warn("delete read inbox entries", "worker", worker, "err", err)
	}
}
