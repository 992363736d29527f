package workers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/internal/workspacefs"
	"github.com/agentgate/agentgate/store"
)

// DefaultShellDetachTimeout is how long a terminal lives with no socket
// watching it (the reference's PTY_SESSION_TIMEOUT).
const DefaultShellDetachTimeout = 30 * time.Minute

const (
	// shellChunkMax bounds one stored output chunk (a stream entry).
	shellChunkMax = 32 << 10
	// shellCoalesceFrom is the size of output that counts as a flood:
	// after an append this large, the next one waits shellCoalesce for
	// more output to join it when it has at least this much already.
	shellCoalesceFrom = 2 << 10
	shellCoalesce     = 2 * time.Millisecond
	// shellCoalesceStep is how often a waiting append looks for more.
	shellCoalesceStep = 200 * time.Microsecond
	// shellBatchMax bounds the output one script call appends.
	shellBatchMax = 8 * shellChunkMax
	// shellPendingMax bounds the output read from the PTY and not yet in
	// Redis; past it the reader stops reading, so a flood blocks in the
	// kernel instead of growing the worker's memory.
	shellPendingMax = 1 << 20
	// shellInputMax bounds keystrokes queued for a PTY that does not read
	// its input; past it input is dropped (a terminal would block too). It
	// holds a few pastes of the gateways' default frame limit (1 MiB),
	// which reach the worker in pieces faster than a program reads them.
	shellInputMax = 4 << 20
	// shellKillGrace is how long a terminal's jobs get between SIGHUP and
	// SIGKILL.
	shellKillGrace = 500 * time.Millisecond
	// shellDrainWait is how long output left in the PTY is read after its
	// process exited.
	shellDrainWait = 300 * time.Millisecond
)

// shellSet holds the terminals of a worker. Its zero value is ready.
type shellSet struct {
	mu      sync.Mutex
	m       map[string]*shell      // by shell key
	wg      sync.WaitGroup         // one per terminal
	closing bool                   // the worker is shutting down: no new terminal
	quit    chan struct{}          // closed when closing is set
	early   map[string]*earlyInput // input ahead of its open (shellearly.go)
	// exits are the ends of terminals that Redis did not take within
	// outageTolerance, retried by retryExits (one goroutine while there
	// are any: retrying). The worker no longer holds those terminals, and
	// the reaper leaves a live worker's terminals alone: without them,
	// the terminals would stay running in Redis for the worker's life.
	exits    []shellExit
	retrying bool
}

// shellExit is the end of a terminal generation, to be recorded.
type shellExit struct {
	key  string
	gen  int64
	code int
	sig  string
}

const (
	// shellExitsMax bounds the exits a worker keeps for Redis; past it
	// the oldest is dropped (its terminal then stays running in Redis
	// until the worker is gone and the reaper ends it).
	shellExitsMax = 4096
	// shellExitRetry is how often kept exits are tried again.
	shellExitRetry = 2 * time.Second
)

// shell is one terminal generation running on this worker: a PTY whose
// output goes to Redis and whose input comes from the worker's link or its
// inbox. The PTY is read, the output flushed, and the input written by
// three goroutines, so keystrokes (Ctrl-C) never wait behind output.
type shell struct {
	w    *Worker
	key  string
	gen  int64
	spec app.ShellSpec
	log  *slog.Logger
	p    *ptyProc

	outMu    sync.Mutex
	outCond  *sync.Cond
	pending  []byte
	spare    []byte
	readDone bool // the reader stopped; guarded by outMu
	// signals holds, for each typed signal key written since flushLoop
	// last announced them, whether it threw the queued output away;
	// guarded by outMu. lastSeq is the last seq appended (flushLoop's).
	signals []bool
	lastSeq int64
	// coalesce is how long a flood's append waits for more output
	// (shellCoalesce; a test lengthens it), and stallLimit how long
	// failing appends hold output before it is dropped (outageTolerance;
	// a test shortens it); guarded by outMu.
	coalesce   time.Duration
	stallLimit time.Duration
	// drainWait is how long output left in the PTY is waited for after
	// its program exited (shellDrainWait; a test shortens it); guarded
	// by outMu.
	drainWait time.Duration

	inMu    sync.Mutex
	inQ     []shellOp
	inBytes int
	inWake  chan struct{}

	// size is the last size applied to the PTY and not yet recorded in
	// Redis (sizeApplied), sizeDirty whether it is so, sizeWriting whether
	// a writer runs, all guarded by sizeMu; storeSize records one
	// (ShellSet; a test holds it).
	sizeMu      sync.Mutex
	size        store.ShellSize
	sizeDirty   bool
	sizeWriting bool
	storeSize   func(ctx context.Context, size store.ShellSize) error

	killOnce sync.Once
	stopped  chan struct{} // closed when the terminal ends

	flow *shellFlow
	// batches numbers the output appends (flushLoop), so that one that
	// go-redis resends after a lost reply is not stored twice.
	batches int64
	// stallSince is when appends began to fail (zero while they
	// succeed), and dropping whether their output is being dropped: the
	// failures outlasted stallLimit, or could not be retried. Each
	// is logged when it begins and ends, not at every try. flushLoop's.
	stallSince time.Time
	dropping   bool
	// staleSeen is set once an append found the generation ended or
	// replaced, which is logged once (flushLoop's).
	staleSeen bool

	urls urlDetector

	// troubleAt is when shellLoop last could not read the terminal's
	// watch time, or read it slowly: it is not taken for detached until a
	// detach timeout after that. shellLoop's alone.
	troubleAt time.Time
}

