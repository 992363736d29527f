package workers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/link"
	"github.com/agentgate/agentgate/store"
)

// Defaults of Config fields left at their zero value.
const (
	DefaultHeartbeatInterval = 2 * time.Second
	DefaultHeartbeatTTL      = 10 * time.Second
	DefaultDrainTimeout      = 10 * time.Second
	DefaultMaxRuns           = 32
	DefaultMaxTerminals      = 64
	// reclaimIdle is how long a job may sit read but unclaimed before
	// another worker takes it over: claiming takes milliseconds, so a job
	// idle this long was read by a worker that died.
	reclaimIdle = 15 * time.Second
	// confirmEvery is how often a worker has Redis confirm its runs: a
	// script call per run, cheap next to a run's output.
	confirmEvery = 5 * time.Second
	// lingerGrace is how long a CLI may go on after printing its result.
	lingerGrace = 5 * time.Second
	// stopGrace is how long a stopping worker, past its DrainTimeout,
	// waits for its runs to record their ends (Redis away, or refusing
	// writes at its maxmemory), and then how long for the runs it left
	// to the reaper to let go of their processes. Twice it, the drain
	// timeout and the heartbeat and its removal (2 s and 5 s at most)
	// stay under Kubernetes' default grace of 30 s before its SIGKILL
	// with the default DrainTimeout.
	stopGrace = 5 * time.Second
)

// Config configures a Worker.
type Config struct {
	// ID names the worker in Redis. Zero means host-pid-random.
	ID    string
	Store *store.Store
	// Providers are the adapters this worker runs, by provider.
	Providers map[app.Provider]Provider
	// Bins are the CLI binaries by provider; a missing entry means the
	// provider's default name on PATH.
	Bins map[app.Provider]string
	// Workspaces bound the project paths runs may use.
	Workspaces app.Workspaces
	// PassEnv names the variables of the worker's environment that provider
	// CLIs and terminals get, besides PATH, locale and TZ: exact names or
	// patterns such as ANTHROPIC_*. Nil means DefaultPassEnv. AGENTGATE_*
	// never passes.
	PassEnv []string
	// Env is set for provider CLIs and terminals (NAME=VALUE), after PassEnv.
	Env []string
	// Accounts, when set, runs each user's processes under an OS account and
	// home of their own. Nil runs them as the worker, with its home.
	Accounts *Accounts
	// SingleUser says every user of this worker is the person who started
	// it (`agentgate serve`): a provider conversation id agentgate never
	// recorded may then be resumed, as it can only be that person's own. In
	// a multi-user deployment it can be only with Accounts, where the CLI
	// finds the user's own conversations and no one else's.
	SingleUser bool
	// MaxRuns bounds the runs this worker runs at once; further jobs wait in
	// the stream for this worker or another. Zero means DefaultMaxRuns.
	MaxRuns int
	// MaxTerminals bounds the terminals open on this worker. Zero means
	// DefaultMaxTerminals.
	MaxTerminals int
	// HeartbeatInterval is how often the heartbeat is refreshed. Zero means 2s.
	HeartbeatInterval time.Duration
	// HeartbeatTTL is how long a heartbeat lives: a worker silent for this
	// long is dead and its runs are reaped. Zero means 10s.
	HeartbeatTTL time.Duration
	// DrainTimeout is how long Shutdown lets runs finish before killing
	// them. Zero means 10s.
	DrainTimeout time.Duration
	// PermissionTimeout is how long a tool waits for the user's answer
	// before it is denied. Zero means app.DefaultPermissionTimeout.
	PermissionTimeout time.Duration
	// WatchInterval is how often the providers' session folders are
	// polled for sessions_updated. Zero turns the watcher off.
	WatchInterval time.Duration
	// ShellDetachTimeout is how long a terminal lives with no socket
	// watching it. Zero means DefaultShellDetachTimeout (30 minutes).
	ShellDetachTimeout time.Duration
	// ShellWindow is how many bytes of a terminal's output may be on their
	// way to its sockets before the worker stops reading its PTY: smaller
	// brings a prompt back sooner after a Ctrl-C in a flood, larger keeps
	// a flood faster. Zero means DefaultShellWindow (64 KiB).
	ShellWindow int
	// Link, when set, is the listener gateways send terminal input,
	// resizes and acks on (package link), past Redis; LinkAdvertise is the
	// address they dial, "" for the listener's own.
	Link          net.Listener
	LinkAdvertise string
	// Logger receives the worker's logs. Nil means slog.Default().
	Logger *slog.Logger
}

