package workers

import (
	"os/exec"
	"sync"
)

// leader is a started process that leads a process group (a run) or a
// session (a terminal) the worker signals by its id. The id is the
// leader's pid, which stays its own until the leader is reaped: after
// that it may be another process's, another user's even. So signals by
// that id go only while the leader is not reaped (whileLive), and what
// the leader left behind is killed before the reap (reap).
type leader struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once reaped
	// reapMu orders whileLive against the reap.
	reapMu sync.Mutex
}

func newLeader(cmd *exec.Cmd) leader {
	return leader{cmd: cmd, exited: make(chan struct{})}
}

// reap waits for the leader to exit, runs leftovers with its pid while
// the exited leader still holds it, then reaps it and closes exited.
// Without a pidfd to wait on (awaitExit), the reap comes first and
// leftovers runs after it, as before pidfds.
func (l *leader) reap(leftovers func(pid int)) {
	pid := l.cmd.Process.Pid
	watched := awaitExit(pid)
	if watched {
		leftovers(pid)
		l.reapMu.Lock()
		_ = l.cmd.Wait() // at once: the process has exited
	} else {
		_ = l.cmd.Wait()
		l.reapMu.Lock()
	}
	close(l.exited)
	l.reapMu.Unlock()
	if !watched {
		leftovers(pid)
	}
}

// whileLive runs f with the leader's pid unless the leader was reaped.
func (l *leader) whileLive(f func(pid int)) {
	l.reapMu.Lock()
	defer l.reapMu.Unlock()
	select {
	case <-l.exited:
	default:
		f(l.cmd.Process.Pid)
	}
}

// tree snapshots the processes under the leader; none once it is reaped
// (its pid may be another process's, with children of its own).
func (l *leader) tree() []proc {
	var t []proc
	l.whileLive(func(pid int) { t = descendants(pid) })
	return t
}