// shellOp is one input or resize, kept in arrival order.
type shellOp struct {
	data       []byte
	cols, rows int
}

// shellControl handles a terminal control from the inbox or a link. It reports
// whether c was one. It never blocks on a terminal.
func (w *Worker) shellControl(c store.Control) bool {
	switch c.Type {
	case store.ControlShellOpen:
		w.openShell(c)
	case store.ControlShellInput:
		var data string
		if err := json.Unmarshal(c.Data, &data); err != nil {
			w.log.Warn("drop undecodable shell input", "shell", c.Shell, "err", err)
			return true
		}
		w.toShell(c.Shell, c.Gen, shellOp{data: []byte(data)})
	case store.ControlShellResize:
		var size store.ShellSize
		if err := json.Unmarshal(c.Data, &size); err != nil || size.Cols < 1 || size.Rows < 1 {
			w.log.Warn("drop undecodable shell resize", "shell", c.Shell, "err", err)
			return true
		}
		w.toShell(c.Shell, c.Gen, shellOp{cols: size.Cols, rows: size.Rows})
	case store.ControlShellKill:
		if sh := w.shellOf(c.Shell, c.Gen); sh != nil {
			sh.kill()
		}
	case store.ControlShellAcks:
		var acks []store.ShellAck
		if err := json.Unmarshal(c.Data, &acks); err != nil {
			w.log.Warn("drop undecodable shell acks", "err", err)
			return true
		}
		for _, a := range acks {
			if sh := w.shellOf(a.Shell, a.Gen); sh != nil {
				sh.flow.ack(a.Seq)
			}
		}
	case store.ControlShellAck: // from a gateway of the version before
		var seq int64
		if err := json.Unmarshal(c.Data, &seq); err != nil {
			return true
		}
		if sh := w.shellOf(c.Shell, c.Gen); sh != nil {
			sh.flow.ack(seq)
		}
	default:
		return false
	}
	return true
}

// toShell queues op for the terminal of key at gen, or keeps it for that
// generation until its open arrives. One lock covers both, so an op that
// races the open (links and the inbox are read by goroutines of their own)
// is neither lost nor played out of order.
func (w *Worker) toShell(key string, gen int64, op shellOp) {
	w.shells.mu.Lock()
	defer w.shells.mu.Unlock()
	if sh := w.shells.m[key]; sh != nil && sh.gen == gen {
		sh.enqueue(op)
		return
	}
	w.keepEarlyLocked(key, gen, op)
}

// shellCount is the number of terminals running on this worker.
func (w *Worker) shellCount() int {
	w.shells.mu.Lock()
	defer w.shells.mu.Unlock()
	return len(w.shells.m)
}

// shellOf returns the running terminal of key at generation gen (any
// generation when gen is 0).
func (w *Worker) shellOf(key string, gen int64) *shell {
	w.shells.mu.Lock()
	defer w.shells.mu.Unlock()
	sh := w.shells.m[key]
	if sh == nil || (gen != 0 && sh.gen != gen) {
		return nil
	}
	return sh
}

// refuseShell ends a terminal that did not start, telling its sockets why.
func (w *Worker) refuseShell(c store.Control, log *slog.Logger, text string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	log.Warn("terminal did not start", "err", text)
	if _, err := w.st.ShellAppend(ctx, c.Shell, c.Gen, []string{app.ShellNotice("error", "Error: "+text)}); err != nil {
		log.Warn("report terminal start failure", "err", err)
	}
	if _, err := w.st.ShellExit(ctx, c.Shell, c.Gen, 1, "", store.ShellExitNormal); err != nil {
		log.Warn("end terminal", "err", err)
	}
}

