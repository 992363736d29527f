package store

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentgate/agentgate/app"
)

// doneRuns remembers the completes this process wrote, so that each is
// checked once after a failover or a restart could have lost it: a Redis
// Cluster master that dies right after a run's complete may not have copied
// it to the replica that replaces it, and a single Redis restarted from an
// AOF fsynced every second may come back without its last second. The
// session would read as running again, with a worker that no longer runs it
// (the reaper leaves a run of a live worker alone). A lost complete is
// written again, with the same events, past every seq this process has
// seen.
type doneRuns struct {
	mu sync.Mutex
	m  map[string]doneRun // by session id + "/" + run id
}

type doneRun struct {
	run  RunRef
	args []any // run_complete.lua's ARGV, the run id filled in
	at   time.Time
}

const (
	// recheckAfter is how old a complete is when it is checked: longer
	// than a failover takes (cluster-node-timeout plus an election), so
	// that a complete it lost reads as lost by then.
	recheckAfter = 15 * time.Second
	// recheckEvery is how often the completes are checked.
	recheckEvery = 5 * time.Second
	// recheckKept bounds the completes remembered; past it the oldest go
	// unchecked (logged).
	recheckKept = 100000
)

// remember records a complete this process wrote.
func (d *doneRuns) remember(run RunRef, args []any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.m == nil {
		d.m = map[string]doneRun{}
	}
	if len(d.m) >= recheckKept {
		return
	}
	d.m[run.SessionID+"/"+run.RunID] = doneRun{run: run, args: args, at: time.Now()}
}

// due returns the completes at least minAge old.
func (d *doneRuns) due(minAge time.Duration) []doneRun {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []doneRun
	for _, r := range d.m {
		if time.Since(r.at) >= minAge {
			out = append(out, r)
		}
	}
	return out
}

func (d *doneRuns) drop(r doneRun) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.m, r.run.SessionID+"/"+r.run.RunID)
}

// RecheckCompletes checks the completes this process wrote at least minAge
// ago: a run whose session
// reads as running that same run again lost its complete (a failover, a restart),
// and gets it again. It returns how many were written again. Runs in the
// store's own goroutine every few seconds; tests call it directly.
func (s *Store) RecheckCompletes(ctx context.Context, minAge time.Duration) (int, error) {
	due := s.done.due(minAge)
	if len(due) == 0 {
		return 0, nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(due))
	for i, r := range due {
		cmds[i] = pipe.HMGet(ctx, s.k.session(r.run.SessionID), "runId", "state")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return 0, err
	}
	again := 0
	for i, r := range due {
		v := cmds[i].Val()
		if len(v) != 2 {
			continue
		}
		runID, _ := v[0].(string)
		state, _ := v[1].(string)
		if runID != r.run.RunID || state != string(app.StateRunning) {
			s.done.drop(r) // durable: the session moved on
			continue
		}
		args := append([]any(nil), r.args...)
		args[9] = s.floors.get(r.run.SessionID)
		res, err := s.runCompleteScript(ctx, r.run, args)
		if errors.Is(err, app.ErrStaleRun) {
			s.done.drop(r)
			continue
		}
		if err != nil {
			return again, err
		}
		s.done.drop(r)
		again++
		s.log.Warn("Redis lost the complete of a run (a failover or a restart); written again", "session", r.run.SessionID, "run", r.run.RunID, "seq", res.Seq)
	}
	return again, nil
}

// recheckLoop runs RecheckCompletes until the store is closed. Runs in its
// own goroutine.
func (s *Store) recheckLoop() {
	t := time.NewTicker(recheckEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), recheckEvery)
			if _, err := s.RecheckCompletes(ctx, recheckAfter); err != nil && !Unavailable(err) {
				s.log.Warn("check completes after a failover", "err", err)
			}
			cancel()
		}
	}
}
