package store

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/redis/go-redis/v9"

	"github.com/agentgate/agentgate/app"
)

// AskPermission records a permission request of a run (permission_ask.lua):
// its permission_request event, the pending request in
// `ag:session:{ID}:perms`, and the request id in the index that routes
// answers. It returns app.ErrStaleRun when the run is no longer current.
func (s *Store) AskPermission(ctx context.Context, run RunRef, p app.PendingPermission) error {
	if !app.ValidPermissionID(p.RequestID) {
		// run_complete.lua splices pending ids into JSON as they are.
		return fmt.Errorf("store: ask permission: invalid request id %q", p.RequestID)
	}
	p.SessionID = run.SessionID
	body, err := s.eventBody(run.SessionID, run.Provider, app.PermissionRequest(p))
	if err != nil {
		return fmt.Errorf("store: ask permission %s: %w", p.RequestID, err)
	}
	pending, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("store: ask permission %s: %w", p.RequestID, err)
	}
	// The index is written ahead; PermissionSession trusts it only where
	// the session holds the request as pending.
	if err := s.rdb.HSet(ctx, s.k.permissions(), p.RequestID, run.SessionID).Err(); err != nil {
		return fmt.Errorf("store: ask permission %s: index: %w", p.RequestID, err)
	}
	keys := []string{s.k.session(run.SessionID), s.k.events(run.SessionID), s.k.perms(run.SessionID)}
	seq, err := s.sc.permissionAsk.Run(ctx, s.rdb, keys,
		run.RunID, s.limits, s.k.live(run.SessionID), p.RequestID, body, pending, s.floors.get(run.SessionID),
		s.deadlineMillis(ctx)).Int64()
	if err != nil {
		err = scriptError(err)
		if errors.Is(err, ErrLate) {
			err = s.late()
		}
		if errors.Is(err, app.ErrStaleRun) || errors.Is(err, ErrLate) {
			_ = s.unlinkPermissions(ctx, run.SessionID, p.RequestID)
		}
		return fmt.Errorf("store: ask permission %s: %w", p.RequestID, err)
	}
	s.floors.note(run.SessionID, seq)
	return nil
}

// SettlePermission removes a pending request (permission_settle.lua). With
// a reason (app.PermissionTimeout, app.PermissionCancelled,
// app.PermissionAnswered) it appends the permission_cancelled event too;
// with "" it appends nothing. It reports whether the request was still
// pending.
func (s *Store) SettlePermission(ctx context.Context, run RunRef, requestID, reason string) (bool, error) {
	var body []byte
	if reason != "" {
		var err error
		if body, err = s.eventBody(run.SessionID, run.Provider, app.PermissionCancelledEvent(requestID, reason)); err != nil {
			return false, fmt.Errorf("store: settle permission %s: %w", requestID, err)
		}
	}
	keys := []string{s.k.session(run.SessionID), s.k.events(run.SessionID), s.k.perms(run.SessionID)}
	n, err := s.sc.permissionSettle.Run(ctx, s.rdb, keys,
		run.RunID, s.limits, s.k.live(run.SessionID), requestID, body, s.floors.get(run.SessionID)).Int()
	if err != nil {
		return false, fmt.Errorf("store: settle permission %s: %w", requestID, err)
	}
	if err := s.unlinkPermissions(ctx, run.SessionID, requestID); err != nil {
		s.log.Warn("unindex permission", "request", requestID, "err", err)
	}
	return n == 1, nil
}

// PermissionSession returns the session a pending request belongs to, or
// app.ErrNotFound.
func (s *Store) PermissionSession(ctx context.Context, requestID string) (string, error) {
	id, err := s.rdb.HGet(ctx, s.k.permissions(), requestID).Result()
	if errors.Is(err, redis.Nil) {
		return "", app.ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("store: find permission %s: %w", requestID, err)
	}
	// The index may lag the sessions (it lives in another slot): the
	// session's own hash says whether the request is pending.
	pending, err := s.rdb.HExists(ctx, s.k.perms(id), requestID).Result()
	if err != nil {
		return "", fmt.Errorf("store: find permission %s: %w", requestID, err)
	}
	if !pending {
		return "", app.ErrNotFound
	}
	return id, nil
}