// openShell starts the terminal of an open control. An older generation
// of the same key still running here is killed: its key was reopened.
func (w *Worker) openShell(c store.Control) {
	var spec app.ShellSpec
	if err := json.Unmarshal(c.Data, &spec); err != nil {
		w.log.Warn("drop undecodable shell open", "shell", c.Shell, "err", err)
		return
	}
	log := w.log.With("shell", c.Shell, "gen", c.Gen)
	w.shells.mu.Lock()
	if w.shells.closing || w.draining.Load() {
		w.shells.mu.Unlock()
		// Sent before the gateway read that this worker drains: ended at
		// once, so that the user opens it again on another worker rather
		// than watch a blank screen until this one is gone.
		w.refuseShell(c, log, "this worker is shutting down; open the terminal again")
		return
	}
	if old := w.shells.m[c.Shell]; old != nil {
		if old.gen >= c.Gen {
			w.shells.mu.Unlock()
			return
		}
		old.kill()
	}
	w.shells.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	fail := func(text string) { w.refuseShell(c, log, text) }
	if n := w.shellCount(); n >= w.cfg.MaxTerminals {
		fail(fmt.Sprintf("this worker already runs its maximum of %d terminals; try again later", w.cfg.MaxTerminals))
		return
	}
	acct, err := w.accounts.lookup(ctx, spec.Owner)
	if err != nil {
		log.Error("no account for the terminal", "err", err)
		fail("the worker could not prepare this user's account")
		return
	}
	dir, err := workspacefs.Dir(w.cfg.Workspaces.For(spec.Owner), spec.ProjectPath)
	if err != nil {
		fail(app.ShellErrInvalidPath)
		return
	}
	args := []string{"bash"}
	if cmd := spec.Command(w.cfg.Bins); cmd != "" {
		args = []string{"bash", "-c", cmd}
	}
	// The tag finds what the terminal's jobs leave behind when it ends
	// (tags.go).
	tag, uid := shellTag(c.Shell, c.Gen), uidOf(acct.credential())
	env := withVars(acct.env(w.env), "TERM=xterm-256color", "COLORTERM=truecolor", "FORCE_COLOR=3", w.ownerVar(shellOwnerEnv), tag)
	w.beginTag(tag, uid)
	p, err := startPTY(ptyConfig{Args: args, Dir: dir, Env: env, Cols: spec.Cols, Rows: spec.Rows, Credential: acct.credential()})
	if err != nil {
		w.tags.end(tag, uid) // nothing started: nothing to sweep
		fail(err.Error())
		return
	}
	sh := &shell{
		w: w, key: c.Shell, gen: c.Gen, spec: spec, log: log, p: p,
		inWake: make(chan struct{}, 1), stopped: make(chan struct{}), flow: newShellFlow(w.cfg.ShellWindow),
		coalesce: shellCoalesce, stallLimit: w.outageTolerance, drainWait: shellDrainWait,
	}
	sh.storeSize = func(ctx context.Context, size store.ShellSize) error {
		return w.st.ShellSet(ctx, sh.key, sh.gen, "cols", strconv.Itoa(size.Cols), "rows", strconv.Itoa(size.Rows))
	}
	sh.outCond = sync.NewCond(&sh.outMu)
	cols, _ := termSize(spec.Cols, spec.Rows)
	sh.urls.setCols(int(cols))
	w.shells.mu.Lock()
	if w.shells.closing {
		w.shells.mu.Unlock()
		p.kill(shellKillGrace)
		p.close()
		w.endTag(tag, uid) // the worker stops: the inbox may wait
		fail("the worker is shutting down")
		return
	}
	if w.shells.m == nil {
		w.shells.m = map[string]*shell{}
	}
	// Another open of this terminal (from the inbox and a link, or two
	// gateways) may have started one while this started: the newer
	// generation stays. One left out of the map could be neither killed
	// nor waited for, and a shutdown would wait on it for good.
	if old := w.shells.m[c.Shell]; old != nil {
		if old.gen >= c.Gen {
			w.shells.mu.Unlock()
			p.kill(shellKillGrace)
			p.close()
			// Not endTag: its sweep would kill the terminal that stays,
			// which carries the same tag.
			w.tags.end(tag, uid)
			return
		}
		old.kill()
	}
	w.shells.m[c.Shell] = sh
	w.shells.wg.Add(1)
	// What came before the open goes first, before any op a link's
	// goroutine queues once the lock is released.
	for _, op := range w.takeEarly(c.Shell, c.Gen) {
		sh.enqueue(op)
	}
	w.shells.mu.Unlock()
	terminalsOpen.Inc()
	log.Info("terminal started", "pid", p.cmd.Process.Pid, "owner", spec.Owner, "dir", dir)
	go func() {
		defer w.shells.wg.Done()
		defer terminalsOpen.Dec()
		sh.run()
		w.shells.mu.Lock()
		if w.shells.m[sh.key] == sh {
			delete(w.shells.m, sh.key)
		}
		w.shells.mu.Unlock()
		// What its jobs left running (daemons) ends with the terminal;
		// a shutdown waits for it.
		w.endTag(tag, uid)
	}()
}

