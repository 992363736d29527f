package workers

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// scriptProvider runs `sh -c <command>`: the job's command is a shell
// script whose stdout lines become text events. It exercises the run
// pipeline (process group, exit codes, kills) without a provider CLI.
type scriptProvider struct{}

func (scriptProvider) Name() app.Provider       { return app.Claude }
func (scriptProvider) InstallHint() string      { return "install sh" }
func (scriptProvider) NewParser(app.Job) Parser { return &lineParser{} }
func (scriptProvider) Command(job app.Job, _ []string) ([]string, []byte) {
	return []string{"-c", job.Command}, nil
}

type lineParser struct{}

func (*lineParser) Line(line []byte) Output {
	if string(line) == "panic" {
		panic("a parser bug")
	}
	if n, ok := strings.CutPrefix(string(line), "many="); ok {
		count, _ := strconv.Atoi(n)
		evs := make([]app.Event, count)
		for i := range evs {
			evs[i] = app.Text("assistant", "m"+strconv.Itoa(i))
		}
		return Output{Events: evs}
	}
	if string(line) == "finished" {
		return Output{Events: []app.Event{app.Text("assistant", "finished")}, Finished: true}
	}
	if strings.HasPrefix(string(line), "psid=") {
		return Output{Set: map[string]string{"providerSessionId": strings.TrimPrefix(string(line), "psid=")}}
	}
	return Output{Events: []app.Event{app.Text("assistant", string(line))}}
}
func (*lineParser) End(code int) ([]app.Event, int) { return nil, code }

type harness struct {
	t      *testing.T
	st     *store.Store
	w      *Worker
	dir    string
	cancel context.CancelFunc
	done   chan struct{}
}

func startWorker(t *testing.T, st *store.Store, bin string) *harness {
	t.Helper()
	return runWorker(t, st, Config{
		Providers: map[app.Provider]Provider{app.Claude: scriptProvider{}},
		Bins:      map[app.Provider]string{app.Claude: bin},
	})
}

// runWorker starts a worker with cfg, a store, a workspace of its own and
// short timings, and stops it when the test ends.
func runWorker(t *testing.T, st *store.Store, cfg Config) *harness {
	t.Helper()
	return runWorkerTuned(t, st, cfg, nil)
}

// scriptWorker is startWorker with `sh` and tune applied to the worker
// before it runs.
func scriptWorker(t *testing.T, st *store.Store, tune func(*Worker)) *harness {
	t.Helper()
	return runWorkerTuned(t, st, Config{
		Providers: map[app.Provider]Provider{app.Claude: scriptProvider{}},
		Bins:      map[app.Provider]string{app.Claude: "sh"},
	}, tune)
}

// runWorkerTuned is runWorker with tune applied to the worker before it
// runs (nil for none).
func runWorkerTuned(t *testing.T, st *store.Store, cfg Config, tune func(*Worker)) *harness {
	t.Helper()
	dir := t.TempDir()
	cfg.Store = st
	if len(cfg.Workspaces.Roots) == 0 {
		cfg.Workspaces = app.Workspaces{Roots: []string{dir}}
	}
	cfg.HeartbeatInterval, cfg.HeartbeatTTL, cfg.DrainTimeout = 100*time.Millisecond, time.Second, 200*time.Millisecond
	w, err := New(cfg)
	require.NoError(t, err)
	w.pollBlock = 50 * time.Millisecond
	if tune != nil {
		tune(w)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, st: st, w: w, dir: dir, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(h.done); _ = w.Run(ctx) }()
	t.Cleanup(h.stop)
	return h
}

func (h *harness) stop() {
	h.cancel()
	<-h.done
}

func (h *harness) submit(script string) (app.Session, store.AcceptResult) {
	h.t.Helper()
	sess := app.Session{ID: app.NewID(), Owner: "alice", Provider: app.Claude, ProjectPath: h.dir}
	res, err := h.st.Accept(context.Background(), &store.AcceptRequest{
		Session: sess, New: true,
		Job: app.Job{SessionID: sess.ID, Owner: "alice", Provider: app.Claude, Command: script, ProjectPath: h.dir, NewSession: true},
	})
	require.NoError(h.t, err)
	return sess, res
}

// waitDone waits for the session to leave running and returns its events.
// The wait is long: a real CLI (Node) under a loaded CI machine once took
// more than 15 s for a resumed run; what the run printed so far is logged
// if it never ends.
func (h *harness) waitDone(id string) []map[string]any {
	h.t.Helper()
	ok := assert.Eventually(h.t, func() bool {
		s, err := h.st.Session(context.Background(), id)
		return err == nil && !s.Running()
	}, 2*time.Minute, 10*time.Millisecond) // a real CLI's run of two turns took 52 s under load
	if !ok {
		h.t.Fatalf("session %s still running after two minutes; its events: %v", id, h.events(id))
	}
	return h.events(id)
}

func (h *harness) events(id string) []map[string]any {
	h.t.Helper()
	evs, err := h.st.Events(context.Background(), id, 0, 10000)
	require.NoError(h.t, err)
	out := make([]map[string]any, len(evs))
	for i, e := range evs {
		require.NoError(h.t, json.Unmarshal(e.Data, &out[i]))
		require.EqualValues(h.t, i+1, out[i]["seq"])
	}
	return out
}

func completes(evs []map[string]any) []map[string]any {
	var out []map[string]any
	for _, e := range evs {
		if e["kind"] == "complete" {
			out = append(out, e)
		}
	}
	return out
}

func texts(evs []map[string]any) []string {
	var out []string
	for _, e := range evs {
		if e["kind"] == "text" {
			out = append(out, e["content"].(string))
		}
	}
	return out
}

func errorRows(evs []map[string]any) []string {
	var out []string
	for _, e := range evs {
		if e["kind"] == "error" {
			out = append(out, e["content"].(string))
		}
	}
	return out
}

func TestRunOutcomes(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	h := startWorker(t, st, "/bin/sh")
	cases := []struct {
		name     string
		script   string
		exit     float64
		texts    []string
		errorHas string
	}{
		{name: "success", script: "echo one; echo two", exit: 0, texts: []string{"one", "two"}},
		{name: "failure", script: "echo partial; echo boom >&2; exit 3", exit: 3, texts: []string{"partial"}, errorHas: "boom"},
		{name: "killed by a signal counts as 1", script: "kill -9 $$", exit: 1},
		{name: "no trailing newline", script: "printf 'last'", exit: 0, texts: []string{"last"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sess, _ := h.submit(tc.script)
			evs := h.waitDone(sess.ID)
			c := completes(evs)
			require.Len(t, c, 1)
			require.Equal(t, tc.exit, c[0]["exitCode"])
			require.Equal(t, tc.exit == 0, c[0]["success"])
			require.Equal(t, false, c[0]["aborted"])
			require.Equal(t, tc.texts, texts(evs))
			if tc.errorHas != "" {
				require.Contains(t, strings.Join(errorRows(evs), "\n"), tc.errorHas)
			}
			require.Equal(t, "complete", evs[len(evs)-1]["kind"], "complete is the run's last event")
			last := evs[len(evs)-2]
			require.Equal(t, "session-state-changed", last["kind"])
			want := "completed"
			if tc.exit != 0 {
				want = "failed"
			}
			require.Equal(t, want, last["state"])
		})
	}
}