// DefaultBins are the CLI names of PROTOCOL §1.
var DefaultBins = map[app.Provider]string{
	app.Claude: "claude", app.Cursor: "cursor-agent", app.Codex: "codex", app.Gemini: "gemini",
}

// Worker takes runs from the jobs stream and runs their provider CLIs.
type Worker struct {
	cfg Config
	st  *store.Store
	log *slog.Logger
	// appends sends the runs' appends to Redis in pipelines.
	appends *appender
	// ready is closed once the first heartbeat is in Redis: gateways
	// accept commands for live workers only.
	ready chan struct{}
	start time.Time
	// env is the environment of provider processes and terminals, before
	// an account's identity is set (account.env).
	env []string
	// accounts maps users to the OS accounts their processes run under.
	accounts accountSet

	mu   sync.Mutex
	runs map[string]*run // by session id
	// earlyAborts holds the aborts of runs not started here yet, by
	// session id and run id, with when they came: one that arrives between
	// a run's claim and its start stops it before its CLI starts.
	earlyAborts map[string]time.Time

	wg sync.WaitGroup // one per run

	// linkAddr and linkToken are what the heartbeat advertises of the
	// worker's link ("" without one).
	linkAddr, linkToken string

	shells shellSet // terminals (shell.go)
	// tags are the runs and terminal generations whose processes are
	// live here, by the tag in their environment (tags.go).
	tags tagSet

	// troubleAt (Unix nanoseconds) is when this worker last met Redis
	// away, slow or refusing writes (heartbeat, terminal checks): for a
	// while after, other workers' heartbeats may still be missing
	// (sweepOrphans), and gateways' refreshes of watch times too
	// (shellLoop).
	troubleAt atomic.Int64

	// pollBlock bounds each blocking read of the jobs stream and the inbox:
	// a blocking read ignores ctx, so this is also how long Run takes to
	// notice shutdown. Tests shorten it.
	pollBlock time.Duration
	// reclaimIdle is how long a job may sit read but not acked before it
	// is taken over (reclaimIdle). Tests shorten it.
	reclaimIdle time.Duration
	// lingerGrace is how long a CLI may run after its result
	// (Output.Finished). Tests shorten it.
	lingerGrace time.Duration
	// confirmEvery is how often Redis confirms the runs (confirmLoop).
	// Tests shorten it.
	confirmEvery time.Duration
	// completeRetryFor is completeRetryFor. Tests shorten it.
	completeRetryFor time.Duration
	// draining is set when Run's context ends: the heartbeat says so.
	draining atomic.Bool
	// stopGrace is stopGrace. Tests shorten it.
	stopGrace time.Duration
	// outageTolerance is outageTolerance. Tests shorten it.
	outageTolerance time.Duration
	// imagesPrefix starts the names of the worker's image folders.
	imagesPrefix string
	// giveUp ends (abandon) when the stopping worker gave its runs
	// stopGrace to record their ends and Redis took not all of them: the
	// runs still trying give up, and the heartbeat stops, so that the
	// reaper of another worker (or of this one restarted) ends them once
	// the heartbeat is gone. Redis' runId guard in the complete script
	// keeps that end the only one, whichever writes first.
	giveUp  context.Context
	abandon context.CancelFunc
}

