package workers

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/internal/workspacefs"
	"github.com/agentgate/agentgate/store"
)

const (
	// maxLineBytes bounds one output line (a tool result can carry a whole
	// file); a longer line is dropped with an error row, not buffered.
	maxLineBytes = 16 << 20
	// maxBatch bounds the events of one append when lines arrive faster
	// than Redis answers.
	maxBatch = 64
	// stderrTail is how much of stderr a failed run reports.
	stderrTail = 4 << 10
	// orphanGrace is how long output may keep flowing after the provider
	// process exited, from children that left its group and still hold its
	// pipes, before they are killed and the pipes closed.
	orphanGrace = 2 * time.Second
	// writeTimeout bounds one store write of a run.
	writeTimeout = 10 * time.Second
	// interruptGrace is how long a provider asked to interrupt its turn
	// gets to exit before it is killed.
	interruptGrace = time.Second
	// completeRetryFor is how long a run tries to record its end, when
	// Redis answers with an error, before it says so in the log. It keeps
	// trying (nobody else would complete the run of a worker that is
	// alive) until the worker stops.
	completeRetryFor = time.Minute
	// outageTolerance is how long a run waits, its output held back, for
	// Redis to come back before it is stopped (store-unavailable).
	outageTolerance = 2 * time.Minute
)

// stopReason says why a run was stopped from outside its process.
type stopReason int

const (
	stopNone     stopReason = iota
	stopAbort               // the user aborted; the gateway already completed the run
	stopStale               // a write found the run no longer current (aborted or reaped)
	stopShutdown            // the worker is shutting down
	stopFailed              // the store could not be written
)

// run is one accepted run executing on this worker.
type run struct {
	w   *Worker
	job app.Job
	ref store.RunRef
	log *slog.Logger

	// sawErrorRow is set once an error row was appended (pump goroutine).
	sawErrorRow bool
	// retry holds the arguments of the one retry a Retrier parser asked for.
	retry []string

	// input and perms are set for a Conversational provider, before the
	// process starts.
	input *providerInput
	perms *permissions
	// interrupt is the provider's line that stops its turn, if it has one.
	interrupt []byte

	// storeWait is set while an append is in flight or waits for Redis
	// to come back.
	storeWait atomic.Bool
	// ending is set once the run records its end: Redis stops confirming
	// it then (confirmRuns), and that is no news.
	ending atomic.Bool
	// lingering is set once the CLI printed its result (pump goroutine),
	// lingered once the worker then stopped it (stopLingering).
	lingering bool
	lingered  atomic.Bool
	// endedFirst is set when the CLI's output was read to its end before
	// anything stopped the run (the run's goroutine).
	endedFirst bool

	// batches numbers the appends (pump goroutine), so that an append
	// retried after a lost reply is not taken twice.
	batches int64

	// accepted is when a gateway queued the run (zero if unknown);
	// sawLine is set at the CLI's first output line (pump goroutine).
	accepted time.Time
	sawLine  bool
	// providerID is the provider session id this run recorded last, and
	// providerIDs how many it recorded (pump goroutine; see newProviderID).
	providerID  string
	providerIDs int

	// tagUID is the uid the run's processes run as, and tagged whether
	// its tag is live (beginTag); set once, by the first start.
	tagUID int
	tagged bool

	mu      sync.Mutex
	proc    *process
	stopped stopReason
	// stopCtx ends when the run is stopped (stop).
	stopCtx    context.Context
	cancelStop context.CancelFunc
	// halting is set once proc is being halted: a run is stopped again
	// and again (confirmRuns, every few seconds, while a process in D
	// state does not die), and one halt is enough. halts counts them
	// (tests).
	halting bool
	halts   atomic.Int32
}

func newRun(w *Worker, job app.Job) *run {
	r := &run{
		w: w, job: job, log: w.log.With("session", job.SessionID, "run", job.RunID),
		ref: store.RunRef{SessionID: job.SessionID, RunID: job.RunID, Provider: job.Provider, Worker: w.cfg.ID},
	}
	r.stopCtx, r.cancelStop = context.WithCancel(context.Background())
	return r
}