func TestRunRecordsProviderSessionID(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	h := startWorker(t, st, "/bin/sh")
	sess, _ := h.submit("echo psid=abc-123; echo hi")
	h.waitDone(sess.ID)
	got, err := st.Session(context.Background(), sess.ID)
	require.NoError(t, err)
	require.Equal(t, "abc-123", got.ProviderSessionID)
	require.Equal(t, h.w.ID(), got.Worker)
}

func TestMissingBinary(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	h := startWorker(t, st, filepath.Join(t.TempDir(), "no-such-cli"))
	sess, _ := h.submit("echo hi")
	evs := h.waitDone(sess.ID)
	c := completes(evs)
	require.Len(t, c, 1)
	require.EqualValues(t, 127, c[0]["exitCode"])
	require.Equal(t, false, c[0]["success"])
	require.Equal(t, []string{"install sh"}, errorRows(evs))
}

func TestInvalidProjectPath(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	h := startWorker(t, st, "/bin/sh")
	for _, p := range []string{"/etc", filepath.Join(h.dir, "missing"), "relative"} {
		sess := app.Session{ID: app.NewID(), Owner: "alice", Provider: app.Claude, ProjectPath: p}
		_, err := st.Accept(context.Background(), &store.AcceptRequest{Session: sess, New: true,
			Job: app.Job{SessionID: sess.ID, Provider: app.Claude, Command: "touch should-not-run", ProjectPath: p}})
		require.NoError(t, err)
		evs := h.waitDone(sess.ID)
		require.Len(t, completes(evs), 1)
		require.Contains(t, strings.Join(errorRows(evs), ""), "invalid project path")
	}
}

func TestResumeDenied(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	h := startWorker(t, st, "/bin/sh")
	sess := app.Session{ID: app.NewID(), Owner: "mallory", Provider: app.Claude, ProjectPath: h.dir}
	_, err := st.Accept(context.Background(), &store.AcceptRequest{Session: sess, New: true,
		Job: app.Job{SessionID: sess.ID, Provider: app.Claude, Command: "echo leaked", ProjectPath: h.dir,
			ProviderSessionID: "alices-conversation", ResumeDenied: true}})
	require.NoError(t, err)
	evs := h.waitDone(sess.ID)
	require.Empty(t, texts(evs))
	require.Equal(t, []string{"No conversation found with session ID: alices-conversation"}, errorRows(evs))
}

// TestAbortKillsProcessGroup aborts a run whose script left a child behind:
// the gateway's complete is the only one, and no process of the run survives.
func TestAbortKillsProcessGroup(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	h := startWorker(t, st, "/bin/sh")
	pidFile := filepath.Join(h.dir, "child.pid")
	sess, _ := h.submit("trap '' TERM; sleep 60 & echo $! > " + pidFile + "; echo started; wait")
	require.Eventually(t, func() bool { return len(texts(h.events(sess.ID))) == 1 }, 10*time.Second, 10*time.Millisecond)

	done, err := st.Abort(context.Background(), sess.ID, app.Claude)
	require.NoError(t, err)
	require.Equal(t, h.w.ID(), done.Worker)
	require.NoError(t, st.SendControl(context.Background(), done.Worker, store.Control{Type: store.ControlAbort, SessionID: sess.ID, RunID: done.RunID}))

	childPID := readPID(t, pidFile)
	require.Eventually(t, func() bool { return !processAlive(childPID) }, 10*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool {
		h.w.mu.Lock()
		defer h.w.mu.Unlock()
		return len(h.w.runs) == 0
	}, 10*time.Second, 10*time.Millisecond)
	c := completes(h.events(sess.ID))
	require.Len(t, c, 1)
	require.Equal(t, true, c[0]["aborted"])
}

// TestAbortKillsChildrenInOtherSessions is the Claude CLI's case: it runs
// each tool in a session of its own, out of reach of a group signal.
func TestAbortKillsChildrenInOtherSessions(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	h := startWorker(t, st, "/bin/sh")
	pidFile := filepath.Join(h.dir, "tool.pid")
	sess, _ := h.submit("setsid sh -c 'trap \"\" INT TERM HUP; echo $$ > " + pidFile + "; while true; do sleep 1; done' & echo started; wait")
	require.Eventually(t, func() bool { return len(texts(h.events(sess.ID))) == 1 }, 10*time.Second, 10*time.Millisecond)
	toolPID := readPID(t, pidFile)
	require.True(t, processAlive(toolPID))

	done, err := st.Abort(context.Background(), sess.ID, app.Claude)
	require.NoError(t, err)
	require.NoError(t, st.SendControl(context.Background(), done.Worker, store.Control{Type: store.ControlAbort, SessionID: sess.ID, RunID: done.RunID}))
	require.Eventually(t, func() bool { return !processAlive(toolPID) }, 10*time.Second, 20*time.Millisecond,
		"a child in another session survived the abort")
}

// TestStaleRunStops shows the self-healing path: when the abort message is
// lost, the worker's next write finds the run stale and kills it anyway.
func TestStaleRunStops(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	h := startWorker(t, st, "/bin/sh")
	pidFile := filepath.Join(h.dir, "sh.pid")
	sess, _ := h.submit("echo $$ > " + pidFile + "; while true; do echo tick; sleep 0.05; done")
	require.Eventually(t, func() bool { return len(texts(h.events(sess.ID))) > 0 }, 10*time.Second, 10*time.Millisecond)
	_, err := st.Abort(context.Background(), sess.ID, app.Claude)
	require.NoError(t, err)
	pid := readPID(t, pidFile)
	require.Eventually(t, func() bool { return !processAlive(pid) }, 10*time.Second, 20*time.Millisecond)
	require.Len(t, completes(h.events(sess.ID)), 1)
}

func TestShutdownCompletesRunsAsFailed(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	h := startWorker(t, st, "/bin/sh")
	sess, _ := h.submit("echo started; sleep 60")
	require.Eventually(t, func() bool { return len(texts(h.events(sess.ID))) == 1 }, 10*time.Second, 10*time.Millisecond)
	h.stop()
	evs := h.events(sess.ID)
	c := completes(evs)
	require.Len(t, c, 1)
	require.Equal(t, false, c[0]["success"])
	require.Contains(t, strings.Join(errorRows(evs), ""), "shut down")
	alive, err := st.WorkerAlive(context.Background(), h.w.ID())
	require.NoError(t, err)
	require.False(t, alive)
}