// New returns a Worker; call Run to start it.
func New(cfg Config) (*Worker, error) {
	if cfg.Store == nil {
		return nil, errors.New("workers: no store")
	}
	if len(cfg.Providers) == 0 {
		return nil, errors.New("workers: no providers")
	}
	if cfg.ID == "" {
		cfg.ID = instanceName()
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if cfg.HeartbeatTTL <= 0 {
		cfg.HeartbeatTTL = DefaultHeartbeatTTL
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	if cfg.MaxRuns <= 0 {
		cfg.MaxRuns = DefaultMaxRuns
	}
	if cfg.MaxTerminals <= 0 {
		cfg.MaxTerminals = DefaultMaxTerminals
	}
	if cfg.ShellWindow <= 0 {
		cfg.ShellWindow = DefaultShellWindow
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Accounts != nil {
		if err := cfg.Accounts.Validate(); err != nil {
			return nil, err
		}
		if err := cfg.Accounts.bound(); err != nil {
			return nil, err
		}
	}
	pass := cfg.PassEnv
	if pass == nil {
		pass = DefaultPassEnv
	}
	if cfg.Accounts == nil {
		pass = append(slices.Clip(pass), sharedAccountEnv...)
	}
	w := &Worker{
		cfg: cfg, st: cfg.Store, log: cfg.Logger.With("worker", cfg.ID), start: time.Now(),
		env: userEnv(os.Environ(), pass, cfg.Env), accounts: accountSet{cfg: cfg.Accounts, st: cfg.Store},
		runs: map[string]*run{}, pollBlock: time.Second, appends: newAppender(cfg.Store), ready: make(chan struct{}),
		reclaimIdle: reclaimIdle, completeRetryFor: completeRetryFor, confirmEvery: confirmEvery, lingerGrace: lingerGrace, stopGrace: stopGrace, outageTolerance: outageTolerance,
	}
	w.giveUp, w.abandon = context.WithCancel(context.Background())
	w.imagesPrefix = imagesPrefix(w.st.Scope(), cfg.ID)
	if cfg.Accounts != nil && !canReadOthersFiles() {
		w.log.Warn("without CAP_SYS_PTRACE the worker cannot read which files the users' processes hold, nor their environments: a job that left its terminal's or run's session (setsid, nohup) is not killed when they end, only once its user has no run or terminal left on this worker; add the capability to the worker's container (README: Deploying)")
	}
	if cfg.Link != nil {
		token, err := link.NewToken()
		if err != nil {
			return nil, err
		}
		w.linkAddr, w.linkToken = cfg.LinkAdvertise, token
		if w.linkAddr == "" {
			w.linkAddr = cfg.Link.Addr().String()
		}
	}
	return w, nil
}

// Ready is closed once Run has registered the worker in Redis, from when
// gateways send it commands.
func (w *Worker) Ready() <-chan struct{} { return w.ready }

// ID is the worker's id in Redis.
func (w *Worker) ID() string { return w.cfg.ID }

// Run serves jobs until ctx ends, then drains: it takes no new job, lets
// running runs finish for DrainTimeout, kills the rest (completing them as
// failed) and removes its heartbeat. It returns after all its goroutines,
// or, when Redis does not take the runs' ends (away, refusing writes) or a
// process does not die, within DrainTimeout and twice stopGrace (plus a
// few seconds for the heartbeat's writes), leaving those runs to the
// reaper.
func (w *Worker) Run(ctx context.Context) error {
	if err := w.beat(ctx); err != nil {
		return fmt.Errorf("workers: first heartbeat: %w", err)
	}
	close(w.ready)
	// Before the first job: this worker's own id has no folder yet.
	sweepCtx, stopSweep := context.WithTimeout(ctx, 5*time.Second)
	w.sweepImages(sweepCtx)
	stopSweep()
	loopCtx, stopLoops := context.WithCancel(context.Background())
	var loops sync.WaitGroup
	if w.cfg.Link != nil {
		srv := link.NewServer(w.linkToken, w.linkControl, w.log)
		loops.Add(1)
		go func() {
			defer loops.Done()
			if err := srv.Serve(loopCtx, w.cfg.Link); err != nil {
				w.log.Error("link stopped: gateways send through the inbox", "err", err)
			}
		}()
	}
	// The heartbeat stops when the worker gives its runs up, so that the
	// reaper takes them over.
	beatCtx, stopBeats := context.WithCancel(loopCtx)
	defer stopBeats()
	defer context.AfterFunc(w.giveUp, stopBeats)()
	loops.Add(3)
	go func() { defer loops.Done(); w.heartbeatLoop(beatCtx) }()
	loops.Add(1)
	go func() { defer loops.Done(); w.confirmLoop(loopCtx) }()
	go func() { defer loops.Done(); w.inboxLoop(loopCtx) }()
	jobsDone := make(chan struct{})
	go func() { defer loops.Done(); defer close(jobsDone); w.jobLoop(ctx) }()
	loops.Add(1)
	go func() { defer loops.Done(); w.shellLoop(loopCtx) }()

	if w.cfg.WatchInterval > 0 {
		pw := newProjectsWatcher(w, w.env, w.cfg.WatchInterval)
		loops.Add(1)
		go func() { defer loops.Done(); pw.run(loopCtx) }()
	}

	<-ctx.Done()
	// Told at once, so that gateways open no terminal here meanwhile.
	w.draining.Store(true)
	drainBeatCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	if err := w.beat(drainBeatCtx); err != nil {
		w.log.Warn("heartbeat (draining)", "err", err)
	}
	cancel()
	// No run may start once drain waits for the running ones (a take in
	// progress would Add to the WaitGroup drain waits on).
	<-jobsDone
	w.drain()
	stopLoops()
	loops.Wait()
	rmCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.st.RemoveWorker(rmCtx, w.cfg.ID); err != nil {
		w.log.Warn("remove heartbeat", "err", err)
	}
	return nil
}

// drain waits for running runs, then kills what is left. It is bounded
// (Run): runs that cannot record their ends in time are given up.
func (w *Worker) drain() {
	done := make(chan struct{})
	go func() {
		// Terminals do not finish by themselves: they end with the
		// worker, meanwhile the runs finish.
		w.killShells()
		w.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return
	case <-time.After(w.cfg.DrainTimeout):
	}
	w.mu.Lock()
	for _, r := range w.runs {
		r.stop(stopShutdown)
	}
	w.mu.Unlock()
	select {
	case <-done:
		return
	case <-time.After(w.stopGrace):
	}
	w.log.Error("runs did not record their ends in time: leaving them to the reaper, which ends them once this worker's heartbeat is gone", "runs", w.runCount())
	w.abandon()
	select {
	case <-done:
	case <-time.After(w.stopGrace):
		w.log.Error("runs or terminals still did not end: stopping without them", "runs", w.runCount(), "terminals", w.shellCount())
	}
}

// runCount is how many runs the worker holds.
func (w *Worker) runCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.runs)
}

// jobLoop reads jobs until ctx ends. Runs in its own goroutine.
func (w *Worker) jobLoop(ctx context.Context) {
	reclaim := time.NewTicker(w.reclaimIdle / 3)
	defer reclaim.Stop()
	var reads streak
	for ctx.Err() == nil {
		free := w.freeSlots()
		if free <= 0 {
			// At capacity: the jobs wait in the stream, where another worker
			// with room may take them.
			sleep(ctx, 50*time.Millisecond)
			continue
		}
		select {
		case <-reclaim.C:
			entries, err := w.st.ReclaimJobs(ctx, w.cfg.ID, w.reclaimIdle)
			if err != nil && ctx.Err() == nil {
				w.log.Warn("reclaim jobs", "err", err)
			}
			for _, e := range entries {
				w.take(ctx, e)
			}
		default:
		}
		entries, err := w.st.ReadJobs(ctx, w.cfg.ID, min(16, free), w.pollBlock)
		if err != nil {
			if ctx.Err() == nil {
				reads.failed(w.log, "read jobs", err)
				sleep(ctx, time.Second)
			}
			continue
		}
		reads.ok(w.log, "reading jobs again")
		for _, e := range entries {
			w.take(ctx, e)
		}
	}
}

// freeSlots is how many more runs this worker may start (Config.MaxRuns).
func (w *Worker) freeSlots() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cfg.MaxRuns - len(w.runs)
}

