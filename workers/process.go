package workers

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// killGrace is how long a provider gets between SIGTERM and SIGKILL.
const killGrace = 2 * time.Second

// process is a provider CLI started in its own process group, so that it and
// every child it spawns can be signalled together.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once Wait has returned
}

// prepareGroup makes cmd start as the leader of a new process group and die
// with the worker: on Linux, Pdeathsig delivers SIGKILL when the worker
// exits, even by kill -9 (a CLI otherwise keeps retrying its API for minutes).
func prepareGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// kill stops the whole process group: SIGTERM, then SIGKILL after grace if
// the leader has not exited, then SIGKILL to the group again for children
// that outlived their leader. It is safe to call more than once.
func (p *process) kill(grace time.Duration) {
	if p.cmd.Process == nil {
		return
	}
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(grace):
	}
	// ESRCH here means the group is already gone, which is the goal.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

// exitCode reads the exit code of a finished command: a signal or a missing
// status counts as 1, as PROTOCOL §3.3 asks.
func exitCode(state *os.ProcessState) int {
	if state == nil {
		return 1
	}
	if code := state.ExitCode(); code >= 0 {
		return code
	}
	return 1
}

// isNotFound reports whether starting a command failed because the binary
// does not exist.
func isNotFound(err error) bool {
	return errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOENT)
}