// TestChildHoldingPipesDoesNotOutliveTheRun: a child that left the group
// and keeps stdout and stderr open neither keeps the run from ending nor
// survives it.
func TestChildHoldingPipesDoesNotOutliveTheRun(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	h := startWorker(t, st, "/bin/sh")
	pidFile := filepath.Join(h.dir, "escaped.pid")
	sess, _ := h.submit("setsid sh -c 'echo $$ > " + pidFile + "; exec sleep 30' & while [ ! -s " + pidFile + " ]; do sleep 0.01; done; echo done")
	evs := h.waitDone(sess.ID)
	require.Equal(t, []string{"done"}, texts(evs))
	require.Len(t, completes(evs), 1)
	pid := readPID(t, pidFile)
	require.Eventually(t, func() bool { return !processAlive(pid) }, 5*time.Second, 20*time.Millisecond, "the escaped child outlived its run")
}

// TestParserPanicIsAnErrorRow: a parser that panics on a line costs that
// line, not the worker: the run goes on and ends with one complete.
func TestParserPanicIsAnErrorRow(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	h := startWorker(t, st, "/bin/sh")
	sess, _ := h.submit("echo before; echo panic; echo after")
	evs := h.waitDone(sess.ID)
	require.Equal(t, []string{"before", "after"}, texts(evs))
	require.Equal(t, []string{"An output line could not be read (a parser bug)."}, errorRows(evs))
	require.Len(t, completes(evs), 1)
	require.Equal(t, true, completes(evs)[0]["success"])
}

func TestLongLineIsDroppedNotBuffered(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	h := startWorker(t, st, "/bin/sh")
	sess, _ := h.submit("head -c 17000000 /dev/zero | tr '\\0' x; echo; echo after")
	evs := h.waitDone(sess.ID)
	require.Equal(t, []string{"after"}, texts(evs))
	require.Contains(t, strings.Join(errorRows(evs), ""), "dropped")
}

// TestALineOfManyEventsIsAppendedInBatches: the events of one line go out
// in appends of at most maxBatch, whole and in order.
func TestALineOfManyEventsIsAppendedInBatches(t *testing.T) {
	url := storetest.Miniredis(t)
	prefix := storetest.Prefix()
	st := storetest.New(t, url, store.Config{Prefix: prefix})
	h := startWorker(t, st, "/bin/sh")
	sess, _ := h.submit("echo many=1000; echo after")
	evs := h.waitDone(sess.ID)
	want := make([]string, 0, 1001)
	for i := range 1000 {
		want = append(want, "m"+strconv.Itoa(i))
	}
	require.Equal(t, append(want, "after"), texts(evs))

	opt, err := redis.ParseURL(url)
	require.NoError(t, err)
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	taken, err := rdb.HGet(context.Background(), prefix+":session:{"+sess.ID+"}", "appendBatch").Result()
	require.NoError(t, err)
	n, err := strconv.Atoi(taken[strings.LastIndexByte(taken, ':')+1:])
	require.NoError(t, err)
	require.GreaterOrEqual(t, n, 1000/maxBatch+1, "appends of the run (appendBatch %q)", taken)
}

// claimedRun accepts a run and has worker, beating with ttl, claim it.
func claimedRun(t *testing.T, st *store.Store, worker string, ttl time.Duration) app.Session {
	t.Helper()
	ctx := context.Background()
	sess := app.Session{ID: app.NewID(), Owner: "alice", Provider: app.Claude, ProjectPath: "/tmp"}
	res, err := st.Accept(ctx, &store.AcceptRequest{Session: sess, New: true, Job: app.Job{SessionID: sess.ID}})
	require.NoError(t, err)
	require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: worker, StartedAt: time.Now()}, ttl))
	ok, err := st.Claim(ctx, store.RunRef{SessionID: sess.ID, RunID: res.RunID}, worker)
	require.NoError(t, err)
	require.True(t, ok)
	return sess
}

func TestReaperCompletesRunsOfDeadWorker(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	ctx := context.Background()
	sess := claimedRun(t, st, "gone", 50*time.Millisecond)

	r1, err := NewReaper(ReaperConfig{Store: st, Holder: "r1", Interval: 20 * time.Millisecond})
	require.NoError(t, err)
	r2, err := NewReaper(ReaperConfig{Store: st, Holder: "r2", Interval: 20 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, r1.Pass(ctx))
	got, err := st.Session(ctx, sess.ID)
	require.NoError(t, err)
	require.True(t, got.Running(), "the worker is still alive")

	// miniredis TTLs move only when told to.
	time.Sleep(60 * time.Millisecond)
	require.NoError(t, st.RemoveWorker(ctx, "gone"))
	require.NoError(t, r1.Pass(ctx))
	require.NoError(t, r2.Pass(ctx)) // holds no lease: does nothing
	require.NoError(t, r1.Pass(ctx))

	evs, err := st.Events(ctx, sess.ID, 0, 100)
	require.NoError(t, err)
	var kinds []string
	for _, e := range evs {
		kinds = append(kinds, e.Kind)
	}
	require.Equal(t, []string{"session-state-changed", "session_created", "error", "session-state-changed", "complete"}, kinds)
	require.Contains(t, string(evs[2].Data), `"content":"worker lost"`)
}

// TestReaperEndsTerminalsOfDeadWorker: a terminal whose worker died while
// no socket watched it is ended as lost by the reaper (its owner's place
// given back, its keys set to expire); one of a live worker is left alone.
func TestReaperEndsTerminalsOfDeadWorker(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	ctx := context.Background()
	for _, w := range []string{"gone", "alive"} {
		require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: w, StartedAt: time.Now()}, time.Hour))
	}
	spec := app.ShellSpec{Owner: "alice", ProjectPath: "/w/p", Provider: app.PlainShell, Plain: true, Cols: 80, Rows: 24}
	gone, _, err := st.ShellOpen(ctx, "t-gone", 0, "gone", "bash", spec, store.ShellLimit{Max: 8})
	require.NoError(t, err)
	alive, _, err := st.ShellOpen(ctx, "t-alive", 0, "alive", "bash", spec, store.ShellLimit{Max: 8})
	require.NoError(t, err)
	r, err := NewReaper(ReaperConfig{Store: st, Holder: "r1", Interval: 20 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, r.Pass(ctx))
	open, err := st.OpenShells(ctx)
	require.NoError(t, err)
	require.Len(t, open, 2, "both workers alive")

	require.NoError(t, st.RemoveWorker(ctx, "gone")) // as its heartbeat expiring
	require.NoError(t, r.Pass(ctx))
	open, err = st.OpenShells(ctx)
	require.NoError(t, err)
	require.Len(t, open, 1)
	require.Equal(t, store.OpenShell{Key: "t-alive", Worker: "alive", Gen: alive}, store.OpenShell{Key: open[0].Key, Worker: open[0].Worker, Gen: open[0].Gen})
	info, ok, err := st.Shell(ctx, "t-gone")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, store.ShellExited, info.State)
	require.Equal(t, store.ShellExitLost, info.ExitReason)
	require.Equal(t, gone, info.Gen)
}

