package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

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

// LastSeqs reads the newest stored seq of several sessions in one
// pipeline; a session Redis no longer holds has ok false.
func (s *Store) LastSeqs(ctx context.Context, ids []string) (last []int64, ok []bool, err error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HMGet(ctx, s.k.session(id), "owner", "lastSeq")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, nil, fmt.Errorf("store: read sessions' last seqs: %w", err)
	}
	last, ok = make([]int64, len(ids)), make([]bool, len(ids))
	for i, cmd := range cmds {
		vals := cmd.Val()
		owner, _ := vals[0].(string)
		seq, _ := vals[1].(string)
		last[i], ok[i] = atoi64(seq), owner != ""
	}
	return last, ok, nil
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
	if lost := atoi64(m["lostUpTo"]); lost > 0 && firstSeq <= lost {
		// Events up to lostUpTo may be missing (a failover lost them):
		// what is held is complete only from lostUpTo+1 on.
		firstSeq = lost + 1
	}
	sess := sessionFromHash(m)
	s.floors.note(id, sess.LastSeq)
	return sess, firstSeq, nil
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
	if f.Owner != "" {
		return s.ownedSessions(ctx, f.Owner, f.RunningOnly, limit)
	}
	ids, err := s.newest(ctx, s.k.running(), int64(limit))
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
	}
	return out, nil
}

// listWindow is how many of a user's most recently active index entries
// ListSessions looks at, in limits: running-only keeps only some of them,
// and an entry may be stale (its hash gone, or lagging; see
// RebuildIndexes).
const listWindow = 4

// ownedSessions is ListSessions of one owner's sessions. Running-only reads
// the whole window at once, since the filter drops most of it; otherwise
// it reads as many entries as sessions are still missing, a page at a
// time, so that a list costs limit hash reads, not listWindow times that,
// unless entries are stale.
func (s *Store) ownedSessions(ctx context.Context, owner string, runningOnly bool, limit int) ([]app.Session, error) {
	index := s.k.userSessions(owner)
	window := int64(limit) * listWindow
	out := make([]app.Session, 0, min(limit, 64))
	// An entry touched while the pages are read moves to the front, and
	// the ones before it one place on: one may come twice.
	seen := map[string]bool{}
	for start := int64(0); start < window && len(out) < limit; {
		n := window - start
		if !runningOnly {
			n = min(n, int64(limit-len(out)))
		}
		ids, err := s.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{Key: index, Start: start, Stop: start + n - 1, Rev: true}).Result()
		if err != nil {
			return nil, fmt.Errorf("store: list sessions of %s: %w", owner, err)
		}
		start += n
		sessions, err := s.sessions(ctx, ids)
		if err != nil {
			return nil, err
		}
		for _, sess := range sessions {
			if seen[sess.ID] || (runningOnly && !sess.Running()) {
				continue
			}
			if sess.Owner != owner {
				continue // an index entry that lags (see RebuildIndexes)
			}
			seen[sess.ID] = true
			out = append(out, sess)
			if len(out) == limit {
				break
			}
		}
		if int64(len(ids)) < n {
			break // the index holds no more
		}
	}
	return out, nil
}

