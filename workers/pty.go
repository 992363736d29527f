package workers

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/agentgate/agentgate/app"
)

// ptyConfig describes a process to start in a new pseudo-terminal.
type ptyConfig struct {
	Args       []string // argv; Args[0] is looked up on PATH
	Dir        string
	Env        []string
	Cols, Rows int
	// Credential is the account the process runs as; nil for the worker's.
	Credential *syscall.Credential
}

// ptyProc is a process running as the leader of its own session on a new
// PTY. Its ptmx is non-blocking, so reads honour deadlines and Close
// interrupts them, and no OS thread is pinned per terminal.
type ptyProc struct {
	leader
	f   *os.File  // the ptmx
	tty heldFiles // the terminal (/dev/pts/N), for killHolders

	// mu orders close against killSession's search for the terminal's
	// holders: /dev/pts/N names this terminal only while its master is
	// open. Once closed, the kernel gives N to the next terminal opened
	// on the host, and a search by that name would kill its processes
	// (another user's shell, or a worker starting one).
	mu     sync.Mutex
	closed bool
}

// startPTY starts cfg on a new PTY of the given size. The process is a
// session leader (pid == pgid == sid) and gets SIGKILL when the worker dies.
func startPTY(cfg ptyConfig) (*ptyProc, error) {
	if len(cfg.Args) == 0 {
		return nil, errors.New("start terminal: no command")
	}
	cmd := exec.Command(cfg.Args[0], cfg.Args[1:]...)
	cmd.Dir = cfg.Dir
	cmd.Env = cfg.Env
	cols, rows := termSize(cfg.Cols, cfg.Rows)
	f, tty, err := pty.Open()
	if err != nil {
		return nil, fmt.Errorf("start terminal: %w", err)
	}
	defer tty.Close() // the child holds its own copies
	held := openFiles(tty)
	if err := pty.Setsize(f, &pty.Winsize{Cols: cols, Rows: rows}); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("start terminal: size: %w", err)
	}
	if c := cfg.Credential; c != nil {
		// The account's own terminal, as a login gives it: a program that
		// opens /dev/tty again (a password prompt) must be able to.
		if err := tty.Chown(int(c.Uid), int(c.Gid)); err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("start terminal: hand it to the account: %w", err)
		}
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Pdeathsig: syscall.SIGKILL, Credential: cfg.Credential}
	if err := startCmd(cmd); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("start terminal: %w", err)
	}
	// pty hands the ptmx back in blocking mode: make it pollable.
	if err := syscall.SetNonblock(int(f.Fd()), true); err != nil {
		_ = cmd.Process.Kill()
		_ = f.Close()
		_ = cmd.Wait()
		return nil, fmt.Errorf("start terminal: non-blocking ptmx: %w", err)
	}
	p := &ptyProc{leader: newLeader(cmd), f: f, tty: held}
	go p.wait()
	return p, nil
}

// wait waits for the leader to exit and kills what is left of its
// session (see leader.reap): no process outlives its terminal, and
// background jobs, and jobs that ignore SIGHUP, hold the PTY open and
// would keep running. Then it closes exited.
func (p *ptyProc) wait() { p.reap(killSessionMembers) }

// signalSession sends sig to the session's process group, unless its
// leader was reaped.
func (p *ptyProc) signalSession(sig syscall.Signal) {
	p.whileLive(func(sid int) { _ = syscall.Kill(-sid, sig) })
}

// killSessionMembers sends SIGKILL to the group sid and to every process
// still in session sid (found in /proc).
func killSessionMembers(sid int) {
	_ = syscall.Kill(-sid, syscall.SIGKILL)
	for _, pid := range sessionMembers(sid) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// termSize bounds a terminal size to what a client may ask for: the sizes
// come from the inbox, and a uint16 would wrap a bad one silently.
func termSize(cols, rows int) (uint16, uint16) {
	return uint16(min(max(cols, 1), app.MaxShellCols)), uint16(min(max(rows, 1), app.MaxShellRows))
}

// resize sets the terminal size through the raw fd: pty.Setsize would call
// Fd and put the ptmx back into blocking mode.
func (p *ptyProc) resize(cols, rows int) error {
	rc, err := p.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("resize terminal: %w", err)
	}
	c, r := termSize(cols, rows)
	var ioErr error
	err = rc.Control(func(fd uintptr) {
		ioErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Col: c, Row: r})
	})
	if err == nil {
		err = ioErr
	}
	if err != nil {
		return fmt.Errorf("resize terminal: %w", err)
	}
	return nil
}

// kill ends the terminal's whole session: SIGHUP to its process group (an
// interactive bash passes it on to its jobs, which it put in groups of
// their own), a grace period, then SIGKILL to the group and to every
// process still in the session or under the leader (found in /proc), which
// also catches jobs that ignore SIGHUP. Safe to call more than once.
func (p *ptyProc) kill(grace time.Duration) {
	tree := p.tree()
	p.signalSession(syscall.SIGHUP)
	select {
	case <-p.exited:
	case <-time.After(grace):
	}
	p.killSession(tree)
}

// killSession sends SIGKILL to everything left of the terminal's session
// (by its id while the leader is unreaped; wait did it before the reap),
// and to the processes of tree (taken while the leader lived) that still
// run, such as a child that started a session of its own.
func (p *ptyProc) killSession(tree []proc) {
	p.whileLive(killSessionMembers)
	for _, d := range tree {
		if d.running() {
			_ = syscall.Kill(d.pid, syscall.SIGKILL)
		}
	}
	// A job that left the session (setsid) and whose parent exited is in
	// neither list, but still holds the terminal open.
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		killHolders(p.tty, uidOf(p.cmd.SysProcAttr.Credential))
	}
}

// close closes the master. Safe to call more than once.
func (p *ptyProc) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		p.closed = true
		_ = p.f.Close()
	}
}

// exitStatus reads the exit code and the name of the killing signal ("" if
// none) of the finished process. A signal counts as 128+n, as a shell
// reports it.
func (p *ptyProc) exitStatus() (int, string) {
	state := p.cmd.ProcessState // set by the reap, before exited closed
	if state == nil {
		return 1, ""
	}
	if ws, ok := state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal()), unix.SignalName(ws.Signal())
	}
	return state.ExitCode(), ""
}

// sessionMembers lists the live processes whose session id is sid, from
// field 6 of /proc/PID/stat.
func sessionMembers(sid int) []int {
	var out []int
	for _, pid := range processes() {
		// f[3] is field 6 (session).
		f := statFields(pid)
		if len(f) < 4 {
			continue
		}
		if s, err := strconv.Atoi(string(f[3])); err == nil && s == sid {
			out = append(out, pid)
		}
	}
	return out
}