// TestReaperEndsTerminalsNeverStarted: a terminal whose open never reached
// its worker (the gateway died between the two steps of ShellOpen, or the
// queueing failed) stays starting; past the unclaimed timeout the reaper
// ends it, and gives its owner's place back. A started one is left alone,
// and a worker that starts the ended one late finds it stale.
func TestReaperEndsTerminalsNeverStarted(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	ctx := context.Background()
	require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "w", StartedAt: time.Now()}, time.Hour))
	spec := app.ShellSpec{Owner: "alice", ProjectPath: "/w/p", Provider: app.PlainShell, Plain: true, Cols: 80, Rows: 24}
	stuck, _, err := st.ShellOpen(ctx, "t-stuck", 0, "w", "bash", spec, store.ShellLimit{Max: 2})
	require.NoError(t, err)
	started, _, err := st.ShellOpen(ctx, "t-started", 0, "w", "bash", spec, store.ShellLimit{Max: 2})
	require.NoError(t, err)
	require.NoError(t, st.ShellSet(ctx, "t-started", started, "state", store.ShellRunning))
	// A worker's word that it started a terminal can be refused by an
	// outage, or lost in a restart of Redis: output says so too.
	printed, _, err := st.ShellOpen(ctx, "t-printed", 0, "w", "bash", spec, store.ShellLimit{Max: 3})
	require.NoError(t, err)
	_, err = st.ShellAppend(ctx, "t-printed", printed, []string{"$ "})
	require.NoError(t, err)
	_, _, err = st.ShellOpen(ctx, "t-third", 0, "w", "bash", spec, store.ShellLimit{Max: 3})
	require.ErrorAs(t, err, new(*app.LimitError), "three terminals open")

	young, err := NewReaper(ReaperConfig{Store: st, Holder: "r1", UnclaimedTimeout: time.Minute})
	require.NoError(t, err)
	require.NoError(t, young.Pass(ctx))
	open, err := st.OpenShells(ctx)
	require.NoError(t, err)
	require.Len(t, open, 3, "a terminal starting for less than the timeout is left alone")
	time.Sleep(20 * time.Millisecond)
	old, err := NewReaper(ReaperConfig{Store: st, Holder: "r1", UnclaimedTimeout: 10 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, old.Pass(ctx))
	info, ok, err := st.Shell(ctx, "t-stuck")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, store.ShellExited, info.State)
	require.Equal(t, store.ShellExitNotStarted, info.ExitReason)
	for _, key := range []string{"t-started", "t-printed"} {
		info, _, err = st.Shell(ctx, key)
		require.NoError(t, err)
		require.Equal(t, store.ShellRunning, info.State, key)
	}
	_, _, err = st.ShellOpen(ctx, "t-third", 0, "w", "bash", spec, store.ShellLimit{Max: 3})
	require.NoError(t, err, "the stuck terminal's place was given back")
	require.ErrorIs(t, st.ShellSet(ctx, "t-stuck", stuck, "state", store.ShellRunning), store.ErrStaleShell, "a late start is stale")
	// The end is recorded only while the terminal is starting.
	recorded, err := st.ShellExit(ctx, "t-started", started, 1, "", store.ShellExitNotStarted)
	require.NoError(t, err)
	require.False(t, recorded)
}

func TestReaperFailsUnclaimedRuns(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	ctx := context.Background()
	sess := app.Session{ID: app.NewID(), Owner: "alice", Provider: app.Claude, ProjectPath: "/tmp"}
	_, err := st.Accept(ctx, &store.AcceptRequest{Session: sess, New: true, Job: app.Job{SessionID: sess.ID}})
	require.NoError(t, err)
	// Two reapers, not one with a short timeout and a sleep: a loaded
	// machine once took more than 30 ms between the accept and the first
	// pass, which then rightly reaped the run. One holder: the reaper
	// lease is the first's.
	young, err := NewReaper(ReaperConfig{Store: st, Holder: "r1", UnclaimedTimeout: time.Minute})
	require.NoError(t, err)
	require.NoError(t, young.Pass(ctx))
	got, _ := st.Session(ctx, sess.ID)
	require.True(t, got.Running(), "a run unclaimed for less than the timeout is left alone")
	time.Sleep(20 * time.Millisecond)
	old, err := NewReaper(ReaperConfig{Store: st, Holder: "r1", UnclaimedTimeout: 10 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, old.Pass(ctx))
	got, _ = st.Session(ctx, sess.ID)
	require.Equal(t, app.StateFailed, got.State)
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	var pid int
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	}, 5*time.Second, 10*time.Millisecond)
	return pid
}

// processAlive reports whether pid runs (a zombie counts as gone).
func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	fields := strings.Fields(string(b))
	return len(fields) > 2 && fields[2] != "Z"
}

// TestReaperWaitsAfterRedisOutage is issue 9: Redis was down longer than the
// heartbeat TTL and came back (from its AOF); a reaper that failed passes
// meanwhile, or sees a new Redis run id, gives workers a heartbeat TTL to
// beat again before it reaps, and then reaps a worker that did not.
func TestReaperWaitsAfterRedisOutage(t *testing.T) {
	srv := storetest.StartServerWith(t, storetest.Options{AOF: true, Config: []string{"appendfsync always"}})
	st := storetest.New(t, srv.URL)
	ctx := context.Background()
	sess := claimedRun(t, st, "w1", 100*time.Millisecond)

	const ttl = 300 * time.Millisecond
	failing, err := NewReaper(ReaperConfig{Store: st, Holder: "failing", Interval: 20 * time.Millisecond, HeartbeatTTL: ttl})
	require.NoError(t, err)
	require.NoError(t, failing.Pass(ctx)) // sees this Redis' run id

	srv.Stop()
	time.Sleep(150 * time.Millisecond) // the heartbeat expires meanwhile
	short, cancel := context.WithTimeout(ctx, time.Second)
	require.Error(t, failing.Pass(short))
	cancel()
	srv.Restart(t)
	require.NoError(t, st.WaitAvailable(ctx))
	alive, err := st.WorkerAlive(ctx, "w1")
	require.NoError(t, err)
	require.False(t, alive, "the heartbeat expired during the outage")

	// A reaper that saw the outage, and one that saw only the new run id
	// (it knew the old one), both wait.
	restarted, err := NewReaper(ReaperConfig{Store: st, Holder: "restarted", Interval: 20 * time.Millisecond, HeartbeatTTL: ttl})
	require.NoError(t, err)
	restarted.runID = "an-earlier-redis"
	for _, r := range []*Reaper{failing, restarted} {
		require.NoError(t, st.ReleaseLease(ctx, reaperLease, "failing"))
		require.NoError(t, r.Pass(ctx))
		got, err := st.Session(ctx, sess.ID)
		require.NoError(t, err)
		require.True(t, got.Running(), "%s reaped a run whose worker had no time to beat", r.cfg.Holder)
	}

	// A worker that beats again keeps its run; one that does not is lost.
	require.NoError(t, st.ReleaseLease(ctx, reaperLease, "restarted"))
	time.Sleep(ttl + 3*20*time.Millisecond)
	require.NoError(t, failing.Pass(ctx))
	got, err := st.Session(ctx, sess.ID)
	require.NoError(t, err)
	require.Equal(t, app.StateFailed, got.State)
	evs, err := st.Events(ctx, sess.ID, 0, 100)
	require.NoError(t, err)
	require.Contains(t, string(evs[len(evs)-3].Data), `"content":"worker lost"`)
}