// AllSessions returns sessions of every user, the running ones first, then
// the others by latest activity, newest first, at most limit in all. It is
// for admin views, not hot paths: it reads every user's list.
func (s *Store) AllSessions(ctx context.Context, runningOnly bool, limit int) ([]app.Session, error) {
	if limit <= 0 {
		limit = 200
	}
	out, err := s.ListSessions(ctx, SessionFilter{RunningOnly: true, Limit: limit})
	if err != nil || runningOnly || len(out) >= limit {
		return out, err
	}
	seen := make(map[string]bool, len(out))
	for _, sess := range out {
		seen[sess.ID] = true
	}
	// The newest of each user's list, merged: the newest limit of them all
	// are among them. Cut as it grows, so that many users cost no more
	// than a few times limit entries.
	var top []redis.Z
	cut := func() {
		slices.SortFunc(top, func(a, b redis.Z) int { return cmp.Compare(b.Score, a.Score) })
		top = top[:min(len(top), limit)]
	}
	err = s.scanKeys(ctx, s.k.prefix+":user:{*}:sessions", "", func(keys []string) error {
		// One pipeline a page of users, not a round trip each.
		pipe := s.rdb.Pipeline()
		cmds := make([]*redis.ZSliceCmd, len(keys))
		for i, key := range keys {
			cmds[i] = pipe.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{Key: key, Start: 0, Stop: int64(limit) - 1, Rev: true})
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		for _, cmd := range cmds {
			for _, z := range cmd.Val() {
				if id, _ := z.Member.(string); !seen[id] {
					top = append(top, z)
				}
			}
			if len(top) > 4*limit {
				cut()
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: list sessions: %w", err)
	}
	cut()
	ids := make([]string, 0, len(top))
	for _, z := range top {
		ids = append(ids, z.Member.(string))
	}
	sessions, err := s.sessions(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("store: list sessions: %w", err)
	}
	for _, sess := range sessions {
		if !seen[sess.ID] && len(out) < limit {
			seen[sess.ID] = true
			out = append(out, sess)
		}
	}
	return out, nil
}

// newest returns up to n members of a sorted set, highest score first.
func (s *Store) newest(ctx context.Context, key string, n int64) ([]string, error) {
	return s.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{Key: key, Start: 0, Stop: n - 1, Rev: true}).Result()
}

// RunningSessions returns the ids of the running sessions, for the reaper.
// The running set is written outside the sessions' atomic steps (on a
// Redis Cluster it lies in another slot), so this is also where it is
// kept honest: entries of sessions that no longer run are dropped, a run
// whose job the jobs stream lost is queued again, and every
// indexRepairInterval the indexes are rebuilt from the session hashes
// (RebuildIndexes), which finds runs the set lost.
func (s *Store) RunningSessions(ctx context.Context) ([]string, error) {
	list, err := s.Running(ctx)
	ids := make([]string, len(list))
	for i, sess := range list {
		ids[i] = sess.ID
	}
	return ids, err
}

// Running is RunningSessions with the sessions themselves, as it read
// them: the reaper needs no second read of each. Only runningFields are
// read (ID, Owner, Provider, State, RunID, Worker, StartedAt, UpdatedAt):
// a pass reads every running session, and a whole hash each would be
// garbage for the rest; read a session again before acting on it.
func (s *Store) Running(ctx context.Context) ([]app.Session, error) {
	s.repairMu.Lock()
	due := time.Since(s.repairedAt) > indexRepairInterval
	if due {
		s.repairedAt = time.Now()
	}
	s.repairMu.Unlock()
	if due {
		if err := s.RebuildIndexes(ctx); err != nil {
			s.log.Warn("rebuild indexes", "err", err)
		}
		if err := s.SweepPermissionIndex(ctx); err != nil {
			s.log.Warn("sweep permission index", "err", err)
		}
	}
	entries, err := s.rdb.ZRangeWithScores(ctx, s.k.running(), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("store: list running sessions: %w", err)
	}
	if len(entries) == 0 {
		return nil, nil
	}
	ids := make([]string, len(entries))
	for i, e := range entries {
		ids[i], _ = e.Member.(string)
	}
	sessions, err := s.runningFieldsOf(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("store: list running sessions: %w", err)
	}
	now, err := s.rdb.Time(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("store: list running sessions: %w", err)
	}
	var unclaimed []app.Session
	out := make([]app.Session, 0, len(ids))
	for _, id := range ids {
		sess, ok := sessions[id]
		if !ok || !sess.Running() {
			upTo := staleAfter(now, 0)
			if ok {
				upTo = staleAfter(now, sess.UpdatedAt)
			}
			if err := s.forget(ctx, s.k.running(), id, upTo); err != nil {
				return nil, fmt.Errorf("store: list running sessions: %w", err)
			}
			continue
		}
		out = append(out, sess)
		if sess.Worker == "" && sess.StartedAt < now.Add(-requeueAfter).UnixMilli() && !s.requeued.recent(sess) {
			unclaimed = append(unclaimed, sess)
		}
	}
	if len(unclaimed) > 0 {
		if err := s.requeueLost(ctx, unclaimed); err != nil {
			s.log.Warn("queue lost jobs again", "err", err)
		} else {
			s.requeued.checked(unclaimed)
		}
	}
	return out, nil
}

// runningFields are the fields Running reads of each session.
var runningFields = []string{"owner", "provider", "state", "runId", "worker", "startedAt", "updatedAt"}

// runningFieldsOf reads the runningFields of several sessions in one
// pipeline, skipping ids whose hash is gone.
func (s *Store) runningFieldsOf(ctx context.Context, ids []string) (map[string]app.Session, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HMGet(ctx, s.k.session(id), runningFields...)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("store: read sessions: %w", err)
	}
	out := make(map[string]app.Session, len(ids))
	for i, c := range cmds {
		v := c.Val()
		field := func(j int) string {
			str, _ := v[j].(string)
			return str
		}
		if len(v) != len(runningFields) || field(0) == "" {
			continue // gone, as sessions skips it
		}
		sess := app.Session{
			ID: ids[i], Owner: field(0), Provider: app.Provider(field(1)), State: app.State(field(2)),
			RunID: field(3), Worker: field(4), StartedAt: atoi64(field(5)), UpdatedAt: atoi64(field(6)),
		}
		if sess.State == "" {
			sess.State = app.StateIdle
		}
		out[ids[i]] = sess
	}
	return out, nil
}

// requeueRecheck is how long a run whose job requeueLost found queued (or
// queued again) is not looked for again: reading the jobs stream is O(runs
// waiting), and while no worker is free every pass would read all of it.
// A job in the stream stays there until its run is claimed, unless Redis
// loses it: a restart or failover, which Identity sees as a new run id and
// which makes every run be looked for again.
const requeueRecheck = 30 * time.Second

// requeueChecks remembers which unclaimed runs requeueLost last checked,
// and when, on which server.
type requeueChecks struct {
	mu    sync.Mutex
	runs  map[string]time.Time // "<session>/<run>"
	runID string               // the Redis run id Identity last saw
}

// server records the run id of the answering Redis; a new one forgets
// every check.
func (q *requeueChecks) server(runID string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if runID != q.runID {
		q.runs, q.runID = nil, runID
	}
}

// recent reports whether sess's run was checked within requeueRecheck.
func (q *requeueChecks) recent(sess app.Session) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	at, ok := q.runs[sess.ID+"/"+sess.RunID]
	return ok && time.Since(at) < requeueRecheck
}