// stop kills the run's process group, once, for reason.
func (r *run) stop(reason stopReason) {
	r.mu.Lock()
	if r.stopped == stopNone {
		r.stopped = reason
		r.cancelStop()
	}
	p := r.proc
	halt := p != nil && !r.halting
	if halt {
		r.halting = true
	}
	r.mu.Unlock()
	if !halt {
		return
	}
	select {
	case <-p.exited:
		// Reaped: its pid and group may already be another process's, and
		// what it left in the group was killed when it exited.
	default:
		go r.halt(p)
	}
}

// halt stops a started process: first by asking a conversational provider
// to interrupt its turn (it then stops its tools itself and exits once its
// input is closed), then by killing whatever is left of its tree.
func (r *run) halt(p *process) {
	r.halts.Add(1)
	if r.interrupt == nil {
		p.kill(killGrace)
		return
	}
	// Seen before the interrupt: a tool the provider leaves behind when it
	// exits is found by this snapshot, not under the gone leader.
	known := p.tree()
	r.input.write(r.interrupt)
	select {
	case <-p.exited:
	case <-time.After(interruptGrace):
	}
	p.killKnown(killGrace, known)
}

// permissions returns the run's permission requests, nil until its
// conversational provider has started (or for other providers).
func (r *run) permissions() *permissions {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.perms
}

func (r *run) stopReason() stopReason {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stopped
}

// execute runs the provider to its end and records the run's single
// complete. It returns when the process group is gone.
func (r *run) execute() {
	defer func() {
		// Last, once the run is recorded: what its tools left running
		// (daemons in sessions of their own) ends with it, however it ended.
		if r.tagged {
			r.w.endTag(runTag(r.job.SessionID, r.job.RunID), r.tagUID)
		}
	}()
	provider := providerLabel(r.job.Provider)
	runsRunning.WithLabelValues(provider).Inc()
	start := time.Now()
	outcome, final := r.runProvider()
	reason := r.stopReason()
	if reason == stopShutdown && r.endedFirst {
		// The CLI's output was all read before the worker stopped the
		// run: it finished, and its outcome is its own.
		reason = stopNone
	}
	defer func() {
		runsRunning.WithLabelValues(provider).Dec()
		runsFinished.WithLabelValues(provider, outcomeLabel(reason, outcome)).Inc()
		runSeconds.WithLabelValues(provider).Observe(time.Since(start).Seconds())
	}()
	switch reason {
	case stopShutdown:
		outcome = app.Outcome{ExitCode: 1, Reason: app.ReasonWorkerShutdown}
		final = append(final, app.ErrorRow("The worker running this session shut down before the run finished."))
	case stopFailed:
		outcome = app.Outcome{ExitCode: 1, Reason: app.ReasonStoreUnavailable}
		final = append(final, app.ErrorRow("The session store (Redis) could not record this run's output, so the run was stopped; its last output may be missing."))
	case stopAbort, stopStale:
		// The abort (or the reaper) already wrote this run's complete.
		return
	}
	r.ending.Store(true)
	r.complete(outcome, final)
}