// TestAppendWaitsForRedis: output appended while Redis is down waits for it
// (the run goes on, nothing is lost); the run ends with one complete.
func TestAppendWaitsForRedis(t *testing.T) {
	srv := storetest.StartServerWith(t, storetest.Options{AOF: true, Config: []string{"appendfsync always"}})
	st := storetest.New(t, srv.URL)
	h := startWorker(t, st, "sh")
	sess, _ := h.submit(`echo before; sleep 0.3; echo during; sleep 0.2; echo after`)
	require.Eventually(t, func() bool { return len(texts(h.events(sess.ID))) >= 1 }, 10*time.Second, 10*time.Millisecond)
	srv.Stop()
	time.Sleep(3 * time.Second) // longer than the orphan grace: the output is held, not dropped
	srv.Restart(t)
	evs := h.waitDone(sess.ID)
	require.Equal(t, []string{"before", "during", "after"}, texts(evs))
	require.Len(t, completes(evs), 1)
	require.Equal(t, true, completes(evs)[0]["success"], evs)
}

// TestReaperPassThatStalledReapsNothing: a pass whose reads waited out
// Redis (go-redis retrying through a failover or a restart; here Redis
// stopped with SIGSTOP for 3 s) may have read heartbeats that expired
// while no worker could write them: it reaps nothing, and the next passes
// wait for heartbeats as after an outage. Before, it reaped the runs of
// every worker whose heartbeat the failover had let expire.
func TestReaperPassThatStalledReapsNothing(t *testing.T) {
	srv := storetest.StartServer(t)
	st := storetest.New(t, srv.URL)
	ctx := context.Background()
	sess := claimedRun(t, st, "silent", time.Second)
	require.NoError(t, st.RemoveWorker(ctx, "silent")) // its heartbeat expired
	r, err := NewReaper(ReaperConfig{Store: st, Interval: 100 * time.Millisecond, HeartbeatTTL: time.Second})
	require.NoError(t, err)

	srv.Pause(t) // stopped before the pass begins, whatever the scheduler does
	resumed := make(chan struct{})
	go func() {
		defer close(resumed)
		time.Sleep(3 * time.Second) // longer than slowPass: the pass stalls
		srv.Resume(t)
	}()
	require.NoError(t, r.Pass(ctx))
	<-resumed
	got, err := st.Session(ctx, sess.ID)
	require.NoError(t, err)
	require.True(t, got.Running(), "a pass that stalled reaps nothing")

	// The next pass, quick, still waits for heartbeats; once the grace is
	// over a worker still silent is reaped.
	require.NoError(t, r.Pass(ctx))
	got, err = st.Session(ctx, sess.ID)
	require.NoError(t, err)
	require.True(t, got.Running(), "just after a stall, heartbeats may be on their way")
	require.Eventually(t, func() bool {
		require.NoError(t, r.Pass(ctx))
		got, err := st.Session(ctx, sess.ID)
		require.NoError(t, err)
		return got.State == app.StateFailed
	}, 10*time.Second, 100*time.Millisecond, "reaped after the grace")
}

// TestReaperRereadsBeforeReaping: a pass decides on sessions read before it
// read the live workers; a run claimed, or whose worker came back, since
// that read is not reaped, and a run reaped for a dead worker is reaped
// once.
func TestReaperRereadsBeforeReaping(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	ctx := context.Background()
	r, err := NewReaper(ReaperConfig{Store: st, UnclaimedTimeout: time.Millisecond})
	require.NoError(t, err)

	// Read as unclaimed and old, but claimed by a live worker since.
	claimed := claimedRun(t, st, "live", time.Minute)
	stale, err := st.Session(ctx, claimed.ID)
	require.NoError(t, err)
	stale.Worker, stale.StartedAt = "", 1
	// Read with a worker that was gone, and still is: reaped.
	lost := claimedRun(t, st, "gone", time.Minute)
	require.NoError(t, st.RemoveWorker(ctx, "gone"))
	lostRead, err := st.Session(ctx, lost.ID)
	require.NoError(t, err)

	dead := map[string]bool{}
	r.check(ctx, []app.Session{stale, lostRead, lostRead}, map[string]bool{"live": true}, dead)
	got, err := st.Session(ctx, claimed.ID)
	require.NoError(t, err)
	require.True(t, got.Running(), "a run claimed since the read is left alone")
	got, err = st.Session(ctx, lost.ID)
	require.NoError(t, err)
	require.Equal(t, app.StateFailed, got.State)
	require.Equal(t, map[string]bool{"gone": true}, dead)
	evs, err := st.Events(ctx, lost.ID, 0, 100)
	require.NoError(t, err)
	evs = slices.DeleteFunc(evs, func(e store.StoredEvent) bool { return e.Kind != "complete" })
	require.Len(t, evs, 1, "listed twice, completed once")
}

// TestProviderIDsPerRunAreBounded: a CLI that prints a new session id on
// every line (its user can write to its stdout) records at most
// maxProviderIDs of them in the provider's id index, which is never
// trimmed; the same id printed again is not recorded twice.
func TestProviderIDsPerRunAreBounded(t *testing.T) {
	url := storetest.Miniredis(t)
	st := storetest.New(t, url)
	h := startWorker(t, st, "/bin/sh")
	sess, _ := h.submit(`echo psid=first; sleep 0.01; echo psid=first; for i in $(seq 50); do echo psid=p$i; sleep 0.01; done; echo done`)
	h.waitDone(sess.ID)
	rdb := storetest.Client(t, url)
	n, err := rdb.HLen(context.Background(), st.Prefix()+":provider:{claude}:sessions").Result()
	require.NoError(t, err)
	require.EqualValues(t, maxProviderIDs, n)
	got, err := st.Session(context.Background(), sess.ID)
	require.NoError(t, err)
	require.Equal(t, "p3", got.ProviderSessionID, "the last id recorded")
}

