package workers

import (
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// waitCmd is cmd.Wait without an OS thread held while the process runs.
// os.Process.Wait blocks a thread in waitid for the process's whole life:
// a worker running 1000 CLIs held 1000 threads, and Go stops a program at
// 10,000. Here the runtime's poller watches a pidfd, which turns readable
// when the process exits, and cmd.Wait then collects the exit at once.
// Where pidfds cannot be opened (Linux before 5.10, a seccomp policy that
// refuses them) cmd.Wait waits as before.
func waitCmd(cmd *exec.Cmd) error {
	awaitExit(cmd.Process.Pid)
	return cmd.Wait()
}

// awaitExit returns once the child process pid has exited, or at once when
// it cannot watch a pidfd of it (then false); it reaps nothing. Until the
// process is reaped it holds its pid, and so its process group and
// session ids: a new process cannot take them, and signalling them still
// reaches only what the process left behind.
func awaitExit(pid int) bool {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return false
	}
	// Non-blocking, so os.NewFile hands it to the poller.
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	var waitErr error
	err = rc.Read(func(fd uintptr) bool {
		// WNOWAIT: looked at, not reaped, so that cmd.Wait still gets
		// the process's status. A poll that finds nothing returns false
		// and parks the goroutine until the pidfd is readable.
		var info unix.Siginfo
		waitErr = unix.Waitid(unix.P_PIDFD, int(fd), &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		return waitErr != nil || info.Signo == int32(syscall.SIGCHLD)
	})
	// A waitid that failed (a platform that opens pidfds but refuses to
	// wait on them) says nothing of the process, which may still run: the
	// caller must not take it for exited.
	return err == nil && waitErr == nil
}
