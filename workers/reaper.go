package workers

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
)

// Defaults of ReaperConfig fields left at their zero value.
const (
	DefaultReapInterval     = 2 * time.Second
	DefaultUnclaimedTimeout = time.Minute
)

// reaperLease names the lease that lets one process at a time reap.
const reaperLease = "reaper"

// ReaperConfig configures a Reaper.
type ReaperConfig struct {
	Store *store.Store
	// Holder names this process in the lease. Zero means host-pid.
	Holder string
	// Interval is the time between passes. Zero means 2s.
	Interval time.Duration
	// UnclaimedTimeout fails a run that no worker claimed for this long
	// (no worker alive, or every one of them gone before claiming), and
	// ends a terminal that no worker started for this long. Zero means one
	// minute.
	UnclaimedTimeout time.Duration
	// HeartbeatTTL is the workers' heartbeat TTL: after Redis was
	// unreachable or restarted, nothing is reaped until the workers had
	// this long (plus two passes) to beat again. Zero means 10s.
	HeartbeatTTL time.Duration
	Logger       *slog.Logger
}

// Reaper completes the runs that lost their worker: `error{worker lost}`
// then `complete{success:false}`. Any process may run one (gateways and
// workers both do); a lease makes one of them do the work at a time, and the
// complete script's runId guard keeps a reaped run from completing twice.
//
// A Redis outage is not a dead worker: heartbeats expire while Redis is down
// (or are gone when it restarts), so after a failed pass or a Redis restart
// (a new INFO run_id) the reaper waits a heartbeat TTL before it reaps again.
type Reaper struct {
	cfg ReaperConfig
	log *slog.Logger

	// Pass state (one goroutine): the Redis last seen, whether the last
	// pass failed to reach it (or stalled), no reaping before quietUntil,
	// and when the current pass began.
	runID      string
	outage     bool
	quietUntil time.Time
	passStart  time.Time
	// consumersAt is when the jobs group's consumers were last swept.
	consumersAt time.Time
}

// consumerSweepEvery is how often the reaper deletes the jobs consumers of
// workers gone: each worker process reads under an id of its own, and the
// group would keep one consumer per process ever started.
const consumerSweepEvery = time.Minute

// NewReaper returns a Reaper; call Run to start it.
func NewReaper(cfg ReaperConfig) (*Reaper, error) {
	if cfg.Store == nil {
		return nil, errors.New("workers: reaper without a store")
	}
	if cfg.Holder == "" {
		cfg.Holder = instanceName()
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultReapInterval
	}
	if cfg.UnclaimedTimeout <= 0 {
		cfg.UnclaimedTimeout = DefaultUnclaimedTimeout
	}
	if cfg.HeartbeatTTL <= 0 {
		cfg.HeartbeatTTL = DefaultHeartbeatTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Reaper{cfg: cfg, log: cfg.Logger.With("reaper", cfg.Holder)}, nil
}

// Run reaps every Interval until ctx ends, then gives the lease up.
// Runs in its own goroutine.
func (r *Reaper) Run(ctx context.Context) error {
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			rel, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = r.cfg.Store.ReleaseLease(rel, reaperLease, r.cfg.Holder)
			return nil
		case <-t.C:
			// An outage is said once, not every pass.
			wasOut := r.outage
			if err := r.Pass(ctx); err != nil && ctx.Err() == nil && !(wasOut && store.Retryable(err)) {
				r.log.Warn("reap", "err", err)
			}
		}
	}
}

