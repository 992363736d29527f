package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/agentgate/agentgate/app"
)

// RunRef names one run of one session. Every write of a run carries it, and
// the scripts refuse a write whose RunID is no longer current.
type RunRef struct {
	SessionID string
	RunID     string
	Provider  app.Provider
	// Worker is the worker that claimed the run, for the writes of that
	// worker: they are refused once another worker holds the run (a claim
	// lost with Redis's last writes, then made by another). "" for the
	// writes of others (abort, reaper); Unclaimed for the reaper's end of
	// a run no worker took, refused once one did.
	Worker string
}

// Unclaimed is RunRef.Worker for a write that holds only while no worker
// has claimed the run.
const Unclaimed = "-"

// AcceptRequest is what a gateway asks of Accept.
type AcceptRequest struct {
	// Session holds the id, owner, provider, project path and provider
	// session id of the session. For an existing session Owner must be the
	// owner the caller read, so a session that changed hands is "not found".
	Session app.Session
	// New creates the session; it must not exist yet.
	New bool
	// Job is queued for the workers; Accept fills in its RunID.
	Job app.Job
	// MaxRunning is how many runs the owner may have running at once,
	// this one included; past it Accept returns an *app.LimitError. Zero
	// means no limit.
	MaxRunning int
	// KeepSessions is how many sessions the owner keeps: a new session
	// past it forgets their least recently active idle ones
	// (keepSessions). Zero means no limit.
	KeepSessions int
	// ID names this accept; Accept makes one when it is empty. A copy of
	// an accept that was taken (go-redis writes a command again when a
	// stalled Redis does not answer in time, and Redis runs both) answers
	// as the first did.
	ID string
}

// AcceptResult describes an accepted run.
type AcceptResult struct {
	RunID     string
	StartedAt int64
	// PrevSeq is the session's last seq before this run's first event: a
	// socket that follows the run from PrevSeq+1 sees all of it.
	PrevSeq int64
}

// BusyError is returned by Accept when the session already has a run.
type BusyError struct {
	StartedAt   int64
	ProjectPath string
}

func (e *BusyError) Error() string { return app.ErrSessionBusy.Error() }

// Unwrap makes errors.Is(err, app.ErrSessionBusy) hold.
func (e *BusyError) Unwrap() error { return app.ErrSessionBusy }

// ErrSessionExists means Accept was asked to create a session id that is
// taken: another command made a session of that id meanwhile.
var ErrSessionExists = errors.New("session id already exists")

