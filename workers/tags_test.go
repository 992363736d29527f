package workers

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// daemonScript starts a daemon as a dev server or a watcher would: a
// session of its own, its descriptors pointed away from the run's pipes
// or the terminal, its parent gone at once. It writes its pid to pidFile.
func daemonScript(pidFile string) string {
	return "setsid sh -c 'echo $$ > " + pidFile + "; exec sleep 300' </dev/null >/dev/null 2>&1 &"
}

// killAtCleanup kills pid when the test ends, should it have survived.
func killAtCleanup(t *testing.T, pid int) {
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
}

// TestDetachedDaemonDiesWithItsRun: a daemon a run's tool started (setsid,
// its descriptors on /dev/null: in no group, session, tree or pipe of the
// run) is killed when the run ends, found by the run's tag in its
// environment. Before, it lived as long as the worker.
func TestDetachedDaemonDiesWithItsRun(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	h := startWorker(t, st, "/bin/sh")
	pidFile := filepath.Join(h.dir, "daemon.pid")
	sess, _ := h.submit(daemonScript(pidFile) + " while [ ! -s " + pidFile + " ]; do sleep 0.01; done; echo done")
	evs := h.waitDone(sess.ID)
	require.Equal(t, []string{"done"}, texts(evs))
	pid := readPID(t, pidFile)
	killAtCleanup(t, pid)
	require.Eventually(t, func() bool { return !processAlive(pid) }, 20*time.Second, 20*time.Millisecond,
		"the daemon outlived its run")
}

// TestDetachedDaemonOfARunningRunLives: the end of one run, and the
// periodic sweep, leave alone a daemon started by a run still running on
// the worker; its run's abort then kills it, though it is in no tree
// under the run's CLI.
func TestDetachedDaemonOfARunningRunLives(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	h := startWorker(t, st, "/bin/sh")
	pidFile := filepath.Join(h.dir, "daemon.pid")
	// Double-forked: its parent, a subshell, is gone at once, so its
	// run's abort finds it in no tree under the run's CLI.
	running, _ := h.submit("(" + daemonScript(pidFile) + ") ; while [ ! -s " + pidFile + " ]; do sleep 0.01; done; echo started; exec sleep 60")
	require.Eventually(t, func() bool { return len(texts(h.events(running.ID))) == 1 }, 20*time.Second, 10*time.Millisecond)
	pid := readPID(t, pidFile)
	killAtCleanup(t, pid)

	other, _ := h.submit("echo quick")
	h.waitDone(other.ID)
	// Its end, sweep included, is over once it left the worker.
	require.Eventually(t, func() bool {
		h.w.mu.Lock()
		defer h.w.mu.Unlock()
		return len(h.w.runs) == 1
	}, 20*time.Second, 10*time.Millisecond)
	h.w.sweepOrphans(context.Background())
	require.True(t, processAlive(pid), "a daemon of a running run was killed")

	done, err := st.Abort(context.Background(), running.ID, app.Claude)
	require.NoError(t, err)
	require.NoError(t, st.SendControl(context.Background(), done.Worker, store.Control{Type: store.ControlAbort, SessionID: running.ID, RunID: done.RunID}))
	require.Eventually(t, func() bool { return !processAlive(pid) }, 20*time.Second, 20*time.Millisecond,
		"the daemon outlived its aborted run")
}

// TestDetachedDaemonsDieWithTheirWorker: a shutdown ends the daemons of
// the runs it stops and of the terminals it kills before the worker
// returns: nothing may be left for a next worker that may never come.
func TestDetachedDaemonsDieWithTheirWorker(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	h := startWorker(t, st, "/bin/sh")
	runPID := filepath.Join(h.dir, "run-daemon.pid")
	sess, _ := h.submit("(" + daemonScript(runPID) + ") ; while [ ! -s " + runPID + " ]; do sleep 0.01; done; echo started; exec sleep 60")
	require.Eventually(t, func() bool { return len(texts(h.events(sess.ID))) == 1 }, 20*time.Second, 10*time.Millisecond)
	pid := readPID(t, runPID)
	killAtCleanup(t, pid)

	spec := app.ShellSpec{Owner: "alice", ProjectPath: h.dir, Provider: app.PlainShell, Plain: true, Cols: 80, Rows: 24}
	gen, ok, err := st.ShellOpen(context.Background(), "k1", 0, h.w.ID(), "bash", spec, store.ShellLimit{})
	require.NoError(t, err)
	require.True(t, ok)
	// The open reaches the worker through its inbox.
	require.Eventually(t, func() bool { return h.w.shellOf("k1", gen) != nil }, 20*time.Second, 10*time.Millisecond)
	shellPID := filepath.Join(h.dir, "shell-daemon.pid")
	input, _ := json.Marshal(daemonScript(shellPID) + "\r")
	require.True(t, h.w.shellControl(store.Control{Type: store.ControlShellInput, Shell: "k1", Gen: gen, Data: input}))
	require.Eventually(t, func() bool { return exists(shellPID) }, 30*time.Second, 20*time.Millisecond)
	pid2 := readPID(t, shellPID)
	killAtCleanup(t, pid2)

	h.stop()
	// Gone when Run returned; the poll only waits for the kernel.
	require.Eventually(t, func() bool { return !processAlive(pid) && !processAlive(pid2) }, 5*time.Second, 10*time.Millisecond,
		"a daemon outlived its worker's shutdown")
}