// take claims the run of a job and starts it. A job whose run is no longer
// current (aborted, reaped) is acknowledged and dropped.
func (w *Worker) take(ctx context.Context, e store.JobEntry) {
	if e.Err != nil {
		w.log.Warn("drop undecodable job", "id", e.StreamID, "err", e.Err)
		_ = w.st.AckJob(ctx, e.StreamID)
		return
	}
	job := e.Job
	ref := store.RunRef{SessionID: job.SessionID, RunID: job.RunID, Provider: job.Provider}
	ok, err := w.claim(ctx, ref)
	if err != nil {
		// Left unacked: this worker or another reclaims it later.
		w.log.Warn("claim run", "session", job.SessionID, "err", err)
		return
	}
	if err := w.st.AckJob(ctx, e.StreamID); err != nil {
		w.log.Warn("ack job", "session", job.SessionID, "err", err)
	}
	if !ok {
		return
	}
	if testHookClaimed != nil {
		testHookClaimed(ref)
	}
	r := newRun(w, job)
	r.accepted, _ = streamIDTime(e.StreamID)
	w.mu.Lock()
	if old := w.runs[job.SessionID]; old != nil {
		if old.job.RunID == job.RunID {
			// This very run, claimed again (the store forgot its claim,
			// an hour old, and a copy of its job came back): it runs.
			w.mu.Unlock()
			return
		}
		// The session moved on to a new run while this worker still ran
		// an old one that heard nothing of its end (a CLI waiting on the
		// user writes nothing that would find it stale).
		old.stop(stopStale)
	}
	w.runs[job.SessionID] = r
	_, aborted := w.earlyAborts[job.SessionID+" "+job.RunID]
	delete(w.earlyAborts, job.SessionID+" "+job.RunID)
	w.mu.Unlock()
	if aborted {
		r.stop(stopAbort)
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		r.execute()
		w.mu.Lock()
		if w.runs[job.SessionID] == r {
			delete(w.runs, job.SessionID)
		}
		w.mu.Unlock()
	}()
}