// Accept starts a run atomically (run_accept.lua): two gateways racing on
// one session yield one run and one *BusyError.
func (s *Store) Accept(ctx context.Context, req *AcceptRequest) (AcceptResult, error) {
	sess := &req.Session
	if req.ID == "" {
		req.ID = app.NewID()
	}
	mode := "existing"
	accepted := false
	var createdBody []byte
	var err error
	if req.New {
		mode = "new"
		// The provider id the first run resumes, if any: a session minted
		// for an id it does not own yet keeps none until its CLI prints one.
		created := app.SessionCreated(sess.ID, req.Job.ProviderSessionID)
		if createdBody, err = s.eventBody(sess.ID, sess.Provider, created); err != nil {
			return AcceptResult{}, fmt.Errorf("store: accept %s: %w", sess.ID, err)
		}
	}
	runningBody, err := s.eventBody(sess.ID, sess.Provider, app.RunStarted(req.Job.Command))
	if err != nil {
		return AcceptResult{}, fmt.Errorf("store: accept %s: %w", sess.ID, err)
	}
	job, err := json.Marshal(req.Job)
	if err != nil {
		return AcceptResult{}, fmt.Errorf("store: accept %s: encode job: %w", sess.ID, err)
	}
	if req.MaxRunning > 0 {
		ok, added, err := s.reserve(ctx, s.k.userRunning(sess.Owner), sess.ID, req.MaxRunning, s.staleRuns)
		if err != nil {
			return AcceptResult{}, fmt.Errorf("store: accept %s: reserve a run of %s: %w", sess.ID, sess.Owner, err)
		}
		if !ok {
			return AcceptResult{}, &app.LimitError{Limit: app.LimitRunsPerUser, Max: req.MaxRunning}
		}
		reserved := added
		defer func() {
			// A place this call took for a run that did not start goes back;
			// a busy session keeps the place its own run holds.
			if reserved {
				if err := s.forget(ctx, s.k.userRunning(sess.Owner), sess.ID, math.MaxInt64); err != nil {
					s.log.Warn("give back a run place", "session", sess.ID, "err", err)
				}
			}
		}()
		defer func() { reserved = reserved && !accepted }()
	}
	// The running set is written ahead of the run (an entry of a session
	// that is not running is dropped by its readers), so the reaper finds
	// every run even if this process dies right after the accept.
	if err := s.touch(ctx, s.k.running(), sess.ID, 0); err != nil {
		return AcceptResult{}, fmt.Errorf("store: accept %s: index: %w", sess.ID, err)
	}
	res, err := s.sc.runAccept.Run(ctx, s.rdb, []string{s.k.session(sess.ID), s.k.events(sess.ID), s.k.job(sess.ID)},
		sess.ID, sess.Owner, string(sess.Provider), sess.ProjectPath, sess.ProviderSessionID, mode,
		job, createdBody, runningBody, s.limits, s.k.live(sess.ID), s.floors.get(sess.ID),
		req.ID, s.deadlineMillis(ctx), luaFlag(sess.Unrecorded),
	).StringSlice()
	if err != nil {
		return AcceptResult{}, fmt.Errorf("store: accept %s: %w", sess.ID, err)
	}
	switch res[0] {
	case "ok":
		accepted = true
		started, _ := strconv.ParseInt(res[1], 10, 64)
		prev, _ := strconv.ParseInt(res[2], 10, 64)
		s.floors.note(sess.ID, prev)
		s.afterAccept(ctx, sess, res[1], started, job)
		if req.New && req.KeepSessions > 0 {
			if err := s.keepSessions(ctx, sess.Owner, sess.ID, req.KeepSessions); err != nil {
				s.log.Warn("forget sessions past the owner's limit", "owner", sess.Owner, "err", err)
			}
		}
		return AcceptResult{RunID: res[1], StartedAt: started, PrevSeq: prev}, nil
	case "busy":
		accepted = true // the place is the running run's
		started, _ := strconv.ParseInt(res[1], 10, 64)
		return AcceptResult{}, &BusyError{StartedAt: started, ProjectPath: res[2]}
	case "missing":
		return AcceptResult{}, app.ErrNotFound
	case "exists":
		return AcceptResult{}, ErrSessionExists
	case "late":
		return AcceptResult{}, fmt.Errorf("store: accept %s: %w", sess.ID, s.late())
	}
	return AcceptResult{}, fmt.Errorf("store: accept %s: unexpected reply %q", sess.ID, res)
}

// afterAccept writes what an accepted run announces outside the session's
// slot: its job on the jobs stream, its running-set entry scored by
// startedAt, the owner's session list. A failure here leaves the run
// standing: RunningSessions queues a lost job again and rebuilds lost
// index entries, and the reaper ends a run no worker took.
func (s *Store) afterAccept(ctx context.Context, sess *app.Session, runID string, started int64, job []byte) {
	if err := s.queueJob(ctx, sess.ID, runID, job); err != nil {
		s.log.Warn("queue job; it is queued again later", "session", sess.ID, "err", err)
	}
	if err := s.touch(ctx, s.k.running(), sess.ID, started); err != nil {
		s.log.Warn("index running session", "session", sess.ID, "err", err)
	}
	if err := s.touch(ctx, s.k.userSessions(sess.Owner), sess.ID, started); err != nil {
		s.log.Warn("index session of its owner", "session", sess.ID, "err", err)
	}
}

// queueJob adds a run's job to the jobs stream.
func (s *Store) queueJob(ctx context.Context, sessionID, runID string, job []byte) error {
	return s.rdb.XAdd(ctx, &redis.XAddArgs{
		Stream: s.k.jobs(), MaxLen: jobsMaxLen, Approx: true,
		Values: []any{"session", sessionID, "run", runID, "job", job},
	}).Err()
}