// ConfirmPermissions reports, for each request id, whether the session
// holds it as pending, and writes the index entries of those it holds
// again: the index lives in another slot on a Redis Cluster, and a
// failover that lost an entry left an answer nowhere to go (a worker calls
// this for the requests its CLI waits on).
func (s *Store) ConfirmPermissions(ctx context.Context, sessionID string, requestIDs []string) ([]bool, error) {
	vals, err := s.rdb.HMGet(ctx, s.k.perms(sessionID), requestIDs...).Result()
	if err != nil {
		return nil, fmt.Errorf("store: read permissions of %s: %w", sessionID, err)
	}
	out := make([]bool, len(vals))
	var index []any
	for i, v := range vals {
		out[i] = v != nil
		if out[i] {
			index = append(index, requestIDs[i], sessionID)
		}
	}
	if len(index) > 0 {
		if err := s.rdb.HSet(ctx, s.k.permissions(), index...).Err(); err != nil {
			return nil, fmt.Errorf("store: index permissions of %s: %w", sessionID, err)
		}
	}
	return out, nil
}

// PendingPermissions returns the pending permission requests of a session,
// as stored in `ag:session:{ID}:perms` (request id -> request JSON), oldest
// first.
func (s *Store) PendingPermissions(ctx context.Context, sessionID string) ([]json.RawMessage, error) {
	vals, err := s.rdb.HVals(ctx, s.k.perms(sessionID)).Result()
	if err != nil {
		return nil, fmt.Errorf("store: read permissions of %s: %w", sessionID, err)
	}
	type entry struct {
		raw json.RawMessage
		at  int64
	}
	entries := make([]entry, 0, len(vals))
	for _, v := range vals {
		var p app.PendingPermission
		if json.Unmarshal([]byte(v), &p) == nil {
			entries = append(entries, entry{json.RawMessage(v), p.ReceivedAt})
		}
	}
	slices.SortStableFunc(entries, func(a, b entry) int { return cmp.Compare(a.at, b.at) })
	out := make([]json.RawMessage, len(entries))
	for i, e := range entries {
		out[i] = e.raw
	}
	return out, nil
}

// unlinkPermissions removes request ids from the permission index where
// they still name sessionID (index_unlink.lua).
func (s *Store) unlinkPermissions(ctx context.Context, sessionID string, requestIDs ...any) error {
	args := append([]any{sessionID}, requestIDs...)
	return s.sc.indexUnlink.Run(ctx, s.rdb, []string{s.k.permissions()}, args...).Err()
}

// SweepPermissionIndex removes the permission index's entries of requests
// that are pending nowhere: an unlink lost to an outage or a crash, or on a
// Redis Cluster to a failover of the index's slot, would keep them for
// good. An entry goes only when two sweeps in a row (the reaper's index
// repairs, minutes apart) found its request pending in no session, since
// AskPermission writes the index just before the request itself.
func (s *Store) SweepPermissionIndex(ctx context.Context) error {
	dead := map[string]string{}
	var cursor uint64
	for {
		kv, next, err := s.rdb.HScan(ctx, s.k.permissions(), cursor, "*", 500).Result()
		if err != nil {
			return fmt.Errorf("store: sweep permission index: %w", err)
		}
		pipe := s.rdb.Pipeline()
		cmds := make([]*redis.BoolCmd, 0, len(kv)/2)
		for i := 0; i+1 < len(kv); i += 2 {
			cmds = append(cmds, pipe.HExists(ctx, s.k.perms(kv[i+1]), kv[i]))
		}
		if len(cmds) > 0 {
			if _, err := pipe.Exec(ctx); err != nil {
				return fmt.Errorf("store: sweep permission index: %w", err)
			}
		}
		for i, cmd := range cmds {
			if !cmd.Val() {
				dead[kv[2*i]] = kv[2*i+1]
			}
		}
		if next == 0 {
			break
		}
		cursor = next
	}
	s.repairMu.Lock()
	before := s.deadAsks
	s.deadAsks = dead
	s.repairMu.Unlock()
	// Dead twice in a row, by session: one index_unlink.lua a session (it
	// removes an entry only while it still names that session). dead is
	// s.deadAsks now, read only.
	gone := map[string][]any{}
	for request, session := range dead {
		if before[request] == session {
			gone[session] = append(gone[session], request)
		}
	}
	for session, requests := range gone {
		if err := s.unlinkPermissions(ctx, session, requests...); err != nil {
			return fmt.Errorf("store: sweep permission index: %w", err)
		}
	}
	return nil
}