// TestDetachedDaemonDiesWithItsTerminal: a daemon started in a terminal
// (setsid, no descriptor on the terminal, its parent gone) is killed
// when the terminal's shell exits.
func TestDetachedDaemonDiesWithItsTerminal(t *testing.T) {
	w, st, spec, gen := shellWorker(t)
	t.Cleanup(func() {
		chunks, _ := st.ShellOutput(context.Background(), "k1", 0, 1000)
		var out strings.Builder
		for _, c := range chunks {
			out.WriteString(c.Data)
		}
		t.Logf("terminal output: %q", out.String())
	})
	pidFile := filepath.Join(spec.ProjectPath, "daemon.pid")
	open, _ := json.Marshal(spec)
	require.True(t, w.shellControl(store.Control{Type: store.ControlShellOpen, Shell: "k1", Gen: gen, Data: open}))
	typeIn := func(s string) {
		data, _ := json.Marshal(s)
		require.True(t, w.shellControl(store.Control{Type: store.ControlShellInput, Shell: "k1", Gen: gen, Data: data}))
	}
	typeIn(daemonScript(pidFile) + "\r")
	// bash may take seconds to start on a loaded machine.
	require.Eventually(t, func() bool { return exists(pidFile) }, 30*time.Second, 20*time.Millisecond)
	pid := readPID(t, pidFile)
	killAtCleanup(t, pid)
	require.True(t, processAlive(pid))
	typeIn("exit\r")
	require.Eventually(t, func() bool { return w.shellCount() == 0 }, 20*time.Second, 10*time.Millisecond, "the terminal did not end")
	require.Eventually(t, func() bool { return !processAlive(pid) }, 20*time.Second, 20*time.Millisecond,
		"the daemon outlived its terminal")
}

// TestStaleTagSweep: the periodic sweep kills a process of this worker
// tagged with a run it no longer has (one that escaped its run's end), and
// leaves alone one of a live run, one of another worker, and an untagged
// one.
func TestStaleTagSweep(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	h := startWorker(t, st, "/bin/sh")
	w := h.w
	start := func(env ...string) chan error {
		cmd := exec.Command("sleep", "300")
		cmd.Env = append(os.Environ(), env...)
		require.NoError(t, cmd.Start())
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		t.Cleanup(func() { _ = cmd.Process.Kill() })
		return exited
	}
	w.beginTag(runTag("s1", "live-run"), os.Getuid())
	t.Cleanup(func() { w.tags.end(runTag("s1", "live-run"), os.Getuid()) })
	ended := start(w.ownerVar(runOwnerEnv), runTag("s1", "ended-run"))
	endedShell := start(w.ownerVar(shellOwnerEnv), shellTag("k", 1))
	live := start(w.ownerVar(runOwnerEnv), runTag("s1", "live-run"))
	// Of another scope: a dead worker of this one would be an orphan.
	others := start(runOwnerEnv+"=another-scope/"+w.cfg.ID, runTag("s1", "ended-run"))
	untagged := start(w.ownerVar(runOwnerEnv))
	// A run of another session with the run id of the ended one: run ids
	// are unique within a session only.
	w.beginTag(runTag("s2", "ended-run"), os.Getuid())
	t.Cleanup(func() { w.tags.end(runTag("s2", "ended-run"), os.Getuid()) })
	sameID := start(w.ownerVar(runOwnerEnv), runTag("s2", "ended-run"))

	w.sweepStaleTags()
	for name, exited := range map[string]chan error{"run": ended, "terminal": endedShell} {
		select {
		case err := <-exited:
			require.ErrorContains(t, err, "killed", name)
		case <-time.After(10 * time.Second):
			t.Fatalf("a process of an ended %s was not killed", name)
		}
	}
	for name, exited := range map[string]chan error{"live": live, "another worker's": others, "untagged": untagged, "same run id's": sameID} {
		select {
		case err := <-exited:
			t.Fatalf("the %s process was killed: %v", name, err)
		default:
		}
	}
}