// staleRuns gives, for each session id of an owner's running set, the
// highest score at which its entry may go (-1 while the session runs), for
// reserve.
func (s *Store) staleRuns(ctx context.Context, ids []string) ([]int64, error) {
	sessions, err := s.sessionsByID(ctx, ids)
	if err != nil {
		return nil, err
	}
	now, err := s.rdb.Time(ctx).Result()
	if err != nil {
		return nil, err
	}
	out := make([]int64, len(ids))
	for i, id := range ids {
		sess, ok := sessions[id]
		switch {
		case !ok:
			out[i] = staleAfter(now, 0)
		case sess.Running():
			out[i] = -1
		default:
			out[i] = staleAfter(now, sess.UpdatedAt)
		}
	}
	return out, nil
}

// Append adds events of a run to its session, in order, in one atomic step
// (run_append.lua), and sets the given session hash fields with them. It
// returns the seq of the last event, or app.ErrStaleRun when the run is no
// longer the session's current running run, in which case nothing changed.
func (s *Store) Append(ctx context.Context, run RunRef, events []app.Event, set map[string]string) (int64, error) {
	return s.AppendBatch(ctx, run, 0, events, set)
}

// AppendBatch is Append for a writer that numbers its appends to a run
// from 1 (batch): a batch the session already took is not taken again, so a
// call retried after its reply was lost (a timeout, a dropped connection, a
// Redis that went down after the write) repeats no event. It then returns
// the session's last seq. Batch 0 is Append, unnumbered.
func (s *Store) AppendBatch(ctx context.Context, run RunRef, batch int64, events []app.Event, set map[string]string) (int64, error) {
	keys, args, err := s.prepareAppend(ctx, AppendReq{Run: run, Batch: batch, Events: events, Set: set})
	if err != nil {
		return 0, err
	}
	seq, err := s.sc.runAppend.Run(ctx, s.rdb, keys, args...).Int64()
	if err != nil {
		return 0, fmt.Errorf("store: append %s: %w", run.SessionID, scriptError(err))
	}
	s.floors.note(run.SessionID, seq)
	return seq, nil
}

// CompleteResult describes the end of a run.
type CompleteResult struct {
	RunID string
	// Worker is the worker that had claimed the run ("" if none had).
	Worker string
	// Seq is the seq of the run's complete event.
	Seq int64
}

// Complete ends a run (run_complete.lua): it appends the events in before
// (error rows), then the run's single complete built from o, then the
// terminal session-state-changed. Only the first Complete of a run takes
// effect; later ones return app.ErrStaleRun. An empty run.RunID completes
// whatever run is current, which is how an abort is recorded.
func (s *Store) Complete(ctx context.Context, run RunRef, o app.Outcome, before ...app.Event) (CompleteResult, error) {
	completeBody, err := s.eventBody(run.SessionID, run.Provider, app.CompleteEvent(run.SessionID, o))
	if err != nil {
		return CompleteResult{}, fmt.Errorf("store: complete %s: %w", run.SessionID, err)
	}
	stateBody, err := s.eventBody(run.SessionID, run.Provider, app.StateChanged(o.State(), o.StateReason()))
	if err != nil {
		return CompleteResult{}, fmt.Errorf("store: complete %s: %w", run.SessionID, err)
	}
	cancelled := app.PermissionCancelledEvent(requestPlaceholder, app.PermissionCancelled)
	cancelled.ID = string(app.KindPermissionCancelled) + "_" + requestPlaceholder
	cancelBody, err := s.eventBody(run.SessionID, run.Provider, cancelled)
	if err != nil {
		return CompleteResult{}, fmt.Errorf("store: complete %s: %w", run.SessionID, err)
	}
	args := make([]any, 0, 12+2*len(before))
	args = append(args, run.RunID, s.limits, s.k.live(run.SessionID), string(o.State()),
		o.ExitCode, int64(s.cfg.Retention.Seconds()), completeBody, stateBody, cancelBody,
		s.floors.get(run.SessionID), len(before), run.Worker)
	for _, ev := range before {
		kind, body, err := s.outputBody(run.SessionID, run.Provider, ev)
		if err != nil {
			return CompleteResult{}, fmt.Errorf("store: complete %s: %w", run.SessionID, err)
		}
		args = append(args, string(kind), body)
	}
	out, err := s.runCompleteScript(ctx, run, args)
	if errors.Is(err, app.ErrStaleRun) && run.Worker != "" && run.Worker != Unclaimed && run.RunID != "" {
		// A worker's own end, answered by its own first copy (sent again
		// by go-redis, or by the worker after a lost reply): that one is
		// as losable as any. Not an abort's or the reaper's: the end they
		// found is someone else's, checked by whoever wrote it.
		s.done.remember(run, args)
	}
	if err != nil {
		return CompleteResult{}, err
	}
	args[0] = out.RunID // an abort's redo must end this run, not a later one
	s.done.remember(RunRef{SessionID: run.SessionID, RunID: out.RunID, Provider: run.Provider}, args)
	return out, nil
}

