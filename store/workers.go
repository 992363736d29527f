package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// WorkerInfo is what a worker's heartbeat hash holds.
type WorkerInfo struct {
	ID        string
	Host      string
	PID       int
	StartedAt time.Time
	Runs      int
	// Link is the address gateways reach the worker's link on (package
	// link), and LinkToken what they present there; empty: no link.
	Link, LinkToken string
	// Draining is set once the worker stops: it finishes its runs and
	// takes nothing new, so gateways open no terminal on it.
	Draining bool
	// Terminals is how many terminals the worker has open, of at most
	// MaxTerminals (0: not said, a worker older than the field).
	Terminals, MaxTerminals int
}

// TerminalsFull reports whether the worker said it has no room for
// another terminal.
func (w WorkerInfo) TerminalsFull() bool { return w.MaxTerminals > 0 && w.Terminals >= w.MaxTerminals }

// Heartbeat refreshes a worker's heartbeat hash `ag:worker:ID` with ttl and
// records the worker in the registry of workers.
func (s *Store) Heartbeat(ctx context.Context, w WorkerInfo, ttl time.Duration) error {
	key := s.k.worker(w.ID)
	// The hash and its TTL in one script (one key: one slot); the
	// registry, in another slot on a cluster, next. Both go through when
	// Redis is at its maxmemory (the scripts say how): a full Redis must
	// not make live workers look dead.
	args := []any{ttl.Milliseconds(), "id", w.ID, "host", w.Host, "pid", w.PID,
		"startedAt", w.StartedAt.UnixMilli(), "lastBeat", time.Now().UnixMilli(), "runs", w.Runs,
		"terminals", w.Terminals, "maxTerminals", w.MaxTerminals}
	if w.Link != "" {
		args = append(args, "link", w.Link, "linkToken", w.LinkToken)
	}
	if w.Draining {
		args = append(args, "draining", 1)
	}
	rdb := s.beatClient()
	if err := s.sc.workerBeat.Run(ctx, rdb, []string{key}, args...).Err(); err != nil {
		reloadSlots(rdb)
		return fmt.Errorf("store: heartbeat %s: %w", w.ID, err)
	}
	if err := s.sc.workerRegister.Run(ctx, rdb, []string{s.k.workers()}, time.Now().UnixMilli(), w.ID).Err(); err != nil {
		reloadSlots(rdb)
		return fmt.Errorf("store: heartbeat %s: register: %w", w.ID, err)
	}
	return nil
}

// beatClient returns the client heartbeats are written through: a
// connection of their own (one a node), made on the first heartbeat. A
// worker's other writes queue for the pool's connections (a hundred
// flooding terminals' appends hold all ten of them), and a heartbeat that
// waited in that queue past its TTL made a live worker look gone.
func (s *Store) beatClient() redis.UniversalClient {
	s.beatMu.Lock()
	defer s.beatMu.Unlock()
	if s.beatRDB != nil {
		return s.beatRDB
	}
	select {
	case <-s.stop:
		return s.rdb // closed: a client made now would never be closed
	default:
	}
	// ContextTimeoutEnabled: a caller's deadline (the worker's beats)
	// bounds each read and write on the connection too, not only the
	// waits between retries.
	switch c := s.rdb.(type) {
	case *redis.Client:
		o := *c.Options()
		o.PoolSize, o.MinIdleConns, o.MaxIdleConns, o.MaxActiveConns = 1, 0, 1, 0
		o.ContextTimeoutEnabled = true
		s.beatRDB = redis.NewClient(&o)
	case *redis.ClusterClient:
		o := *c.Options()
		o.PoolSize, o.MinIdleConns, o.MaxIdleConns, o.MaxActiveConns = 1, 0, 1, 0
		o.ContextTimeoutEnabled = true
		// The main client learns of a failover from its other commands
		// (a failed pipeline reloads the slot map); this one writes two
		// keys and would knock at a dead master until its map is a
		// minute old, long after the heartbeat expired. A map at most a
		// second old costs one CLUSTER SLOTS a heartbeat. A heartbeat
		// does not wait out a failover either: it fails within a second,
		// the map is read again (Heartbeat) and the next beat goes to
		// the promoted replica.
		o.ClusterStateReloadInterval = time.Second
		o.MaxRedirects, o.MaxRetryBackoff = 3, 250*time.Millisecond
		s.beatRDB = redis.NewClusterClient(&o)
	default:
		return s.rdb
	}
	s.beatRDB.AddHook(metricsHook{})
	return s.beatRDB
}