// Pass reaps once if this process holds the lease and Redis has been
// answering for long enough that live workers have beaten since.
func (r *Reaper) Pass(ctx context.Context) error {
	st := r.cfg.Store
	r.passStart = time.Now()
	if err := r.watchRedis(ctx); err != nil {
		return err
	}
	ok, err := st.AcquireLease(ctx, reaperLease, r.cfg.Holder, 3*r.cfg.Interval)
	if err != nil || !ok {
		// A Redis that refuses writes (it cannot persist) takes no
		// heartbeat either: once it takes them again, the workers need
		// time to write theirs, as after an outage.
		r.outage = r.outage || store.Retryable(err)
		return err
	}
	if wait := time.Until(r.quietUntil); wait > 0 {
		r.log.Debug("waiting for workers to beat after a Redis outage", "for", wait)
		return nil
	}
	if time.Since(r.consumersAt) >= consumerSweepEvery {
		r.consumersAt = time.Now()
		r.sweepConsumers(ctx)
	}
	running, err := st.Running(ctx)
	if err != nil {
		return err
	}
	shells, err := st.OpenShells(ctx)
	if err != nil || len(running) == 0 && len(shells) == 0 {
		return err
	}
	live, err := st.LiveWorkers(ctx)
	if err != nil {
		r.outage = r.outage || store.Unavailable(err)
		return err
	}
	if r.stalled() {
		return nil
	}
	alive := make(map[string]bool, len(live))
	for _, w := range live {
		alive[w.ID] = true
	}
	dead := map[string]bool{}
	r.check(ctx, running, alive, dead)
	r.checkShells(ctx, shells, alive, dead)
	for id := range dead {
		// Not a worker that beat since this pass began: it was stopped
		// (SIGSTOP) and went on; its heartbeat and inbox stay.
		if _, err := st.ForgetDeadWorker(ctx, id, r.passStart); err != nil {
			r.log.Warn("remove dead worker", "worker", id, "err", err)
		}
	}
	return nil
}

// sweepConsumers deletes the jobs consumers of workers that are not alive
// and hold no pending job.
func (r *Reaper) sweepConsumers(ctx context.Context) {
	st := r.cfg.Store
	names, err := st.JobsConsumers(ctx)
	if err != nil || len(names) == 0 {
		return
	}
	live, err := st.LiveWorkers(ctx)
	if err != nil || r.stalled() {
		return
	}
	alive := make(map[string]bool, len(live))
	for _, w := range live {
		alive[w.ID] = true
	}
	for _, name := range names {
		if alive[name] {
			continue
		}
		if dropped, err := st.DropJobsConsumer(ctx, name); err != nil {
			r.log.Warn("drop the jobs consumer of a worker gone", "worker", name, "err", err)
			return
		} else if dropped {
			r.log.Debug("dropped the jobs consumer of a worker gone", "worker", name)
		}
	}
}

// check reaps the runs of sessions whose worker is gone (recording it in
// dead) or that no worker claimed in time. list is as Running read it,
// before LiveWorkers; a session that looks reapable is read again, so that
// a run claimed or finished since is left alone.
func (r *Reaper) check(ctx context.Context, list []app.Session, alive, dead map[string]bool) {
	st := r.cfg.Store
	now := time.Now().UnixMilli()
	lost := func(sess app.Session) bool { return sess.Worker != "" && !alive[sess.Worker] }
	unclaimed := func(sess app.Session) bool {
		return sess.Worker == "" && now-sess.StartedAt > r.cfg.UnclaimedTimeout.Milliseconds()
	}
	for _, sess := range list {
		if !sess.Running() || !lost(sess) && !unclaimed(sess) {
			continue
		}
		sess, err := st.Session(ctx, sess.ID)
		if err != nil || !sess.Running() {
			continue
		}
		ref := store.RunRef{SessionID: sess.ID, RunID: sess.RunID, Provider: sess.Provider}
		switch {
		case lost(sess):
			// A worker registered since LiveWorkers was read is alive too
			// (asked once per worker a pass).
			if !dead[sess.Worker] {
				if ok, err := st.WorkerAlive(ctx, sess.Worker); err != nil || ok || r.stalled() {
					continue
				}
			}
			dead[sess.Worker] = true
			r.reap(ctx, ref, app.ReasonWorkerLost, "worker lost")
		case unclaimed(sess):
			// Not if a worker claims it meanwhile: its CLI would start on
			// a run already ended.
			ref.Worker = store.Unclaimed
			r.reap(ctx, ref, app.ReasonNoWorker, "No worker took this run; is a worker running?")
		}
	}
}