// testHookClaimed, when set by a test, is called once a run is claimed,
// before it starts.
var testHookClaimed func(store.RunRef)

// earlyAbortTTL is how long an abort of a run not started here is kept for
// it: a claim and its start are a round trip apart, a minute with Redis
// slow at most.
const earlyAbortTTL = time.Minute

// noteEarlyAbort keeps the abort of run key ("SESSION RUN") for take, which
// may be starting it; older notes are forgotten.
func (w *Worker) noteEarlyAbort(key string) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, at := range w.earlyAborts {
		if now.Sub(at) > earlyAbortTTL {
			delete(w.earlyAborts, k)
		}
	}
	if w.earlyAborts == nil {
		w.earlyAborts = map[string]time.Time{}
	}
	w.earlyAborts[key] = now
}

// claim claims ref's run for this worker, asking again while Redis is
// away or slow. A claim whose reply was lost may have been recorded: left
// to be reclaimed, another worker would find the run taken by this one and
// drop it, and with this worker alive nothing would end it. Asked again by
// this worker, it gets its answer (a run claimed by this same worker is
// its own). It gives up only when ctx ends: the worker stops, and the
// reaper ends the runs of a worker gone.
func (w *Worker) claim(ctx context.Context, ref store.RunRef) (bool, error) {
	for {
		ok, err := w.st.Claim(ctx, ref, w.cfg.ID)
		if err == nil || !store.Retryable(err) || ctx.Err() != nil {
			return ok, err
		}
		w.log.Warn("claim run; asking again", "session", ref.SessionID, "err", err)
		w.st.WaitRetry(ctx, err)
	}
}