// runCompleteScript runs run_complete.lua with args and updates the
// indexes after it.
func (s *Store) runCompleteScript(ctx context.Context, run RunRef, args []any) (CompleteResult, error) {
	keys := []string{s.k.session(run.SessionID), s.k.events(run.SessionID), s.k.perms(run.SessionID), s.k.job(run.SessionID)}
	res, err := s.sc.runComplete.Run(ctx, s.rdb, keys, args...).Slice()
	if err != nil {
		return CompleteResult{}, fmt.Errorf("store: complete %s: %w", run.SessionID, scriptError(err))
	}
	if len(res) < 5 {
		return CompleteResult{}, fmt.Errorf("store: complete %s: unexpected reply %v", run.SessionID, res)
	}
	out := CompleteResult{}
	out.RunID, _ = res[0].(string)
	out.Worker, _ = res[1].(string)
	out.Seq, _ = res[2].(int64)
	owner, _ := res[3].(string)
	ended, _ := res[4].(string)
	s.floors.note(run.SessionID, out.Seq)
	s.afterComplete(ctx, run.SessionID, out.RunID, owner, atoi64(ended), res[5:])
	return out, nil
}

// afterComplete updates what lies outside the session's slot once a run
// ended: the running sets lose it (unless a newer run wrote them again),
// the owner's list moves it up, the permission index forgets its pending
// requests. A failure leaves entries that readers drop as stale.
func (s *Store) afterComplete(ctx context.Context, sessionID, runID, owner string, ended int64, pending []any) {
	started := atoi64(runID)
	if err := s.forget(ctx, s.k.running(), sessionID, started); err != nil {
		s.log.Warn("unindex running session", "session", sessionID, "err", err)
	}
	if owner == "" {
		return
	}
	if err := s.forget(ctx, s.k.userRunning(owner), sessionID, started); err != nil {
		s.log.Warn("give back a run place", "session", sessionID, "err", err)
	}
	if err := s.touch(ctx, s.k.userSessions(owner), sessionID, ended); err != nil {
		s.log.Warn("index session of its owner", "session", sessionID, "err", err)
	}
	if len(pending) > 0 {
		ids := make([]any, 0, len(pending))
		for _, p := range pending {
			if id, ok := p.(string); ok {
				ids = append(ids, id)
			}
		}
		if err := s.unlinkPermissions(ctx, sessionID, ids...); err != nil {
			s.log.Warn("unindex pending permissions", "session", sessionID, "err", err)
		}
	}
}

// requestPlaceholder stands for a request id in the permission_cancelled
// body that run_complete.lua fills in for each request still pending.
const requestPlaceholder = "@REQ@"

// Abort records the abort of the session's current run and emits its single
// complete{aborted:true, exitCode:0}, then tells the worker running it to
// stop. It returns app.ErrNoActiveRun when the session has no run in
// progress. The abort stands even if the worker cannot be told: its next
// write finds the run stale and it stops then.
func (s *Store) Abort(ctx context.Context, sessionID string, provider app.Provider) (CompleteResult, error) {
	return s.AbortRun(ctx, RunRef{SessionID: sessionID, Provider: provider})
}