// TestWorkerChecksAJobsOptions: a job written to Redis by something other
// than a gateway (which refuses these) does not reach a CLI's argument list
// with a value a CLI would take for a flag: the run fails with the reason,
// and no CLI starts.
// requireRefused checks that a run ended on an error row holding want
// and said nothing else: its CLI never started.
func requireRefused(t *testing.T, evs []map[string]any, want string) {
	t.Helper()
	require.Contains(t, strings.Join(errorRows(evs), "\n"), want)
	require.Empty(t, texts(evs), "the CLI did not run")
}

func TestWorkerChecksAJobsOptions(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	h := startWorker(t, st, "/bin/sh")
	for _, opts := range []app.RunOptions{
		{Model: "--yolo"},
		{PermissionMode: "--dangerously-skip-permissions"},
		{Tools: app.ToolsSettings{AllowedTools: []string{"-x"}}},
	} {
		sess := app.Session{ID: app.NewID(), Owner: "alice", Provider: app.Claude, ProjectPath: h.dir}
		_, err := st.Accept(context.Background(), &store.AcceptRequest{
			Session: sess, New: true,
			Job: app.Job{SessionID: sess.ID, Owner: "alice", Provider: app.Claude, Command: "echo started", ProjectPath: h.dir, NewSession: true, Options: opts},
		})
		require.NoError(t, err)
		evs := h.waitDone(sess.ID)
		var texts []string
		for _, e := range evs {
			if c, ok := e["content"].(string); ok {
				texts = append(texts, c)
			}
		}
		require.NotContains(t, texts, "started", "%+v: the CLI ran", opts)
		require.Contains(t, strings.Join(texts, "\n"), "Invalid", "%+v", opts)
	}
}

// denyCommands has Redis refuse cmds (NOPERM, an error that is not an
// outage's) to the default user, which the store uses, until the test ends
// or the returned function is called.
func denyCommands(t *testing.T, url string, cmds ...string) (allow func()) {
	t.Helper()
	opt, err := redis.ParseURL(url)
	require.NoError(t, err)
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := context.Background()
	deny, grant := []any{"ACL", "SETUSER", "default"}, []any{"ACL", "SETUSER", "default"}
	for _, c := range cmds {
		deny, grant = append(deny, "-"+c), append(grant, "+"+c)
	}
	require.NoError(t, rdb.Do(ctx, deny...).Err())
	var once sync.Once
	allow = func() { once.Do(func() { require.NoError(t, rdb.Do(ctx, grant...).Err()) }) }
	t.Cleanup(allow)
	return allow
}

// running reports whether w runs ref's run (or still records its end).
func (w *Worker) running(ref store.RunRef) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	r := w.runs[ref.SessionID]
	return r != nil && r.job.RunID == ref.RunID
}

// TestOwnJobReclaimedIsNotRunAgain: a worker that claimed a run and then
// failed to ack its job finds the job pending again (it reclaims jobs idle
// past reclaimIdle, its own included), and Redis would grant its claim
// again (the run is this same worker's): the store's record of its claims
// keeps it from starting the run a second time.
func TestOwnJobReclaimedIsNotRunAgain(t *testing.T) {
	srv := storetest.StartServer(t)
	st := storetest.New(t, srv.URL)
	h := scriptWorker(t, st, func(w *Worker) { w.reclaimIdle = 150 * time.Millisecond })
	allow := denyCommands(t, srv.URL, "xack", "xdel")
	started := filepath.Join(h.dir, "started")
	sess, _ := h.submit("echo x >> " + started + "; sleep 1.5; echo done")
	require.Eventually(t, func() bool { return len(texts(h.events(sess.ID))) == 1 }, 10*time.Second, 10*time.Millisecond)
	time.Sleep(500 * time.Millisecond) // past reclaimIdle, a few reclaims
	allow()
	evs := h.waitDone(sess.ID)
	require.Equal(t, []string{"done"}, texts(evs))
	require.Len(t, completes(evs), 1)
	b, err := os.ReadFile(started)
	require.NoError(t, err)
	require.Equal(t, "x\n", string(b), "the run's CLI started more than once")
}

// TestCompleteRefusedKeepsTrying: a run whose end Redis refuses with an
// error that is not an outage's, for longer than completeRetryFor, keeps
// its place in the worker and keeps trying; its end is recorded once Redis
// takes it. Before, the worker gave up after a minute, and the session
// stayed running for good (the reaper leaves a live worker's runs alone).
func TestCompleteRefusedKeepsTrying(t *testing.T) {
	srv := storetest.StartServer(t)
	st := storetest.New(t, srv.URL)
	h := scriptWorker(t, st, func(w *Worker) { w.completeRetryFor = 100 * time.Millisecond })
	// The CLI ends once the test says so (a file appears), not after a
	// time a loaded machine may take to deny the scripts.
	done := filepath.Join(t.TempDir(), "done")
	sess, res := h.submit("echo a; until [ -e " + done + " ]; do sleep 0.05; done")
	require.Eventually(t, func() bool { return len(texts(h.events(sess.ID))) == 1 }, 10*time.Second, 10*time.Millisecond)
	allow := denyCommands(t, srv.URL, "evalsha", "eval")
	require.NoError(t, os.WriteFile(done, nil, 0o600))
	time.Sleep(1500 * time.Millisecond) // the CLI ended; its complete refused past completeRetryFor
	got, err := st.Session(context.Background(), sess.ID)
	require.NoError(t, err)
	require.True(t, got.Running())
	require.True(t, h.w.running(store.RunRef{SessionID: sess.ID, RunID: res.RunID}), "the run gave up its place")
	allow()
	evs := h.waitDone(sess.ID)
	require.Equal(t, []string{"a"}, texts(evs))
	require.Len(t, completes(evs), 1)
	require.Equal(t, true, completes(evs)[0]["success"], evs)
}

// TestSilentRunEndedElsewhereStops: a run ended by another door while its
// CLI writes nothing (an abort whose control was lost; the reaper while
// the worker was cut off from Redis) is stopped once Redis no longer
// confirms it. Before, its CLI and its place on the worker stayed for good.
func TestSilentRunEndedElsewhereStops(t *testing.T) {
	st := storetest.New(t, storetest.Redis(t))
	h := scriptWorker(t, st, func(w *Worker) { w.confirmEvery = 100 * time.Millisecond })
	sess, res := h.submit("echo a; exec sleep 60")
	require.Eventually(t, func() bool { return len(texts(h.events(sess.ID))) == 1 }, 10*time.Second, 10*time.Millisecond)
	ref := store.RunRef{SessionID: sess.ID, RunID: res.RunID, Provider: app.Claude}
	_, err := st.Complete(context.Background(), ref, app.Outcome{ExitCode: 1, Aborted: true})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return !h.w.running(ref) }, 10*time.Second, 20*time.Millisecond)
	require.Len(t, completes(h.events(sess.ID)), 1)
}