// inboxLoop reads the worker's control messages until ctx ends.
// Runs in its own goroutine.
//
// What it read is deleted later, in batches, or when the inbox is quiet:
// deleting is only tidying (the reader goes on from its last id), and a
// delete round trip right after a keystroke would compete with the
// terminal's echo for Redis.
func (w *Worker) inboxLoop(ctx context.Context) {
	after := "0"
	var read []store.ControlEntry
	var seen seenControls
	for ctx.Err() == nil {
		entries, err := w.st.PeekInbox(ctx, w.cfg.ID, after, w.pollBlock)
		if err != nil {
			if ctx.Err() == nil {
				w.log.Warn("read inbox", "err", err)
				sleep(ctx, time.Second)
			}
			continue
		}
		for _, e := range entries {
			after = e.StreamID
			if e.Err != nil {
				w.log.Warn("drop undecodable control", "err", e.Err)
				continue
			}
			if !seen.first(e.Control.ID) {
				w.log.Info("drop a control stored twice", "type", e.Control.Type, "id", e.Control.ID)
				continue
			}
			w.control(e.Control)
		}
		read = append(read, entries...)
		if len(read) >= inboxDeleteBatch || (len(entries) == 0 && len(read) > 0) {
			w.st.DeleteInbox(ctx, w.cfg.ID, read)
			read = read[:0]
		}
	}
}

// inboxDeleteBatch is how many read controls wait to be deleted together.
const inboxDeleteBatch = 256

func (w *Worker) control(c store.Control) {
	if w.shellControl(c) {
		return
	}
	switch c.Type {
	case store.ControlAbort:
		w.mu.Lock()
		r := w.runs[c.SessionID]
		w.mu.Unlock()
		if r != nil && (c.RunID == "" || c.RunID == r.job.RunID) {
			r.stop(stopAbort)
		} else if c.RunID != "" {
			w.noteEarlyAbort(c.SessionID + " " + c.RunID)
		}
	case store.ControlPermission:
		var ans app.PermissionAnswer
		if err := json.Unmarshal(c.Data, &ans); err != nil {
			w.log.Warn("drop undecodable permission answer", "session", c.SessionID, "err", err)
			return
		}
		w.mu.Lock()
		r := w.runs[c.SessionID]
		w.mu.Unlock()
		if r == nil || c.RunID != r.job.RunID {
			return
		}
		if p := r.permissions(); p != nil {
			p.answer(ans)
		}
	default:
		w.log.Warn("unknown control", "type", c.Type)
	}
}

// confirmLoop has Redis confirm the worker's runs every confirmEvery,
// until ctx ends, and stops those it no longer holds. A run learns that it
// ended by another door (an abort whose control was lost, the reaper while
// this worker was cut off from Redis) at its next write; a CLI waiting on
// the user's answer may write nothing for hours. And a claim that Redis
// lost (a restart without its last writes, a failover) is written back
// before another worker can take the run. Runs in its own goroutine.
func (w *Worker) confirmLoop(ctx context.Context) {
	t := time.NewTicker(w.confirmEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.confirmRuns(ctx)
		}
	}
}