// run serves the terminal until its process ends, then makes sure nothing
// of its session survives, flushes the last output and records the exit.
// Runs in its own goroutine.
func (sh *shell) run() {
	ctx := context.Background()
	if err := sh.w.st.ShellSet(ctx, sh.key, sh.gen, "state", store.ShellRunning); errors.Is(err, store.ErrStaleShell) {
		sh.kill()
	} else if err != nil {
		sh.log.Warn("mark terminal running", "err", err)
	}
	readDone, flushDone, inputDone := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() { defer close(readDone); sh.readLoop() }()
	go func() { defer close(flushDone); sh.flushLoop() }()
	go func() { defer close(inputDone); sh.inputLoop() }()

	<-sh.p.exited
	// Input nobody will read is dropped: a write blocked on a program that
	// did not read (a paste into sleep) would otherwise wait forever, the
	// poller spinning on the PTY's hang-up, and the exit never be recorded.
	_ = sh.p.f.SetWriteDeadline(time.Now())
	// No process outlives its terminal: the session's members were killed
	// as its leader exited (ptyProc.wait); a job that left the session
	// and still holds the terminal is found by its open files.
	sh.p.killSession(nil)
	// Output still in the PTY is read until EIO (every holder gone) or a
	// short deadline.
	sh.outMu.Lock()
	drain := sh.drainWait
	sh.outMu.Unlock()
	_ = sh.p.f.SetReadDeadline(time.Now().Add(drain))
	<-readDone
	<-flushDone
	sh.killOnce.Do(func() {})
	close(sh.stopped)
	<-inputDone
	sh.p.close()

	code, sig := sh.p.exitStatus()
	sh.log.Info("terminal ended", "exitCode", code, "signal", sig)
	sh.recordExit(code, sig)
}

// recordExit records the terminal's exit. Its sockets wait for it (no other
// process knows the terminal ended), so it is tried again while Redis is
// away, for as long as a run waits for Redis (outageTolerance), and then
// kept for later (keepExit); not while the worker shuts down, which waits
// for its terminals' exits (the reaper ends them once it is gone).
func (sh *shell) recordExit(code int, sig string) {
	sh.w.shells.mu.Lock()
	closing := sh.w.shells.closing
	sh.w.shells.mu.Unlock()
	giveUp := time.Now()
	if !closing {
		giveUp = giveUp.Add(sh.w.outageTolerance)
	}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := sh.w.st.ShellExit(ctx, sh.key, sh.gen, code, sig, store.ShellExitNormal)
		cancel()
		if err == nil {
			return
		}
		if !store.Retryable(err) || !time.Now().Before(giveUp) {
			if closing {
				sh.log.Warn("record terminal exit", "err", err)
				return
			}
			sh.log.Warn("record terminal exit; trying again later", "err", err)
			sh.w.keepExit(shellExit{key: sh.key, gen: sh.gen, code: code, sig: sig})
			return
		}
		wait, cancel := context.WithDeadline(context.Background(), giveUp)
		sh.w.st.WaitRetry(wait, err)
		cancel()
	}
}

// keepExit keeps e to be recorded once Redis takes it (retryExits).
func (w *Worker) keepExit(e shellExit) {
	s := &w.shells
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return // the reaper ends it once the worker is gone
	}
	if len(s.exits) >= shellExitsMax {
		old := s.exits[0]
		w.log.Error("too many terminal exits wait for Redis: dropping the oldest", "shell", old.key, "max", shellExitsMax)
		s.exits = slices.Delete(s.exits, 0, 1)
	}
	s.exits = append(s.exits, e)
	if !s.retrying {
		s.retrying = true
		// Counted with the terminals: killShells waits for it. The
		// terminal calling keepExit is counted still, so the count is
		// not zero here.
		s.wg.Add(1)
		go w.retryExits()
	}
}