// TestRunTakenByAnotherWorkerStops: a run whose claim Redis lost and
// another worker then took is stopped at its next append, which Redis
// refuses; it writes no complete (the other worker's run will).
func TestRunTakenByAnotherWorkerStops(t *testing.T) {
	url := storetest.Redis(t)
	st := storetest.New(t, url)
	h := scriptWorker(t, st, func(w *Worker) { w.confirmEvery = time.Hour })
	// "b" comes once the claim is taken (a file appears), not after a time
	// a loaded machine may take to take it.
	taken := filepath.Join(t.TempDir(), "taken")
	sess, res := h.submit("echo a; until [ -e " + taken + " ]; do sleep 0.05; done; echo b; exec sleep 60")
	require.Eventually(t, func() bool { return len(texts(h.events(sess.ID))) == 1 }, 10*time.Second, 10*time.Millisecond)
	opt, err := redis.ParseURL(url)
	require.NoError(t, err)
	raw := redis.NewClient(opt)
	defer raw.Close()
	require.NoError(t, raw.HSet(context.Background(), st.Prefix()+":session:{"+sess.ID+"}", "worker", "w2").Err())
	require.NoError(t, os.WriteFile(taken, nil, 0o600))
	ref := store.RunRef{SessionID: sess.ID, RunID: res.RunID}
	require.Eventually(t, func() bool { return !h.w.running(ref) }, 10*time.Second, 20*time.Millisecond)
	evs := h.events(sess.ID)
	require.Equal(t, []string{"a"}, texts(evs))
	require.Empty(t, completes(evs))
}

// TestCLILingeringAfterItsResultIsStopped: a CLI that printed its result
// and does not exit (cursor-agent does so now and then) is stopped after
// lingerGrace, and its run ends; before, it stayed running for good.
func TestCLILingeringAfterItsResultIsStopped(t *testing.T) {
	st := storetest.New(t, storetest.Redis(t))
	h := scriptWorker(t, st, func(w *Worker) { w.lingerGrace = 200 * time.Millisecond })
	sess, _ := h.submit("echo finished; exec sleep 600")
	start := time.Now()
	evs := h.waitDone(sess.ID)
	require.Less(t, time.Since(start), 30*time.Second)
	require.Equal(t, []string{"finished"}, texts(evs))
	require.Len(t, completes(evs), 1)
}

// TestProviderCLIsLingeringAfterTheirResultAreStopped: a Claude, Codex or
// Gemini CLI that printed the line ending its turn and does not exit
// (`claude -p` waits for the tasks it ran in the background) is stopped
// after lingerGrace, and its run completes once, with the outcome the line
// said. Before, only cursor-agent's result stopped a lingering CLI: the
// session stayed running, and held a place of the worker, for good.
func TestProviderCLIsLingeringAfterTheirResultAreStopped(t *testing.T) {
	st := storetest.New(t, storetest.Redis(t))
	for _, c := range []struct {
		name    string
		prov    Provider
		line    string
		success bool
	}{
		{"claude", ClaudeProvider{}, `{"type":"result","subtype":"success","is_error":false,"result":"done"}`, true},
		{"claude error", ClaudeProvider{}, `{"type":"result","subtype":"success","is_error":true,"result":"it broke"}`, false},
		{"codex", CodexProvider{}, `{"type":"turn.completed","usage":{"input_tokens":1,"output_tokens":1}}`, true},
		{"codex error", CodexProvider{}, `{"type":"turn.failed","error":{"message":"it broke"}}`, false},
		{"gemini", GeminiProvider{}, `{"type":"result","status":"success","stats":{"total_tokens":2}}`, true},
		{"gemini error", GeminiProvider{}, `{"type":"result","status":"error","error":{"message":"it broke"}}`, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			bin := filepath.Join(t.TempDir(), "cli")
			require.NoError(t, os.WriteFile(bin, []byte("#!/bin/sh\nprintf '%s\\n' '"+c.line+"'\nexec sleep 600\n"), 0o755))
			h := runWorkerTuned(t, st, Config{
				Providers: map[app.Provider]Provider{c.prov.Name(): c.prov},
				Bins:      map[app.Provider]string{c.prov.Name(): bin},
			}, func(w *Worker) { w.lingerGrace = 200 * time.Millisecond })
			sess := h.submitAs(c.prov.Name(), app.Job{Command: "hello"})
			require.Eventually(t, func() bool {
				s, err := st.Session(context.Background(), sess.ID)
				return err == nil && !s.Running()
			}, 10*time.Second, 20*time.Millisecond, "the run still runs")
			evs := h.events(sess.ID)
			require.Len(t, completes(evs), 1, evs)
			require.Equal(t, c.success, completes(evs)[0]["success"], evs)
			time.Sleep(300 * time.Millisecond)
			require.Len(t, completes(h.events(sess.ID)), 1, "a second complete")
		})
	}
}

// TestShutdownWithoutRedisEnds: a worker told to stop while Redis is down,
// or refusing writes (a failed save: MISCONF), cannot record the end of
// the run it kills; it gives the run up within its drain timeout and twice
// stopGrace, and its heartbeat stops. Once Redis takes writes again, the
// reaper (of another process) ends the run, once. Before, the run retried
// its complete for good and the worker never stopped (alive and draining,
// so nothing reaped its run either).
func TestShutdownWithoutRedisEnds(t *testing.T) {
	storetest.RequireRedisServer(t)
	for _, c := range []struct {
		name       string
		fail, heal func(srv *storetest.Server, t testing.TB)
	}{
		{"down", func(srv *storetest.Server, _ testing.TB) { srv.Stop() }, (*storetest.Server).Restart},
		{"refusing writes", (*storetest.Server).FailSnapshot, (*storetest.Server).FixSnapshot},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := storetest.StartServerWith(t, storetest.Options{AOF: true, Config: []string{"appendfsync always"}})
			st := storetest.New(t, srv.URL)
			ctx := context.Background()
			h := scriptWorker(t, st, func(w *Worker) { w.stopGrace = 300 * time.Millisecond })
			sess, _ := h.submit("echo started; sleep 60")
			require.Eventually(t, func() bool { return len(texts(h.events(sess.ID))) == 1 }, 10*time.Second, 10*time.Millisecond)
			c.fail(srv, t)
			h.cancel()
			select {
			case <-h.done:
			case <-time.After(30 * time.Second):
				t.Fatal("the worker's shutdown waits for Redis")
			}
			c.heal(srv, t)
			require.NoError(t, st.WaitAvailable(ctx))
			reaper, err := NewReaper(ReaperConfig{Store: st, Holder: "other", Interval: 50 * time.Millisecond, HeartbeatTTL: time.Second})
			require.NoError(t, err)
			rctx, stopReaper := context.WithCancel(ctx)
			reaped := make(chan struct{})
			go func() { defer close(reaped); _ = reaper.Run(rctx) }()
			defer func() { stopReaper(); <-reaped }()
			evs := h.waitDone(sess.ID)
			require.Len(t, completes(evs), 1, evs)
			require.Equal(t, false, completes(evs)[0]["success"])
			time.Sleep(500 * time.Millisecond)
			require.Len(t, completes(h.events(sess.ID)), 1, "a second complete")
		})
	}
}

