package workers

import (
	"fmt"
	"os/exec"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// startCmd starts cmd. A process of a user's account (a Credential) is
// started from one OS thread that has no_new_privs set, which every
// process forked from it inherits and none can clear: a set-user-ID
// program (su, passwd, mount, a sudo the host left in) or file
// capabilities give a user's processes nothing. The worker's own thread
// keeps the right to switch to the account's uid; only gaining privileges
// by exec is closed. no_new_privs is a property of a thread, not of a
// process, and the Go runtime forks from whichever thread runs the caller,
// hence the one thread.
func startCmd(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil || cmd.SysProcAttr.Credential == nil {
		return cmd.Start()
	}
	s, err := theSpawner()
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	s <- spawnRequest{cmd, done}
	return <-done
}

type spawnRequest struct {
	cmd  *exec.Cmd
	done chan error
}

// theSpawner returns the channel of the goroutine that starts account
// processes, started on first use; it runs for the life of the process,
// locked to its thread (which also keeps the children's Pdeathsig, tied
// to the thread that forked them, from firing while the worker lives).
var theSpawner = sync.OnceValues(func() (chan<- spawnRequest, error) {
	reqs := make(chan spawnRequest)
	ready := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			ready <- fmt.Errorf("start a user's process: set no_new_privs: %w", err)
			return // the thread goes with its goroutine
		}
		ready <- nil
		for r := range reqs {
			r.done <- r.cmd.Start()
		}
	}()
	if err := <-ready; err != nil {
		return nil, err
	}
	return reqs, nil
})
