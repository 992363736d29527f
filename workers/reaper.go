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
	// (no worker alive, or every one of them gone before claiming). Zero
	// means one minute.
	UnclaimedTimeout time.Duration
	Logger           *slog.Logger
}

// Reaper completes the runs that lost their worker: `error{worker lost}`
// then `complete{success:false}`. Any process may run one (gateways and
// workers both do); a lease makes one of them do the work at a time, and the
// complete script's runId guard keeps a reaped run from completing twice.
type Reaper struct {
	cfg ReaperConfig
	log *slog.Logger
}

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
			if err := r.Pass(ctx); err != nil && ctx.Err() == nil {
				r.log.Warn("reap", "err", err)
			}
		}
	}
}

// Pass reaps once if this process holds the lease, and returns the number
// of runs it completed.
func (r *Reaper) Pass(ctx context.Context) error {
	st := r.cfg.Store
	ok, err := st.AcquireLease(ctx, reaperLease, r.cfg.Holder, 3*r.cfg.Interval)
	if err != nil || !ok {
		return err
	}
	ids, err := st.RunningSessions(ctx)
	if err != nil || len(ids) == 0 {
		return err
	}
	live, err := st.LiveWorkers(ctx)
	if err != nil {
		return err
	}
	alive := make(map[string]bool, len(live))
	for _, w := range live {
		alive[w.ID] = true
	}
	dead := map[string]bool{}
	now := time.Now().UnixMilli()
	for _, id := range ids {
		sess, err := st.Session(ctx, id)
		if err != nil || !sess.Running() {
			continue
		}
		ref := store.RunRef{SessionID: sess.ID, RunID: sess.RunID, Provider: sess.Provider}
		switch {
		case sess.Worker != "" && !alive[sess.Worker]:
			// A worker registered since LiveWorkers was read is alive too.
			if ok, err := st.WorkerAlive(ctx, sess.Worker); err != nil || ok {
				continue
			}
			dead[sess.Worker] = true
			r.reap(ctx, ref, app.ReasonWorkerLost, "worker lost")
		case sess.Worker == "" && now-sess.StartedAt > r.cfg.UnclaimedTimeout.Milliseconds():
			r.reap(ctx, ref, app.ReasonNoWorker, "No worker took this run; is a worker running?")
		}
	}
	for id := range dead {
		if err := st.RemoveWorker(ctx, id); err != nil {
			r.log.Warn("remove dead worker", "worker", id, "err", err)
		}
	}
	return nil
}

func (r *Reaper) reap(ctx context.Context, ref store.RunRef, reason, msg string) {
	_, err := r.cfg.Store.Complete(ctx, ref, app.Outcome{ExitCode: 1, Reason: reason}, app.ErrorRow(msg))
	switch {
	case err == nil:
		r.log.Info("reaped run", "session", ref.SessionID, "run", ref.RunID, "reason", reason)
	case errors.Is(err, app.ErrStaleRun):
	default:
		r.log.Warn("reap run", "session", ref.SessionID, "err", err)
	}
}