// retryExits tries the kept exits again every shellExitRetry until none is
// left, or the worker shuts its terminals down. Runs in its own goroutine.
func (w *Worker) retryExits() {
	s := &w.shells
	defer s.wg.Done()
	quit, _ := s.quitting()
	t := time.NewTicker(shellExitRetry)
	defer t.Stop()
	for {
		select {
		case <-quit:
			s.mu.Lock()
			s.retrying = false
			s.mu.Unlock()
			return
		case <-t.C:
		}
		s.mu.Lock()
		list := slices.Clone(s.exits)
		s.mu.Unlock()
		done := map[shellExit]bool{}
		for _, e := range list {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := w.st.ShellExit(ctx, e.key, e.gen, e.code, e.sig, store.ShellExitNormal)
			cancel()
			if store.Retryable(err) {
				break // Redis does not take it yet: the others wait too
			}
			if err != nil {
				w.log.Warn("record terminal exit", "shell", e.key, "err", err)
				continue
			}
			done[e] = true
			w.log.Info("terminal exit recorded after Redis came back", "shell", e.key, "gen", e.gen)
		}
		s.mu.Lock()
		s.exits = slices.DeleteFunc(s.exits, func(e shellExit) bool { return done[e] })
		if len(s.exits) == 0 {
			s.retrying = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
}

// quitting returns a channel closed once the worker shuts its terminals
// down, and whether that began already.
func (s *shellSet) quitting() (<-chan struct{}, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.quit == nil {
		s.quit = make(chan struct{})
	}
	return s.quit, s.closing
}

// kill ends the terminal's whole session (once); run then records the exit.
func (sh *shell) kill() {
	sh.killOnce.Do(func() { go sh.p.kill(shellKillGrace) })
}

// shellLoop kills terminals that no socket has watched for the detach
// timeout, and terminals whose key was reopened elsewhere. It reads the
// watch times from Redis, so it works whichever gateway held the sockets,
// even one that died. Runs in its own goroutine.
func (w *Worker) shellLoop(ctx context.Context) {
	timeout := w.cfg.ShellDetachTimeout
	if timeout <= 0 {
		timeout = DefaultShellDetachTimeout
	}
	every := min(max(timeout/4, 100*time.Millisecond), 30*time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	sweep := time.NewTicker(orphanSweepEvery)
	defer sweep.Stop()
	w.sweepOrphans(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-sweep.C:
			w.sweepOrphans(ctx)
			continue
		case <-t.C:
		}
		w.shells.mu.Lock()
		list := make([]*shell, 0, len(w.shells.m))
		for _, sh := range w.shells.m {
			list = append(list, sh)
		}
		w.shells.mu.Unlock()
		for _, sh := range list {
			select {
			case <-sh.stopped:
				// Ended here: its exit is being recorded, after which the
				// check would take it for ended elsewhere.
				continue
			default:
			}
			began := time.Now()
			idle, err := w.st.ShellIdle(ctx, sh.key, sh.gen)
			if err != nil && !errors.Is(err, store.ErrStaleShell) || time.Since(began) > store.SlowCall {
				// Its gateways could not refresh it either; a failover's
				// replica holds a watch time older than the last one.
				sh.troubleAt = time.Now()
				w.troubleAt.Store(sh.troubleAt.UnixNano())
			}
			switch {
			case errors.Is(err, store.ErrStaleShell):
				sh.log.Info("terminal replaced or ended elsewhere: killing it")
				sh.kill()
			case err != nil:
				if ctx.Err() == nil {
					sh.log.Warn("check terminal", "err", err)
				}
			case time.Duration(idle)*time.Millisecond >= timeout && time.Since(sh.troubleAt) >= timeout &&
				time.Since(time.Unix(0, w.troubleAt.Load())) >= timeout:
				// Nor while this worker's own writes fail (its heartbeat):
				// a Redis that refuses writes took no gateway's refresh.
				sh.log.Info("terminal detached too long: killing it", "idle", time.Duration(idle)*time.Millisecond)
				sh.kill()
			}
		}
	}
}

// killShells kills every terminal and waits until each recorded its exit.
func (w *Worker) killShells() {
	w.shells.mu.Lock()
	if w.shells.quit == nil {
		w.shells.quit = make(chan struct{})
	}
	if !w.shells.closing {
		close(w.shells.quit)
	}
	w.shells.closing = true
	for _, sh := range w.shells.m {
		sh.kill()
	}
	w.shells.mu.Unlock()
	w.shells.wg.Wait()
}
