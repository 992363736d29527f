package workers

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// awaitExit returns once the child process pid has exited, without holding
// an OS thread while it runs, and leaves the exit for cmd.Wait to collect
// (which then returns at once). os.Process.Wait blocks a thread in waitid
// for the process's whole life: a worker running 1000 CLIs held 1000
// threads, and Go stops a program at 10,000. Here the runtime's poller
// watches a pidfd instead, which turns readable when the process exits.
// Where pidfds cannot be opened (Linux before 5.10, a seccomp policy that
// refuses them) it returns at once, and cmd.Wait waits as before.
func awaitExit(pid int) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return
	}
	// Non-blocking, so os.NewFile hands it to the poller.
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Read(func(fd uintptr) bool {
		// WNOWAIT: looked at, not reaped, so that cmd.Wait still gets
		// the process's status. A poll that finds nothing returns false
		// and parks the goroutine until the pidfd is readable.
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PIDFD, int(fd), &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		return err != nil || info.Signo == int32(syscall.SIGCHLD)
	})
}