// checked records that runs were checked now, and forgets old checks.
func (q *requeueChecks) checked(runs []app.Session) {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := time.Now()
	for k, at := range q.runs {
		if now.Sub(at) >= requeueRecheck {
			delete(q.runs, k)
		}
	}
	if q.runs == nil {
		q.runs = map[string]time.Time{}
	}
	for _, sess := range runs {
		q.runs[sess.ID+"/"+sess.RunID] = now
	}
}

// indexRepairInterval is how often RunningSessions rebuilds the indexes.
const indexRepairInterval = 2 * time.Minute

// requeueAfter is how long a run may stay unclaimed before its job is
// looked for in the jobs stream (and queued again if it is not there).
const requeueAfter = 20 * time.Second

// requeueLost queues again the jobs of unclaimed runs that the jobs stream
// does not hold: the gateway died between the accept and the queueing, or
// a failover of the stream's master lost the entry. The stream is read
// before the sessions were (RunningSessions read them just before): an
// entry stays in the stream until a worker claimed its run, so a run
// still unclaimed whose job is not there has lost it. A copy queued twice
// anyway is claimed once (run_claim.lua, and Claim's memory of its claims).
func (s *Store) requeueLost(ctx context.Context, runs []app.Session) error {
	msgs, err := s.rdb.XRangeN(ctx, s.k.jobs(), "-", "+", jobsMaxLen).Result()
	if err != nil {
		return err
	}
	queued := map[string]bool{}
	for _, m := range msgs {
		sid, _ := m.Values["session"].(string)
		run, _ := m.Values["run"].(string)
		queued[sid+"/"+run] = true
	}
	for _, sess := range runs {
		if queued[sess.ID+"/"+sess.RunID] {
			continue
		}
		// Read again: the run may have been claimed since.
		cur, err := s.Session(ctx, sess.ID)
		if err != nil || cur.RunID != sess.RunID || !cur.Running() || cur.Worker != "" {
			continue
		}
		job, err := s.rdb.Get(ctx, s.k.job(sess.ID)).Result()
		if errors.Is(err, redis.Nil) {
			continue // a run accepted before jobs were kept: the reaper ends it
		}
		if err != nil {
			return err
		}
		s.log.Warn("the job of a run was lost; queued again", "session", sess.ID, "run", sess.RunID)
		if err := s.queueJob(ctx, sess.ID, sess.RunID, []byte(job)); err != nil {
			return err
		}
	}
	return nil
}