// checkShells ends as lost the terminals whose worker is gone (recording it
// in dead), and as not started those no worker started in time. A gateway
// ends those it has a socket on; the others, detached when their worker
// died, would otherwise hold their owner's place.
func (r *Reaper) checkShells(ctx context.Context, list []store.OpenShell, alive, dead map[string]bool) {
	st := r.cfg.Store
	for _, sh := range list {
		if sh.Starting && sh.Age > r.cfg.UnclaimedTimeout {
			// No worker will start it: its open was never queued, or was
			// dropped. Its owner's place and its sockets are freed.
			r.endShell(ctx, sh, store.ShellExitNotStarted, "terminal-not-started", "terminal that never started")
			continue
		}
		if sh.Worker == "" || alive[sh.Worker] {
			continue
		}
		if !dead[sh.Worker] {
			if ok, err := st.WorkerAlive(ctx, sh.Worker); err != nil || ok || r.stalled() {
				continue
			}
			dead[sh.Worker] = true
		}
		r.endShell(ctx, sh, store.ShellExitLost, "terminal-lost", "lost terminal")
	}
}

// endShell records the end of sh for reason, counted under action and
// logged as what.
func (r *Reaper) endShell(ctx context.Context, sh store.OpenShell, reason, action, what string) {
	recorded, err := r.cfg.Store.ShellExit(ctx, sh.Key, sh.Gen, 1, "", reason)
	switch {
	case err != nil:
		r.log.Warn("end "+what, "shell", sh.Key, "err", err)
	case recorded:
		reaperActions.WithLabelValues(action).Inc()
		r.log.Info("ended "+what, "shell", sh.Key, "worker", sh.Worker, "age", sh.Age)
	}
}

// stalled reports whether this pass has taken so long that its reads
// probably waited out an outage (go-redis retries through a failover or a
// restart) and saw a promoted replica's heartbeats, which expired while no
// worker could write them. The pass then counts as having met an outage.
func (r *Reaper) stalled() bool {
	if r.passStart.IsZero() || time.Since(r.passStart) <= max(r.cfg.Interval, slowPass) {
		return false
	}
	if !r.outage {
		r.log.Info("a reaper pass took too long; Redis may have been away", "took", time.Since(r.passStart))
	}
	r.outage = true
	return true
}

// slowPass is the least time a pass may take before it counts as stalled.
const slowPass = 2 * time.Second

// watchRedis notices an outage (this reaper's own failed passes) or a Redis
// restart (a new run id, or a server younger than the grace when first
// seen) and then holds reaping back for a heartbeat TTL plus two passes.
func (r *Reaper) watchRedis(ctx context.Context) error {
	grace := r.cfg.HeartbeatTTL + 2*r.cfg.Interval
	id, err := r.cfg.Store.Identity(ctx)
	if store.Unavailable(err) {
		r.outage = true
		return err
	}
	// A server without INFO server (the embedded store) has no run id;
	// its own failed passes still count.
	now := time.Now()
	switch {
	case r.outage:
		if !now.Before(r.quietUntil) {
			// Said once: a Redis that answers but refuses writes comes
			// back here at every pass.
			r.log.Info("Redis answers again; reaping waits for heartbeats", "for", grace)
		}
		r.quietUntil = now.Add(grace)
	case err == nil && r.runID != "" && id.RunID != r.runID:
		r.quietUntil = now.Add(grace)
		r.log.Info("Redis restarted; reaping waits for heartbeats", "for", grace)
	case err == nil && r.runID == "" && id.Loaded && id.Uptime < grace:
		// Redis restarted with its data just before this process did.
		r.quietUntil = now.Add(grace - id.Uptime)
	}
	r.outage = false
	if err == nil {
		r.runID = id.RunID
	}
	return nil
}

func (r *Reaper) reap(ctx context.Context, ref store.RunRef, reason, msg string) {
	_, err := r.cfg.Store.Complete(ctx, ref, app.Outcome{ExitCode: 1, Reason: reason}, app.ErrorRow(msg))
	switch {
	case err == nil:
		reaperActions.WithLabelValues(reason).Inc()
		r.log.Info("reaped run", "session", ref.SessionID, "run", ref.RunID, "reason", reason)
	case errors.Is(err, app.ErrStaleRun):
	default:
		r.log.Warn("reap run", "session", ref.SessionID, "err", err)
	}
}
