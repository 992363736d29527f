package workers

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/agentgate/agentgate/store"
)

// The variables that name, in the environment of every process a worker
// starts (and of what those start, which inherit it), the store scope and
// the worker ("SCOPE/ID"): what is left of a worker killed with -9 can be
// found by the next worker of the same scope on the host, and workers of
// other scopes leave it alone. Pdeathsig kills a terminal's shell and a
// run's CLI with their worker, but not the jobs of an interactive shell
// (process groups of their own) nor the tools of a CLI (the Claude CLI
// runs each in a session of its own). The tag variables beside them
// (tags.go) name the run or terminal generation, for this worker's own
// sweeps.
const (
	shellOwnerEnv = "AG_TERMINAL_OWNER"
	runOwnerEnv   = "AG_RUN_OWNER"
)

// ownerVar is the NAME=SCOPE/ID variable of this worker.
func (w *Worker) ownerVar(name string) string {
	return name + "=" + w.st.Scope() + "/" + w.cfg.ID
}

// orphanSweepEvery is how often a worker looks for processes of dead
// workers' terminals and runs.
const orphanSweepEvery = 30 * time.Second

// sweepOrphans kills the processes of terminals and runs whose worker is
// no longer alive, found by the variables above; and this worker's own
// processes left by its runs and terminals that ended (their tags, and
// under Accounts the accounts left with none: tags.go), which needs no
// Redis.
func (w *Worker) sweepOrphans(ctx context.Context) {
	w.sweepStaleTags()
	w.clearAccounts(nil)
	// Just after an outage, live workers' heartbeats may not be back.
	quiet := w.cfg.HeartbeatTTL + 2*w.cfg.HeartbeatInterval
	if time.Since(time.Unix(0, w.troubleAt.Load())) < quiet {
		return
	}
	began := time.Now()
	live, err := w.st.LiveWorkers(ctx)
	if err != nil || time.Since(began) > store.SlowCall {
		return
	}
	alive := map[string]bool{w.cfg.ID: true}
	for _, l := range live {
		alive[l.ID] = true
	}
	markers := []ownerMarker{
		{[]byte(shellOwnerEnv + "=" + w.st.Scope() + "/"), "terminal"},
		{[]byte(runOwnerEnv + "=" + w.st.Scope() + "/"), "run"},
	}
	for _, pid := range processes() {
		env, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "environ"))
		if err != nil {
			continue // another user's process, or gone
		}
		if id, what, ok := ownerIn(env, markers); ok && !alive[id] {
			w.log.Info("killing a process of a dead worker's "+what, "pid", pid, "deadWorker", id)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// ownerMarker is the start of an owner variable of this scope ("NAME=
// SCOPE/"), and what a process that carries it belongs to.
type ownerMarker struct {
	prefix []byte
	what   string
}

// ownerIn finds the first owner variable of markers in a process's
// environment (NUL-separated) and returns the worker id it names and
// what the process belongs to.
func ownerIn(env []byte, markers []ownerMarker) (id, what string, ok bool) {
	for _, kv := range bytes.Split(env, []byte{0}) {
		for _, m := range markers {
			if rest, found := bytes.CutPrefix(kv, m.prefix); found {
				return string(rest), m.what, true
			}
		}
	}
	return "", "", false
}