// RebuildIndexes rebuilds the indexes that live outside the sessions'
// slots from the session hashes, scanning every master: running sessions
// into the running set and their owner's running set, every session into
// its owner's list, provider session ids into the provider index; and,
// from the terminal hashes, open terminals into their owner's open
// terminals and the open terminals (rebuildShellIndexes). Entries are
// added, never removed (readers drop stale ones). It is the repair path of
// indexes that may lag on a Redis Cluster, and a schema migration.
func (s *Store) RebuildIndexes(ctx context.Context) error {
	var ids []string
	prefix := s.k.prefix + ":session:{"
	err := s.scanKeys(ctx, prefix+"*}", "hash", func(keys []string) error {
		for _, key := range keys {
			id, ok := strings.CutPrefix(key, prefix)
			if ok && strings.HasSuffix(id, "}") && !strings.Contains(id, "}:") {
				ids = append(ids, strings.TrimSuffix(id, "}"))
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: rebuild indexes: %w", err)
	}
	for len(ids) > 0 {
		batch := ids[:min(len(ids), 500)]
		ids = ids[len(batch):]
		sessions, err := s.sessions(ctx, batch)
		if err != nil {
			return fmt.Errorf("store: rebuild indexes: %w", err)
		}
		pipe := s.rdb.Pipeline()
		for _, sess := range sessions {
			activity := max(sess.UpdatedAt, sess.StartedAt, sess.CreatedAt)
			pipe.ZAddNX(ctx, s.k.userSessions(sess.Owner), redis.Z{Score: float64(activity), Member: sess.ID})
			if sess.Running() {
				pipe.ZAddNX(ctx, s.k.running(), redis.Z{Score: float64(sess.StartedAt), Member: sess.ID})
				pipe.ZAddNX(ctx, s.k.userRunning(sess.Owner), redis.Z{Score: float64(sess.StartedAt), Member: sess.ID})
			}
			if sess.ProviderSessionID != "" {
				pipe.HSetNX(ctx, s.k.providerSessions(sess.Provider), sess.ProviderSessionID, sess.ID)
			}
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("store: rebuild indexes: %w", err)
		}
	}
	return s.rebuildShellIndexes(ctx)
}

// SessionsByID reads several sessions in one round trip, by id; those
// that do not exist are absent from the map.
func (s *Store) SessionsByID(ctx context.Context, ids []string) (map[string]app.Session, error) {
	return s.sessionsByID(ctx, ids)
}

// sessionsByID reads several session hashes, by id; gone ones are absent.
func (s *Store) sessionsByID(ctx context.Context, ids []string) (map[string]app.Session, error) {
	list, err := s.sessions(ctx, ids)
	if err != nil {
		return nil, err
	}
	out := make(map[string]app.Session, len(list))
	for _, sess := range list {
		out[sess.ID] = sess
	}
	return out, nil
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
		Unrecorded:        m["unrecorded"] == "1",
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

// forgetPerAccept bounds the sessions one accept forgets, so that an
// operator who lowers the limit does not make one command wait for
// thousands: each new session then forgets this many until the owner is
// under it.
const forgetPerAccept = 64

// keepSessions forgets the least recently active idle sessions of owner
// beyond keep, except the session just created: their keys are deleted and
// their index entries removed. A user creating sessions one after another
// (each command with an unknown id makes one, and one whose run fails at
// once is idle at once) would otherwise grow Redis without bound: a
// session's hash and index entry are kept for good, its events for the
// retention. A running session is skipped, and forgotten by a later
// accept once it has ended.
func (s *Store) keepSessions(ctx context.Context, owner, except string, keep int) error {
	index := s.k.userSessions(owner)
	n, err := s.rdb.ZCard(ctx, index).Result()
	if err != nil || n <= int64(keep) {
		return err
	}
	ids, err := s.rdb.ZRange(ctx, index, 0, min(n-int64(keep), forgetPerAccept)-1).Result()
	if err != nil {
		return err
	}
	for _, id := range ids {
		if id == except {
			continue
		}
		res, err := s.sc.sessionForget.Run(ctx, s.rdb,
			[]string{s.k.session(id), s.k.events(id), s.k.job(id), s.k.perms(id)}, owner).StringSlice()
		if err != nil {
			return fmt.Errorf("forget session %s: %w", id, err)
		}
		if res[0] != "gone" {
			continue
		}
		if err := s.rdb.ZRem(ctx, index, id).Err(); err != nil {
			return fmt.Errorf("forget session %s: %w", id, err)
		}
		if len(res) == 4 && res[1] != "" {
			args := []any{id}
			for _, psid := range append(strings.Fields(res[3]), res[2]) {
				if psid != "" {
					args = append(args, psid)
				}
			}
			if len(args) > 1 {
				err := s.sc.indexUnlink.Run(ctx, s.rdb, []string{s.k.providerSessions(app.Provider(res[1]))}, args...).Err()
				if err != nil {
					return fmt.Errorf("forget session %s: provider ids: %w", id, err)
				}
			}
		}
	}
	return nil
}