// TestAccountClearedWithItsLastRun: under Accounts, once a user has no run
// or terminal left on the worker, a process of their uid that cleared its
// environment (no tag to find it by) is killed too; not while a process
// of that uid carries another worker's owner variable (two workers on one
// host give a user the same uid). Needs root, as a worker with accounts
// does.
func TestAccountClearedWithItsLastRun(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("!!! skipped: per-user accounts need root")
	}
	tmp := t.TempDir()
	homes := filepath.Join(tmp, "homes")
	for dir := tmp; dir != os.TempDir() && dir != "/"; dir = filepath.Dir(dir) {
		require.NoError(t, os.Chmod(dir, 0o711))
	}
	st := storetest.New(t, storetest.Miniredis(t))
	h := runWorker(t, st, Config{
		Providers:  map[app.Provider]Provider{app.Claude: scriptProvider{}},
		Bins:       map[app.Provider]string{app.Claude: "/bin/sh"},
		Accounts:   &Accounts{FirstUID: 47300, LastUID: 47309, Homes: homes},
		Workspaces: app.Workspaces{Roots: []string{filepath.Join(homes, app.UserPlaceholder)}},
	})
	run := func(pidFile string) int {
		t.Helper()
		sess := app.Session{ID: app.NewID(), Owner: "alice", Provider: app.Claude, ProjectPath: filepath.Join(homes, "alice")}
		_, err := st.Accept(context.Background(), &store.AcceptRequest{Session: sess, New: true, Job: app.Job{
			SessionID: sess.ID, Owner: "alice", Provider: app.Claude, ProjectPath: sess.ProjectPath, NewSession: true,
			Command: "setsid env -i /bin/sh -c 'echo $$ > " + pidFile + "; exec sleep 300' </dev/null >/dev/null 2>&1 & " +
				"while [ ! -s " + pidFile + " ]; do sleep 0.01; done; echo done",
		}})
		require.NoError(t, err)
		evs := h.waitDone(sess.ID)
		require.Equal(t, []string{"done"}, texts(evs), "errors: %q", errorRows(evs))
		pid := readPID(t, pidFile)
		killAtCleanup(t, pid)
		return pid
	}
	pid := run(filepath.Join(homes, "alice", "first.pid"))
	require.Eventually(t, func() bool { return !processAlive(pid) }, 20*time.Second, 20*time.Millisecond,
		"a daemon with no environment outlived its user's last run")

	// Another worker's process of alice's uid: nothing of the uid is killed.
	other := exec.Command("sleep", "300")
	other.Env = []string{runOwnerEnv + "=another-scope/another-worker"}
	other.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 47300, Gid: 47300, Groups: []uint32{}}}
	require.NoError(t, other.Start())
	otherExited := make(chan error, 1)
	go func() { otherExited <- other.Wait() }()
	t.Cleanup(func() { _ = other.Process.Kill() })
	pid = run(filepath.Join(homes, "alice", "second.pid"))
	require.Eventually(t, func() bool {
		h.w.tags.mu.Lock()
		defer h.w.tags.mu.Unlock()
		return len(h.w.tags.uids) == 0
	}, 20*time.Second, 10*time.Millisecond, "the run's end is not over")
	h.w.clearAccounts(nil)
	require.True(t, processAlive(pid), "a process of a uid another worker runs something for was killed")
	select {
	case err := <-otherExited:
		t.Fatalf("another worker's process was killed: %v", err)
	default:
	}

	// Once the other worker's process is gone, the next clearing takes it.
	require.NoError(t, other.Process.Kill())
	<-otherExited
	h.w.clearAccounts(nil)
	require.Eventually(t, func() bool { return !processAlive(pid) }, 20*time.Second, 20*time.Millisecond)
}

// TestBatcherMergesWaitingCalls: calls made while a batch is served are
// served together in the next one, and each returns once its own batch
// was served.
func TestBatcherMergesWaitingCalls(t *testing.T) {
	var b batcher[string]
	started, release := make(chan struct{}), make(chan struct{})
	var mu sync.Mutex
	var served []map[string]bool
	serve := func(keys map[string]bool) {
		mu.Lock()
		served = append(served, keys)
		first := len(served) == 1
		mu.Unlock()
		if first {
			close(started)
			<-release
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() { b.do("a", serve) })
	<-started
	for _, k := range []string{"b", "c", "d"} {
		wg.Go(func() { b.do(k, serve) })
	}
	require.Eventually(t, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.pending != nil && len(b.pending.keys) == 3
	}, 10*time.Second, time.Millisecond)
	close(release)
	wg.Wait()
	require.Equal(t, []map[string]bool{{"a": true}, {"b": true, "c": true, "d": true}}, served)
}