// TestStopHaltsOnce: a run stopped again and again (confirmRuns stops a
// stale run every few seconds while its process does not die, a D state)
// halts its process once. Before, every stop started a halt goroutine of
// its own.
func TestStopHaltsOnce(t *testing.T) {
	st := storetest.New(t, storetest.Redis(t))
	h := scriptWorker(t, st, nil)
	sess, res := h.submit("trap '' TERM; echo a; while :; do sleep 0.1; done")
	require.Eventually(t, func() bool { return len(texts(h.events(sess.ID))) == 1 }, 10*time.Second, 10*time.Millisecond)
	h.w.mu.Lock()
	r := h.w.runs[sess.ID]
	h.w.mu.Unlock()
	for range 5 {
		r.stop(stopStale) // all before the process is gone
	}
	ref := store.RunRef{SessionID: sess.ID, RunID: res.RunID}
	require.Eventually(t, func() bool { return !h.w.running(ref) }, 20*time.Second, 20*time.Millisecond)
	require.EqualValues(t, 1, r.halts.Load())
}

// TestReaperDropsConsumersOfWorkersGone: the reaper deletes the jobs
// consumers of workers that are gone and hold no pending job, and keeps
// live workers' and those holding jobs (reclaimed by live workers first).
// Before, every worker process ever started stayed a consumer of the
// group.
func TestReaperDropsConsumersOfWorkersGone(t *testing.T) {
	st := storetest.New(t, storetest.Redis(t))
	ctx := context.Background()
	require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "alive", StartedAt: time.Now()}, time.Minute))
	// A consumer is made by the read that gets it a job.
	for _, name := range []string{"alive", "gone", "gone-holding"} {
		id := app.NewID()
		_, err := st.Accept(ctx, &store.AcceptRequest{Session: app.Session{ID: id, Owner: "alice", Provider: app.Claude, ProjectPath: "/tmp"}, New: true, Job: app.Job{SessionID: id}})
		require.NoError(t, err)
		got, err := st.ReadJobs(ctx, name, 10, 10*time.Millisecond)
		require.NoError(t, err)
		require.Len(t, got, 1)
		if name != "gone-holding" {
			require.NoError(t, st.AckJob(ctx, got[0].StreamID))
		}
	}
	names, err := st.JobsConsumers(ctx)
	require.NoError(t, err)
	require.Len(t, names, 3)

	r, err := NewReaper(ReaperConfig{Store: st, Holder: "r", Interval: 20 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, r.Pass(ctx))
	names, err = st.JobsConsumers(ctx)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"alive", "gone-holding"}, names)
}

// TestShutdownWhileRedisRefusesWritesRecordsTheEnd: a run stopped by the
// worker's shutdown while its append waits for a Redis that refuses
// writes (here: at its maxmemory) is recorded as ended by the worker: the
// append is dropped once the run is stopped. It was sent again at once,
// thousands of times a second, until the outage tolerance, and the run
// was left to the reaper.
func TestShutdownWhileRedisRefusesWritesRecordsTheEnd(t *testing.T) {
	storetest.RequireRedisServer(t)
	srv := storetest.StartServerWith(t, storetest.Options{})
	st := storetest.New(t, srv.URL)
	ctx := context.Background()
	h := scriptWorker(t, st, func(w *Worker) { w.stopGrace = 300 * time.Millisecond })
	sess, _ := h.submit("echo started; while :; do echo x; sleep 0.05; done")
	require.Eventually(t, func() bool { return len(texts(h.events(sess.ID))) >= 1 }, time.Minute, 10*time.Millisecond)
	opt, err := redis.ParseURL(srv.URL)
	require.NoError(t, err)
	raw := redis.NewClient(opt)
	defer raw.Close()
	require.NoError(t, raw.ConfigSet(ctx, "maxmemory", "1").Err())
	time.Sleep(300 * time.Millisecond) // an append refused, waiting
	h.cancel()
	select {
	case <-h.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the worker's shutdown waits for Redis")
	}
	s, err := st.Session(ctx, sess.ID)
	require.NoError(t, err)
	require.False(t, s.Running(), "the worker did not record the end of the run it stopped")
}

// TestRunEndedBeforeShutdownKeepsItsOutcome: a run whose output was all
// read and stored, still ending (waiting for its CLI's exit status, or for
// a child that left its group and holds its stderr), is recorded with its
// own outcome when the worker shuts down meanwhile, not as failed by the
// shutdown.
func TestRunEndedBeforeShutdownKeepsItsOutcome(t *testing.T) {
	st := storetest.New(t, storetest.Start(t, storetest.Real))
	pumped := make(chan struct{}, 1)
	testHookPumped = func() {
		pumped <- struct{}{}
		time.Sleep(time.Second) // the drain's timeout stops the run meanwhile
	}
	t.Cleanup(func() { testHookPumped = nil })
	h := scriptWorker(t, st, nil)
	sess, _ := h.submit("echo done")
	select {
	case <-pumped:
	case <-time.After(time.Minute):
		t.Fatal("the run's output was not read")
	}
	h.cancel()
	<-h.done
	cs := completes(h.events(sess.ID))
	require.Len(t, cs, 1)
	require.Equal(t, true, cs[0]["success"], "%v", cs[0])
}

// TestAbortRightAfterTheClaim: an abort that reaches the worker between a
// run's claim and its start stops it before its CLI starts (the abort
// found no run and was dropped, and the CLI ran until a later check).
func TestAbortRightAfterTheClaim(t *testing.T) {
	st := storetest.New(t, storetest.Start(t, storetest.Real))
	ctx := context.Background()
	h := scriptWorker(t, st, nil)
	testHookClaimed = func(ref store.RunRef) {
		_, err := st.AbortRun(ctx, ref)
		require.NoError(t, err)
		time.Sleep(500 * time.Millisecond) // the abort reaches the worker
	}
	t.Cleanup(func() { testHookClaimed = nil })
	marker := filepath.Join(h.dir, "started")
	sess, _ := h.submit("touch " + marker + "; exec sleep 30")
	require.Eventually(t, func() bool {
		s, err := st.Session(ctx, sess.ID)
		return err == nil && !s.Running()
	}, time.Minute, 10*time.Millisecond)
	time.Sleep(time.Second)
	_, err := os.Stat(marker)
	require.True(t, os.IsNotExist(err), "the CLI of an aborted run was started")
	h.w.mu.Lock()
	n := len(h.w.runs)
	h.w.mu.Unlock()
	require.Zero(t, n, "the aborted run still runs")
}