// runProvider starts the CLI and pumps its output into the session. It
// returns the outcome and the events to write before complete.
func (r *run) runProvider() (app.Outcome, []app.Event) {
	job := r.job
	prov := r.w.cfg.Providers[job.Provider]
	if prov == nil {
		return failed(fmt.Sprintf("Provider %s is not available on this worker.", job.Provider))
	}
	if err := job.Options.Check(); err != nil {
		// The gateway refused these already: a job written to Redis by
		// something else.
		return failed(err.Error())
	}
	if job.ResumeDenied || (job.ResumeUnrecorded && !r.w.cfg.SingleUser && r.w.cfg.Accounts == nil) {
		// Another user's conversation, or one agentgate never saw, in an
		// account that every user shares: fail exactly as a missing one does.
		return failed("No conversation found with session ID: " + job.ProviderSessionID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	acct, err := r.w.accounts.lookup(ctx, job.Owner)
	cancel()
	if err != nil {
		r.log.Error("no account for the run", "err", err)
		return failed("The worker could not prepare this user's account; try again or ask the operator.")
	}
	dir, err := workspacefs.Dir(r.w.cfg.Workspaces.For(job.Owner), job.ProjectPath)
	if err != nil {
		return failed(err.Error())
	}
	if len(job.Options.Images) > 0 {
		files, cleanup, err := writeImages(job.Options.Images, acct, r.w.imagesPrefix)
		if err != nil {
			return failed(err.Error())
		}
		defer cleanup()
		job.ImageFiles = files
	}
	// The owner variable lets the next worker on the host kill what is
	// left of the run (its CLI's tools) if this one is killed with -9; the
	// tag lets this one kill it when the run ends (tags.go).
	env := withVars(acct.env(slices.Clip(r.w.env)), r.w.ownerVar(runOwnerEnv), runTag(job.SessionID, job.RunID))
	args, stdin := prov.Command(job, env)
	if r.retry != nil {
		args = r.retry
	}
	// The gateway refused a prompt too long for a CLI that takes it as an
	// argument (app.CheckPrompt); a job from elsewhere, or one whose
	// images' paths made it longer, fails here with a clear error rather
	// than at exec with E2BIG.
	if err := app.CheckArgs(job.Provider, args); err != nil {
		return failed(err.Error())
	}
	cmd := exec.Command(r.w.bin(job.Provider), args...)
	cmd.Dir = dir
	cmd.Env = env
	prepareGroup(cmd)
	cmd.SysProcAttr.Credential = acct.credential()

	// Our own pipes, read with small buffers: exec's would copy stderr
	// through a 32 KiB buffer per run, and Wait would wait for children
	// that keep them open.
	outR, outW, err := os.Pipe()
	if err != nil {
		return failed("start " + string(job.Provider) + ": " + err.Error())
	}
	defer outR.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		outW.Close()
		return failed("start " + string(job.Provider) + ": " + err.Error())
	}
	defer errR.Close()
	cmd.Stdout, cmd.Stderr = outW, errW
	if r.stopReason() != stopNone {
		// Aborted (or the worker stopping) while the run was prepared:
		// its CLI is not started at all.
		outW.Close()
		errW.Close()
		return failed("The run was stopped before its CLI started.")
	}
	conv, _ := prov.(Conversational)
	if conv != nil && stdin != nil {
		in := newProviderInput()
		in.write(stdin) // first, before any interrupt
		r.mu.Lock()
		r.input, r.interrupt = in, conv.Interrupt()
		r.perms = newPermissions(r, conv, in, r.w.cfg.PermissionTimeout)
		r.mu.Unlock()
	} else {
		conv = nil
	}
	var stdinW io.WriteCloser
	if stdin != nil {
		if stdinW, err = cmd.StdinPipe(); err != nil {
			outW.Close()
			errW.Close()
			return failed("start " + string(job.Provider) + ": " + err.Error())
		}
	}
	if !r.tagged {
		r.tagUID, r.tagged = uidOf(cmd.SysProcAttr.Credential), true
		r.w.beginTag(runTag(job.SessionID, job.RunID), r.tagUID)
	}
	err = startCmd(cmd)
	outW.Close() // the child holds its own copies
	errW.Close()
	if err != nil {
		if isNotFound(err) {
			return app.Outcome{ExitCode: 127}, []app.Event{app.ErrorRow(prov.InstallHint())}
		}
		return failed("start " + string(job.Provider) + ": " + err.Error())
	}
	p := &process{newLeader(cmd)}
	r.mu.Lock()
	r.proc = p
	already := r.stopped != stopNone
	r.halting = already // a new process (a retry) is not halted yet
	r.mu.Unlock()
	if already {
		go r.halt(p)
	}
	switch {
	case conv != nil:
		r.input.start(stdinW)
	case stdinW != nil:
		go func() {
			_, _ = stdinW.Write(stdin)
			_ = stdinW.Close()
		}()
	}
	var errBuf tailBuffer
	errDone := make(chan struct{})
	go func() {
		defer close(errDone)
		// A plain loop: io.Copy would take *os.File's WriteTo path and its
		// own 32 KiB buffer, per run.
		buf := make([]byte, 1024)
		for {
			n, err := errR.Read(buf)
			_, _ = errBuf.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	pumped := make(chan struct{})
	watched := make(chan struct{})
	holders := openFiles(outR, errR)
	go func() {
		defer close(watched)
		// Children left behind in the group die with their run (wait kills
		// the group). The tree under the leader cannot be found any more
		// (its children now belong to init), and scanning /proc for every
		// ended run costs seconds of CPU when many end together, so only
		// the group is signalled.
		p.wait()
		// A child that left the group may still hold the pipes: give it a
		// moment to finish writing, then kill it and stop reading.
		// Output held back by a Redis outage is not an orphan's: the
		// grace starts again until the pump reads on.
		grace := time.NewTimer(orphanGrace)
		defer grace.Stop()
		killed := false
		for _, done := range []chan struct{}{pumped, errDone} {
			for waiting := true; waiting; {
				select {
				case <-done:
					waiting = false
				case <-grace.C:
					if r.storeWait.Load() {
						grace.Reset(orphanGrace)
						continue
					}
					if !killed {
						// What the orphans wrote is still read to the
						// end: with them gone the pipes end by
						// themselves, unless a holder survived.
						killHolders(holders, uidOf(cmd.SysProcAttr.Credential))
						killed = true
						grace.Reset(orphanGrace)
						continue
					}
					_ = outR.Close()
					_ = errR.Close()
					return
				}
			}
		}
	}()

	parser := prov.NewParser(job)
	r.pump(outR, parser)
	r.endedFirst = r.stopReason() == stopNone
	if testHookPumped != nil {
		testHookPumped()
	}
	close(pumped)
	<-p.exited
	if conv != nil {
		r.input.close()
		r.perms.close()
	}
	<-errDone
	<-watched // it may still be using the pipes
	code := exitCode(cmd.ProcessState)
	if r.lingered.Load() {
		// Stopped by this worker after its result: the result says how
		// the run went, not the signal.
		code = 0
	}
	final, code := parser.End(code)
	if again, ok := retryArgs(parser, errBuf.String()); ok && r.retry == nil && r.stopReason() == stopNone {
		r.retry = again
		return r.runProvider()
	}
	if code != 0 && len(final) == 0 && !r.sawErrorRow && errBuf.Len() > 0 {
		if text := stderrText(parser, strings.TrimSpace(errBuf.String())); text != "" {
			final = append(final, app.ErrorRow(text))
		}
	}
	return app.Outcome{ExitCode: code}, final
}

// testHookPumped, when set by a test, is called once a run's output was
// read to its end.
var testHookPumped func()

func failed(msg string) (app.Outcome, []app.Event) {
	return app.Outcome{ExitCode: 1}, []app.Event{app.ErrorRow(msg)}
}

// pump reads output lines and appends their events. Lines already waiting
// in the buffer are appended together, so a fast provider costs one round
// trip per batch while a slow one gets each line out at once.
func (r *run) pump(out io.Reader, parser Parser) {
	// Small: a longer line is copied out of it, and a worker holds one
	// per running run.
	rd := bufio.NewReaderSize(out, 4<<10)
	var batch []app.Event
	set := map[string]string{}
	for {
		line, err := readLine(rd)
		if errors.Is(err, errLineTooLong) {
			batch = append(batch, app.ErrorRow(fmt.Sprintf("An output line longer than %d MiB was dropped.", maxLineBytes>>20)))
		} else if len(line) > 0 {
			if !r.sawLine {
				r.sawLine = true
				if !r.accepted.IsZero() {
					firstLineSeconds.WithLabelValues(providerLabel(r.job.Provider)).Observe(time.Since(r.accepted).Seconds())
				}
			}
			o := parseLine(parser, line)
			if o.Finished && !r.lingering {
				r.lingering = true
				r.stopLingering()
			}
			batch = append(batch, o.Events...)
			for k, v := range o.Set {
				if k == providerSessionField && !r.newProviderID(v) {
					continue
				}
				set[k] = v
			}
			if o.Ask != nil || o.Withdrawn != "" || o.Reply != nil || o.EndInput {
				// What came before goes out first: the permission_request
				// follows its tool_use.
				if len(batch) > 0 || len(set) > 0 {
					r.flush(batch, set)
					batch = batch[:0]
					clear(set)
				}
				// Asking or withdrawing a permission may wait for Redis:
				// the CLI's output then waits too, and is not an
				// orphan's.
				r.storeWait.Store(true)
				r.control(o)
				r.storeWait.Store(false)
			}
		}
		done := err != nil && !errors.Is(err, errLineTooLong)
		if (len(batch) > 0 || len(set) > 0) && (done || len(batch) >= maxBatch || !lineBuffered(rd)) {
			r.flush(batch, set)
			batch = batch[:0]
			clear(set)
		}
		if done {
			return
		}
	}
}

// stopLingering stops the CLI if it is still running lingerGrace from now:
// it printed its result, and what it does after is nobody's.
func (r *run) stopLingering() {
	r.mu.Lock()
	p := r.proc
	r.mu.Unlock()
	if p == nil {
		return
	}
	time.AfterFunc(r.w.lingerGrace, func() {
		select {
		case <-p.exited:
		default:
			r.log.Warn("the CLI printed its result and did not exit; stopping it")
			r.lingered.Store(true)
			p.kill(killGrace)
		}
	})
}

// parseLine is parser.Line that turns a parser's panic on a line it did not
// expect into an error row: one odd line must not take down the worker and
// every run and terminal on it.
func parseLine(parser Parser, line []byte) (o Output) {
	defer func() {
		if v := recover(); v != nil {
			o = Output{Events: []app.Event{app.ErrorRow(fmt.Sprintf("An output line could not be read (%v).", v))}}
		}
	}()
	return parser.Line(line)
}

// control acts on what a line asked of the run's input. Providers that are
// not conversational have no input left to act on.
func (r *run) control(o Output) {
	if r.input == nil {
		return
	}
	if o.Reply != nil {
		r.input.write(o.Reply)
	}
	if o.Withdrawn != "" {
		r.perms.withdraw(o.Withdrawn)
	}
	if o.Ask != nil {
		r.perms.ask(*o.Ask)
	}
	if o.EndInput {
		r.input.close()
	}
}

// providerSessionField is the session hash field of the provider's own id.
const providerSessionField = "providerSessionId"

// maxProviderIDs bounds the provider session ids one run records: each is
// an entry of the provider's id index (ag:provider:…:sessions), which is
// never trimmed, and a CLI's output can print a new one on every line (a
// CLI prints one, or two when a resume forks the conversation).
const maxProviderIDs = 4

// newProviderID reports whether the CLI's session id id is to be recorded:
// not when it is the one recorded last, nor past maxProviderIDs.
func (r *run) newProviderID(id string) bool {
	switch {
	case id == r.providerID:
		return false
	case r.providerIDs == maxProviderIDs:
		r.log.Warn("the CLI printed more session ids than a run records; later ones are ignored", "max", maxProviderIDs)
		r.providerIDs++ // warned once
		return false
	case r.providerIDs > maxProviderIDs:
		return false
	}
	r.providerID = id
	r.providerIDs++
	return true
}

// flush appends a batch, at most maxBatch events per append: one line may
// hold any number of events (a message of many content blocks), and one
// script call holds up Redis for everyone while it runs.
func (r *run) flush(events []app.Event, set map[string]string) {
	for len(events) > maxBatch && r.stopReason() == stopNone {
		r.flushOne(events[:maxBatch], nil)
		events = events[maxBatch:]
	}
	r.flushOne(events, set)
}

// flushOne appends events and set; a stale run stops, and a store that
// stays unreachable stops the run too (its complete is retried).
func (r *run) flushOne(events []app.Event, set map[string]string) {
	if r.stopReason() != stopNone {
		return
	}
	for _, ev := range events {
		if ev.Kind == app.KindError {
			r.sawErrorRow = true
		}
	}
	// While Redis is down or loading, the batch waits (and the provider
	// with it, once its output pipe is full): the run goes on when Redis
	// is back, unless that takes longer than outageTolerance.
	giveUp := time.Now().Add(r.w.outageTolerance)
	r.batches++
	for attempt := 0; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
		// An append in flight may be one that go-redis keeps retrying
		// through an outage: the pipe is not read meanwhile, and the
		// process's output is not an orphan's.
		r.storeWait.Store(true)
		_, err := r.w.appends.append(ctx, store.AppendReq{Run: r.ref, Batch: r.batches, Events: events, Set: set})
		r.storeWait.Store(false)
		cancel()
		if err == nil {
			return
		}
		if errors.Is(err, app.ErrStaleRun) {
			r.stop(stopStale)
			return
		}
		if store.Retryable(err) && time.Now().Before(giveUp) {
			if attempt == 0 {
				r.log.Warn("append events: waiting for Redis", "err", err)
			}
			r.storeWait.Store(true)
			// Not past the run's stop (the worker shuts down): what it
			// would append is dropped then, and its end is recorded.
			wait, cancel := context.WithDeadline(r.stopCtx, giveUp)
			r.w.st.WaitRetry(wait, err)
			cancel()
			r.storeWait.Store(false)
			if r.stopReason() != stopNone {
				// Sent again at once until giveUp, the append of a
				// stopped run kept its end from being recorded (a drain
				// while Redis refused writes: the run was left to the
				// reaper, thousands of calls a second).
				return
			}
			continue
		}
		if store.Retryable(err) || attempt >= 3 {
			r.log.Error("append events; stopping the run", "err", err)
			r.stop(stopFailed)
			return
		}
		time.Sleep(time.Duration(100<<attempt) * time.Millisecond)
	}
}

// complete records the run's end, retrying while Redis is unreachable or
// refuses it. A stale answer means another door (abort, reaper) already
// completed it. The run keeps its place in the worker meanwhile: its job,
// reclaimed, is not started again, and the reaper leaves the runs of a
// live worker alone. Only a stopping worker gives up (Worker.giveUp),
// leaving the run to the reaper once its heartbeat is gone.
func (r *run) complete(o app.Outcome, final []app.Event) {
	deadline, warned := time.Now().Add(r.w.completeRetryFor), false
	giveUp := r.w.giveUp
	for backoff := 100 * time.Millisecond; ; backoff = min(backoff*2, 5*time.Second) {
		// A write cut short by giveUp may still be recorded: the
		// reaper's complete then finds the run ended.
		ctx, cancel := context.WithTimeout(giveUp, writeTimeout)
		_, err := r.w.st.Complete(ctx, r.ref, o, final...)
		cancel()
		if err == nil || errors.Is(err, app.ErrStaleRun) {
			return
		}
		if giveUp.Err() != nil {
			r.log.Error("complete run; the worker stops: leaving it to the reaper", "err", err)
			return
		}
		if store.Retryable(err) {
			// A run's end is recorded whenever Redis can take it.
			r.w.st.WaitRetry(giveUp, err)
			continue
		}
		if !warned && time.Now().After(deadline) {
			r.log.Error("complete run; still refused, trying every 5s", "err", err)
			warned = true
		}
		select {
		case <-time.After(backoff):
		case <-giveUp.Done():
		}
	}
}

var errLineTooLong = errors.New("line too long")

// readLine returns the next line without its newline. A line over
// maxLineBytes is consumed and reported as errLineTooLong. A line that fits
// rd's buffer is returned in it, valid until the next call (parsers copy
// what they keep), so most lines cost no allocation; a longer one is
// copied into a slice of its own, which no run keeps between lines.
func readLine(rd *bufio.Reader) ([]byte, error) {
	chunk, err := rd.ReadSlice('\n')
	if !errors.Is(err, bufio.ErrBufferFull) {
		return bytes.TrimRight(chunk, "\r\n"), err
	}
	line := append([]byte(nil), chunk...)
	for errors.Is(err, bufio.ErrBufferFull) {
		chunk, err = rd.ReadSlice('\n')
		if len(line)+len(chunk) > maxLineBytes {
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = rd.ReadSlice('\n')
			}
			if err != nil {
				return nil, err
			}
			return nil, errLineTooLong
		}
		line = append(line, chunk...)
	}
	return bytes.TrimRight(line, "\r\n"), err
}

// lineBuffered reports whether a whole line is already waiting in rd.
func lineBuffered(rd *bufio.Reader) bool {
	n := rd.Buffered()
	if n == 0 {
		return false
	}
	buf, _ := rd.Peek(n)
	return bytes.IndexByte(buf, '\n') >= 0
}

// tailBuffer keeps the last stderrTail bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - stderrTail; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.buf)
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