// reloadSlots has a cluster client read the slot map again, in the
// background: a write failed, and its slot may have moved.
func reloadSlots(rdb redis.UniversalClient) {
	if c, ok := rdb.(*redis.ClusterClient); ok {
		c.ReloadState(context.Background())
	}
}

// RemoveWorker deletes a worker's heartbeat, registry entry and inbox: the
// worker is gone and its runs may be reaped at once.
func (s *Store) RemoveWorker(ctx context.Context, id string) error {
	pipe := s.rdb.Pipeline()
	// One DEL a key: on a cluster they lie in different slots.
	pipe.Del(ctx, s.k.worker(id))
	pipe.Del(ctx, s.k.inbox(id))
	pipe.ZRem(ctx, s.k.workers(), id)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("store: remove worker %s: %w", id, err)
	}
	return nil
}

// ForgetDeadWorker drops from the registry a worker that the reaper found
// dead at seenDead, unless it beat since: a worker stopped for a while
// (SIGSTOP, a paused VM) that goes on is alive, and its fresh heartbeat and
// its inbox, with the controls sent to it meanwhile, stay. Neither is
// deleted here: a dead worker's heartbeat is gone already, and its inbox
// expires (inboxTTL). It reports whether the worker was dropped.
func (s *Store) ForgetDeadWorker(ctx context.Context, id string, seenDead time.Time) (bool, error) {
	// The heartbeat and the registry lie in different slots on a cluster:
	// the heartbeat first (a beat writes it before the registry), then
	// the registry's score under a script.
	alive, err := s.WorkerAlive(ctx, id)
	if err != nil || alive {
		return false, err
	}
	n, err := s.sc.workerForget.Run(ctx, s.rdb, []string{s.k.workers()}, seenDead.UnixMilli(), id).Int()
	if err != nil {
		return false, fmt.Errorf("store: forget worker %s: %w", id, err)
	}
	return n == 1, nil
}

// WorkerAlive reports whether a worker's heartbeat has not expired.
func (s *Store) WorkerAlive(ctx context.Context, id string) (bool, error) {
	n, err := s.rdb.Exists(ctx, s.k.worker(id)).Result()
	if err != nil {
		return false, fmt.Errorf("store: check worker %s: %w", id, err)
	}
	return n == 1, nil
}

// WorkerLink returns the link address and token of a live worker, "" when
// it has no link or is gone.
func (s *Store) WorkerLink(ctx context.Context, id string) (addr, token string, err error) {
	v, err := s.rdb.HMGet(ctx, s.k.worker(id), "link", "linkToken").Result()
	if err != nil {
		return "", "", fmt.Errorf("store: read link of worker %s: %w", id, err)
	}
	addr, _ = v[0].(string)
	token, _ = v[1].(string)
	return addr, token, nil
}

// LiveWorkers returns the registered workers whose heartbeat has not
// expired, and drops from the registry those whose heartbeat has.
func (s *Store) LiveWorkers(ctx context.Context) ([]WorkerInfo, error) {
	ids, err := s.rdb.ZRange(ctx, s.k.workers(), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("store: list workers: %w", err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HGetAll(ctx, s.k.worker(id))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("store: read workers: %w", err)
	}
	var live []WorkerInfo
	var dead []any
	for i, c := range cmds {
		m := c.Val()
		if len(m) == 0 {
			dead = append(dead, ids[i])
			continue
		}
		pid, _ := strconv.Atoi(m["pid"])
		runs, _ := strconv.Atoi(m["runs"])
		terms, _ := strconv.Atoi(m["terminals"])
		maxTerms, _ := strconv.Atoi(m["maxTerminals"])
		live = append(live, WorkerInfo{
			ID: ids[i], Host: m["host"], PID: pid, Runs: runs,
			StartedAt: time.UnixMilli(atoi64(m["startedAt"])), Draining: m["draining"] == "1",
			Terminals: terms, MaxTerminals: maxTerms,
		})
	}
	if len(dead) > 0 {
		_ = s.rdb.ZRem(ctx, s.k.workers(), dead...).Err()
	}
	return live, nil
}

// AcquireLease takes or extends the named lease for holder, for ttl. Only
// one holder has a lease at a time (SET NX PX under a script).
func (s *Store) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error) {
	n, err := s.sc.leaseAcquire.Run(ctx, s.rdb, []string{s.k.lease(name)}, holder, ttl.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("store: acquire lease %s: %w", name, err)
	}
	return n == 1, nil
}

// ReleaseLease gives the lease up if holder still has it.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	if err := s.sc.leaseRelease.Run(ctx, s.rdb, []string{s.k.lease(name)}, holder).Err(); err != nil {
		return fmt.Errorf("store: release lease %s: %w", name, err)
	}
	return nil
}