func (w *Worker) confirmRuns(ctx context.Context) {
	w.mu.Lock()
	runs := make([]*run, 0, len(w.runs))
	for _, r := range w.runs {
		runs = append(runs, r)
	}
	w.mu.Unlock()
	if len(runs) == 0 {
		return
	}
	refs := make([]store.RunRef, len(runs))
	for i, r := range runs {
		refs[i] = r.ref
	}
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	ok, err := w.st.ConfirmClaims(ctx, refs, w.cfg.ID)
	if err != nil {
		return // asked again next time
	}
	for i, r := range runs {
		if !ok[i] && !r.ending.Load() {
			r.log.Warn("the run ended elsewhere or another worker holds it; stopping it")
			r.stop(stopStale)
		} else if p := r.permissions(); ok[i] && p != nil {
			w.confirmAsks(ctx, r, p)
		}
	}
}

// confirmAsks has Redis confirm the permission requests a run waits on,
// with their index entries, and records again those it lost
// (permissions.askAgain).
func (w *Worker) confirmAsks(ctx context.Context, r *run, p *permissions) {
	held := p.held()
	if len(held) == 0 {
		return
	}
	ids := make([]string, len(held))
	for i, req := range held {
		ids[i] = req.RequestID
	}
	recorded, err := w.st.ConfirmPermissions(ctx, r.ref.SessionID, ids)
	if err != nil {
		return // asked again next time
	}
	var lost []app.PendingPermission
	for i, req := range held {
		if !recorded[i] {
			lost = append(lost, req)
		}
	}
	p.askAgain(ctx, lost)
}

// heartbeatLoop refreshes the heartbeat until ctx ends.
// Runs in its own goroutine.
func (w *Worker) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(w.cfg.HeartbeatInterval)
	defer t.Stop()
	var beats streak
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			began := time.Now()
			// A beat that waits on a stalled node (SIGSTOP, a paused VM)
			// would hold the next ones back past the TTL; given up, the
			// next one goes to the slot map read again, to the promoted
			// replica once there is one. (Not the first beat, in Run: a
			// cold client may take longer to connect.)
			beatCtx, cancel := context.WithTimeout(ctx, max(w.cfg.HeartbeatTTL/2, 100*time.Millisecond))
			err := w.beat(beatCtx)
			cancel()
			switch {
			case err == nil:
				beats.ok(w.log, "heartbeat written again")
			case ctx.Err() == nil:
				beats.failed(w.log, "heartbeat", err)
			}
			if err != nil || time.Since(began) > store.SlowCall {
				w.troubleAt.Store(time.Now().UnixNano())
			}
			w.readJobsLag(ctx)
		}
	}
}

func (w *Worker) beat(ctx context.Context) error {
	host, _ := os.Hostname()
	n := w.runCount()
	return w.st.Heartbeat(ctx, store.WorkerInfo{
		ID: w.cfg.ID, Host: host, PID: os.Getpid(), StartedAt: w.start, Runs: n,
		Link: w.linkAddr, LinkToken: w.linkToken, Draining: w.draining.Load(),
		Terminals: w.shellCount(), MaxTerminals: w.cfg.MaxTerminals,
	}, w.cfg.HeartbeatTTL)
}

// readJobsLag sets the jobs_waiting gauge. It is read after the heartbeat
// and briefly: on a cluster the jobs stream lives on another node than the
// heartbeat, and while that node fails over the read waits out go-redis's
// retries; a heartbeat that waited for it expired, and the live worker was
// taken for gone ("No worker available").
func (w *Worker) readJobsLag(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if waiting, err := w.st.JobsWaiting(ctx); err == nil && waiting >= 0 {
		jobsWaiting.Set(float64(waiting))
	}
}

// linkControl handles a control from a link, which carries terminal
// controls only (the link package drops the others).
func (w *Worker) linkControl(c store.Control) {
	if !w.shellControl(c) {
		w.log.Warn("drop control from a link", "type", c.Type)
	}
}

func (w *Worker) bin(p app.Provider) string {
	if b := w.cfg.Bins[p]; b != "" {
		return b
	}
	return DefaultBins[p]
}

// instanceName names this process in Redis (worker ids, lease holders):
// readable for an admin, unique across restarts.
func instanceName() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), app.NewID()[:6])
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