// AbortRun is Abort of one run, run.RunID (any current run when it is
// ""): a client's abort names the run it saw, so a script that go-redis
// sends again after a timeout, or an abort that arrives late, cannot end a
// run started since.
func (s *Store) AbortRun(ctx context.Context, run RunRef) (CompleteResult, error) {
	sessionID := run.SessionID
	res, err := s.Complete(ctx, run, app.Outcome{Aborted: true})
	if errors.Is(err, app.ErrStaleRun) {
		return CompleteResult{}, app.ErrNoActiveRun
	}
	if err != nil || res.Worker == "" {
		return res, err
	}
	if err := s.SendControl(ctx, res.Worker, Control{Type: ControlAbort, SessionID: sessionID, RunID: res.RunID}); err != nil {
		s.log.Warn("tell worker to abort", "session", sessionID, "worker", res.Worker, "err", err)
	}
	return res, nil
}

// Claim records worker as the process running run. It returns false when the
// run is no longer current and running, or another worker has it.
func (s *Store) Claim(ctx context.Context, run RunRef, worker string) (bool, error) {
	if !s.claimed.first(run) {
		// This process claimed the run already: a second copy of its job.
		return false, nil
	}
	n, err := s.sc.runClaim.Run(ctx, s.rdb, []string{s.k.session(run.SessionID)}, run.RunID, worker).Int()
	if err != nil {
		s.claimed.forget(run)
		return false, fmt.Errorf("store: claim %s: %w", run.SessionID, err)
	}
	if n != 1 {
		s.claimed.forget(run)
	}
	return n == 1, nil
}

// ConfirmClaims asks again, for each of a worker's runs, whether it is
// still the session's current running run and the worker's, in one
// pipeline (run_claim.lua, which writes back a claim Redis lost). ok[i] is
// false for a run that ended by another door or that another worker holds;
// err is set when Redis did not answer, and then ok says nothing.
func (s *Store) ConfirmClaims(ctx context.Context, runs []RunRef, worker string) ([]bool, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(runs))
	for i, run := range runs {
		cmds[i] = s.sc.runClaim.EvalSha(ctx, pipe, []string{s.k.session(run.SessionID)}, run.RunID, worker)
	}
	_, _ = pipe.Exec(ctx) // each command's error is read below
	ok := make([]bool, len(runs))
	for i, cmd := range cmds {
		n, err := cmd.Int()
		if err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
			n, err = s.sc.runClaim.Run(ctx, s.rdb, []string{s.k.session(runs[i].SessionID)}, runs[i].RunID, worker).Int()
		}
		if err != nil {
			return nil, fmt.Errorf("store: confirm claim of %s: %w", runs[i].SessionID, err)
		}
		ok[i] = n == 1
	}
	return ok, nil
}

// outputBody is eventBody for an event a provider's output made: one too
// large to store (app.MaxEventBytes) becomes an error row that says so.
func (s *Store) outputBody(sessionID string, provider app.Provider, ev app.Event) (app.Kind, []byte, error) {
	body, err := s.eventBody(sessionID, provider, ev)
	if errors.Is(err, app.ErrEventTooLarge) {
		ev = app.ErrorRow(fmt.Sprintf("An output event over %d MiB was dropped.", app.MaxEventBytes>>20))
		body, err = s.eventBody(sessionID, provider, ev)
	}
	return ev.Kind, body, err
}

// eventBody fills the envelope fields the caller need not know and encodes ev.
func (s *Store) eventBody(sessionID string, provider app.Provider, ev app.Event) ([]byte, error) {
	ev.SessionID = sessionID
	ev.Provider = provider
	return ev.Body()
}

// scriptError maps the tokens scripts return with redis.error_reply onto
// domain errors, by exact match.
func scriptError(err error) error {
	if err == nil {
		return nil
	}
	// Redis (and miniredis) put "ERR " in front of a reply without a code.
	switch strings.TrimPrefix(strings.TrimSpace(err.Error()), "ERR ") {
	case "STALE":
		return app.ErrStaleRun
	case "LATE":
		return ErrLate
	}
	return err
}

// luaFlag is a boolean as a script's argument: "1" or "0".
func luaFlag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}
