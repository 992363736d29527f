package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/agentgate/agentgate/app"
)

// Session reads a session hash. It returns app.ErrNotFound when there is none.
func (s *Store) Session(ctx context.Context, id string) (app.Session, error) {
	m, err := s.rdb.HGetAll(ctx, s.k.session(id)).Result()
	if err != nil {
		return app.Session{}, fmt.Errorf("store: read session %s: %w", id, err)
	}
	if len(m) == 0 || m["owner"] == "" {
		return app.Session{}, app.ErrNotFound
	}
	return sessionFromHash(m), nil
}

// SessionByProviderID returns the id of the session whose provider session
// id is psid, or app.ErrNotFound.
func (s *Store) SessionByProviderID(ctx context.Context, p app.Provider, psid string) (string, error) {
	id, err := s.rdb.HGet(ctx, s.k.providerSessions(p), psid).Result()
	if errors.Is(err, redis.Nil) {
		return "", app.ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("store: find provider session %s: %w", psid, err)
	}
	return id, nil
}

// SessionForReplay reads a session together with the seq of the oldest event
// its stream still holds (0 when the stream is empty or gone), in one round
// trip, so a subscriber can tell whether a replay is complete.
func (s *Store) SessionForReplay(ctx context.Context, id string) (app.Session, int64, error) {
	pipe := s.rdb.Pipeline()
	hash := pipe.HGetAll(ctx, s.k.session(id))
	first := pipe.XRangeN(ctx, s.k.events(id), "-", "+", 1)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return app.Session{}, 0, fmt.Errorf("store: read session %s: %w", id, err)
	}
	m := hash.Val()
	if len(m) == 0 || m["owner"] == "" {
		return app.Session{}, 0, app.ErrNotFound
	}
	var firstSeq int64
	if msgs := first.Val(); len(msgs) > 0 {
		firstSeq = entrySeq(msgs[0])
	}
	return sessionFromHash(m), firstSeq, nil
}

// SessionFilter selects sessions in ListSessions.
type SessionFilter struct {
	// Owner limits the list to one user's sessions; empty means every
	// running session (admins).
	Owner string
	// RunningOnly keeps only sessions with a run in progress.
	RunningOnly bool
	// Limit bounds the number of sessions; zero means 200.
	Limit int
}

// ListSessions returns sessions, most recently active first.
func (s *Store) ListSessions(ctx context.Context, f SessionFilter) ([]app.Session, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 200
	}
	var ids []string
	var err error
	switch {
	case f.Owner != "":
		ids, err = s.newest(ctx, s.k.userSessions(f.Owner), int64(limit)*4)
	default:
		ids, err = s.newest(ctx, s.k.running(), int64(limit))
	}
	if err != nil {
		return nil, fmt.Errorf("store: list sessions: %w", err)
	}
	sessions, err := s.sessions(ctx, ids)
	if err != nil {
		return nil, err
	}
	out := sessions[:0]
	for _, sess := range sessions {
		if f.RunningOnly && !sess.Running() {
			continue
		}
		out = append(out, sess)
		if len(out) == limit {
			break
		}
	}
	return out, nil
}

// AllSessions returns sessions of every user, most recently started first:
// the running ones, then the others found through the user sets. It is for
// admin views, not hot paths.
func (s *Store) AllSessions(ctx context.Context, runningOnly bool, limit int) ([]app.Session, error) {
	if runningOnly {
		return s.ListSessions(ctx, SessionFilter{RunningOnly: true, Limit: limit})
	}
	if limit <= 0 {
		limit = 200
	}
	var out []app.Session
	seen := map[string]bool{}
	iter := s.rdb.Scan(ctx, 0, s.k.prefix+":user:{*}:sessions", 200).Iterator()
	for iter.Next(ctx) && len(out) < limit {
		ids, err := s.newest(ctx, iter.Val(), int64(limit))
		if err != nil {
			return nil, fmt.Errorf("store: list sessions: %w", err)
		}
		sessions, err := s.sessions(ctx, ids)
		if err != nil {
			return nil, err
		}
		for _, sess := range sessions {
			if !seen[sess.ID] && len(out) < limit {
				seen[sess.ID] = true
				out = append(out, sess)
			}
		}
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("store: list sessions: %w", err)
	}
	return out, nil
}

// newest returns up to n members of a sorted set, highest score first.
func (s *Store) newest(ctx context.Context, key string, n int64) ([]string, error) {
	return s.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{Key: key, Start: 0, Stop: n - 1, Rev: true}).Result()
}

// RunningSessions returns the ids of every running session.
func (s *Store) RunningSessions(ctx context.Context) ([]string, error) {
	ids, err := s.rdb.ZRange(ctx, s.k.running(), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("store: list running sessions: %w", err)
	}
	return ids, nil
}

// sessions reads several session hashes in one pipeline, skipping ids whose
// hash is gone.
func (s *Store) sessions(ctx context.Context, ids []string) ([]app.Session, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HGetAll(ctx, s.k.session(id))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("store: read sessions: %w", err)
	}
	out := make([]app.Session, 0, len(ids))
	for _, c := range cmds {
		if m := c.Val(); len(m) > 0 && m["owner"] != "" {
			out = append(out, sessionFromHash(m))
		}
	}
	return out, nil
}

func sessionFromHash(m map[string]string) app.Session {
	sess := app.Session{
		ID:                m["id"],
		Owner:             m["owner"],
		Provider:          app.Provider(m["provider"]),
		ProjectPath:       m["projectPath"],
		ProviderSessionID: m["providerSessionId"],
		State:             app.State(m["state"]),
		RunID:             m["runId"],
		StartedAt:         atoi64(m["startedAt"]),
		StatusText:        m["statusText"],
		CanInterrupt:      m["canInterrupt"] == "1",
		Worker:            m["worker"],
		LastSeq:           atoi64(m["lastSeq"]),
		CreatedAt:         atoi64(m["createdAt"]),
		UpdatedAt:         atoi64(m["updatedAt"]),
	}
	if sess.State == "" {
		sess.State = app.StateIdle
	}
	if v, err := strconv.Atoi(m["exitCode"]); err == nil {
		sess.ExitCode = &v
	}
	return sess
}

func atoi64(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}
